//! TLS and a bearer token for the HTTP listener (`--web-tls-cert`, `--web-tls-key`,
//! `--web-client-ca`, `--web-auth-token-file`): loading the files, and the server side of a
//! TLS connection as bytes in, bytes out.
//!
//! The TLS session is rustls' `ServerConnection`, which does no I/O: [`TlsIo`] moves bytes
//! between it and the non-blocking socket, so a handshake is a few more readable/writable
//! events on the one loop, never a wait. A peer that stalls mid-handshake holds only its own
//! connection slot, until `http_conn::HANDSHAKE_TIMEOUT`.
//!
//! The files are read at start (an error stops the agent with the file named) and again on
//! SIGHUP ([`WebSecurity::load`]); a reload that fails keeps the previous settings and says why.
//! New connections use the new certificate; connections already open keep theirs.
//!
//! Without the `tls` feature only the token remains; the TLS flags are refused at start.

use std::fmt;
use std::path::PathBuf;

/// What the listener asks of its clients, as given on the command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WebSecurityConfig {
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
}

/// Longest token file read: a bearer token is tens of bytes; anything near this is not one.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// The loaded settings: the TLS server configuration and the token.
#[derive(Default)]
pub struct WebSecurity {
    #[cfg(feature = "tls")]
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// The bearer token, when one is required. Never logged.
    token: Option<Vec<u8>>,
}

impl fmt::Debug for WebSecurity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "WebSecurity {{ tls: {}, token: {} }}",
            self.tls_enabled(),
            if self.token.is_some() {
                "<set>"
            } else {
                "none"
            }
        )
    }
}

impl WebSecurity {
    /// Reads every file the config names. Errors name the flag and the file.
    pub fn load(config: &WebSecurityConfig) -> Result<WebSecurity, String> {
        let token = match &config.token_file {
            None => None,
            Some(path) => Some(read_token(path)?),
        };
        Ok(WebSecurity {
            #[cfg(feature = "tls")]
            tls: match (&config.tls_cert, &config.tls_key) {
                (Some(cert), Some(key)) => {
                    Some(tls::server_config(cert, key, config.client_ca.as_deref())?)
                }
                _ => None,
            },
            token,
        })
    }

    /// Settings with only a token (tests).
    pub fn with_token(token: &[u8]) -> WebSecurity {
        WebSecurity {
            #[cfg(feature = "tls")]
            tls: None,
            token: Some(token.to_vec()),
        }
    }

    pub fn tls_enabled(&self) -> bool {
        #[cfg(feature = "tls")]
        return self.tls.is_some();
        #[cfg(not(feature = "tls"))]
        return false;
    }

    pub fn token_required(&self) -> bool {
        self.token.is_some()
    }

    /// Whether an `Authorization` header value lets the request through: always when no
    /// token is set; else only `Bearer <token>`, compared in constant time.
    pub fn authorized(&self, authorization: Option<&[u8]>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let Some(value) = authorization else {
            return false;
        };
        // The scheme is case-insensitive (RFC 9110 §11.1); one or more spaces follow it.
        if value.len() < 7 || !value[..7].eq_ignore_ascii_case(b"bearer ") {
            return false;
        }
        let given = value[7..].trim_ascii();
        constant_time_eq(given, token)
    }
}

/// Reads a token file: the token is the content without surrounding whitespace (a trailing
/// newline is normal); it must be non-empty, at most [`MAX_TOKEN_BYTES`] and visible ASCII.
fn read_token(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let name = path.display();
    let bytes = std::fs::read(path)
        .map_err(|e| format!("cannot read --web-auth-token-file {name}: {e}"))?;
    if bytes.len() > MAX_TOKEN_BYTES {
        return Err(format!(
            "--web-auth-token-file {name} is {} bytes; a token is at most {MAX_TOKEN_BYTES}",
            bytes.len()
        ));
    }
    let token = bytes.trim_ascii();
    if token.is_empty() {
        return Err(format!("--web-auth-token-file {name} is empty"));
    }
    if !token.iter().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "--web-auth-token-file {name}: the token must be printable ASCII without spaces (it travels in an HTTP header)"
        ));
    }
    Ok(token.to_vec())
}

/// Compares in time that depends only on the lengths, not on where the bytes differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() != b.len()) as u8;
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0xff);
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(feature = "tls")]
pub use tls::TlsIo;

#[cfg(feature = "tls")]
mod tls {
    use std::io::{self, Read, Write};
    use std::path::Path;
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use rustls::server::WebPkiClientVerifier;
    use rustls::{RootCertStore, ServerConfig, ServerConnection};

