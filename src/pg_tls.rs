//! TLS settings of the PostgreSQL source: libpq's `sslmode` (`disable`, `prefer`, `require`,
//! `verify-ca`, `verify-full`) and `sslrootcert`, read from the database URL or key=value
//! string.
//!
//! Why it exists: tokio-postgres parses `sslmode` but knows only disable/prefer/require, and
//! rejects `sslrootcert` as an unknown option. [`split_tls_params`] takes both out of the string
//! (URL query or key=value, with libpq's quoting) before the rest goes to `Config::from_str`;
//! the TLS connector (feature `tls`) implements the verification the mode asks for.
//! Parsing is pure and needs no TLS crate, so a build without the `tls` feature still
//! understands the string and can say why `verify-full` is not available.
//!
//! Limits: no client certificates (`sslcert`/`sslkey`), CRLs (`sslcrl`), `sslmode=allow`,
//! `sslnegotiation=direct`, nor `~/.postgresql/root.crt` (an explicit `sslrootcert` only).

use std::fmt;

/// libpq's `sslmode`, all but `allow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain text only.
    Disable,
    /// TLS when the server offers it (no verification), plain text otherwise. The default.
    Prefer,
    /// TLS or fail; the certificate is not checked unless `sslrootcert` is given (then as
    /// `verify-ca`, as libpq).
    Require,
    /// TLS, and the certificate must chain to a trusted CA; any host name.
    VerifyCa,
    /// TLS, a trusted chain, and the certificate must name the host of the URL.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<SslMode, String> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => {
                return Err(
                    "sslmode=allow is not supported (use prefer, or require to insist on \
                     TLS)"
                        .into(),
                )
            }
            other => {
                return Err(format!(
                    "sslmode '{}' is not one of disable, prefer, require, verify-ca, verify-full",
                    other.escape_debug()
                ))
            }
        })
    }

    /// Whether TLS is mandatory.
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

/// Which certificates the server's chain must end in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// The operating system's trusted CAs (`sslrootcert=system`, or no `sslrootcert` with a
    /// verify mode).
    System,
    /// The PEM file of `sslrootcert=PATH`.
    File(String),
}

impl fmt::Display for Roots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Roots::System => f.write_str("the system's trusted CAs"),
            Roots::File(path) => write!(f, "sslrootcert {}", path.escape_debug()),
        }
    }
}

/// What the URL asks for, TLS-wise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    /// `sslrootcert` as given (None: not given).
    pub rootcert: Option<String>,
}

impl TlsSettings {
    /// The roots to verify against, or None when the mode verifies nothing: `require`
    /// verifies only when `sslrootcert` is given (as libpq does with a root file).
    pub fn roots(&self) -> Option<Roots> {
        let given = || match self.rootcert.as_deref() {
            None | Some("system") => Roots::System,
            Some(path) => Roots::File(path.to_owned()),
        };
        match self.mode {
            SslMode::Disable | SslMode::Prefer => None,
            SslMode::Require => self.rootcert.as_ref().map(|_| given()),
            SslMode::VerifyCa | SslMode::VerifyFull => Some(given()),
        }
    }

    /// Whether the certificate must name the host.
    pub fn checks_host_name(&self) -> bool {
        self.mode == SslMode::VerifyFull
    }
}

/// Takes `sslmode` and `sslrootcert` out of a URL (`postgres://...?sslmode=verify-full`) or a
/// key=value string (`host=h sslmode='verify-full'`), returning the rest unchanged for
/// `Config::from_str`, and the settings (the last value of a key wins, as libpq). A string
/// this cannot split is returned whole, for `Config::from_str` to report. Pure.
pub fn split_tls_params(s: &str) -> Result<(String, TlsSettings), String> {
    let mut mode = None;
    let mut rootcert = None;
    let mut take = |key: &str, value: String| -> Result<bool, String> {
        match key {
            "sslmode" => mode = Some(SslMode::parse(&value)?),
            "sslrootcert" => {
                if value.is_empty() {
                    return Err("sslrootcert is empty (give a PEM file, or system)".into());
                }
                rootcert = Some(value);
            }
            _ => return Ok(false),
        }
        Ok(true)
    };
    let rest = if let Some(after) = ["postgres://", "postgresql://"]
        .iter()
        .find_map(|p| s.strip_prefix(p))
    {
        split_url(s, after, &mut take)?
    } else {
        split_key_values(s, &mut take)?
    };
    let settings = TlsSettings {
        mode: mode.unwrap_or(SslMode::Prefer),
        rootcert,
    };
    Ok((rest, settings))
}

