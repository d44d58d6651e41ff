#!/usr/bin/env python3
"""`make fleet` (through scripts/fleet.sh): hundreds of real agents against one PostgreSQL
behind a transaction-mode PgBouncer, with a PostgreSQL restart and then a PgBouncer restart in
the middle. Writes target/fleet.json, target/fleet.tsv (the time series) and, with gnuplot,
target/fleet.png.

Standard library only (no venv, no PyPI): the figures come from the agents' own /metrics, from
PgBouncer's admin console (SHOW STATS / SHOW POOLS through Debian's psql), from the connection
lines of PgBouncer's and PostgreSQL's logs (millisecond timestamps: reconnects per 100 ms), from
/proc of every process, and from pg_stat_statements.

Processes (all on loopback, all stopped at exit, also on failure or Ctrl-C; their pids are
written to WORK/pids so that fleet.sh's trap can stop them if this script itself is killed):
  - a throwaway PostgreSQL cluster (initdb in WORK/pg, 127.0.0.1 + a unix socket in WORK);
  - PgBouncer in transaction mode in front of it;
  - `fleet.py backends`: one process holding the backends' loopback listeners (accept, close);
  - `fleet.py latency`: scrapes a sample of agents one at a time, back to back, and logs each
    scrape's latency (a separate process so the fleet-wide sampler's work does not add to it);
  - N agents, each its own --hostname fleet-NNNNN and --metrics-listen 127.0.0.1:PORT.
As root the database servers run as the `postgres` OS user (they refuse root), as in
tests/common/pg.rs. Every agent and backend address is 127.0.0.1.

Phases: start everything; wait until every agent reports sigma_route_source_up 1 (at most
FLEET_UP_WAIT, 120 s); steady for FLEET_STEADY (45 s; the steady-state figures come from it);
restart PostgreSQL (pg_ctl stop -m fast, start); FLEET_AFTER (40 s) later restart PgBouncer
(SIGTERM, start); FLEET_AFTER later stop. About 3 minutes for 300 agents.

Settings (environment): FLEET_AGENTS (300), FLEET_VPS (2400 fleet VPS rows), FLEET_EQUIV_AGENTS
(10000) and FLEET_EQUIV_INTERVAL (30): the interval is chosen so that the N agents fetch like that many agents at that interval (2 % headroom, at least 100 ms),
FLEET_INTERVAL_MS (overrides that), FLEET_BACKEND_PORTS (256), FLEET_POOL_SIZE (20, PgBouncer's
default_pool_size), FLEET_LATENCY_SAMPLE (10 agents), FLEET_STRICT=1 (exit 1 when a
"must hold" check fails), FLEET_SMOKE=1 (the `make test` version: 4 agents, 2,000 VPS rows,
phases of 8 s, checks only that it all works), FLEET_NICE (-5, see NICE), FLEET_KEEP=1 (keep WORK).
"""

import asyncio
import json
import os
import platform
import re
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def env_num(name, default, kind=int):
    v = os.environ.get(name, "")
    if v == "":
        return default
    try:
        return kind(v)
    except ValueError:
        sys.exit(f"fleet: {name}={v!r} is not a number")


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Failed(Exception):
    pass


def is_root():
    return os.geteuid() == 0


def as_pg(cmd):
    return ["runuser", "-u", "postgres", "--"] + cmd if is_root() else cmd


# The fleet's processes (database, pooler, agents, listeners) run at this nice value, so that
# other work on a shared machine does not decide the figures: in production the database has
# a host of its own and every agent its VPS. Only root may lower it; 0 turns it off.
NICE = int(os.environ.get("FLEET_NICE", "-5") or 0) if is_root() else 0


def niced(cmd):
    return ["nice", "-n", str(NICE)] + cmd if NICE else cmd


