//! A minimal keep-alive HTTP/1.1 client for the agent and blackbox_exporter (Content-Length
//! or chunked responses, no trailers: what they send), and reading an unlabelled sample out
//! of an exposition.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

pub struct Client {
    stream: TcpStream,
    host: String,
    buf: Vec<u8>,
    /// A chunked body, decoded.
    body: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            host: addr.to_string(),
            buf: Vec::with_capacity(512 * 1024),
            body: Vec::new(),
        })
    }

    /// GET `path`; the status and the body (Content-Length or chunked).
    pub fn get(&mut self, path: &str) -> io::Result<(u16, &[u8])> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.host);
        self.stream.write_all(request.as_bytes())?;
        self.buf.clear();
        let head_end = self.read_until(0, b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad response head: {head:?}")))?;
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
        };
        if let Some(length) = header("content-length") {
            let length: usize = length
                .parse()
                .map_err(|_| io::Error::other("bad Content-Length"))?;
            while self.buf.len() < head_end + length {
                self.read_more()?;
            }
            return Ok((status, &self.buf[head_end..head_end + length]));
        }
        if !header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            return Err(io::Error::other("response with neither length nor chunks"));
        }
        // Chunked: decode into `body`.
        self.body.clear();
        let mut at = head_end;
        loop {
            let line_end = self.read_until(at, b"\r\n")?;
            let size_text = String::from_utf8_lossy(&self.buf[at..line_end - 2]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| io::Error::other(format!("bad chunk size {size_text:?}")))?;
            while self.buf.len() < line_end + size + 2 {
                self.read_more()?;
            }
            self.body
                .extend_from_slice(&self.buf[line_end..line_end + size]);
            at = line_end + size + 2;
            if size == 0 {
                // No trailers from the servers measured here: the empty chunk ends it.
                return Ok((status, &self.body));
            }
        }
    }

    /// Reads until `pattern` appears at or after `from`; returns the offset just past it.
    fn read_until(&mut self, from: usize, pattern: &[u8]) -> io::Result<usize> {
        loop {
            if let Some(i) = self.buf[from..]
                .windows(pattern.len())
                .position(|w| w == pattern)
            {
                return Ok(from + i + pattern.len());
            }
            self.read_more()?;
        }
    }

    fn read_more(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 64 * 1024];
        match self.stream.read(&mut chunk)? {
            0 => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            )),
            n => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
        }
    }
}

/// Connects and GETs `path` until a 200 comes back (or `timeout`).
pub fn wait_http_ok(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Client, String> {
    let until = Instant::now() + timeout;
    loop {
        if let Ok(mut c) = Client::connect(addr) {
            if matches!(c.get(path), Ok((200, _))) {
                return Ok(c);
            }
        }
        if Instant::now() > until {
            return Err(format!(
                "no 200 from http://{addr}{path} within {timeout:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of an unlabelled sample in an exposition.
pub fn sample(body: &[u8], name: &str) -> Option<f64> {
    let text = std::str::from_utf8(body).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}
