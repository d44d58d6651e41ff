//! Standard input and output as non-blocking mio sources, for the MCP stdio transport.
//!
//! Why this is not just `SourceFd(&0)`:
//! - **Inherited flags.** `O_NONBLOCK` lives on the open file description, which fd 0/1
//!   share with the parent and its other children (a shell's terminal, a pipeline). Setting
//!   it on fd 0 would make `cat` or the shell see `EAGAIN` later. So for a pipe, FIFO or
//!   character device (terminal) we open `/proc/self/fd/N` anew with `O_NONBLOCK`: a new
//!   open file description of the same pipe or device, whose flags are ours alone. For a
//!   socket (which `/proc` cannot reopen) or when `/proc` is missing we set `O_NONBLOCK` on
//!   the inherited fd and put the bit back on `Drop` (a `kill -9` leaves it set: that is
//!   the fallback's one weakness).
//! - **Regular files.** `epoll` refuses regular files (`EPERM`), e.g. `agent < requests.jsonl`
//!   or `> out.jsonl`. Such an fd never blocks, so we use it as is and report it
//!   [`always ready`](StdIn::is_always_ready): the loop reads it each turn (poll timeout 0)
//!   until EOF. Anything else epoll refuses at `register` (e.g. `/dev/null`) is treated the
//!   same way.
//!
//! Raw `libc` calls, because std's `Stdin`/`Stdout` buffer and lock and cannot be made
//! non-blocking. Every call retries on `EINTR`; `EAGAIN` comes back as `WouldBlock`.
//! Writing to a closed pipe returns `EPIPE` (Rust ignores `SIGPIPE` in binaries).

use std::io;
use std::os::fd::RawFd;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

/// How an inherited standard stream is being used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A new open file description from `/proc/self/fd/N`, non-blocking, closed on drop.
    /// The inherited fd is not touched.
    Reopened,
    /// The inherited fd with `O_NONBLOCK` set by us; the bit is restored on drop.
    Borrowed,
    /// A regular file (or anything else epoll refuses), used as is: never blocks.
    Plain,
}

/// Standard input or output as a non-blocking mio source (see the module docs). `OUT` says
/// which, so [`StdIn`] has only `read` and [`StdOut`] only `write`; the rest is shared.
#[derive(Debug)]
pub struct StdStream<const OUT: bool> {
    fd: RawFd,
    mode: Mode,
    /// For `Borrowed`: whether `O_NONBLOCK` was set before we set it.
    was_nonblocking: bool,
    always_ready: bool,
    registered: bool,
}

/// Standard input (fd 0), registered for READABLE.
pub type StdIn = StdStream<false>;

/// Standard output (fd 1), registered for WRITABLE: edge-triggered, so write until
/// `WouldBlock`, then wait for the event.
pub type StdOut = StdStream<true>;

impl<const OUT: bool> StdStream<OUT> {
    /// Prepares fd 0 ([`StdIn`]) or fd 1 ([`StdOut`]). Fails only if that fd is closed or
    /// `fcntl` fails.
    pub fn new() -> io::Result<Self> {
        Self::with_fd(if OUT {
            libc::STDOUT_FILENO
        } else {
            libc::STDIN_FILENO
        })
    }

