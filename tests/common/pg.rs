//! Throwaway PostgreSQL (and PgBouncer) servers for the integration tests: real servers, no
//! mocks. `PgServer::start()` runs `initdb` in a temp dir and a `postgres` on a free 127.0.0.1
//! port (unix socket in the temp dir), creates the owner role `sigma_owner` (with a password;
//! fixtures write as it) and the least-privilege agent role `sigma_agent` (SELECT on the three
//! tables, nothing else), and loads `tests/fixtures/schema.sql` into database `sigma`.
//! `PgBouncer::start(&server)` puts pgbouncer in transaction pooling mode in front of it.
//! Both stop and clean up on Drop.
//!
//! CI runs as root; initdb, postgres and pgbouncer all refuse root, so as root everything runs
//! as the `postgres` OS user (`runuser -u postgres --`) in a directory chowned to it. As any
//! other user they run as that user. Binaries: the newest `/usr/lib/postgresql/*/bin` (Debian's
//! `postgresql` package), or `$PG_BIN`; `pgbouncer` from `$PATH`/`/usr/sbin`. No systemd or
//! Debian cluster is used. Only loopback addresses are ever listened on or connected to.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

pub const DB: &str = "sigma";
pub const OWNER: &str = "sigma_owner";
pub const OWNER_PASSWORD: &str = "owner-Pw-0b1d4e";
pub const AGENT: &str = "sigma_agent";
pub const AGENT_PASSWORD: &str = "agent-Pw-7f3c9a";
/// How long a server may take to start or stop before the test fails.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

const SCHEMA: &str = include_str!("../fixtures/schema.sql");

/// The server in `slot` while a test holds it, else a new one from `start`: one server for the
/// tests of a test binary, stopped when the last test holding it is done.
pub fn shared<T>(slot: &Mutex<Weak<T>>, start: impl FnOnce() -> T) -> Arc<T> {
    let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(server) = slot.upgrade() {
        return server;
    }
    let server = Arc::new(start());
    *slot = Arc::downgrade(&server);
    server
}

/// The agent's arguments to read its routes from `url` as `hostname` and probe them every
/// `interval`; append more before `Agent::start`.
pub fn agent_args<'a>(url: &'a str, hostname: &'a str, interval: &'a str) -> Vec<&'a str> {
    vec![
        "--health-probe",
        "--health-probe-interval",
        interval,
        "--database-url",
        url,
        "--hostname",
        hostname,
    ]
}

/// The metrics series of a route to a backend on 127.0.0.1:`port`.
pub fn reachable(node: &str, route: &str, listen_port: u16, port: u16) -> String {
    format!(
        "sigma_backend_reachable{{node=\"{node}\",route=\"{route}\",listen_port=\"{listen_port}\",backend=\"127.0.0.1:{port}\"}}"
    )
}

/// One PostgreSQL cluster in a temp dir.
pub struct PgServer {
    pub dir: PathBuf,
    bin: PathBuf,
    pub port: u16,
}

impl PgServer {
    /// A cluster shared by the tests of one test binary that only add rows (each test uses its
    /// own hostnames). It stops when the last test holding it is done.
    pub fn shared() -> Arc<PgServer> {
        static SHARED: Mutex<Weak<PgServer>> = Mutex::new(Weak::new());
        shared(&SHARED, PgServer::start)
    }

    /// A cluster of one's own (for tests that stop it).
    pub fn start() -> PgServer {
        let bin = pg_bin();
        let dir = temp_dir("pg");
        std::fs::create_dir_all(dir.join("sock")).unwrap();
        give_to_server_user(&dir);
        let data = dir.join("data");
        run(server_cmd(&bin.join("initdb")).args([
            "-D",
            path_str(&data),
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-sync",
            "--no-instructions",
            "-E",
            "UTF8",
            "--locale=C",
        ]));
        let server = PgServer {
            dir,
            bin,
            port: free_port(),
        };
        server.start_again();
        server.setup();
        server
    }