    /// Builds the server configuration: TLS 1.2 and 1.3 with ring, ALPN `http/1.1`, and
    /// client certificates required (and checked against `client_ca`) when it is given.
    pub fn server_config(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> Result<Arc<ServerConfig>, String> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| format!("cannot read --web-tls-cert {}: {e}", cert.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("--web-tls-cert {}: {e}", cert.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "--web-tls-cert {}: no PEM certificate in it",
                cert.display()
            ));
        }
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| format!("--web-tls-key {}: {e}", key.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                let iter = CertificateDer::pem_file_iter(ca)
                    .map_err(|e| format!("cannot read --web-client-ca {}: {e}", ca.display()))?;
                for c in iter {
                    let c = c.map_err(|e| format!("--web-client-ca {}: {e}", ca.display()))?;
                    roots
                        .add(c)
                        .map_err(|e| format!("--web-client-ca {}: {e}", ca.display()))?;
                }
                if roots.is_empty() {
                    return Err(format!(
                        "--web-client-ca {}: no PEM certificate in it",
                        ca.display()
                    ));
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| format!("--web-client-ca {}: {e}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(certs, key).map_err(|e| {
            format!(
                "--web-tls-cert {} and --web-tls-key do not make a usable pair: {e}",
                cert.display()
            )
        })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// A TLS session over a non-blocking socket: `read` gives plaintext, `write` takes it;
    /// both move TLS records only as far as the socket lets them, never waiting.
    pub struct TlsIo {
        session: Box<ServerConnection>,
    }

    impl TlsIo {
        pub fn new(config: Arc<ServerConfig>) -> io::Result<TlsIo> {
            let session = ServerConnection::new(config).map_err(io::Error::other)?;
            Ok(TlsIo {
                session: Box::new(session),
            })
        }

        pub fn is_handshaking(&self) -> bool {
            self.session.is_handshaking()
        }

        /// Reads plaintext. `Ok(0)` is the end (close_notify or EOF); `WouldBlock` means
        /// nothing more for now. Handshake records are answered on the way.
        pub fn read(&mut self, sock: &mut impl ReadWrite, buf: &mut [u8]) -> io::Result<usize> {
            loop {
                match self.session.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    // EOF without close_notify: treat as the end, like a plain EOF.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                    Err(e) => return Err(e),
                }
                match self.session.read_tls(sock) {
                    Ok(0) => return Ok(0),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
                if let Err(e) = self.session.process_new_packets() {
                    // Send the alert (e.g. bad_certificate) before giving up, best effort.
                    let _ = self.flush(sock);
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
                // The handshake may have produced records to send.
                self.flush(sock)?;
            }
        }

        /// Takes plaintext, as much as rustls' send buffer allows, and sends what it can.
        pub fn write(&mut self, sock: &mut impl ReadWrite, buf: &[u8]) -> io::Result<usize> {
            if !self.flush(sock)? {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = self.session.writer().write(buf)?;
            self.flush(sock)?;
            if n == 0 && !buf.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        }

        /// Sends pending TLS records; Ok(true) when none is left.
        pub fn flush(&mut self, sock: &mut impl ReadWrite) -> io::Result<bool> {
            while self.session.wants_write() {
                match self.session.write_tls(sock) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(true)
        }

        /// Queues a close_notify (sent by the next flush).
        pub fn close(&mut self) {
            self.session.send_close_notify();
        }
    }

    /// What the session needs of a socket.
    pub trait ReadWrite: Read + Write {}
    impl<T: Read + Write> ReadWrite for T {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_token(t: &str) -> WebSecurity {
        WebSecurity::with_token(t.as_bytes())
    }

    #[test]
    fn bearer_token_check() {
        let open = WebSecurity::default();
        assert!(open.authorized(None));
        let w = with_token("s3cret-token");
        assert!(w.authorized(Some(b"Bearer s3cret-token")));
        assert!(w.authorized(Some(b"bearer   s3cret-token")));
        for bad in [
            &b"Bearer s3cret-tokeN"[..],
            b"Bearer s3cret-token2",
            b"Bearer s3cret",
            b"Bearer ",
            b"Basic s3cret-token",
            b"s3cret-token",
            b"",
        ] {
            assert!(!w.authorized(Some(bad)), "{}", String::from_utf8_lossy(bad));
        }
        assert!(!w.authorized(None));
        assert!(!format!("{w:?}").contains("s3cret"));
    }

    #[test]
    fn constant_time_eq_is_eq() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"\xff", b""));
    }

    #[test]
    fn token_files() {
        let dir = std::env::temp_dir().join(format!("sigma-web-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |name: &str, text: &[u8]| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            WebSecurityConfig {
                token_file: Some(p),
                ..WebSecurityConfig::default()
            }
        };
        let w = WebSecurity::load(&file("ok", b"  tok-123\n")).unwrap();
        assert!(w.authorized(Some(b"Bearer tok-123")));
        for (name, text, want) in [
            ("empty", &b"\n"[..], "is empty"),
            ("space", b"two words\n", "printable ASCII"),
            ("big", &[b'a'; MAX_TOKEN_BYTES + 1][..], "at most 4096"),
        ] {
            let e = WebSecurity::load(&file(name, text)).unwrap_err();
            assert!(e.contains(want) && e.contains(name), "{e}");
        }
        let e = WebSecurity::load(&WebSecurityConfig {
            token_file: Some(dir.join("missing")),
            ..WebSecurityConfig::default()
        })
        .unwrap_err();
        assert!(e.contains("cannot read --web-auth-token-file"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
