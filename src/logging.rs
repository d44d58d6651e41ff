//! Logging to stderr that never blocks the loop.
//!
//! The agent is one thread: a blocking write to a stderr pipe nobody reads (a wedged log
//! collector, a supervisor that stopped draining it) would stop probing, /metrics and even
//! SIGTERM. So each log line (env_logger formats a whole record, then writes it once) is
//! written without blocking, and a line that does not fit is dropped and counted
//! ([`dropped`], exported as `sigma_log_lines_dropped_total`). The first line written after
//! drops is preceded by one line saying how many were lost.
//!
//! How "without blocking" is done depends on what stderr is, without changing the flags of the
//! inherited descriptor (shared with whoever started us):
//! - a pipe, FIFO or terminal: `/proc/self/fd/2` is opened again, giving our own open file
//!   description, which is made non-blocking;
//! - a socket (journald's stdout stream): `send` with `MSG_DONTWAIT`;
//! - a regular file: a plain write (a file never waits for a reader);
//! - anything else, or if reopening fails: `poll` for room first, then one write of at most
//!   `PIPE_BUF` bytes, which a pipe with room takes whole.
//!
//! The drop counter is a global because the `log` crate's logger is one.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};

/// Log lines dropped since start because stderr would have blocked (or was closed).
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Log lines dropped since start (`sigma_log_lines_dropped_total`).
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

const STDERR: libc::c_int = 2;

enum Mode {
    /// Our own non-blocking description of the stderr pipe or terminal.
    Own(std::os::fd::OwnedFd),
    /// A socket: `send(MSG_DONTWAIT)`.
    Send,
    /// A regular file: plain writes.
    Plain,
    /// `poll` for room, then at most `PIPE_BUF` bytes.
    PollFirst,
}

/// The env_logger target: stderr, written without blocking. See the module docs.
pub struct Stderr {
    mode: Mode,
    /// Lines dropped since the last one written: said in one line once writing works again.
    dropped_since: u64,
    /// A line was cut short: the next write starts a fresh line.
    cut: bool,
}

impl Stderr {
    pub fn new() -> Stderr {
        Stderr {
            mode: mode(),
            dropped_since: 0,
            cut: false,
        }
    }

    /// Writes all of `bytes` or reports that it could not.
    fn put(&mut self, bytes: &[u8]) -> bool {
        if self.cut {
            if self.raw(b"\n") != Ok(1) {
                return false;
            }
            self.cut = false;
        }
        match self.raw(bytes) {
            Ok(n) if n == bytes.len() => true,
            Ok(n) => {
                self.cut = n > 0;
                false
            }
            Err(_) => false,
        }
    }

    /// One attempt, never blocking (retried on EINTR).
    fn raw(&self, bytes: &[u8]) -> Result<usize, i32> {
        use std::os::fd::AsRawFd;
        loop {
            // SAFETY: valid buffer and length; the descriptors are ours or stderr.
            let n = unsafe {
                match &self.mode {
                    Mode::Own(fd) => {
                        libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len())
                    }
                    Mode::Send => libc::send(
                        STDERR,
                        bytes.as_ptr().cast(),
                        bytes.len(),
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    ),
                    Mode::Plain => libc::write(STDERR, bytes.as_ptr().cast(), bytes.len()),
                    Mode::PollFirst => {
                        let mut p = libc::pollfd {
                            fd: STDERR,
                            events: libc::POLLOUT,
                            revents: 0,
                        };
                        if libc::poll(&mut p, 1, 0) != 1 || p.revents & libc::POLLOUT == 0 {
                            return Err(libc::EAGAIN);
                        }
                        let len = bytes.len().min(libc::PIPE_BUF);
                        libc::write(STDERR, bytes.as_ptr().cast(), len)
                    }
                }
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
            if errno != libc::EINTR {
                return Err(errno);
            }
        }
    }
}

impl Default for Stderr {
    fn default() -> Self {
        Stderr::new()
    }
}

impl Write for Stderr {
    /// Takes one whole formatted record; always reports it taken (dropped lines are counted,
    /// not errors: an error would only make env_logger try again, blocking-free or not).
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        if self.dropped_since > 0 {
            let note = format!(
                "[WARN  sigma_agent_lite::logging] {} log lines dropped: stderr was not being read\n",
                self.dropped_since
            );
            if !self.put(note.as_bytes()) {
                self.drop_line();
                return Ok(line.len());
            }
            self.dropped_since = 0;
        }
        if !self.put(line) {
            self.drop_line();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Stderr {
    fn drop_line(&mut self) {
        self.dropped_since += 1;
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Chooses how to write stderr without blocking (see the module docs).
fn mode() -> Mode {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: stat is plain data, for which all zeroes is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes into the struct it is given, which lives across the call.
    let failed = unsafe { libc::fstat(STDERR, &mut st) } != 0;
    if failed {
        return Mode::PollFirst;
    }
    match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => Mode::Plain,
        libc::S_IFSOCK => Mode::Send,
        _ => {
            let path = c"/proc/self/fd/2";
            let flags = libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY;
            // SAFETY: a valid C string; the returned descriptor is owned below.
            let fd = unsafe { libc::open(path.as_ptr(), flags) };
            if fd < 0 {
                return Mode::PollFirst;
            }
            // SAFETY: `fd` was just opened and is owned by nothing else.
            Mode::Own(unsafe { OwnedFd::from_raw_fd(fd) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full pipe as "stderr": lines are dropped and counted without blocking, and the next
    /// line written once there is room is preceded by the count.
    #[test]
    fn full_pipe_drops_and_counts_then_says_so() {
        use std::io::Read;
        use std::os::fd::{FromRawFd, OwnedFd};
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into the two-element array.
        let made = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK) };
        assert_eq!(made, 0);
        // SAFETY: both descriptors were just created and are owned here.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let mut out = Stderr {
            mode: Mode::Own(w),
            dropped_since: 0,
            cut: false,
        };
        let line = [b'x'; 99].iter().chain(b"\n").copied().collect::<Vec<u8>>();
        let before = dropped();
        for _ in 0..2000 {
            assert_eq!(out.write(&line).unwrap(), line.len());
        }
        assert!(out.dropped_since > 0);
        let mut reader = std::fs::File::from(r);
        let mut text = Vec::new();
        let mut chunk = vec![0u8; 1 << 16];
        while let Ok(n) = reader.read(&mut chunk) {
            if n == 0 {
                break;
            }
            text.extend_from_slice(&chunk[..n]);
        }
        // Whole lines only: each one written, or counted in a note that made it, or pending.
        let text = String::from_utf8(text).unwrap();
        assert!(text.ends_with('\n'));
        let note = |l: &str| -> Option<u64> {
            l.strip_prefix("[WARN  sigma_agent_lite::logging] ")?
                .strip_suffix(" log lines dropped: stderr was not being read")?
                .parse()
                .ok()
        };
        let (mut written, mut noted) = (0, 0);
        for l in text.lines() {
            match note(l) {
                Some(n) => noted += n,
                None => {
                    assert_eq!(l.len(), 99, "{l:?}");
                    written += 1;
                }
            }
        }
        let pending = out.dropped_since;
        assert_eq!(written + noted + pending, 2000);
        assert_eq!(dropped() - before, noted + pending);
        assert_eq!(out.write(b"after\n").unwrap(), 6);
        let n = reader.read(&mut chunk).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&chunk[..n]),
            format!("[WARN  sigma_agent_lite::logging] {pending} log lines dropped: stderr was not being read\nafter\n")
        );
    }
}