    /// Starts the (stopped) server again on the same port and data.
    pub fn start_again(&self) {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
             -c shared_buffers=16MB -c max_connections=40 -c log_min_messages=warning",
            self.port,
            path_str(&self.dir.join("sock"))
        );
        run(server_cmd(&self.bin.join("pg_ctl")).args([
            "start",
            "-w",
            "-t",
            "30",
            "-D",
            path_str(&self.dir.join("data")),
            "-l",
            path_str(&self.dir.join("postgres.log")),
            "-o",
            &options,
        ]));
    }

    /// Stops the server (fast shutdown: clients are disconnected at once).
    pub fn stop(&self) {
        run(server_cmd(&self.bin.join("pg_ctl")).args([
            "stop",
            "-w",
            "-m",
            "fast",
            "-D",
            path_str(&self.dir.join("data")),
        ]));
    }

    fn setup(&self) {
        let mut su = self.superuser("postgres");
        su.batch_execute(&format!(
            "CREATE ROLE {OWNER} LOGIN PASSWORD '{OWNER_PASSWORD}';
             CREATE ROLE {AGENT} LOGIN PASSWORD '{AGENT_PASSWORD}';"
        ))
        .unwrap();
        drop(su);
        self.create_database(DB);
    }

    /// Creates database `name` owned by `sigma_owner` with the schema, and grants the agent
    /// role SELECT on the three tables (and nothing else).
    pub fn create_database(&self, name: &str) {
        let mut su = self.superuser("postgres");
        su.batch_execute(&format!("CREATE DATABASE {name} OWNER {OWNER}"))
            .unwrap();
        let mut owner = self.owner(name);
        owner.batch_execute(SCHEMA).unwrap();
        owner
            .batch_execute(&format!(
                "GRANT SELECT ON vps, envoy_nodes, envoy_routes TO {AGENT}"
            ))
            .unwrap();
    }

    /// The superuser, over the unix socket (trust).
    pub fn superuser(&self, db: &str) -> postgres::Client {
        postgres::Config::new()
            .host_path(self.dir.join("sock"))
            .port(self.port)
            .user("postgres")
            .dbname(db)
            .connect(postgres::NoTls)
            .unwrap()
    }

    /// The table owner, over TCP with its password (fixtures write as it).
    pub fn owner(&self, db: &str) -> postgres::Client {
        postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user(OWNER)
            .password(OWNER_PASSWORD)
            .dbname(db)
            .connect(postgres::NoTls)
            .unwrap()
    }

    /// The agent's URL for database `db`, with the password.
    pub fn agent_url(&self, db: &str) -> String {
        format!(
            "postgres://{AGENT}:{AGENT_PASSWORD}@127.0.0.1:{}/{db}",
            self.port
        )
    }

    /// The agent's URL without a password (for PGPASSWORD tests).
    pub fn agent_url_without_password(&self, db: &str) -> String {
        format!("postgres://{AGENT}@127.0.0.1:{}/{db}", self.port)
    }

    /// The agent's key=value string over the unix socket.
    pub fn agent_unix_dsn(&self, db: &str) -> String {
        format!(
            "host={} port={} user={AGENT} password={AGENT_PASSWORD} dbname={db}",
            path_str(&self.dir.join("sock")),
            self.port
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }

    /// The postmaster's pid and its children's (backends and helpers), to stop the server
    /// whole.
    pub fn pids(&self) -> Vec<i32> {
        let pidfile = std::fs::read_to_string(self.dir.join("data/postmaster.pid")).unwrap();
        let postmaster: i32 = pidfile.lines().next().unwrap().trim().parse().unwrap();
        let mut pids = vec![postmaster];
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid ...: the comm may hold spaces, so read after the last ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            if ppid == Some(postmaster) {
                pids.push(pid);
            }
        }
        pids
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = server_cmd(&self.bin.join("pg_ctl"))
            .args([
                "stop",
                "-w",
                "-m",
                "immediate",
                "-D",
                path_str(&self.dir.join("data")),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// PgBouncer in transaction pooling mode in front of a `PgServer`, one server connection per
/// pool so that clients really share it.
pub struct PgBouncer {
    child: Child,
    dir: PathBuf,
    pub port: u16,
}

impl PgBouncer {
    pub fn start(server: &PgServer) -> PgBouncer {
        let dir = temp_dir("pgbouncer");
        let port = free_port();
        std::fs::write(
            dir.join("userlist.txt"),
            format!("\"{AGENT}\" \"{AGENT_PASSWORD}\"\n\"{OWNER}\" \"{OWNER_PASSWORD}\"\n"),
        )
        .unwrap();
        std::fs::write(
            dir.join("pgbouncer.ini"),
            format!(
                "[databases]\n\
                 * = host=127.0.0.1 port={pg}\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 auth_type = scram-sha-256\n\
                 auth_file = {dir}/userlist.txt\n\
                 pool_mode = transaction\n\
                 default_pool_size = 1\n\
                 max_client_conn = 20\n\
                 logfile = {dir}/pgbouncer.log\n\
                 pidfile = {dir}/pgbouncer.pid\n",
                pg = server.port,
                dir = path_str(&dir),
            ),
        )
        .unwrap();
        give_to_server_user(&dir);
        let child = server_cmd(Path::new(&pgbouncer_bin()))
            .arg(dir.join("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pgbouncer");
        let bouncer = PgBouncer { child, dir, port };
        super::wait_until(START_TIMEOUT, "pgbouncer accepts connections", || {
            TcpStream::connect(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
                .ok()
                .map(drop)
        });
        bouncer
    }

    pub fn agent_url(&self, db: &str) -> String {
        format!(
            "postgres://{AGENT}:{AGENT_PASSWORD}@127.0.0.1:{}/{db}",
            self.port
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        // The child may be runuser; signal pgbouncer itself, by its pidfile.
        if let Some(pid) = std::fs::read_to_string(self.dir.join("pgbouncer.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            // SAFETY: kill(2) takes no pointer; the pid is the PgBouncer this fixture started.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A command run as the server's OS user (`postgres` when we are root).
fn server_cmd(program: &Path) -> Command {
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

fn give_to_server_user(dir: &Path) {
    if is_root() {
        run(Command::new("chown").args(["-R", "postgres:postgres", path_str(dir)]));
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The newest Debian PostgreSQL bin dir, or `$PG_BIN`.
fn pg_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).expect(
        "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin (or $PG_BIN): \
         apt-get install -y postgresql pgbouncer",
    )
}

fn pgbouncer_bin() -> String {
    for p in ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    "pgbouncer".into()
}

fn temp_dir(what: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sigma-{what}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A loopback port free right now (the server binds it a moment later).
pub fn free_port() -> u16 {
    TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// Fixture rows, written as the table owner. Ids are returned as text.
pub mod rows {
    use std::net::TcpListener;

    use postgres::Client;

    pub fn vps(db: &mut Client, hostname: &str, status: Option<&str>) -> String {
        db.query_one(
            "INSERT INTO vps (id, hostname, status, ip_addresses, extra) \
             VALUES (gen_random_uuid(), $1, $2, ARRAY['127.0.2.10'::inet], '{}') RETURNING id::text",
            &[&hostname, &status],
        )
        .unwrap()
        .get(0)
    }

    pub fn node(db: &mut Client, vps_id: &str, node_id: &str, status: &str) -> String {
        db.query_one(
            "INSERT INTO envoy_nodes (id, vps_id, node_id, admin_port, description, config_version, status) \
             VALUES (gen_random_uuid(), ($1::text)::uuid, $2, 9901, 'test node', 1, $3) RETURNING id::text",
            &[&vps_id, &node_id, &status],
        )
        .unwrap()
        .get(0)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn route(
        db: &mut Client,
        node: &str,
        name: &str,
        listen_port: i32,
        host: Option<&str>,
        port: Option<i32>,
        status: &str,
    ) -> String {
        db.query_one(
            "INSERT INTO envoy_routes (id, envoy_node_id, name, listen_port, backend_host, backend_port, \
               cluster_type, connect_timeout_secs, proxy_protocol, status, source) \
             VALUES (gen_random_uuid(), ($1::text)::uuid, $2, $3, $4, $5, 'logical_dns', 5, 0, $6, 'dynamic') \
             RETURNING id::text",
            &[&node, &name, &listen_port, &host, &port, &status],
        )
        .unwrap()
        .get(0)
    }

    /// An active route: name, listen port, backend host, backend port.
    pub type Active<'a> = (&'a str, i32, &'a str, i32);

    /// An active VPS `hostname` with one active node `node_id` and these active routes: the
    /// fixture most tests start from. Returns the node's id, to add or change routes later.
    pub fn active(db: &mut Client, hostname: &str, node_id: &str, routes: &[Active]) -> String {
        let vps = vps(db, hostname, Some("active"));
        let node = node(db, &vps, node_id, "active");
        for &r in routes {
            active_route(db, &node, r);
        }
        node
    }

    /// An active VPS `hostname` whose one route, `node_id`/`name` on listen port 10001, leads
    /// to a new loopback listener. Returns the listener: keep it alive, probes of it succeed.
    pub fn listening(db: &mut Client, hostname: &str, node_id: &str, name: &str) -> TcpListener {
        let open = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = open.local_addr().unwrap().port();
        active(
            db,
            hostname,
            node_id,
            &[(name, 10001, "127.0.0.1", i32::from(port))],
        );
        open
    }

    /// One more active route on `node`. Returns its id.
    pub fn active_route(
        db: &mut Client,
        node: &str,
        (name, listen_port, host, port): Active,
    ) -> String {
        route(
            db,
            node,
            name,
            listen_port,
            Some(host),
            Some(port),
            "active",
        )
    }
}

/// Threads of this process now.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// Runs `work` while a sampler thread records the most threads this process had, then asserts
/// that `work` started none, during or after, and prints the counts. For a test alone in its
/// test binary, so that no other test's threads are counted.
pub fn assert_starts_no_thread(what: &str, work: impl FnOnce()) {
    let before = threads();
    let stop = Arc::new(AtomicBool::new(false));
    let most = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (stop, most) = (stop.clone(), most.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                most.fetch_max(threads(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    work();
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let during = most.load(Ordering::Relaxed) - 1; // less the sampler
    let after = threads();
    println!(
        "threads: before {before}, most during {what} {during} (sampler excluded), after {after}"
    );
    assert_eq!(during, before);
    assert_eq!(after, before);
}

/// A `PgSource` driven on a poll of its own, for tests that call it directly: `fetch` runs one
/// fetch to its end, as the agent's loop would (the test waits; the agent never does). The
/// poll lives as long as the source, because an idle connection stays registered with it.
pub struct Driven {
    pub src: sigma_agent_lite::source_pg::PgSource,
    poll: mio::Poll,
    next_token: usize,
}

impl Driven {
    pub fn new(src: sigma_agent_lite::source_pg::PgSource) -> Driven {
        Driven {
            src,
            poll: mio::Poll::new().expect("a poll for the test"),
            next_token: 1,
        }
    }

    /// One fetch, started at `now`, driven until it answers.
    pub fn fetch(&mut self, now: Instant) -> sigma_agent_lite::source_pg::Fetch {
        let next = &mut self.next_token;
        let mut tokens = || {
            *next += 1;
            mio::Token(*next)
        };
        if let Some(done) = self.src.begin(now, self.poll.registry(), &mut tokens) {
            return done;
        }
        let mut events = mio::Events::with_capacity(16);
        loop {
            let timeout = self
                .src
                .next_deadline()
                .map(|d| d.saturating_duration_since(Instant::now()));
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => panic!("poll: {e}"),
            }
            let now = Instant::now();
            for event in events.iter() {
                if let Some(done) =
                    self.src
                        .on_event(event.token(), now, self.poll.registry(), &mut tokens)
                {
                    return done;
                }
            }
            if self.src.next_deadline().is_some_and(|d| d <= now) {
                if let Some(done) = self.src.on_deadline(now, self.poll.registry(), &mut tokens) {
                    return done;
                }
            }
        }
    }
}

impl Driven {
    /// After a failure: the next attempt is due within `cap` of the failure's end (full
    /// jitter), and `Backoff` is the answer until then. Returns when it is due.
    pub fn due_within(&mut self, cap: Duration) -> Instant {
        let ended = Instant::now();
        assert_eq!(self.src.backoff_cap(), Some(cap), "the backoff cap");
        let due = self
            .src
            .next_attempt()
            .expect("a failure sets the next attempt");
        assert!(due <= ended + cap, "due {:?} after the cap", due - ended);
        if let Some(before) = due.checked_sub(Duration::from_millis(1)) {
            assert_eq!(
                self.fetch(before),
                sigma_agent_lite::source_pg::Fetch::Backoff
            );
        }
        due
    }
}

impl std::ops::Deref for Driven {
    type Target = sigma_agent_lite::source_pg::PgSource;
    fn deref(&self) -> &Self::Target {
        &self.src
    }
}

impl std::ops::DerefMut for Driven {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.src
    }
}