    /// `inherited` must stay open while this lives; it is never closed by us.
    fn with_fd(inherited: RawFd) -> io::Result<Self> {
        // SAFETY: fstat only writes into the zeroed struct we pass.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `st` is a valid, writable `stat`; a bad fd makes fstat fail with EBADF.
        cvt(unsafe { libc::fstat(inherited, &mut st) })?;
        let kind = st.st_mode & libc::S_IFMT;
        let plain = StdStream {
            fd: inherited,
            mode: Mode::Plain,
            was_nonblocking: false,
            always_ready: true,
            registered: false,
        };
        if kind == libc::S_IFREG || kind == libc::S_IFDIR || kind == libc::S_IFBLK {
            return Ok(plain);
        }
        if kind == libc::S_IFIFO || kind == libc::S_IFCHR {
            if let Ok(fd) = reopen(inherited, OUT) {
                return Ok(StdStream {
                    fd,
                    mode: Mode::Reopened,
                    always_ready: false,
                    ..plain
                });
            }
        }
        // SAFETY: F_GETFL takes no pointer; a bad fd makes it fail with EBADF.
        let flags = cvt(unsafe { libc::fcntl(inherited, libc::F_GETFL) })?;
        if flags & libc::O_NONBLOCK == 0 {
            // SAFETY: F_SETFL takes an int, no pointer; Drop restores the flag we add here.
            cvt(unsafe { libc::fcntl(inherited, libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
        }
        Ok(StdStream {
            mode: Mode::Borrowed,
            was_nonblocking: flags & libc::O_NONBLOCK != 0,
            always_ready: false,
            ..plain
        })
    }

    /// Registers for READABLE ([`StdIn`]) or WRITABLE ([`StdOut`]). A no-op when
    /// [`is_always_ready`](Self::is_always_ready), which it also becomes if epoll refuses the
    /// fd (`EPERM`).
    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        if self.always_ready {
            return Ok(());
        }
        let interest = if OUT {
            Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        match registry.register(&mut SourceFd(&self.fd), token, interest) {
            Ok(()) => {
                self.registered = true;
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                self.always_ready = true;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    pub fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        if !self.registered {
            return Ok(());
        }
        self.registered = false;
        registry.deregister(&mut SourceFd(&self.fd))
    }

    /// True when epoll cannot watch this stream (regular file, `/dev/null`): no events will
    /// come, so read every loop turn, with a zero poll timeout, until `read` returns 0, and
    /// write whenever there is output (it never blocks). Decided at construction, or by
    /// [`register`](Self::register).
    pub fn is_always_ready(&self) -> bool {
        self.always_ready
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }
}

impl StdIn {
    /// Reads what is there: `Ok(0)` is end of input, `WouldBlock` means drained.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for `buf.len()` bytes of writes.
        retry(|| unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) })
    }
}

impl StdOut {
    /// Writes what fits: a short count is normal, `WouldBlock` means full, `BrokenPipe`
    /// means the reader is gone.
    pub fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        // SAFETY: `data` is valid for `data.len()` bytes of reads.
        retry(|| unsafe { libc::write(self.fd, data.as_ptr().cast(), data.len()) })
    }
}

impl<const OUT: bool> Drop for StdStream<OUT> {
    fn drop(&mut self) {
        match self.mode {
            Mode::Reopened => {
                // SAFETY: we opened this fd and nothing else holds it.
                unsafe { libc::close(self.fd) };
            }
            Mode::Borrowed if !self.was_nonblocking => {
                // Clear only our bit, keeping any other flag changed since.
                // SAFETY: F_GETFL takes no pointer; a bad fd makes it fail with EBADF.
                let flags = unsafe { libc::fcntl(self.fd, libc::F_GETFL) };
                if flags >= 0 {
                    // SAFETY: F_SETFL takes an int, no pointer; it clears only our O_NONBLOCK.
                    unsafe { libc::fcntl(self.fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) };
                }
            }
            Mode::Borrowed | Mode::Plain => {}
        }
    }
}

/// A new open file description of what `fd` refers to, non-blocking.
fn reopen(fd: RawFd, write: bool) -> io::Result<RawFd> {
    let path = format!("/proc/self/fd/{fd}\0");
    let access = if write {
        libc::O_WRONLY
    } else {
        libc::O_RDONLY
    };
    let flags = access | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY;
    // SAFETY: `path` is NUL-terminated.
    cvt(unsafe { libc::open(path.as_ptr().cast(), flags) })
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Makes a `read`/`write` call, again while it fails with `EINTR`.
fn retry(mut call: impl FnMut() -> libc::ssize_t) -> io::Result<usize> {
    loop {
        let n = call();
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll};
    use std::io::Write as _;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    fn flags(fd: RawFd) -> libc::c_int {
        // SAFETY: F_GETFL takes no pointer; a closed fd makes it fail (checked below).
        let f = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        assert!(f >= 0, "fd {fd} is closed");
        f
    }

    fn pipe() -> (RawFd, RawFd) {
        let mut fds = [0; 2];
        // SAFETY: `fds` is a writable array of the two ints pipe(2) fills.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        (fds[0], fds[1])
    }

    fn close(fd: RawFd) {
        // SAFETY: the test closes a pipe end it created and uses no more.
        unsafe { libc::close(fd) };
    }

    fn write_all(fd: RawFd, data: &[u8]) {
        // SAFETY: `data` is valid for `data.len()` bytes of reading.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        assert_eq!(n, data.len() as isize);
    }

    fn proc_available() -> bool {
        std::path::Path::new("/proc/self/fd").exists()
    }

    /// Polls until `token` is reported or 5 s pass.
    fn wait_for(poll: &mut Poll, token: Token) -> bool {
        let mut events = Events::with_capacity(8);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            poll.poll(&mut events, Some(Duration::from_millis(100)))
                .unwrap();
            if events.iter().any(|e| e.token() == token) {
                return true;
            }
        }
        false
    }

    #[test]
    fn pipe_stdin_is_nonblocking_without_touching_the_inherited_fd() {
        let (r, w) = pipe();
        let before = flags(r);
        let mut poll = Poll::new().unwrap();
        {
            let mut stdin = StdIn::with_fd(r).unwrap();
            if proc_available() {
                assert_eq!(stdin.mode(), Mode::Reopened);
                assert_eq!(flags(r), before, "the inherited fd is untouched");
            }
            stdin.register(poll.registry(), Token(0)).unwrap();
            assert!(!stdin.is_always_ready());
            let mut buf = [0u8; 64];
            let err = stdin.read(&mut buf).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
            write_all(w, b"{\"id\":1}\n");
            assert!(wait_for(&mut poll, Token(0)));
            assert_eq!(stdin.read(&mut buf).unwrap(), 9);
            assert_eq!(&buf[..9], b"{\"id\":1}\n");
            close(w);
            assert!(wait_for(&mut poll, Token(0)));
            assert_eq!(stdin.read(&mut buf).unwrap(), 0, "EOF");
            stdin.deregister(poll.registry()).unwrap();
        }
        assert_eq!(flags(r), before, "flags as found, fd still open");
        close(r);
    }

    #[test]
    fn pipe_stdout_is_nonblocking_without_touching_the_inherited_fd() {
        let (r, w) = pipe();
        let before = flags(w);
        let mut poll = Poll::new().unwrap();
        {
            let mut stdout = StdOut::with_fd(w).unwrap();
            if proc_available() {
                assert_eq!(stdout.mode(), Mode::Reopened);
            }
            stdout.register(poll.registry(), Token(1)).unwrap();
            // Fill the pipe: must end in WouldBlock, not block the test.
            let chunk = [b'x'; 4096];
            let mut total = 0;
            loop {
                match stdout.write(&chunk) {
                    Ok(n) => total += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("{e}"),
                }
                assert!(total < 64 << 20, "pipe never filled");
            }
            assert!(total >= 4096);
            assert_eq!(flags(w), before);
            // Drain some; a WRITABLE event follows.
            let mut buf = vec![0u8; 1 << 16];
            // SAFETY: `buf` is valid for `buf.len()` bytes of writing.
            let _ = unsafe { libc::read(r, buf.as_mut_ptr().cast(), buf.len()) };
            assert!(wait_for(&mut poll, Token(1)));
            assert!(stdout.write(b"more\n").unwrap() > 0);
            // Reader gone: BrokenPipe, not a signal.
            close(r);
            let mut broke = false;
            for _ in 0..64 {
                match stdout.write(&chunk) {
                    Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                        broke = true;
                        break;
                    }
                    _ => {}
                }
            }
            assert!(broke);
        }
        assert_eq!(flags(w), before);
        close(w);
    }