def run(cmd, timeout=120, env=None, input=None):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                             input=input)
    except subprocess.TimeoutExpired:
        raise Failed(f"{' '.join(cmd[:6])}...: no answer within {timeout} s")
    if out.returncode != 0:
        raise Failed(f"{' '.join(cmd[:6])}... failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return out.stdout


def free_ports(n):
    """n distinct loopback ports free right now (held open together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for(what, ok, timeout):
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise Failed(f"timed out after {timeout} s waiting until {what}")
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# /proc


def proc_stat(pid):
    """(ppid, utime+stime, cutime+cstime) in seconds, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    fields = s[s.rfind(")") + 2:].split()
    # fields[0] is state (field 3); utime is field 14 -> index 11
    return (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK,
            (int(fields[13]) + int(fields[14])) / CLK_TCK)


def proc_mem(pid):
    """(VmRSS, VmHWM) in KiB, or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            text = f.read()
    except OSError:
        return None
    rss = re.search(r"^VmRSS:\s+(\d+)", text, re.M)
    hwm = re.search(r"^VmHWM:\s+(\d+)", text, re.M)
    if not rss or not hwm:
        return None
    return int(rss.group(1)), int(hwm.group(1))


def machine_cpu():
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return sum(v) - idle, sum(v)


def children_of(ppid):
    kids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = proc_stat(int(name))
            if st and st[0] == ppid:
                kids.append(int(name))
    return kids


def tree_cpu(pid):
    """CPU seconds of a process, its reaped children and its live children (PostgreSQL's
    postmaster reaps its backends, so their CPU lands in its cutime once they exit)."""
    st = proc_stat(pid)
    if not st:
        return None
    total = st[1] + st[2]
    for kid in children_of(pid):
        k = proc_stat(kid)
        if k:
            total += k[1]
    return total


# ---------------------------------------------------------------------------------------------
# Helper process: the backends' listeners


def backends_main(argv):
    """`fleet.py backends PORTFILE COUNT`: binds COUNT loopback listeners, writes their ports to
    PORTFILE, then accepts and closes connections until SIGTERM."""
    portfile, count = argv[0], int(argv[1])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sel = selectors.DefaultSelector()
    ports = []
    for _ in range(count):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen(4096)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        ports.append(s.getsockname()[1])
    tmp = portfile + ".tmp"
    with open(tmp, "w") as f:
        f.write(" ".join(map(str, ports)))
    os.rename(tmp, portfile)
    while True:
        for key, _ in sel.select():
            lsock = key.fileobj
            while True:
                try:
                    conn, _ = lsock.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
                conn.close()


# ---------------------------------------------------------------------------------------------
# Helper process: scrape latency of a sample of agents


def http_get(port, path, timeout):
    """One GET over a fresh connection; returns (status, body bytes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
    data = b"".join(chunks)
    head, _, body = data.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        status = 0
    return status, body


def latency_main(argv):
    """`fleet.py latency OUT PERIOD PORT...`: scrapes the agents' /metrics one at a time, one
    every PERIOD seconds, and appends `unix_time port latency_ms status` lines to OUT."""
    out, period, ports = argv[0], float(argv[1]), [int(p) for p in argv[2:]]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    i = 0
    with open(out, "a", buffering=1) as f:
        while True:
            port = ports[i % len(ports)]
            i += 1
            wall = time.time()
            t0 = time.perf_counter()
            try:
                status, _ = http_get(port, "/metrics", 10.0)
            except OSError:
                status = 0
            ms = (time.perf_counter() - t0) * 1000
            f.write(f"{wall:.3f} {port} {ms:.3f} {status}\n")
            time.sleep(max(0.0, period - (time.perf_counter() - t0)))


# ---------------------------------------------------------------------------------------------
# The fleet


def metric(body, name):
    """The value of an unlabelled series `name` in a Prometheus text body, or None."""
    key = b"\n" + name.encode() + b" "
    i = body.find(key)
    if i < 0:
        return None
    j = body.find(b"\n", i + len(key))
    try:
        return float(body[i + len(key):j if j >= 0 else None])
    except ValueError:
        return None


def pct(values, q):
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


def rnd(x, n=3):
    return None if x is None else round(x, n)


class Fleet:
    def __init__(self, binary, outdir, work, script_dir):
        self.smoke = os.environ.get("FLEET_SMOKE") == "1"
        self.binary = os.path.abspath(binary)
        self.outdir = outdir
        self.work = work
        self.script = os.path.join(script_dir, "fleet.py")
        self.schema = os.path.join(script_dir, "..", "tests", "fixtures", "schema.sql")
        s = self.smoke
        self.n = env_num("FLEET_AGENTS", 4 if s else 300)
        # Phases: wait until every agent reports its source up (at most UP_WAIT), run steady
        # for STEADY, restart PostgreSQL, AFTER later restart PgBouncer, AFTER later stop.
        self.up_wait = env_num("FLEET_UP_WAIT", 30 if s else 120, float)
        self.steady = env_num("FLEET_STEADY", 8 if s else 45, float)
        self.after = env_num("FLEET_AFTER", 8 if s else 40, float)
        self.duration = None  # measured
        self.live_up = {}
        self.sampling = True
        self.nvps = max(env_num("FLEET_VPS", 2000 if s else 2400), self.n)
        self.equiv_agents = env_num("FLEET_EQUIV_AGENTS", 10000)
        self.equiv_interval = env_num("FLEET_EQUIV_INTERVAL", 30.0, float)
        self.target_rate = self.equiv_agents / self.equiv_interval
        default_ms = max(100, int(self.n / self.target_rate / 1.02 * 1000))
        self.interval = env_num("FLEET_INTERVAL_MS", default_ms) / 1000
        self.nports = env_num("FLEET_BACKEND_PORTS", 16 if s else 256)
        self.pool_size = env_num("FLEET_POOL_SIZE", 20)
        self.lat_sample = min(self.n, env_num("FLEET_LATENCY_SAMPLE", 10))
        self.strict = os.environ.get("FLEET_STRICT") == "1"
        self.procs = []  # (name, Popen)
        self.agents = []  # dicts: host, port, proc
        self.pg_bin = os.environ.get("PG_BIN") or self._newest_pg_bin()
        self.pgb_bin = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        self.pg_dir = os.path.join(work, "pg")
        self.pgb_dir = os.path.join(work, "pgbouncer")
        self.pg_pw = {"owner": secrets.token_hex(12), "agent": secrets.token_hex(12),
                      "stats": secrets.token_hex(12)}
        self.events = []  # (unix time, name)
        self.load_at_start = [round(x, 2) for x in os.getloadavg()]
        self.samples = {"scrapes": [], "pgb": [], "cpu": []}

    @staticmethod
    def _newest_pg_bin():
        found = []
        for d in os.listdir("/usr/lib/postgresql") if os.path.isdir("/usr/lib/postgresql") else []:
            if d.isdigit() and os.path.exists(f"/usr/lib/postgresql/{d}/bin/initdb"):
                found.append((int(d), f"/usr/lib/postgresql/{d}/bin"))
        if not found:
            raise Failed("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin "
                         "(or $PG_BIN): apt-get install -y postgresql pgbouncer")
        return max(found)[1]

    def event(self, name):
        self.events.append((time.time(), name))
        log(name)

    def remember_pid(self, pid):
        with open(os.path.join(self.work, "pids"), "a") as f:
            f.write(f"{pid}\n")

    # -- PostgreSQL ----------------------------------------------------------------------------

    def pg_start(self):
        run(niced(as_pg([f"{self.pg_bin}/pg_ctl", "start", "-w", "-t", "60", "-D",
                   f"{self.pg_dir}/data", "-l", f"{self.pg_dir}/postgres.log"])), timeout=90)

    def pg_stop(self, mode="fast"):
        run(as_pg([f"{self.pg_bin}/pg_ctl", "stop", "-w", "-t", "60", "-m", mode, "-D",
                   f"{self.pg_dir}/data"]), timeout=90)

    def postmaster_pid(self):
        try:
            with open(f"{self.pg_dir}/data/postmaster.pid") as f:
                return int(f.readline())
        except (OSError, ValueError):
            return None

    def psql(self, sql, db="sigma", timeout=300):
        return run(as_pg([f"{self.pg_bin}/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-A", "-t",
                          "-h", f"{self.pg_dir}/sock", "-p", str(self.pg_port), "-U", "postgres",
                          "-d", db, "-f", "-"]), timeout=timeout, input=sql)

    def setup_pg(self):
        os.makedirs(f"{self.pg_dir}/sock")
        if is_root():
            run(["chown", "-R", "postgres:postgres", self.pg_dir])
        log(f"PostgreSQL: initdb ({self.pg_bin})")
        run(as_pg([f"{self.pg_bin}/initdb", "-D", f"{self.pg_dir}/data", "-U", "postgres",
                   "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync",
                   "--no-instructions", "-E", "UTF8", "--locale=C"]))
        self.pg_port = free_ports(1)[0]
        conf = f"""
listen_addresses = '127.0.0.1'
port = {self.pg_port}
unix_socket_directories = '{self.pg_dir}/sock'
max_connections = 100
shared_buffers = 64MB
fsync = off
synchronous_commit = off
full_page_writes = off
log_connections = on
log_line_prefix = '%m [%p] '
log_timezone = 'UTC'
log_min_messages = warning
shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.track = top
"""
        # Appended as the server's user (the file is the postgres user's).
        run(as_pg(["sh", "-c", f"cat >> '{self.pg_dir}/data/postgresql.conf'"]), input=conf)
        self.pg_start()
        pw = self.pg_pw
        self.psql(f"""
CREATE ROLE sigma_owner LOGIN PASSWORD '{pw["owner"]}';
CREATE ROLE sigma_agent LOGIN PASSWORD '{pw["agent"]}';
CREATE ROLE fleet_stats NOLOGIN PASSWORD '{pw["stats"]}';
CREATE DATABASE sigma OWNER sigma_owner;
""", db="postgres")
        with open(self.schema) as f:
            schema = f.read()
        self.psql(f"CREATE EXTENSION pg_stat_statements;\nSET ROLE sigma_owner;\n{schema}\n"
                  "GRANT SELECT ON vps, envoy_nodes, envoy_routes TO sigma_agent;\n")
        log(f"PostgreSQL {self.psql('SHOW server_version', db='postgres').strip()} "
            f"on 127.0.0.1:{self.pg_port}")

    def load_fleet(self, backend_ports):
        """The fleet's rows (see the README's "Fleet scale"): FLEET_VPS active VPSes named
        fleet-NNNNN with one active node and 10-50 active routes each, plus per node 3 disabled
        and 2 placeholder routes; every 7th host also has a retired row (re-provisioned) with its
        own node and routes; every 4th VPS row a disabled second node with routes; spare VPS rows
        (provisioning/suspended/deleted/retiring). 1 in 20 active routes points at a port nobody
        listens on (refused: "down" backends). All backends are 127.0.0.1."""
        ports = "ARRAY[" + ",".join(map(str, backend_ports)) + "]"
        n = self.nvps
        t0 = time.monotonic()
        self.psql(f"""
SET ROLE sigma_owner;
INSERT INTO vps (id, hostname, status, ip_addresses, extra)
SELECT md5('vps-' || i)::uuid, 'fleet-' || lpad(i::text, 5, '0'),
       CASE WHEN i % 50 = 0 THEN NULL ELSE 'active' END,
       ARRAY[('127.0.2.' || (i % 250 + 1))::inet], '{{"dc": "loopback"}}'
FROM generate_series(1, {n}) i;
INSERT INTO vps (id, hostname, status, ip_addresses, extra)
SELECT md5('old-vps-' || i)::uuid, 'fleet-' || lpad(i::text, 5, '0'), 'retired',
       ARRAY['127.0.3.1'::inet], '{{}}'
FROM generate_series(7, {n}, 7) i;
INSERT INTO vps (id, hostname, status, ip_addresses, extra)
SELECT md5('spare-' || i)::uuid, 'spare-' || lpad(i::text, 5, '0'),
       (ARRAY['provisioning', 'suspended', 'deleted', 'retiring'])[1 + i % 4],
       ARRAY['127.0.4.1'::inet], '{{}}'
FROM generate_series(1, {max(1, n // 5)}) i;
INSERT INTO envoy_nodes (id, vps_id, node_id, admin_port, description, config_version, status)
SELECT md5('node-' || v.id)::uuid, v.id, 'envoy-main', 9901, 'fleet node', 1, 'active' FROM vps v;
INSERT INTO envoy_nodes (id, vps_id, node_id, admin_port, description, config_version, status)
SELECT md5('node2-' || v.id)::uuid, v.id, 'envoy-old', 9902, 'drained node', 1, 'disabled'
FROM vps v WHERE abs(hashtext(v.id::text)) % 4 = 0;
INSERT INTO envoy_routes (id, envoy_node_id, name, listen_port, backend_host, backend_port,
                          cluster_type, connect_timeout_secs, proxy_protocol, status, source)
SELECT md5('route-' || n.id || '-' || j)::uuid, n.id, 'route-' || j, 10000 + j,
       CASE WHEN j > n.k + 3 THEN NULL ELSE '127.0.0.1' END,
       CASE WHEN j > n.k + 3 THEN NULL
            WHEN (n.h + j) % 20 = 0 THEN 1
            ELSE ({ports})[1 + (n.h + j) % {len(backend_ports)}] END,
       'static', 5, 0,
       CASE WHEN j <= n.k THEN 'active' WHEN j <= n.k + 3 THEN 'disabled' ELSE 'placeholder' END,
       'dynamic'
FROM (SELECT id, abs(hashtext(id::text)) AS h, 10 + abs(hashtext(id::text || 'k')) % 41 AS k
      FROM envoy_nodes) n,
     generate_series(1, n.k + 5) j;
RESET ROLE;
ANALYZE;
""")
        counts = self.psql("""
SELECT (SELECT count(*) FROM vps), (SELECT count(*) FROM envoy_nodes),
       (SELECT count(*) FROM envoy_routes),
       (SELECT count(*) FROM envoy_routes WHERE status = 'active'),
       pg_size_pretty(pg_database_size('sigma'));
""").strip().split("|")
        self.rows = {"vps": int(counts[0]), "envoy_nodes": int(counts[1]),
                     "envoy_routes": int(counts[2]), "active_routes": int(counts[3]),
                     "database_size": counts[4]}
        log(f"loaded {self.rows} in {time.monotonic() - t0:.1f} s")

    def fleet_routes(self):
        """Active routes of the agents' VPSes (what the fleet probes per cycle)."""
        out = self.psql(f"""
SELECT count(*) FROM vps v JOIN envoy_nodes n ON n.vps_id = v.id
JOIN envoy_routes r ON r.envoy_node_id = n.id
WHERE v.hostname <= 'fleet-{self.n:05d}' AND v.hostname LIKE 'fleet-%'
  AND (v.status IS NULL OR v.status NOT IN ('retired', 'deleted'))
  AND n.status = 'active' AND r.status = 'active' AND r.backend_host IS NOT NULL
""")
        return int(out.strip())

    # -- PgBouncer -----------------------------------------------------------------------------

    def setup_pgbouncer(self):
        os.makedirs(self.pgb_dir)
        self.pgb_port = free_ports(1)[0]
        # SCRAM secrets, as PostgreSQL stores them (not the passwords): PgBouncer then checks a
        # login with a few HMACs instead of deriving the key (4,096 PBKDF2 rounds) for every
        # client, which is what a reconnect storm costs its one thread; and it logs into the
        # server with the client's proof (the secrets are identical). fleet_stats is the
        # harness's admin-console role (SHOW STATS/POOLS), NOLOGIN in PostgreSQL.
        secrets_ = dict(ln.split("|", 1) for ln in self.psql(
            "SELECT rolname, rolpassword FROM pg_authid "
            "WHERE rolname IN ('sigma_agent', 'fleet_stats')", db="postgres").split("\n") if ln)
        with open(f"{self.pgb_dir}/userlist.txt", "w") as f:
            for user in ("sigma_agent", "fleet_stats"):
                f.write(f'"{user}" "{secrets_[user]}"\n')
        with open(f"{self.pgb_dir}/pgbouncer.ini", "w") as f:
            f.write(f"""[databases]
sigma = host=127.0.0.1 port={self.pg_port} dbname=sigma
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.pgb_port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {self.pgb_dir}/userlist.txt
stats_users = fleet_stats
pool_mode = transaction
default_pool_size = {self.pool_size}
max_client_conn = {self.n * 2 + 100}
; after a failed server login, retry after 1 s instead of the default 15 s (see README)
server_login_retry = 1
; a fleet reconnects at once: the default backlog (128) drops SYNs (1 s, 3 s retransmits)
listen_backlog = 4096
log_connections = 1
log_disconnections = 1
logfile = {self.pgb_dir}/pgbouncer.log
pidfile = {self.pgb_dir}/pgbouncer.pid
""")
        if is_root():
            run(["chown", "-R", "postgres:postgres", self.pgb_dir])
        self.pgb_start()
        log(f"PgBouncer ({run([self.pgb_bin, '--version']).splitlines()[0]}) on "
            f"127.0.0.1:{self.pgb_port}, transaction mode, default_pool_size {self.pool_size}")

    def pgb_pid(self):
        try:
            with open(f"{self.pgb_dir}/pgbouncer.pid") as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def pgb_start(self):
        # -d: daemonizes once listening (and writes the pidfile); TZ=UTC: log timestamps.
        run(niced(as_pg(["env", "TZ=UTC", self.pgb_bin, "-d", f"{self.pgb_dir}/pgbouncer.ini"])))
        wait_for("pgbouncer accepts connections", lambda: self.pgb_pid() and
                 port_open(self.pgb_port), 30)
        self.remember_pid(self.pgb_pid())

    def pgb_stop(self):
        pid = self.pgb_pid()
        if pid:
            try:
                os.kill(pid, signal.SIGTERM)  # immediate shutdown
            except ProcessLookupError:
                return
            wait_for("pgbouncer exits", lambda: not os.path.exists(f"/proc/{pid}"), 30)

    async def pgb_admin(self):
        """SHOW STATS and SHOW POOLS rows for database sigma: {stats: {...}, pools: {...}}."""
        env = dict(os.environ, PGPASSWORD=self.pg_pw["stats"], PGCONNECT_TIMEOUT="2")
        proc = await asyncio.create_subprocess_exec(
            f"{self.pg_bin}/psql", "-X", "-A", "-F", "\t", "-P", "footer=off", "-h", "127.0.0.1",
            "-p", str(self.pgb_port), "-U", "fleet_stats", "-d", "pgbouncer",
            "-c", "SHOW STATS", "-c", "SHOW POOLS",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=env)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 5)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            return None
        if proc.returncode != 0:
            return None
        result, header, which = {}, None, None
        for line in out.decode().splitlines():
            cols = line.split("\t")
            if cols[0] == "database":
                header = cols
                which = "stats" if "total_xact_count" in cols else "pools"
                continue
            if header and cols[0] == "sigma" and len(cols) == len(header):
                row = dict(zip(header, cols))
                if which == "pools" and row.get("user") != "sigma_agent":
                    continue
                result[which] = row
        return result

    # -- agents ----------------------------------------------------------------------------

    def start_backends(self):
        portfile = os.path.join(self.work, "backend-ports")
        p = subprocess.Popen(niced([sys.executable, self.script, "backends", portfile,
                                    str(self.nports)]), stdin=subprocess.DEVNULL)
        self.procs.append(("backends", p))
        self.remember_pid(p.pid)
        wait_for("the backend listeners are up", lambda: os.path.exists(portfile), 30)
        with open(portfile) as f:
            ports = [int(x) for x in f.read().split()]
        if port_open(1):
            raise Failed("something listens on 127.0.0.1:1 (the fleet's 'down' backend port)")
        return ports

    def start_agent(self, i, port):
        host = f"fleet-{i + 1:05d}"
        env = dict(os.environ, PGPASSWORD=self.pg_pw["agent"],
                   RUST_LOG=os.environ.get("FLEET_RUST_LOG", "warn"))
        for k in list(env):
            if k.startswith("AGENT_"):
                del env[k]
        errlog = open(os.path.join(self.work, "agents", f"{host}.log"), "ab")
        p = subprocess.Popen(
            niced([self.binary, "--health-probe", "--health-probe-interval",
                   f"{int(self.interval * 1000)}ms", "--health-probe-timeout", "1",
                   "--database-url", f"postgres://sigma_agent@127.0.0.1:{self.pgb_port}/sigma",
                   "--hostname", host, "--metrics-listen", f"127.0.0.1:{port}"]),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errlog, env=env)
        errlog.close()
        self.remember_pid(p.pid)
        return {"host": host, "port": port, "proc": p}

    def start_agents(self):
        os.makedirs(os.path.join(self.work, "agents"))
        ports = free_ports(self.n)
        t0 = time.monotonic()
        self.agents = [self.start_agent(i, ports[i]) for i in range(self.n)]
        self.spawn_seconds = time.monotonic() - t0
        self.event(f"{self.n} agents started in {self.spawn_seconds:.2f} s")

        def ready():
            for i, a in enumerate(self.agents):
                if a["proc"].poll() is not None:
                    # Its port was taken between free_ports and its bind: another one.
                    log(f"{a['host']} exited ({a['proc'].returncode}); starting it again")
                    self.agents[i] = self.start_agent(i, free_ports(1)[0])
            return all(port_open(a["port"]) for a in self.agents)

        wait_for("every agent serves /metrics", ready, 60)

    def start_latency_sampler(self):
        out = os.path.join(self.work, "latency.log")
        ports = [str(a["port"]) for a in self.agents[:self.lat_sample]]
        p = subprocess.Popen([sys.executable, self.script, "latency", out, "0.05"] + ports,
                             stdin=subprocess.DEVNULL)
        self.procs.append(("latency", p))
        self.remember_pid(p.pid)
        return out

    async def scrape(self, i, sem):
        a = self.agents[i]
        async with sem:
            t0 = time.perf_counter()
            try:
                r, w = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", a["port"]), 5)
                w.write(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                data = await asyncio.wait_for(r.read(), 5)
                w.close()
            except (OSError, asyncio.TimeoutError):
                self.samples["scrapes"].append((time.time(), i, None, None, None, None, None,
                                                None))
                self.live_up[i] = False
                return
        ms = (time.perf_counter() - t0) * 1000
        body = b"\n" + data.partition(b"\r\n\r\n")[2]
        self.live_up[i] = metric(body, "sigma_route_source_up") == 1
        if a.get("series") is None:
            a["series"] = sum(1 for ln in body.split(b"\n") if ln and not ln.startswith(b"#"))
        self.samples["scrapes"].append((
            time.time(), i, ms, metric(body, "sigma_route_source_up"),
            metric(body, "sigma_route_fetch_duration_seconds"),
            metric(body, "sigma_probe_cycles_total"),
            metric(body, "sigma_route_source_errors_total"),
            metric(body, "sigma_probe_last_cycle_end_timestamp_seconds")))

    def cpu_sample(self):
        pm = self.postmaster_pid()
        pgb = self.pgb_pid()
        agents = 0.0
        for a in self.agents:
            st = proc_stat(a["proc"].pid)
            if st:
                agents += st[1]
        helpers = sum((proc_stat(p.pid) or (0, 0, 0))[1] for _, p in self.procs)
        me = os.times()
        self.samples["cpu"].append({
            "t": time.time(), "pg": tree_cpu(pm) if pm else None, "pg_pid": pm,
            "pgbouncer": (proc_stat(pgb) or (0, None))[1] if pgb else None, "pgb_pid": pgb,
            "agents": agents, "helpers": helpers + me.user + me.system,
            "machine": machine_cpu(),
        })

    async def sample_loop(self, period):
        sem = asyncio.Semaphore(64)
        pending_scrapes = {}
        admin = None
        while self.sampling:
            tick = time.monotonic()
            for i in range(len(self.agents)):
                t = pending_scrapes.get(i)
                if t is None or t.done():
                    pending_scrapes[i] = asyncio.ensure_future(self.scrape(i, sem))
            if admin is None or admin.done():
                async def pgb():
                    wall = time.time()
                    r = await self.pgb_admin()
                    # (a sample that failed leaves a gap; the next one spans it)
                    self.samples["pgb"].append((wall, r))
                admin = asyncio.ensure_future(pgb())
            self.cpu_sample()
            await asyncio.sleep(max(0.0, period - (time.monotonic() - tick)))
        for t in list(pending_scrapes.values()) + ([admin] if admin else []):
            try:
                await asyncio.wait_for(t, 10)
            except asyncio.TimeoutError:
                pass

    async def timeline(self):
        """The phases (see __init__); the blocking steps run in a thread so the sampler runs on."""
        loop = asyncio.get_running_loop()
        deadline = time.time() + self.up_wait
        while time.time() < deadline and sum(self.live_up.values()) < self.n:
            await asyncio.sleep(0.1)
        up = sum(self.live_up.values())
        self.t_fleet_up = time.time()
        self.event(f"fleet up: {up} of {self.n} agents report sigma_route_source_up 1")
        await asyncio.sleep(self.steady)
        self.event("PostgreSQL: stop (fast)")
        await loop.run_in_executor(None, self.pg_stop)
        self.event("PostgreSQL: stopped; start")
        await loop.run_in_executor(None, self.pg_start)
        self.event("PostgreSQL: back")
        await asyncio.sleep(self.after)
        self.event("PgBouncer: stop (SIGTERM)")
        await loop.run_in_executor(None, self.pgb_stop)
        self.event("PgBouncer: stopped; start")
        await loop.run_in_executor(None, self.pgb_start)
        self.event("PgBouncer: back")
        await asyncio.sleep(self.after)

    async def run_phase(self):
        self.t0 = time.time()
        sampler = asyncio.ensure_future(self.sample_loop(1.0 if not self.smoke else 0.5))
        try:
            await self.timeline()
        finally:
            self.sampling = False
            self.duration = time.time() - self.t0
            await sampler

    # -- after the run -------------------------------------------------------------------

    def captured_query(self):
        """The agent's routes query as the server ran it, with its parameters: statement
        logging is switched on for a moment (ALTER SYSTEM + reload) and the log read."""
        log_path = f"{self.pg_dir}/postgres.log"
        start = os.path.getsize(log_path)
        self.psql("ALTER SYSTEM SET log_min_duration_statement = 0; SELECT pg_reload_conf();",
                  db="postgres")
        time.sleep(max(1.0, 3 * self.interval))
        self.psql("ALTER SYSTEM RESET log_min_duration_statement; SELECT pg_reload_conf();",
                  db="postgres")
        with open(log_path, errors="replace") as f:
            f.seek(start)
            lines = f.read().split("\n")
        for k, ln in enumerate(lines):
            m = re.search(r"(?:execute [^:]*|statement): (SELECT .*envoy_routes.*)$", ln)
            if not m:
                continue
            params = []
            if k + 1 < len(lines) and "DETAIL:  parameters:" in lines[k + 1]:
                params = re.findall(r"\$\d+ = ('(?:[^']|'')*'|NULL)",
                                    lines[k + 1].split("parameters:", 1)[1])
            return m.group(1), params
        raise Failed("the agents' routes query did not show up in the server log")

    def explain(self):
        """EXPLAIN (ANALYZE, BUFFERS) of the agent's own routes query (captured from the server
        log, with the parameters one agent sent), and pg_stat_statements' view of the fleet's
        statements."""
        query, params = self.captured_query()
        stmts = []
        for ln in self.psql("SELECT calls, round(mean_exec_time::numeric, 4), "
                            "round(total_exec_time::numeric, 1), left(regexp_replace(query, "
                            "'\\s+', ' ', 'g'), 90) FROM pg_stat_statements "
                            "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = 'sigma') "
                            "ORDER BY calls DESC LIMIT 8").split("\n"):
            if ln.strip():
                c, m, t, q = ln.split("|", 3)
                stmts.append({"calls": int(c), "mean_ms": float(m), "total_ms": float(t),
                              "query": q})
        args = f"({', '.join(params)})" if params else ""
        plan = self.psql(f"PREPARE fleet_routes AS {query};\n"
                         f"EXPLAIN (ANALYZE, BUFFERS) EXECUTE fleet_routes{args};")
        plan_lines = [ln for ln in plan.split("\n") if ln.strip()]
        seq = [ln.strip() for ln in plan_lines if "Seq Scan" in ln]
        idx = sorted({m for ln in plan_lines for m in re.findall(r"using (\w+)", ln)})
        return {"query": query, "parameters": params, "plan": plan_lines, "indexes": idx,
                "seq_scans": seq, "statements": stmts}

    @staticmethod
    def log_times(path, pattern):
        """Unix times of the lines of a PostgreSQL/PgBouncer log (UTC ms timestamps) that
        contain `pattern`."""
        times = []
        try:
            f = open(path, errors="replace")
        except OSError:
            return times
        with f:
            for line in f:
                if pattern in line:
                    try:
                        ts = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f")
                    except ValueError:
                        continue
                    times.append(ts.replace(tzinfo=timezone.utc).timestamp())
        return times

    def analyse(self, latency_log):
        t0, d, iv = self.t0, self.duration, self.interval
        ev = {name: t for t, name in self.events}
        pg_back = ev["PostgreSQL: back"]
        pg_stop = ev["PostgreSQL: stop (fast)"]
        pgb_back = ev["PgBouncer: back"]
        pgb_stop = ev["PgBouncer: stop (SIGTERM)"]
        # Steady: from two intervals (at least 2 s) after every agent was up, to the restart.
        steady = (self.t_fleet_up + max(2.0, 2 * iv), pg_stop)
        end = t0 + d
        nb = int(d) + 1

        # Fetches/s from PgBouncer's transaction counter (a fetch is one transaction).
        pgb = [(t, r["stats"]) for t, r in self.samples["pgb"] if r and "stats" in r]
        fetch_rate = [None] * nb
        steady_xacts = steady_secs = 0.0
        xact_us = []
        for (ta, a), (tb, b) in zip(pgb, pgb[1:]):
            dx = int(b["total_xact_count"]) - int(a["total_xact_count"])
            if dx < 0:  # PgBouncer restarted: its counters start again
                continue
            rate = dx / (tb - ta)
            for k in range(int(ta - t0) + 1, int(tb - t0) + 1):
                if 0 <= k < nb:
                    fetch_rate[k] = rate
            if ta >= steady[0] and tb <= steady[1]:
                steady_xacts += dx
                steady_secs += tb - ta
                dt_us = int(b["total_xact_time"]) - int(a["total_xact_time"])
                if dx:
                    xact_us.append(dt_us / dx)
        steady_rate = steady_xacts / steady_secs if steady_secs else None
        pools = [r["pools"] for t, r in self.samples["pgb"] if r and "pools" in r]

        def sv(p):
            return sum(int(p.get(k, 0)) for k in
                       ("sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login"))
        sv_all = [sv(p) for p in pools]
        sv_active = [int(p.get("sv_active", 0)) for p in pools]
        cl_waiting = [int(p.get("cl_waiting", 0)) for p in pools]

        # Fetch durations: an agent's gauge, when its cycle counter moved since its last scrape.
        last = {}
        fetch_all, fetch_steady = [], []
        p99_series = [[] for _ in range(nb)]
        up_state = {}
        up_series = [None] * nb
        scrapes = sorted((s for s in self.samples["scrapes"]), key=lambda s: s[0])
        j = 0
        for k in range(nb):
            bin_end = t0 + k + 1
            while j < len(scrapes) and scrapes[j][0] < bin_end:
                t, i, ms, up, fd, cycles, errs, _ = scrapes[j]
                j += 1
                if ms is None:
                    up_state[i] = 0
                    continue
                up_state[i] = 1 if up == 1 else 0
                prev = last.get(i)
                if prev is not None and cycles is not None and cycles > prev and fd is not None:
                    if t >= t0:
                        p99_series[min(nb - 1, max(0, int(t - t0)))].append(fd)
                    fetch_all.append(fd)
                    if steady[0] <= t <= steady[1]:
                        fetch_steady.append(fd)
                last[i] = cycles
            if bin_end > t0:
                up_series[k] = sum(up_state.get(i, 0) for i in range(self.n))

        # Recovery: first time after the server is back from which every agent's scrapes say up.
        def recovery(t_down, t_back, t_limit):
            down_agents = set()
            last_bad = {}
            for t, i, ms, up, *_ in scrapes:
                if t_down <= t <= t_limit:
                    if ms is None or up != 1:
                        down_agents.add(i)
                        last_bad[i] = t
            if not down_agents:
                return {"agents_that_went_down": 0, "all_up_after_back_s": 0.0}
            # The first scrape after each agent's last bad one.
            firsts = {}
            for t, i, ms, up, *_ in scrapes:
                if i in last_bad and t > last_bad[i] and i not in firsts and ms is not None \
                        and up == 1:
                    firsts[i] = t
            if len(firsts) < len(down_agents):
                return {"agents_that_went_down": len(down_agents),
                        "not_recovered": len(down_agents) - len(firsts)}
            t_all = max(firsts.values())
            return {"agents_that_went_down": len(down_agents),
                    "all_up_after_back_s": rnd(t_all - t_back, 2),
                    "all_up_after_stop_s": rnd(t_all - t_down, 2)}

        rec_pg = recovery(pg_stop, pg_back, pgb_stop)
        rec_pgb = recovery(pgb_stop, pgb_back, end + 30)

        # Reconnect storms, from the logs: new client logins at PgBouncer, new server
        # connections at PostgreSQL; per 100 ms and per second.
        # (The harness's own admin-console logins are user fleet_stats: not counted.)
        pgb_logins = self.log_times(f"{self.pgb_dir}/pgbouncer.log",
                                    "login attempt: db=sigma user=sigma_agent")
        pg_conns = self.log_times(f"{self.pg_dir}/postgres.log",
                                  "connection authorized: user=sigma_agent")

        def per(times, width, a, b):
            n = int((b - a) / width) + 1
            c = [0] * n
            for x in times:
                if a <= x < b:
                    c[int((x - a) / width)] += 1
            return c

        def storm(t_from, t_to):
            c100 = per(pgb_logins, 0.1, t_from, t_to)
            c1 = per(pgb_logins, 1.0, t_from, t_to)
            s1 = per(pg_conns, 1.0, t_from, t_to)
            return {"pgbouncer_logins": sum(c1), "peak_per_s": max(c1 or [0]),
                    "peak_per_100ms": max(c100 or [0]),
                    "postgres_new_connections": sum(s1), "postgres_peak_per_s": max(s1 or [0])}

        storm_pg = storm(pg_stop, pgb_stop)
        storm_pgb = storm(pgb_stop, end)
        recon_100 = per(pgb_logins, 0.1, t0, end)
        pgconn_1 = per(pg_conns, 1.0, t0, end)

        # CPU per fetch, in the steady window; agents' CPU over it.
        cpu = [c for c in self.samples["cpu"] if steady[0] <= c["t"] <= steady[1]]
        cpu_fig = {}
        if len(cpu) >= 2 and steady_xacts:
            a, b = cpu[0], cpu[-1]
            secs = b["t"] - a["t"]
            fetches = steady_rate * secs
            if a["pg_pid"] == b["pg_pid"] and a["pg"] is not None and b["pg"] is not None:
                cpu_fig["postgres_cpu_per_fetch_us"] = rnd((b["pg"] - a["pg"]) / fetches * 1e6, 1)
                cpu_fig["postgres_cores"] = rnd((b["pg"] - a["pg"]) / secs, 3)
            if a["pgb_pid"] == b["pgb_pid"] and a["pgbouncer"] is not None:
                cpu_fig["pgbouncer_cpu_per_fetch_us"] = rnd(
                    (b["pgbouncer"] - a["pgbouncer"]) / fetches * 1e6, 1)
                cpu_fig["pgbouncer_core_share"] = rnd((b["pgbouncer"] - a["pgbouncer"]) / secs, 3)
            cpu_fig["agents_cores_total"] = rnd((b["agents"] - a["agents"]) / secs, 3)
            cpu_fig["agent_cpu_per_cycle_us"] = rnd(
                (b["agents"] - a["agents"]) / fetches * 1e6, 1)
            cpu_fig["harness_cores"] = rnd((b["helpers"] - a["helpers"]) / secs, 3)
            busy = b["machine"][0] - a["machine"][0]
            total = b["machine"][1] - a["machine"][1]
            # All CPUs' busy share, and what of it was neither the fleet nor the harness
            # (other work on the machine: the run shares it).
            cpu_fig["machine_busy_share"] = rnd(busy / total if total else None, 3)
            ours = sum(cpu_fig.get(k) or 0 for k in ("postgres_cores", "pgbouncer_core_share",
                                                       "agents_cores_total", "harness_cores"))
            cpu_fig["other_work_cores"] = rnd(busy / total * (os.cpu_count() or 1) - ours, 2) \
                if total else None
            cpu_fig["window_s"] = rnd(secs, 1)

        # Scrape latency of the sample, in and out of the restart windows.
        lat = []
        try:
            with open(latency_log) as f:
                for ln in f:
                    p = ln.split()
                    if len(p) == 4:
                        lat.append((float(p[0]), float(p[2]), int(p[3])))
        except OSError:
            pass

        def window(a, b):
            v = [ms for t, ms, st in lat if a <= t <= b]
            bad = sum(1 for t, ms, st in lat if a <= t <= b and st != 200)
            return {"scrapes": len(v), "p50_ms": rnd(pct(v, 0.5)), "p99_ms": rnd(pct(v, 0.99)),
                    "max_ms": rnd(max(v) if v else None), "not_200": bad}

        def back_until(rec, t_back):
            return t_back + (rec.get("all_up_after_back_s") or 0) + 2 * iv
        scrape_fig = {
            "steady": window(*steady),
            "postgres_restart": window(pg_stop - 1, back_until(rec_pg, pg_back)),
            "pgbouncer_restart": window(pgb_stop - 1, back_until(rec_pgb, pgb_back)),
        }
        fleet_scrape = [s[2] for s in scrapes if s[2] is not None and steady[0] <= s[0] <= steady[1]]

        mem = [proc_mem(a["proc"].pid) for a in self.agents]
        mem = [m for m in mem if m]
        series = [a.get("series") for a in self.agents if a.get("series")]

        # Phases: where in the interval each agent's cycles end (its own cycle-end stamp, mod
        # the interval), in 10 bins, from its last scrape in the steady window. A fleet whose
        # first cycles all started together would fill one or two bins.
        last_end = {}
        for t, i, ms, up, fd, cycles, errs, cend in scrapes:
            if steady[0] <= t <= steady[1] and cend:
                last_end[i] = cend
        phases = [0] * 10
        for cend in last_end.values():
            phases[min(9, int((cend % iv) / iv * 10))] += 1
        mean_bin = len(last_end) / 10 if last_end else None

        return {
            "steady_window_s": [rnd(steady[0] - t0, 1), rnd(steady[1] - t0, 1)],
            "fetches_per_s": rnd(steady_rate, 1),
            "fetch_ms": {"p50": rnd(pct(fetch_steady, 0.5) * 1000 if fetch_steady else None),
                         "p99": rnd(pct(fetch_steady, 0.99) * 1000 if fetch_steady else None),
                         "max": rnd(max(fetch_steady) * 1000 if fetch_steady else None),
                         "samples": len(fetch_steady),
                         "pgbouncer_avg_xact_ms": rnd(sum(xact_us) / len(xact_us) / 1000
                                                      if xact_us else None)},
            "cpu": cpu_fig,
            "pgbouncer_server_connections": {
                "pool_size": self.pool_size, "peak": max(sv_all or [0]),
                "peak_active": max(sv_active or [0]),
                "mean_active": rnd(sum(sv_active) / len(sv_active) if sv_active else None, 2),
                "peak_clients_waiting": max(cl_waiting or [0])},
            "postgres_restart": {"down_s": rnd(pg_back - pg_stop, 2), **rec_pg, **storm_pg},
            "pgbouncer_restart": {"down_s": rnd(pgb_back - pgb_stop, 2), **rec_pgb, **storm_pgb},
            "scrape_latency_sample": {"agents": self.lat_sample, **scrape_fig},
            "sampler_scrape_ms_steady_harness_loaded": {"p50": rnd(pct(fleet_scrape, 0.5)),
                                       "p99": rnd(pct(fleet_scrape, 0.99))},
            "agents_memory": {"rss_total_mib": rnd(sum(m[0] for m in mem) / 1024, 1),
                              "rss_per_agent_mib": rnd(sum(m[0] for m in mem) / 1024 / len(mem)
                                                       if mem else None, 2),
                              "peak_rss_max_mib": rnd(max(m[1] for m in mem) / 1024 if mem
                                                      else None, 2)},
            "series_per_agent": {"mean": rnd(sum(series) / len(series) if series else None, 1),
                                 "max": max(series or [0])},
            "sampler": {"scrapes": len(scrapes),
                        "failed": sum(1 for x in scrapes if x[2] is None),
                        "steady_scrapes": sum(1 for x in scrapes if steady[0] <= x[0] <= steady[1]),
                        "steady_fresh_fetches": len(fetch_steady)},
            "phase_spread": {"bins_of_a_tenth_interval": phases,
                             "max_bin_over_mean": rnd(max(phases) / mean_bin, 2) if mean_bin
                             else None},
            "_series": {"fetch_rate": fetch_rate,
                        "fetch_p99_ms": [rnd(pct(v, 0.99) * 1000, 3) if v else None
                                         for v in p99_series],
                        "up": up_series, "reconnects_100ms": recon_100,
                        "postgres_conns_per_s": pgconn_1},
        }

    # -- output --------------------------------------------------------------------------

    def write_outputs(self, fig, explain, fleet_routes):
        t0, iv = self.t0, self.interval
        s = fig.pop("_series")
        checks = []

        def check(name, ok, detail):
            checks.append({"check": name, "pass": bool(ok), "detail": detail})
        rate = fig["fetches_per_s"] or 0
        check(f"fetch rate >= {self.target_rate:.1f}/s ({self.equiv_agents} agents at "
              f"{self.equiv_interval:g} s)", rate >= self.target_rate, f"{rate}/s")
        p99 = fig["fetch_ms"]["p99"]
        check("fetch p99 < 50 ms (steady)", p99 is not None and p99 < 50, f"{p99} ms")
        for key, what in (("postgres_restart", "PostgreSQL"), ("pgbouncer_restart", "PgBouncer")):
            r = fig[key].get("all_up_after_back_s")
            check(f"every agent up within 2 intervals ({2 * iv:.2f} s) of {what} back",
                  r is not None and r <= 2 * iv, f"{r} s")
        check("routes query uses the indexes (no Seq Scan)",
              not explain["seq_scans"] and explain["indexes"],
              f"indexes {', '.join(explain['indexes'])}; seq scans {explain['seq_scans']}")

        out = {
            "when": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "smoke": self.smoke,
            "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                        "loadavg_at_start": self.load_at_start,
                        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
            "binary": self.binary,
            "binary_commit": os.environ.get("FLEET_COMMIT", ""),
            "agents": self.n, "interval_s": iv, "nice": NICE,
            "equivalent": {"agents": rnd(self.n / iv * self.equiv_interval, 0),
                           "at_interval_s": self.equiv_interval,
                           "target_fetches_per_s": rnd(self.target_rate, 1)},
            "duration_s": rnd(self.duration, 1),
            "phases_s": {"up_wait_max": self.up_wait, "steady": self.steady,
                         "after_each_restart": self.after},
            "rows": self.rows, "fleet_active_routes": fleet_routes,
            "probes_per_s_nominal": rnd(fleet_routes / iv, 0),
            "backend_ports": self.nports,
            "events": [{"t_s": rnd(t - t0, 2), "event": n} for t, n in self.events],
            **fig,
            "explain": explain,
            "checks": checks,
            "series_file": os.path.join(self.outdir, "fleet.tsv"),
        }
        with open(os.path.join(self.outdir, "fleet.json"), "w") as f:
            json.dump(out, f, indent=1)
        # Time series, one row per 100 ms (reconnects) with the per-second figures repeated.
        with open(os.path.join(self.outdir, "fleet.tsv"), "w") as f:
            f.write("# t_s\tfetches_per_s\tfetch_p99_ms\treconnects_per_s\tagents_up\t"
                    "pg_new_conns_per_s\n")
            for k, c in enumerate(s["reconnects_100ms"]):
                sec = int(k / 10)
                val = (lambda arr: "NaN" if sec >= len(arr) or arr[sec] is None else arr[sec])
                f.write(f"{k / 10:.1f}\t{val(s['fetch_rate'])}\t{val(s['fetch_p99_ms'])}\t"
                        f"{c * 10}\t{val(s['up'])}\t{val(s['postgres_conns_per_s'])}\n")
        with open(os.path.join(self.outdir, "fleet-events.tsv"), "w") as f:
            for t, n in self.events:
                if n.endswith("stop (fast)") or n.endswith("(SIGTERM)") or n.endswith("back"):
                    f.write(f"{t - t0:.2f}\t{n}\n")
        return out

    def plot(self, out):
        gp = shutil.which("gnuplot")
        png = os.path.join(self.outdir, "fleet.png")
        if not gp:
            log("NOTE: gnuplot not found (apt-get install -y gnuplot-nox): no target/fleet.png")
            return None
        tsv = os.path.join(self.outdir, "fleet.tsv")
        marks = []
        for e in out["events"]:
            n = e["event"]
            if n in ("PostgreSQL: stop (fast)", "PgBouncer: stop (SIGTERM)"):
                label = "PostgreSQL restart" if n.startswith("PostgreSQL") else "PgBouncer restart"
                marks.append(f"set arrow from {e['t_s']}, graph 0 to {e['t_s']}, graph 1 "
                             f"nohead lc rgb '#cc0000' dt 2")
                marks.append(f"set label '{label}' at {e['t_s']}, graph 0.06 offset 0.5,0 "
                             f"font ',9' tc rgb '#cc0000'")
        marks = "\n".join(marks)
        title = (f"{self.n} agents every {self.interval:g} s (= {out['equivalent']['agents']:.0f} "
                 f"agents at {self.equiv_interval:g} s) through PgBouncer (transaction mode)")
        script = f"""
set terminal pngcairo size 1200,1100 font ',10' noenhanced
set key top left opaque box
set output '{png}'
set datafile separator '\\t'
set multiplot layout 4,1 title "{title}"
set xrange [0:{int(self.duration) + 1}]
set grid
set lmargin 12
{marks}
set ylabel 'fetches/s'
set yrange [0:*]
plot '{tsv}' using 1:2 every 10 with lines lw 2 lc rgb '#1f77b4' title 'fetches/s (PgBouncer transactions)', \\
     {self.target_rate} with lines dt 3 lc rgb '#555555' title '{self.equiv_agents} agents at {self.equiv_interval:g} s'
set ylabel 'fetch p99 (ms)'
set logscale y
set yrange [0.1:*]
plot '{tsv}' using 1:3 every 10 with linespoints pt 7 ps 0.4 lc rgb '#ff7f0e' title 'fetch duration p99 per second (the agents gauge)', \\
     50 with lines dt 3 lc rgb '#555555' title '50 ms'
unset logscale y
set ylabel 'reconnects/s'
set yrange [0:*]
plot '{tsv}' using 1:4 with impulses lc rgb '#2ca02c' title 'new client logins at PgBouncer (per 100 ms, as /s)', \\
     '{tsv}' using 1:6 every 10 with steps lc rgb '#9467bd' title 'new server connections at PostgreSQL (/s)'
set ylabel 'agents up'
set xlabel 'seconds since the agents started'
set yrange [0:{self.n * 1.1}]
plot '{tsv}' using 1:5 every 10 with steps lw 2 lc rgb '#d62728' title 'agents reporting sigma_route_source_up 1', \\
     {self.n} with lines dt 3 lc rgb '#555555' title 'all {self.n}'
unset multiplot
"""
        with open(os.path.join(self.work, "fleet.gp"), "w") as f:
            f.write(script)
        run([gp, os.path.join(self.work, "fleet.gp")], timeout=60)
        return png

    def report(self, out):
        iv = self.interval
        f = out
        print()
        print(f"== fleet: {self.n} agents, interval {iv:g} s: {self.n / iv:.1f} fetches/s nominal "
              f"= {f['equivalent']['agents']:.0f} agents at {self.equiv_interval:g} s "
              f"(target {self.equiv_agents} agents = {self.target_rate:.1f}/s) ==")
        print(f"rows: {f['rows']}; the fleet's agents probe {f['fleet_active_routes']} routes "
              f"({f['probes_per_s_nominal']:.0f} probes/s on {self.nports} loopback listeners)")
        pr, br = f["postgres_restart"], f["pgbouncer_restart"]
        c = f["cpu"]
        sc = f["scrape_latency_sample"]
        rows = [
            ("fetches/s served (steady, PgBouncer xacts)", f["fetches_per_s"]),
            ("fetch p50 / p99 / max (ms, agents' gauge)",
             f"{f['fetch_ms']['p50']} / {f['fetch_ms']['p99']} / {f['fetch_ms']['max']} "
             f"({f['fetch_ms']['samples']} fetches)"),
            ("PgBouncer avg transaction time (ms)", f["fetch_ms"]["pgbouncer_avg_xact_ms"]),
            ("PostgreSQL CPU per fetch (µs) / cores", f"{c.get('postgres_cpu_per_fetch_us')} / "
             f"{c.get('postgres_cores')}"),
            ("PgBouncer CPU per fetch (µs) / share of its one core",
             f"{c.get('pgbouncer_cpu_per_fetch_us')} / {c.get('pgbouncer_core_share')}"),
            ("PgBouncer server connections peak / peak active / mean active (pool)",
             f"{f['pgbouncer_server_connections']['peak']} / "
             f"{f['pgbouncer_server_connections']['peak_active']} / "
             f"{f['pgbouncer_server_connections']['mean_active']} "
             f"({self.pool_size}); clients waiting peak "
             f"{f['pgbouncer_server_connections']['peak_clients_waiting']}"),
            ("PG restart: down / agents down / all up after back (s)",
             f"{pr['down_s']} / {pr['agents_that_went_down']} / "
             f"{pr.get('all_up_after_back_s', 'NOT ALL')} (2 intervals = {2 * iv:.2f})"),
            ("PG restart: PgBouncer logins total / peak per s / peak per 100 ms",
             f"{pr['pgbouncer_logins']} / {pr['peak_per_s']} / {pr['peak_per_100ms']}; "
             f"PG new connections {pr['postgres_new_connections']} (peak {pr['postgres_peak_per_s']}/s)"),
            ("PgBouncer restart: down / agents down / all up after back (s)",
             f"{br['down_s']} / {br['agents_that_went_down']} / "
             f"{br.get('all_up_after_back_s', 'NOT ALL')} (2 intervals = {2 * iv:.2f})"),
            ("PgBouncer restart: logins total / peak per s / peak per 100 ms",
             f"{br['pgbouncer_logins']} / {br['peak_per_s']} / {br['peak_per_100ms']}; "
             f"PG new connections {br['postgres_new_connections']} (peak {br['postgres_peak_per_s']}/s)"),
            ("agents: RSS total (MiB) / per agent / CPU cores total",
             f"{f['agents_memory']['rss_total_mib']} / {f['agents_memory']['rss_per_agent_mib']}"
             f" / {c.get('agents_cores_total')} ({c.get('agent_cpu_per_cycle_us')} µs per cycle)"),
            (f"scrape p50/p99/max ms, {sc['agents']} agents: steady",
             f"{sc['steady']['p50_ms']} / {sc['steady']['p99_ms']} / {sc['steady']['max_ms']}"),
            ("  during the PostgreSQL restart", f"{sc['postgres_restart']['p50_ms']} / "
             f"{sc['postgres_restart']['p99_ms']} / {sc['postgres_restart']['max_ms']} "
             f"({sc['postgres_restart']['scrapes']} scrapes)"),
            ("  during the PgBouncer restart", f"{sc['pgbouncer_restart']['p50_ms']} / "
             f"{sc['pgbouncer_restart']['p99_ms']} / {sc['pgbouncer_restart']['max_ms']} "
             f"({sc['pgbouncer_restart']['scrapes']} scrapes)"),
            ("series per agent (mean / max)", f"{f['series_per_agent']['mean']} / "
             f"{f['series_per_agent']['max']}"),
            ("harness (sampler, listeners) cores", c.get("harness_cores")),
            ("machine: CPUs busy share / other work (cores) / load at start, end",
             f"{c.get('machine_busy_share')} / {c.get('other_work_cores')} / "
             f"{f['machine']['loadavg_at_start'][0]}, {f['machine']['loadavg_at_end'][0]}"),
        ]
        w = max(len(r[0]) for r in rows)
        for k, v in rows:
            print(f"  {k:<{w}}  {v}")
        print()
        print("EXPLAIN (ANALYZE, BUFFERS) of the agent's routes query, parameters "
              f"{', '.join(f['explain']['parameters'])}:")
        for ln in f["explain"]["plan"]:
            print("  " + ln)
        print()
        print("pg_stat_statements (database sigma, by calls): calls, mean ms, query")
        for st in f["explain"]["statements"]:
            print(f"  {st['calls']:>8} {st['mean_ms']:>8.4f}  {st['query']}")
        print()
        if self.smoke:
            print("(smoke run: a few agents, so the figures below are not held to the targets)")
        for ch in f["checks"]:
            verdict = "PASS" if ch["pass"] else "FAIL"
            if self.smoke:
                verdict = verdict.lower()
            print(f"{verdict}  {ch['check']}: {ch['detail']}")

    # -- cleanup -------------------------------------------------------------------------

    def cleanup(self):
        for a in self.agents:
            if a["proc"].poll() is None:
                a["proc"].terminate()
        for _, p in self.procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 10
        for p in [a["proc"] for a in self.agents] + [p for _, p in self.procs]:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        try:
            self.pgb_stop()
        except Failed as e:
            log(f"cleanup: {e}")
        if self.postmaster_pid():
            subprocess.run(as_pg([f"{self.pg_bin}/pg_ctl", "stop", "-w", "-t", "30", "-m",
                                  "immediate", "-D", f"{self.pg_dir}/data"]),
                           capture_output=True, timeout=60)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "backends":
        return backends_main(sys.argv[2:])
    if len(sys.argv) > 1 and sys.argv[1] == "latency":
        return latency_main(sys.argv[2:])
    if len(sys.argv) != 4:
        sys.exit("usage: fleet.py AGENT_BINARY OUTDIR WORKDIR (run it through scripts/fleet.sh)")
    binary, outdir, work = sys.argv[1:]
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    fleet = Fleet(binary, outdir, work, os.path.dirname(os.path.abspath(__file__)))
    started = time.monotonic()
    try:
        log(f"fleet: {fleet.n} agents, interval {fleet.interval:g} s = "
            f"{fleet.n / fleet.interval:.1f} fetches/s nominal, like "
            f"{fleet.n / fleet.interval * fleet.equiv_interval:.0f} agents at "
            f"{fleet.equiv_interval:g} s (target: {fleet.equiv_agents} agents = "
            f"{fleet.target_rate:.1f}/s)")
        fleet.setup_pg()
        ports = fleet.start_backends()
        fleet.load_fleet(ports)
        routes = fleet.fleet_routes()
        fleet.setup_pgbouncer()
        fleet.start_agents()
        latency_log = fleet.start_latency_sampler()
        asyncio.run(fleet.run_phase())
        fleet.event("run over; analysing")
        fig = fleet.analyse(latency_log)
        explain = fleet.explain()
        out = fleet.write_outputs(fig, explain, routes)
        png = fleet.plot(out)
        fleet.report(out)
        print(f"\nfigures: {outdir}/fleet.json; series: {outdir}/fleet.tsv; plot: {png}")
        print(f"make fleet took {time.monotonic() - started:.0f} s")
        failed = [c for c in out["checks"] if not c["pass"]]
        if fleet.smoke:
            # The smoke run checks that it all works, not the figures (CI machines vary).
            problems = []
            if not out["fetches_per_s"]:
                problems.append("no fetches were counted")
            for key in ("postgres_restart", "pgbouncer_restart"):
                if out[key].get("not_recovered"):
                    problems.append(f"{out[key]['not_recovered']} agents did not recover "
                                    f"after the {key.replace('_', ' ')}")
            if not explain["indexes"] or explain["seq_scans"]:
                problems.append(f"the routes query plan does not use the indexes: "
                                f"{explain['seq_scans']}")
            if png and not os.path.getsize(png):
                problems.append("the plot is empty")
            if problems:
                raise Failed("smoke: " + "; ".join(problems))
            print("fleet smoke: OK")
        elif failed and fleet.strict:
            return 1
        return 0
    except Failed as e:
        print(f"fleet: FAILED: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fleet: interrupted", file=sys.stderr)
        return 130
    finally:
        fleet.cleanup()


if __name__ == "__main__":
    sys.exit(main())
