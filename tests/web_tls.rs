//! The HTTP listener with a bearer token and with TLS, against real clients: curl (OpenSSL)
//! and a real Prometheus (Debian's `prometheus` binary, started here on loopback with its own
//! temp config and storage, never as a service), which scrapes over TLS with a client
//! certificate, a bearer token from a file and gzip. All traffic stays on 127.0.0.1.

mod common;

use std::process::Command;

use common::*;

/// A token file in the test's temp dir.
fn token_file(name: &str, token: &str) -> TempFile {
    TempFile::new(name, &format!("{token}\n"))
}

/// Runs curl on loopback (never through a proxy); returns (exit code, body, stderr).
fn curl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--noproxy",
            "*",
            "--max-time",
            "10",
        ])
        .args(args)
        .output()
        .expect("the curl command");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bearer_token_guards_metrics_and_leaves_health_open() {
    let token = token_file("web-token", "s3cret-Token_1");
    let agent = Agent::start_with_env(&[], &[("AGENT_WEB_AUTH_TOKEN_FILE", token.path())]);
    let url = format!("http://{}/metrics", agent.http);
    let (code, body, _) = curl(&["-i", &url]);
    assert_eq!(code, 0);
    assert!(body.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{body}");
    assert!(
        body.contains("WWW-Authenticate: Bearer realm=\"sigma-agent-lite\""),
        "{body}"
    );
    let (_, body, _) = curl(&["-i", "-H", "Authorization: Bearer s3cret-Token_2", &url]);
    assert!(body.starts_with("HTTP/1.1 401 "), "{body}");
    let (_, body, _) = curl(&["-i", "-H", "Authorization: Bearer s3cret-Token_1", &url]);
    assert!(body.starts_with("HTTP/1.1 200 OK\r\n"), "{body}");
    assert!(body.contains("\nsigma_routes 0\n"), "{body}");
    for open in ["/healthz", "/-/healthy", "/-/ready"] {
        let (_, body, _) = curl(&["-i", &format!("http://{}{open}", agent.http)]);
        assert!(body.starts_with("HTTP/1.1 200 OK\r\n"), "{open}: {body}");
    }
    // The token never reaches the log.
    assert!(!agent.log().contains("s3cret"), "{}", agent.log());
}

#[test]
fn bad_security_files_stop_the_agent_with_the_file_named() {
    let empty = TempFile::new("web-empty-token", "\n");
    let out = Command::new(BIN)
        .args([
            "--metrics-listen",
            "127.0.0.1:0",
            "--web-auth-token-file",
            empty.path(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--web-auth-token-file") && err.contains("is empty"),
        "{err}"
    );

    let out = Command::new(BIN)
        .args([
            "--metrics-listen",
            "127.0.0.1:0",
            "--web-tls-cert",
            "/nonexistent/c.pem",
        ])
        .args(["--web-tls-key", "/nonexistent/k.pem"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if cfg!(feature = "tls") {
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("--web-tls-cert /nonexistent/c.pem"), "{err}");
    } else {
        // A build without TLS says so instead of serving in clear.
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("need a build with the tls feature"), "{err}");
    }
}

#[cfg(feature = "tls")]
mod tls {
    use super::*;
    use common::web_pki::WebPki;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::process::{Child, Stdio};
    use std::time::{Duration, Instant};

    fn p(path: &std::path::Path) -> &str {
        path.to_str().unwrap()
    }

    /// An agent serving TLS (and the token, and client certificates when asked).
    fn tls_agent(pki: &WebPki, token: &TempFile, mutual: bool, extra: &[&str]) -> Agent {
        let mut args = vec![
            "--web-tls-cert",
            p(&pki.server_cert),
            "--web-tls-key",
            p(&pki.server_key),
            "--web-auth-token-file",
            token.path(),
        ];
        if mutual {
            args.extend_from_slice(&["--web-client-ca", p(&pki.ca)]);
        }
        args.extend_from_slice(extra);
        Agent::start(&args)
    }

    #[test]
    fn tls_with_token_gzip_and_client_certificates() {
        let pki = WebPki::make("mtls");
        let token = token_file("web-tls-token", "tls-token-42");
        let agent = tls_agent(&pki, &token, true, &[]);
        let url = format!("https://localhost:{}/metrics", agent.http.port());
        let resolve = format!("localhost:{}:127.0.0.1", agent.http.port());
        let base = [
            "--resolve",
            &resolve,
            "--cacert",
            p(&pki.ca),
            "--cert",
            p(&pki.client_cert),
            "--key",
            p(&pki.client_key),
        ];
        // The right client certificate and the token: 200, gzip when asked.
        let mut args = base.to_vec();
        args.extend_from_slice(&[
            "-i",
            "--compressed",
            "-H",
            "Authorization: Bearer tls-token-42",
            &url,
        ]);
        let (code, body, err) = curl(&args);
        assert_eq!(code, 0, "{err}");
        assert!(body.starts_with("HTTP/1.1 200 OK\r\n"), "{body}");
        assert!(body.contains("Content-Encoding: gzip"), "{body}");
        assert!(body.contains("\nsigma_build_info{"), "{body}");
        // Without the token: 401 over TLS.
        let mut args = base.to_vec();
        args.extend_from_slice(&["-i", &url]);
        let (code, body, err) = curl(&args);
        assert_eq!(code, 0, "{err}");
        assert!(body.starts_with("HTTP/1.1 401 "), "{body}");
        // A client certificate from another CA, or none: the handshake is refused, no HTTP.
        for cert in [Some((&pki.other_client_cert, &pki.other_client_key)), None] {
            let mut args = vec!["--resolve", &resolve, "--cacert", p(&pki.ca), "-i"];
            if let Some((c, k)) = cert {
                args.extend_from_slice(&["--cert", p(c), "--key", p(k)]);
            }
            args.extend_from_slice(&["-H", "Authorization: Bearer tls-token-42", &url]);
            let (code, body, err) = curl(&args);
            assert_ne!(code, 0, "{cert:?}: {body}");
            assert!(!body.contains("HTTP/1.1"), "{body}");
            assert!(
                err.contains("alert") || err.contains("SSL") || err.contains("reset"),
                "{err}"
            );
        }
        // Plain HTTP to the TLS listener gets nothing useful either.
        let r = curl(&[
            "-i",
            &format!("http://127.0.0.1:{}/metrics", agent.http.port()),
        ]);
        assert!(!r.1.contains("sigma_"), "{r:?}");
    }

    #[test]
    fn a_stalled_handshake_delays_no_other_scrape() {
        let pki = WebPki::make("stall");
        let token = token_file("web-stall-token", "stall-token");
        let agent = tls_agent(&pki, &token, false, &[]);
        // A client that sends the first bytes of a ClientHello record, then nothing.
        let mut stalled = TcpStream::connect(agent.http).unwrap();
        stalled
            .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
            .unwrap();
        let opened = Instant::now();
        let url = format!("https://127.0.0.1:{}/metrics", agent.http.port());
        for _ in 0..5 {
            let t = Instant::now();
            let (code, body, err) = curl(&[
                "--cacert",
                p(&pki.ca),
                "-H",
                "Authorization: Bearer stall-token",
                &url,
            ]);
            assert_eq!(code, 0, "{err}");
            assert!(body.contains("sigma_routes 0"), "{body}");
            // curl's own start and handshake take milliseconds; the stall is 5 s.
            assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        }
        // The stalled peer is dropped at HANDSHAKE_TIMEOUT (5 s), not held forever.
        stalled
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 64];
        let n = stalled.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "the agent answered a partial ClientHello");
        let held = opened.elapsed();
        assert!(
            held >= Duration::from_secs(4) && held < Duration::from_secs(9),
            "{held:?}"
        );
    }

    #[test]
    fn sighup_rereads_certificate_and_token() {
        let pki = WebPki::make("reload");
        let token = token_file("web-reload-token", "first-token");
        let cert = TempFile::new(
            "web-reload-cert.pem",
            &std::fs::read_to_string(&pki.server_cert).unwrap(),
        );
        let key = TempFile::new(
            "web-reload-key.pem",
            &std::fs::read_to_string(&pki.server_key).unwrap(),
        );
        let mut agent = Agent::start(&[
            "--web-tls-cert",
            cert.path(),
            "--web-tls-key",
            key.path(),
            "--web-auth-token-file",
            token.path(),
        ]);
        let url = format!("https://127.0.0.1:{}/metrics", agent.http.port());
        let scrape = |ca: &std::path::Path, tok: &str| {
            curl(&[
                "--cacert",
                p(ca),
                "-i",
                "-H",
                &format!("Authorization: Bearer {tok}"),
                &url,
            ])
        };
        assert!(scrape(&pki.ca, "first-token")
            .1
            .starts_with("HTTP/1.1 200 "));
        // New certificate (another CA) and token, then SIGHUP.
        key.replace(&std::fs::read_to_string(&pki.other_server_key).unwrap());
        cert.replace(&std::fs::read_to_string(&pki.other_server_cert).unwrap());
        token.replace("second-token\n");
        agent.signal(SIGHUP);
        let reread = "re-read the HTTP listener's TLS and token files";
        agent.wait_log(reread, Duration::from_secs(5));
        assert_ne!(scrape(&pki.ca, "second-token").0, 0, "old CA still trusted");
        assert!(scrape(&pki.other_ca, "second-token")
            .1
            .starts_with("HTTP/1.1 200 "));
        assert!(scrape(&pki.other_ca, "first-token")
            .1
            .starts_with("HTTP/1.1 401 "));
        // A broken file on the next SIGHUP keeps the working settings.
        key.replace("not a key\n");
        agent.signal(SIGHUP);
        let kept = "keeping the previous TLS and token settings";
        agent.wait_log(kept, Duration::from_secs(5));
        assert!(scrape(&pki.other_ca, "second-token")
            .1
            .starts_with("HTTP/1.1 200 "));
    }

    /// Debian's Prometheus, on loopback, with a temp config and storage dir.
    struct Prometheus {
        child: Child,
        addr: std::net::SocketAddr,
        dir: std::path::PathBuf,
    }

    impl Drop for Prometheus {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn prometheus_binary() -> String {
        std::env::var("PROMETHEUS").unwrap_or_else(|_| "prometheus".into())
    }

    impl Prometheus {
        fn start(config: &str) -> Prometheus {
            let dir = std::env::temp_dir().join(format!(
                "sigma-agent-lite-prometheus-{}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("data")).unwrap();
            std::fs::write(dir.join("prometheus.yml"), config).unwrap();
            let port = closed_port();
            let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let child = Command::new(prometheus_binary())
                .arg(format!(
                    "--config.file={}",
                    dir.join("prometheus.yml").display()
                ))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(
                    std::fs::File::create(dir.join("prometheus.log")).unwrap(),
                ))
                .spawn()
                .expect("Debian's prometheus binary (apt-get install prometheus)");
            Prometheus { child, addr, dir }
        }

        fn log(&self) -> String {
            std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
        }

        /// Runs an instant query on the HTTP API; the result vector, or None before Prometheus
        /// answers.
        fn query(&self, q: &str) -> Option<Vec<serde_json::Value>> {
            let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).ok()?;
            drop(s);
            let r = request(
                self.addr,
                &format!("GET /api/v1/query?query={q} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
            );
            if r.status != 200 {
                return None;
            }
            let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
            v["data"]["result"].as_array().cloned()
        }
    }

    #[test]
    fn prometheus_scrapes_over_tls_with_client_cert_token_and_gzip() {
        let pki = WebPki::make("prometheus");
        let token = token_file("web-prometheus-token", "prometheus-token-7");
        let routes = write_routes(
            "web-prometheus-routes",
            &[format!("n1 down 10001 127.0.0.1:{}", closed_port())],
        );
        let agent = tls_agent(
            &pki,
            &token,
            true,
            &[
                "--health-probe",
                "--health-probe-interval",
                "500ms",
                "--routes-file",
                routes.path(),
            ],
        );
        // The README's scrape config, pointed at this agent.
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: sigma-agent-lite\n    scheme: https\n\
             \x20   tls_config:\n      ca_file: {ca}\n      cert_file: {cert}\n      key_file: {key}\n      server_name: localhost\n\
             \x20   authorization:\n      credentials_file: {token}\n\
             \x20   static_configs:\n      - targets: ['127.0.0.1:{port}']\n",
            ca = p(&pki.ca),
            cert = p(&pki.client_cert),
            key = p(&pki.client_key),
            token = token.path(),
            port = agent.http.port(),
        );
        let prom = Prometheus::start(&config);
        let first = |q: &str| prom.query(q)?.first().cloned();
        let up = poll_until(Duration::from_secs(60), || {
            first("up").filter(|v| v["value"][1] == "1")
        });
        let up = up.unwrap_or_else(|| {
            let (prom, agent) = (prom.log(), agent.log());
            panic!("up never became 1\nprometheus:\n{prom}\nagent:\n{agent}")
        });
        assert_eq!(up["metric"]["job"], "sigma-agent-lite");
        let v = poll_until(Duration::from_secs(20), || first("sigma_backend_reachable"));
        let v = v.unwrap_or_else(|| panic!("no sigma_backend_reachable\n{}", prom.log()));
        assert_eq!(v["metric"]["route"], "down");
        assert_eq!(v["value"][1], "0");
        // Prometheus asked for gzip and got it.
        assert!(
            agent.log().contains("http: /metrics answered,") && agent.log().contains(" gzip\n"),
            "{}",
            agent.log()
        );
    }
}
