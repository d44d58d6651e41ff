//! The harness's helper threads (the farm, the blackbox driver, the relay and the name server):
//! each runs until it is told to stop or for [`HELPER_LIFETIME`], whatever happens, and is
//! stopped and joined when its owner is dropped (also on an early `?` return). One type for
//! the four, so none can be left running.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crate::HELPER_LIFETIME;

/// The thread's side: whether it should keep going. Clones share the one stop flag.
#[derive(Clone)]
pub struct Alive {
    stop: Arc<AtomicBool>,
    until: Instant,
}

impl Alive {
    /// Not told to stop, and within [`HELPER_LIFETIME`] of the start.
    pub fn running(&self) -> bool {
        !self.stopped() && Instant::now() < self.until
    }

    /// Told to stop (by the owner, or by the thread itself through [`Alive::stop`]).
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Tells every clone to stop (a thread ending its own workers).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The owner's side: stops and joins the thread when dropped.
pub struct Helper {
    alive: Alive,
    thread: Option<JoinHandle<()>>,
}

impl Helper {
    pub fn spawn(body: impl FnOnce(Alive) + Send + 'static) -> Helper {
        let alive = Alive {
            stop: Arc::new(AtomicBool::new(false)),
            until: Instant::now() + HELPER_LIFETIME,
        };
        let theirs = alive.clone();
        Helper {
            alive,
            thread: Some(std::thread::spawn(move || body(theirs))),
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        self.alive.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