type Take<'a> = dyn FnMut(&str, String) -> Result<bool, String> + 'a;

/// The URL form. As tokio-postgres (and libpq), the credentials end at the first `@` and the
/// query starts at the first `?` after them; parameters are `&`-separated and percent-encoded.
fn split_url(whole: &str, after_prefix: &str, take: &mut Take) -> Result<String, String> {
    let creds_end = after_prefix.find('@').map_or(0, |i| i + 1);
    let Some(q) = after_prefix[creds_end..].find('?') else {
        return Ok(whole.to_owned());
    };
    let query_at = whole.len() - after_prefix.len() + creds_end + q;
    let (head, query) = (&whole[..query_at], &whole[query_at + 1..]);
    let mut kept = Vec::new();
    for param in query.split('&') {
        let taken = match param.split_once('=') {
            Some((key, value)) => match (percent_decode(key), percent_decode(value)) {
                (Some(key), Some(value)) => take(&key, value)?,
                _ => false,
            },
            None => false,
        };
        if !taken {
            kept.push(param);
        }
    }
    Ok(if kept.is_empty() {
        head.to_owned()
    } else {
        format!("{head}?{}", kept.join("&"))
    })
}

/// `%XX` escapes → bytes → UTF-8; None when malformed (the parameter is then left for
/// tokio-postgres to reject).
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The key=value form, libpq's grammar: `key = value` pairs separated by whitespace; a value
/// is `'quoted'` or a run of non-whitespace, `\` escaping the next character in both.
fn split_key_values(s: &str, take: &mut Take) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut kept_from = 0;
    let mut it = s.char_indices().peekable();
    let skip_ws = |it: &mut std::iter::Peekable<std::str::CharIndices>| {
        while it.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_ws(&mut it);
        let Some(&(start, _)) = it.peek() else { break };
        let mut key_end = start;
        while let Some((i, c)) = it.next_if(|(_, c)| !c.is_whitespace() && *c != '=') {
            key_end = i + c.len_utf8();
        }
        let key = &s[start..key_end];
        skip_ws(&mut it);
        if it.next_if(|(_, c)| *c == '=').is_none() || key.is_empty() {
            return Ok(s.to_owned()); // not ours to report
        }
        skip_ws(&mut it);
        let mut value = String::new();
        let quoted = it.next_if(|(_, c)| *c == '\'').is_some();
        let mut closed = !quoted;
        while let Some(&(_, c)) = it.peek() {
            if quoted && c == '\'' {
                it.next();
                closed = true;
                break;
            }
            if !quoted && c.is_whitespace() {
                break;
            }
            it.next();
            if c == '\\' {
                if let Some((_, escaped)) = it.next() {
                    value.push(escaped);
                }
            } else {
                value.push(c);
            }
        }
        if !closed || (!quoted && value.is_empty()) {
            return Ok(s.to_owned());
        }
        let end = it.peek().map_or(s.len(), |&(i, _)| i);
        if take(key, value)? {
            out.push_str(&s[kept_from..start]);
            kept_from = end;
        }
    }
    out.push_str(&s[kept_from..]);
    Ok(out)
}

/// The TLS side of a connection attempt, built once from the settings (roots loaded then), and
/// turned into a [`Connector`] for each connection.
#[cfg(feature = "tls")]
pub use connect::{Connector, TlsClient};

#[cfg(feature = "tls")]
mod connect {
    //! rustls (ring provider): certificate checks done by our verifier so that verify-ca
    //! (chain only) and require (nothing) are expressed exactly, and failures are named.
    use std::future::Future;
    use std::io;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
    use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::server::ParsedCertificate;
    use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
    use rustls::{Error as RustlsError, SignatureScheme};
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio::net::TcpStream;
    use tokio_postgres::tls::{ChannelBinding, TlsConnect};

    use super::{Roots, TlsSettings};

    /// See the module docs.
    pub struct TlsClient {
        config: Arc<ClientConfig>,
        roots: Option<Roots>,
    }

    impl TlsClient {
        /// Loads the roots the settings ask for. Errors name the file.
        pub fn new(settings: &TlsSettings) -> Result<TlsClient, String> {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let roots = settings.roots();
            let store = match &roots {
                None => None,
                Some(Roots::File(path)) => Some(load_pem_file(path)?),
                Some(Roots::System) => Some(load_system_roots()?),
            };
            let verifier = Verifier {
                roots: store.map(Arc::new),
                check_host_name: settings.checks_host_name(),
                provider: provider.clone(),
            };
            let config = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS setup: {e}"))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth();
            Ok(TlsClient {
                config: Arc::new(config),
                roots,
            })
        }

