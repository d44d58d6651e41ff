//! TLS of the PostgreSQL source: libpq's `sslmode` (`disable`, `prefer`, `require`,
//! `verify-ca`, `verify-full`) and `sslrootcert` (parsed with the rest of the URL in
//! `pg_conninfo`), and (feature `tls`) the rustls client that implements the checks the mode
//! asks for. rustls is sans-IO: `pg_conn` pumps bytes between the socket and a
//! `rustls::ClientConnection` on the agent's one loop.
//!
//! Limits: no client certificates (`sslcert`/`sslkey`), CRLs (`sslcrl`), `sslmode=allow`,
//! `sslnegotiation=direct`, nor `~/.postgresql/root.crt` (an explicit `sslrootcert` only); no
//! SCRAM channel binding (`-PLUS`).

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
    /// libpq's spelling; errors list the accepted values.
    pub fn parse(value: &str) -> Result<SslMode, String> {
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

/// The TLS side of the source, built once from the settings (roots loaded then), and turned
/// into a `rustls::ClientConnection` for each connection.
#[cfg(feature = "tls")]
pub use connect::TlsClient;

#[cfg(feature = "tls")]
mod connect {
    //! rustls (ring provider): certificate checks done by our verifier so that verify-ca
    //! (chain only) and require (nothing) are expressed exactly, and failures are named.
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
    use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::server::ParsedCertificate;
    use rustls::{CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct};
    use rustls::{Error as RustlsError, RootCertStore, SignatureScheme};

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

        /// A new client session for one connection to `host` (the name certificates are
        /// checked for). Sans-IO: the caller moves its bytes.
        pub fn connection(&self, host: &str) -> Result<ClientConnection, String> {
            let name = ServerName::try_from(host.to_owned())
                .map_err(|_| format!("'{}' is not a valid TLS server name", host.escape_debug()))?;
            ClientConnection::new(self.config.clone(), name)
                .map_err(|e| format!("TLS setup for '{}': {e}", host.escape_debug()))
        }

        /// A handshake failure in words an operator can act on.
        pub fn explain(&self, e: &RustlsError, host: &str) -> String {
            explain(e, host, self.roots.as_ref())
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

    fn explain(e: &RustlsError, host: &str, roots: Option<&Roots>) -> String {
        let roots = roots.map_or_else(String::new, |r| r.to_string());
        match e {
            RustlsError::InvalidCertificate(CertificateError::UnknownIssuer) => format!(
                "server certificate of '{host}' is not signed by a CA in {roots} (unknown CA; \
                 check sslrootcert)"
            ),
            RustlsError::InvalidCertificate(CertificateError::NotValidForNameContext {
                presented,
                ..
            }) => {
                let names: Vec<&str> = presented.iter().map(|n| presented_name(n)).collect();
                format!(
                    "server certificate for '{}' is not valid for '{host}' (host name \
                     mismatch; sslmode=verify-full connects only to a name the certificate \
                     lists)",
                    names.join("', '")
                )
            }
            RustlsError::InvalidCertificate(CertificateError::NotValidForName) => {
                format!("server certificate is not valid for '{host}' (host name mismatch)")
            }
            RustlsError::InvalidCertificate(c) => {
                format!("server certificate of '{host}' rejected: {c:?}")
            }
            other => format!("TLS handshake with '{host}': {other}"),
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
