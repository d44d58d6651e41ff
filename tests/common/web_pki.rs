//! Certificates for the HTTP listener's TLS tests, made with the `openssl` command in a temp
//! dir: a CA, a server certificate for `localhost` and `127.0.0.1` signed by it, a client
//! certificate signed by it, and a second, unrelated CA with its own client certificate (the
//! "wrong" one). Nothing is reused between runs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct WebPki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub other_ca: PathBuf,
    /// Signed by `other_ca`: a server requiring `ca` must refuse it.
    pub other_client_cert: PathBuf,
    pub other_client_key: PathBuf,
    /// A server certificate for the same names signed by `other_ca` (for reload tests).
    pub other_server_cert: PathBuf,
    pub other_server_key: PathBuf,
}

const CNF: &str = "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\n\
    [ca]\nbasicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\n\
    subjectKeyIdentifier = hash\n\
    [server]\nbasicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n\
    extendedKeyUsage = serverAuth\nsubjectAltName = DNS:localhost, IP:127.0.0.1\n\
    subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n\
    [client]\nbasicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n\
    extendedKeyUsage = clientAuth\n\
    subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n";

const EC: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ca(dir: &Path, name: &str) {
    let (key, pem, subj) = (
        format!("{name}.key"),
        format!("{name}.pem"),
        format!("/CN={name} test CA"),
    );
    let mut args = vec![
        "req",
        "-x509",
        "-config",
        "openssl.cnf",
        "-extensions",
        "ca",
    ];
    args.extend_from_slice(&["-days", "2"]);
    args.extend_from_slice(&EC);
    args.extend_from_slice(&["-keyout", &key, "-out", &pem, "-subj", &subj]);
    openssl(&args, dir);
}

/// A leaf `name` with extensions `ext` signed by CA `ca`.
fn leaf(dir: &Path, name: &str, ca: &str, ext: &str, serial: &str) {
    let (key, csr, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
    let subj = format!("/CN={name}");
    let mut args = vec!["req", "-new", "-config", "openssl.cnf"];
    args.extend_from_slice(&EC);
    args.extend_from_slice(&["-keyout", &key, "-out", &csr, "-subj", &subj]);
    openssl(&args, dir);
    let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
    openssl(
        &[
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-set_serial",
            serial,
            "-extfile",
            "openssl.cnf",
            "-extensions",
            ext,
            "-out",
            &pem,
        ],
        dir,
    );
}

impl WebPki {
    pub fn make(name: &str) -> WebPki {
        let dir = std::env::temp_dir().join(format!(
            "sigma-agent-lite-web-pki-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("openssl.cnf"), CNF).unwrap();
        ca(&dir, "ca");
        ca(&dir, "other-ca");
        leaf(&dir, "server", "ca", "server", "2");
        leaf(&dir, "client", "ca", "client", "3");
        leaf(&dir, "other-client", "other-ca", "client", "4");
        leaf(&dir, "other-server", "other-ca", "server", "5");
        let p = |f: &str| dir.join(f);
        WebPki {
            ca: p("ca.pem"),
            server_cert: p("server.pem"),
            server_key: p("server.key"),
            client_cert: p("client.pem"),
            client_key: p("client.key"),
            other_ca: p("other-ca.pem"),
            other_client_cert: p("other-client.pem"),
            other_client_key: p("other-client.key"),
            other_server_cert: p("other-server.pem"),
            other_server_key: p("other-server.key"),
            dir,
        }
    }

    pub fn path(p: &Path) -> &str {
        p.to_str().unwrap()
    }
}

impl Drop for WebPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
