//! The targets every prober connects to, all on loopback: the farm (N accepting listeners in
//! one thread, which accept and close at once and count what they accepted: every probe is a
//! reachable one, counted the same way for every prober), a listener whose accept queue is
//! full (a probe to it stays pending to its deadline), and free ports.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};

use crate::helper::Helper;
use crate::READY_TIMEOUT;

pub struct Farm {
    pub ports: Vec<u16>,
    accepted: Arc<AtomicU64>,
    _thread: Helper,
}

impl Farm {
    pub fn start(n: usize) -> io::Result<Farm> {
        let mut poll = Poll::new()?;
        let mut listeners = Vec::with_capacity(n);
        let mut ports = Vec::with_capacity(n);
        for i in 0..n {
            let mut l = mio::net::TcpListener::bind("127.0.0.1:0".parse().expect("addr"))?;
            poll.registry()
                .register(&mut l, Token(i), Interest::READABLE)?;
            ports.push(l.local_addr()?.port());
            listeners.push(l);
        }
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        let thread = Helper::spawn(move |alive| {
            let mut events = Events::with_capacity(256);
            while alive.running() {
                if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(100))) {
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    eprintln!("farm: poll failed: {e}");
                    return;
                }
                for event in events.iter() {
                    let Some(l) = listeners.get(event.token().0) else {
                        continue;
                    };
                    loop {
                        match l.accept() {
                            Ok((stream, _)) => {
                                drop(stream); // close at once: the backlog never fills
                                count.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            Err(_) => break, // WouldBlock, or EMFILE: next event
                        }
                    }
                }
            }
        });
        Ok(Farm {
            ports,
            accepted,
            _thread: thread,
        })
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Waits until `count` more connections than `from` were accepted.
    pub fn wait_for(&self, from: u64, count: u64, what: &str) -> Result<(), String> {
        let until = Instant::now() + READY_TIMEOUT;
        while self.accepted() < from + count {
            if Instant::now() > until {
                return Err(format!(
                    "{what}: only {} of {count} probes arrived within {READY_TIMEOUT:?}",
                    self.accepted() - from
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }
}

/// A loopback listener whose accept queue is full (backlog 0 plus connects that are never
/// accepted): a new connect's SYN is dropped, so a probe to it stays pending to its deadline.
pub struct Blackhole {
    pub port: u16,
    _listener: socket2::Socket,
    _fillers: Vec<socket2::Socket>,
}

pub fn blackhole() -> io::Result<Blackhole> {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    listener.bind(&any.into())?;
    listener.listen(0)?;
    let port = listener
        .local_addr()?
        .as_socket()
        .map(|a| a.port())
        .ok_or_else(|| io::Error::other("no port"))?;
    let target: SocketAddr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut fillers = Vec::new();
    for _ in 0..8 {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        let done = s
            .connect_timeout(&target.into(), Duration::from_millis(200))
            .is_ok();
        fillers.push(s);
        if !done {
            return Ok(Blackhole {
                port,
                _listener: listener,
                _fillers: fillers,
            });
        }
    }
    Err(io::Error::other("could not fill a loopback accept backlog"))
}

/// A loopback address with a port free right now, for a server the harness starts.
pub fn free_addr() -> Result<SocketAddr, String> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    Ok(SocketAddr::from(([127, 0, 0, 1], port)))
}
