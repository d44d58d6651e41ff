//! SIGTERM, SIGINT and SIGHUP as readable events on the mio loop, through a `signalfd`.
//!
//! The three signals are blocked for the process (inherited by any thread a library starts
//! later) and read from the signalfd when it becomes readable, so no handler runs
//! asynchronously and no global flag is needed. Linux only, as the agent is.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

/// What arrived.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pending {
    /// SIGTERM or SIGINT: stop.
    pub quit: bool,
    /// SIGHUP: re-read the route source.
    pub reload: bool,
}

pub struct Signals {
    fd: OwnedFd,
}

impl Signals {
    /// Blocks SIGTERM, SIGINT and SIGHUP and opens a non-blocking signalfd for them.
    pub fn new() -> io::Result<Signals> {
        // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it; sigprocmask and
        // signalfd take valid pointers to it. The returned fd is owned by OwnedFd.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
                libc::sigaddset(&mut set, sig);
            }
            if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Signals {
                fd: OwnedFd::from_raw_fd(fd),
            })
        }
    }

    pub fn register(&self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(
            &mut SourceFd(&self.fd.as_raw_fd()),
            token,
            Interest::READABLE,
        )
    }

    /// Reads every queued signal (until the fd would block).
    pub fn drain(&self) -> Pending {
        let mut pending = Pending::default();
        loop {
            // SAFETY: signalfd_siginfo is plain data; read writes at most its size into it.
            let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
            let size = std::mem::size_of::<libc::signalfd_siginfo>();
            // SAFETY: `info` is a valid, writable buffer of exactly `size` bytes.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    (&mut info as *mut libc::signalfd_siginfo).cast(),
                    size,
                )
            };
            if n != size as isize {
                if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return pending;
            }
            match info.ssi_signo as i32 {
                libc::SIGHUP => pending.reload = true,
                libc::SIGTERM | libc::SIGINT => pending.quit = true,
                _ => {}
            }
        }
    }
}
