//! Certificates made by the test with the `openssl` command, and a throwaway PostgreSQL
//! (tests/common/pg.rs) switched to `ssl = on` with them: a test CA, a server certificate for
//! `localhost` (DNS name only, no IP address) signed by it, and an unrelated CA. Nothing is
//! reused between runs; everything lives in the server's temp dir and goes with it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use super::pg::PgServer;

/// The files of one test PKI.
pub struct Pki {
    pub dir: PathBuf,
    /// The CA that signed the server certificate (PEM).
    pub ca: PathBuf,
    /// A CA that signed nothing here (PEM).
    pub other_ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

/// A minimal openssl config: `req` reads its extensions from here, nothing from the
/// system's openssl.cnf.
const CNF: &str = "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\n\
    [ca]\nbasicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\n\
    subjectKeyIdentifier = hash\n\
    [server]\nbasicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n\
    extendedKeyUsage = serverAuth\nsubjectAltName = DNS:localhost\n\
    subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n";

impl Pki {
    /// Makes the CAs and the server certificate in `dir` (created).
    pub fn make(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let cnf = dir.join("openssl.cnf");
        std::fs::write(&cnf, CNF).unwrap();
        let p = |name: &str| dir.join(name);
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for (name, cn) in [("ca", "sigma test CA"), ("other-ca", "unrelated test CA")] {
            openssl(
                Command::new("openssl")
                    .args(["req", "-x509", "-config"])
                    .arg(&cnf)
                    .args(["-extensions", "ca", "-days", "2"])
                    .args(ec)
                    .arg("-keyout")
                    .arg(p(&format!("{name}.key")))
                    .arg("-out")
                    .arg(p(&format!("{name}.pem")))
                    .args(["-subj", &format!("/CN={cn}")]),
            );
        }
        openssl(
            Command::new("openssl")
                .args(["req", "-new", "-config"])
                .arg(&cnf)
                .args(ec)
                .arg("-keyout")
                .arg(p("server.key"))
                .arg("-out")
                .arg(p("server.csr"))
                .args(["-subj", "/CN=localhost"]),
        );
        openssl(
            Command::new("openssl")
                .args(["x509", "-req", "-days", "2", "-in"])
                .arg(p("server.csr"))
                .arg("-CA")
                .arg(p("ca.pem"))
                .arg("-CAkey")
                .arg(p("ca.key"))
                .args(["-set_serial", "2", "-extfile"])
                .arg(&cnf)
                .args(["-extensions", "server", "-out"])
                .arg(p("server.crt")),
        );
        Pki {
            dir: dir.to_owned(),
            ca: p("ca.pem"),
            other_ca: p("other-ca.pem"),
            server_cert: p("server.crt"),
            server_key: p("server.key"),
        }
    }
}

fn openssl(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (the tests need the openssl command)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A server with TLS on, and its PKI.
pub struct TlsServer {
    pub pg: PgServer,
    pub pki: Pki,
}

impl TlsServer {
    /// A fresh cluster, then `ssl = on` with the test's certificate (ALTER SYSTEM and a
    /// reload: no restart).
    pub fn start() -> TlsServer {
        let pg = PgServer::start();
        let pki = Pki::make(&pg.dir.join("tls"));
        // The server refuses a key readable by others, and must be able to read it as itself.
        // SAFETY: geteuid(2) has no preconditions and cannot fail.
        let is_root = unsafe { libc::geteuid() == 0 };
        if is_root {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&pki.dir)
                .status()
                .unwrap();
            assert!(ok.success());
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pki.server_key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut su = pg.superuser("postgres");
        // One statement at a time: ALTER SYSTEM refuses to run in a (implicit) transaction.
        for sql in [
            format!(
                "ALTER SYSTEM SET ssl_cert_file = '{}'",
                pki.server_cert.display()
            ),
            format!(
                "ALTER SYSTEM SET ssl_key_file = '{}'",
                pki.server_key.display()
            ),
            "ALTER SYSTEM SET ssl = on".into(),
            "SELECT pg_reload_conf()".into(),
        ] {
            su.batch_execute(&sql).unwrap();
        }
        super::wait_until(super::pg::START_TIMEOUT, "the server has TLS on", || {
            su.query_one("SHOW ssl", &[])
                .ok()
                .filter(|r| r.get::<_, String>(0) == "on")
                .map(drop)
        });
        TlsServer { pg, pki }
    }

    /// The agent's URL with `host` (`localhost` or `127.0.0.1`) and extra query parameters.
    pub fn url(&self, host: &str, params: &str) -> String {
        format!(
            "postgres://{}:{}@{host}:{}/{}?{params}",
            super::pg::AGENT,
            super::pg::AGENT_PASSWORD,
            self.pg.port,
            super::pg::DB
        )
    }
}

/// Whether the connections named `application_name` use TLS, as the server sees them
/// (pg_stat_ssl).
pub fn uses_tls(pg: &PgServer, application_name: &str) -> Vec<bool> {
    let mut su = pg.superuser("postgres");
    su.query(
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = $1",
        &[&application_name],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}