        /// A connector for one connection to `host` (the name certificates are checked for).
        pub fn connector(&self, host: &str) -> Result<Connector, String> {
            let name = ServerName::try_from(host.to_owned())
                .map_err(|_| format!("'{}' is not a valid TLS server name", host.escape_debug()))?;
            Ok(Connector {
                config: self.config.clone(),
                name,
                roots: self.roots.clone(),
            })
        }
    }

    fn load_pem_file(path: &str) -> Result<RootCertStore, String> {
        let pem = std::fs::read(path).map_err(|e| format!("sslrootcert {path}: {e}"))?;
        let mut store = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| format!("sslrootcert {path}: {e}"))?;
            store
                .add(cert)
                .map_err(|e| format!("sslrootcert {path}: {e}"))?;
        }
        if store.is_empty() {
            return Err(format!("sslrootcert {path}: no PEM certificate in it"));
        }
        Ok(store)
    }

    fn load_system_roots() -> Result<RootCertStore, String> {
        let found = rustls_native_certs::load_native_certs();
        let mut store = RootCertStore::empty();
        let (added, _) = store.add_parsable_certificates(found.certs);
        if added == 0 {
            let why = found
                .errors
                .first()
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            return Err(format!(
                "no system CA certificates found (install ca-certificates, or give sslrootcert=PATH){why}"
            ));
        }
        Ok(store)
    }

    /// The certificate checks of the mode: none (`prefer`, `require` without a root file),
    /// the chain (`verify-ca`), the chain and the host name (`verify-full`). Handshake
    /// signatures are always checked.
    #[derive(Debug)]
    struct Verifier {
        roots: Option<Arc<RootCertStore>>,
        check_host_name: bool,
        provider: Arc<CryptoProvider>,
    }

    impl ServerCertVerifier for Verifier {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, RustlsError> {
            let Some(roots) = &self.roots else {
                return Ok(ServerCertVerified::assertion());
            };
            let cert = ParsedCertificate::try_from(end_entity)?;
            verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
            if self.check_host_name {
                verify_server_name(&cert, server_name)?;
            }
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, RustlsError> {
            verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, RustlsError> {
            verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    /// One connection's TLS handshake (tokio-postgres's `TlsConnect`).
    pub struct Connector {
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
        roots: Option<Roots>,
    }

    type Handshake = Pin<Box<dyn Future<Output = Result<Stream, HandshakeError>> + Send>>;

    impl TlsConnect<TcpStream> for Connector {
        type Stream = Stream;
        type Error = HandshakeError;
        type Future = Handshake;

        fn connect(self, stream: TcpStream) -> Handshake {
            Box::pin(async move {
                let connector = tokio_rustls::TlsConnector::from(self.config);
                match connector.connect(self.name.clone(), stream).await {
                    Ok(tls) => Ok(Stream(Box::new(tls))),
                    Err(e) => Err(HandshakeError(explain(&e, &self.name, self.roots.as_ref()))),
                }
            })
        }
    }

    /// A handshake failure in words an operator can act on.
    #[derive(Debug)]
    pub struct HandshakeError(String);

    impl std::fmt::Display for HandshakeError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl std::error::Error for HandshakeError {}

    fn explain(e: &io::Error, name: &ServerName<'_>, roots: Option<&Roots>) -> String {
        let host = name.to_str();
        let roots = roots.map_or_else(String::new, |r| r.to_string());
        match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<RustlsError>())
        {
            Some(RustlsError::InvalidCertificate(CertificateError::UnknownIssuer)) => format!(
                "server certificate of '{host}' is not signed by a CA in {roots} (unknown CA; \
                 check sslrootcert)"
            ),
            Some(RustlsError::InvalidCertificate(CertificateError::NotValidForNameContext {
                presented,
                ..
            })) => {
                let names: Vec<&str> = presented.iter().map(|n| presented_name(n)).collect();
                format!(
                    "server certificate for '{}' is not valid for '{host}' (host name \
                     mismatch; sslmode=verify-full connects only to a name the certificate \
                     lists)",
                    names.join("', '")
                )
            }
            Some(RustlsError::InvalidCertificate(CertificateError::NotValidForName)) => {
                format!("server certificate is not valid for '{host}' (host name mismatch)")
            }
            Some(RustlsError::InvalidCertificate(c)) => {
                format!("server certificate of '{host}' rejected: {c:?}")
            }
            Some(other) => format!("TLS handshake with '{host}': {other}"),
            None => format!("TLS handshake with '{host}': {e}"),
        }
    }

    /// webpki's `DnsName("db1")` / `IpAddress(10.0.0.5)` → `db1` / `10.0.0.5`.
    fn presented_name(n: &str) -> &str {
        for kind in ["DnsName(\"", "IpAddress("] {
            if let Some(rest) = n.strip_prefix(kind) {
                return rest.trim_end_matches(')').trim_end_matches('"');
            }
        }
        n
    }

    /// The encrypted stream (boxed: tokio-rustls's is large and lives as long as the
    /// connection).
    pub struct Stream(Box<tokio_rustls::client::TlsStream<TcpStream>>);

    impl tokio_postgres::tls::TlsStream for Stream {
        fn channel_binding(&self) -> ChannelBinding {
            // tls-server-end-point needs the hash of the certificate's own signature
            // algorithm; without an X.509 parser we offer none (SCRAM still works, without
            // the -PLUS binding).
            ChannelBinding::none()
        }
    }

    impl AsyncRead for Stream {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut *self.0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Stream {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut *self.0).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut *self.0).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut *self.0).poll_shutdown(cx)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str) -> (String, SslMode, Option<String>) {
        let (rest, t) = split_tls_params(s).unwrap();
        (rest, t.mode, t.rootcert)
    }

    #[test]
    fn url_parameters_are_taken_out() {
        assert_eq!(
            split("postgres://a:p@h/d"),
            ("postgres://a:p@h/d".into(), SslMode::Prefer, None)
        );
        assert_eq!(
            split("postgres://a:p@h/d?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem"),
            (
                "postgres://a:p@h/d".into(),
                SslMode::VerifyFull,
                Some("/etc/ca.pem".into())
            )
        );
        assert_eq!(
            split("postgresql://a@h:5/d?application_name=x&sslmode=require&connect_timeout=3"),
            (
                "postgresql://a@h:5/d?application_name=x&connect_timeout=3".into(),
                SslMode::Require,
                None
            )
        );
        // A '?' in the password is part of the credentials, as tokio-postgres reads them.
        assert_eq!(
            split("postgres://a:p?w@h?sslmode=disable&sslmode=verify-ca"),
            ("postgres://a:p?w@h".into(), SslMode::VerifyCa, None)
        );
        assert_eq!(
            split("postgres://h?sslrootcert=system"),
            (
                "postgres://h".into(),
                SslMode::Prefer,
                Some("system".into())
            )
        );
    }

    #[test]
    fn key_value_parameters_are_taken_out() {
        assert_eq!(
            split("host=h user=a sslmode=verify-ca dbname=d"),
            ("host=h user=a  dbname=d".into(), SslMode::VerifyCa, None)
        );
        assert_eq!(
            split("sslrootcert = '/etc/my ca\\'s.pem' password='x y' sslmode='verify-full'"),
            (
                " password='x y' ".into(),
                SslMode::VerifyFull,
                Some("/etc/my ca's.pem".into())
            )
        );
        assert_eq!(
            split("host=h sslrootcert=a\\ b"),
            ("host=h ".into(), SslMode::Prefer, Some("a b".into()))
        );
        // Malformed: left whole for tokio-postgres's own error.
        assert_eq!(split("nonsense = = =").0, "nonsense = = =");
        assert_eq!(
            split("host='h sslmode=require").0,
            "host='h sslmode=require"
        );
    }

    #[test]
    fn bad_values_are_named() {
        for (s, want) in [
            ("postgres://h?sslmode=verify_full", "sslmode 'verify_full'"),
            ("host=h sslmode=allow", "sslmode=allow"),
            ("host=h sslrootcert=''", "sslrootcert is empty"),
        ] {
            let e = split_tls_params(s).unwrap_err();
            assert!(e.contains(want), "{s}: {e}");
        }
    }

    #[test]
    fn roots_follow_the_mode() {
        let t = |mode, rootcert: Option<&str>| TlsSettings {
            mode,
            rootcert: rootcert.map(str::to_owned),
        };
        assert_eq!(t(SslMode::Prefer, Some("/ca")).roots(), None);
        assert_eq!(t(SslMode::Require, None).roots(), None);
        assert_eq!(
            t(SslMode::Require, Some("/ca")).roots(),
            Some(Roots::File("/ca".into()))
        );
        assert_eq!(t(SslMode::VerifyCa, None).roots(), Some(Roots::System));
        assert_eq!(
            t(SslMode::VerifyFull, Some("system")).roots(),
            Some(Roots::System)
        );
        assert!(t(SslMode::VerifyFull, None).checks_host_name());
        assert!(!t(SslMode::VerifyCa, None).checks_host_name());
    }
}