    fn temp_path(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("sigma-stdio-{}-{name}", std::process::id()))
    }

    #[test]
    fn regular_file_stdin_is_always_ready_until_eof() {
        let path = temp_path("in");
        std::fs::write(&path, b"{\"a\":1}\n{\"b\":2}\n").unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let fd = file.as_raw_fd();
        let before = flags(fd);
        let poll = Poll::new().unwrap();
        {
            let mut stdin = StdIn::with_fd(fd).unwrap();
            assert_eq!(stdin.mode(), Mode::Plain);
            assert!(stdin.is_always_ready());
            // epoll would say EPERM; we do not even ask.
            stdin.register(poll.registry(), Token(0)).unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 5];
            loop {
                match stdin.read(&mut buf).unwrap() {
                    0 => break,
                    n => got.extend_from_slice(&buf[..n]),
                }
            }
            assert_eq!(got, b"{\"a\":1}\n{\"b\":2}\n");
            stdin.deregister(poll.registry()).unwrap();
        }
        assert_eq!(flags(fd), before);
        drop(file);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn regular_file_stdout_is_always_ready() {
        let path = temp_path("out");
        let file = std::fs::File::create(&path).unwrap();
        let fd = file.as_raw_fd();
        let before = flags(fd);
        {
            let mut stdout = StdOut::with_fd(fd).unwrap();
            assert!(stdout.is_always_ready());
            stdout
                .register(Poll::new().unwrap().registry(), Token(1))
                .unwrap();
            assert_eq!(stdout.write(b"{\"ok\":true}\n").unwrap(), 12);
        }
        assert_eq!(flags(fd), before);
        drop(file);
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"ok\":true}\n");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn dev_null_stdin_becomes_always_ready_at_register() {
        let Ok(file) = std::fs::File::open("/dev/null") else {
            return;
        };
        let fd = file.as_raw_fd();
        let before = flags(fd);
        let poll = Poll::new().unwrap();
        {
            let mut stdin = StdIn::with_fd(fd).unwrap();
            stdin.register(poll.registry(), Token(0)).unwrap();
            assert!(
                stdin.is_always_ready(),
                "epoll refuses /dev/null with EPERM"
            );
            assert_eq!(stdin.read(&mut [0u8; 8]).unwrap(), 0);
        }
        assert_eq!(flags(fd), before);
    }

    #[test]
    fn socket_stdio_sets_and_restores_nonblocking() {
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = a.as_raw_fd();
        let before = flags(fd);
        assert_eq!(before & libc::O_NONBLOCK, 0);
        let mut poll = Poll::new().unwrap();
        {
            let mut stdin = StdIn::with_fd(fd).unwrap();
            assert_eq!(stdin.mode(), Mode::Borrowed, "/proc cannot reopen a socket");
            assert_ne!(flags(fd) & libc::O_NONBLOCK, 0);
            stdin.register(poll.registry(), Token(0)).unwrap();
            let mut buf = [0u8; 8];
            assert_eq!(
                stdin.read(&mut buf).unwrap_err().kind(),
                io::ErrorKind::WouldBlock
            );
            b.write_all(b"x\n").unwrap();
            assert!(wait_for(&mut poll, Token(0)));
            assert_eq!(stdin.read(&mut buf).unwrap(), 2);
        }
        assert_eq!(flags(fd), before, "O_NONBLOCK cleared again on drop");
        // An fd that was already non-blocking stays so.
        a.set_nonblocking(true).unwrap();
        let before = flags(fd);
        drop(StdOut::with_fd(fd).unwrap());
        assert_eq!(flags(fd), before);
    }
}
