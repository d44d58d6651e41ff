#!/usr/bin/env bash
# `make bench`: how light and fast the agent is, side by side with a bare mio connect loop
# (the floor: what the kernel alone costs per connect) and Prometheus' blackbox_exporter.
#
#   1. micro-benchmarks of the pure parts (benches/micro.rs): /metrics render for 1,000 and
#      10,000 routes, HTTP request-head parse, routes-file parse, /proc/self read,
#      and the MCP tools/call handler
#   2. the whole agent, release build, against N loopback listeners (benches/benchkit/):
#      CPU per probe, peak RSS, threads, fds for agent / floor / blackbox in the same rounds,
#      and in the same rounds the agent with the PostgreSQL source (routes read each cycle
#      from a throwaway cluster this script starts, see below); then the agent alone: scrape
#      latency while a probe is pending, exec -> first 200 on /healthz, RSS and fds after 100
#      cycles vs after 10; then the agent with the PostgreSQL source under database faults
#      (silent server, SIGSTOPped server, table lock, silent DNS for the database host name):
#      scrape latency p50/p99/max and probe cycles during each 10-s fault, and the recovery
#   3. a table with PASS/FAIL per target, and every figure as JSON in target/bench.json
#   4. scrape load (benches/scrapebench.rs): 100 concurrent keep-alive scrapers of agents with
#      1,000 and 10,000 routes, identity and gzip, the binary from before the cached /metrics
#      body (BENCH_BEFORE_REV, built from main's history) beside the current one: scrape and
#      /healthz p50/p99, CPU and bytes per scrape (target/bench-scrape.json)
#
# All traffic stays on loopback (127.0.0.1); every loop is bounded. Takes ~4.5-5 minutes
# (plus the first build). Not part of `make test`.
#
# The PostgreSQL source: like tests/common/pg.rs, initdb + pg_ctl from the newest
# /usr/lib/postgresql/*/bin (or $PG_BIN) in a temp dir, as the `postgres` OS user when run
# as root, listening on 127.0.0.1 and a unix socket in the temp dir only; the schema of
# tests/fixtures/schema.sql, the owner role sigma_owner and the read-only agent role
# sigma_agent (SELECT on the three tables) with random passwords. benchkit inserts the vps,
# node and routes (through sigma_owner) and runs the agent as sigma_agent. The cluster is
# stopped and removed at the end, also on failure or Ctrl-C.
#
# Needs: Rust; Debian package `prometheus-blackbox-exporter` for the blackbox column and
# `postgresql` for the PostgreSQL-source figures (without them the rest still runs, and the
# script says so).
# Settings (environment): BENCH_ROUTES (1000), BENCH_WINDOW seconds per prober and round (8),
# BENCH_ROUNDS (5), BENCH_STRICT=1 (exit 1 when a target is missed), BENCH_PG_FAULTS=0 (skip
# the database faults; they run on the throwaway cluster only, =1 runs them on BENCH_DATABASE_URL's
# database too: they SIGSTOP its postmaster and lock envoy_routes), BENCH_BASELINE_AGENT (another agent binary measured in the same rounds,
# e.g. a build of an older commit, reported next to the agent), PG_BIN (PostgreSQL
# server binaries), BENCH_DATABASE_URL + BENCH_DATABASE_ADMIN_URL to use an existing
# database on loopback instead of a throwaway cluster (the agent's read-only URL, and a role
# that may write the three tables: the bench's rows, vps hostname BENCH_PG_HOSTNAME
# (sigma-agent-lite-bench), are replaced at the start and deleted at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

started=$SECONDS
CARGO=${CARGO:-cargo}
TARGET_DIR=$(target_dir)
WORK=$TARGET_DIR/bench-work
mkdir -p "$WORK"

export BENCH_ROUTES=${BENCH_ROUTES:-1000}
export BENCH_WINDOW=${BENCH_WINDOW:-8}
export BENCH_ROUNDS=${BENCH_ROUNDS:-5}
export BENCH_MICRO_JSON=$TARGET_DIR/bench-micro.json
export BENCH_JSON=$TARGET_DIR/bench.json
# Scrape load (benches/scrapebench.rs): routes per agent, concurrent scrapers, seconds per run.
export BENCH_SCRAPE_ROUTES=${BENCH_SCRAPE_ROUTES:-1000,10000}
export BENCH_SCRAPERS=${BENCH_SCRAPERS:-100}
export BENCH_SCRAPE_WINDOW=${BENCH_SCRAPE_WINDOW:-5}
export BENCH_SCRAPE_JSON=$TARGET_DIR/bench-scrape.json

# blackbox_exporter: Debian installs it as prometheus-blackbox-exporter.
BENCH_BLACKBOX=${BENCH_BLACKBOX:-$(command -v prometheus-blackbox-exporter || command -v blackbox_exporter || true)}
export BENCH_BLACKBOX
if [[ -z $BENCH_BLACKBOX ]]; then
    echo "NOTE: blackbox_exporter not found: the blackbox column will be n/a."
    echo "      Install it with: apt-get update && apt-get install -y prometheus-blackbox-exporter"
fi

# One listener per route plus the agent, the exporter and the scrapers: raise the fd limit.
raise_nofile $((BENCH_ROUTES + 512)) "lower BENCH_ROUTES or raise it"

echo "== building (release) =="
# The binary from before the cached /metrics body, from main's history, for the scrape-load
# comparison (built in the same target dir first, so the dependencies are shared, and copied
# aside). BENCH_BEFORE_REV picks another revision.
BEFORE_REV=${BENCH_BEFORE_REV:-e391805}
BEFORE_BIN=$WORK/sigma-agent-lite-before
if [[ ! -x $BEFORE_BIN || $(cat "$BEFORE_BIN.rev" 2>/dev/null) != "$BEFORE_REV" ]]; then
    if git cat-file -e "$BEFORE_REV^{commit}" 2>/dev/null; then
        rm -rf "$WORK/before-src" && mkdir -p "$WORK/before-src"
        git archive "$BEFORE_REV" | tar -x -C "$WORK/before-src"
        (cd "$WORK/before-src" && SIGMA_REVISION=$BEFORE_REV $CARGO build --release --quiet \
            --target-dir "$(realpath "$TARGET_DIR")")
        cp "$TARGET_DIR/release/sigma-agent-lite" "$BEFORE_BIN"
        echo "$BEFORE_REV" > "$BEFORE_BIN.rev"
    else
        echo "NOTE: revision $BEFORE_REV is not in this clone: the scrape-load 'before' column is n/a"
        BEFORE_BIN=
    fi
fi
$CARGO build --release --quiet
# The whole-program harnesses in benches/ (Cargo examples: see Cargo.toml), release profile.
$CARGO build --release --quiet --example benchkit --example floor --example scrapebench

echo
echo "== micro-benchmarks (benches/micro.rs) =="
$CARGO bench --quiet --bench micro

# ---------------------------------------------------------------------------------------------
# A throwaway PostgreSQL cluster for the PostgreSQL-source figures (see the top).
PG_DIR=
as_pg() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}
pg_cleanup() {
    if [[ -n $PG_DIR ]]; then
        # benchkit's SIGSTOP fault continues what it stopped; if it was killed meanwhile, do it
        # here (the postmaster and its children: this cluster's processes only).
        local pm
        pm=$(head -n 1 "$PG_DIR/data/postmaster.pid" 2>/dev/null || true)
        if [[ $pm =~ ^[0-9]+$ ]]; then
            kill -CONT "$pm" 2>/dev/null || true
            pkill -CONT -P "$pm" 2>/dev/null || true
        fi
        as_pg "$PG_BIN/pg_ctl" stop -w -t 30 -m immediate -D "$PG_DIR/data" >/dev/null 2>&1 || true
        rm -rf "$PG_DIR"
        echo "PostgreSQL: throwaway cluster stopped and removed"
        PG_DIR=
    fi
}
trap pg_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Starts the cluster; on failure says why (pg_skip) and returns 1.
pg_skip() {
    echo "SKIP  PostgreSQL source: $1"
    export BENCH_PG_SKIP="$1"
}
pg_start() {
    PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
    if [[ -z $PG_BIN || ! -x $PG_BIN/initdb || ! -x $PG_BIN/pg_ctl || ! -x $PG_BIN/psql ]]; then
        pg_skip "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin (or \$PG_BIN); install them with: apt-get update && apt-get install -y postgresql"
        return 1
    fi
    if [[ $(id -u) -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
        pg_skip "running as root but there is no 'postgres' OS user to run the server as (apt-get install -y postgresql creates it)"
        return 1
    fi
    PG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/sigma-bench-pg.XXXXXX") || return 1
    mkdir "$PG_DIR/sock" || return 1
    if [[ $(id -u) -eq 0 ]]; then
        chown -R postgres:postgres "$PG_DIR" || return 1
    fi
    local log=$PG_DIR/setup.log
    if ! as_pg "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres --auth-local=trust \
        --auth-host=scram-sha-256 --no-sync --no-instructions -E UTF8 --locale=C >"$log" 2>&1; then
        pg_skip "initdb failed: $(tail -n 3 "$log" | tr '\n' ' ')"
        return 1
    fi
    # A free loopback port: a few random tries (nothing may answer on it yet).
    local port tries=0
    while :; do
        port=$((20000 + RANDOM % 30000))
        tries=$((tries + 1))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null &&
            as_pg "$PG_BIN/pg_ctl" start -w -t 30 -D "$PG_DIR/data" -l "$PG_DIR/postgres.log" \
                -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$PG_DIR/sock \
                    -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
                    -c shared_buffers=16MB -c max_connections=20 -c log_min_messages=warning" \
                >>"$log" 2>&1; then
            break
        fi
        if [[ $tries -ge 5 ]]; then
            pg_skip "the server did not start: $(tail -n 3 "$PG_DIR/postgres.log" 2>/dev/null | tr '\n' ' ')"
            return 1
        fi
    done
    # Random passwords (hex: no escaping in URLs or SQL).
    local owner_pw agent_pw
    owner_pw=$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')
    agent_pw=$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')
    local psql=("$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_DIR/sock" -p "$port" -U postgres)
    if ! as_pg "${psql[@]}" -d postgres \
        -c "CREATE ROLE sigma_owner LOGIN PASSWORD '$owner_pw'" \
        -c "CREATE ROLE sigma_agent LOGIN PASSWORD '$agent_pw'" \
        -c "CREATE DATABASE sigma OWNER sigma_owner" >>"$log" 2>&1 ||
        ! as_pg "${psql[@]}" -d sigma -c "SET ROLE sigma_owner" -f - \
            -c "GRANT SELECT ON vps, envoy_nodes, envoy_routes TO sigma_agent" \
            <tests/fixtures/schema.sql >>"$log" 2>&1; then
        pg_skip "setting up roles and schema failed: $(tail -n 3 "$log" | tr '\n' ' ')"
        return 1
    fi
    export BENCH_DATABASE_URL="postgres://sigma_agent:$agent_pw@127.0.0.1:$port/sigma"
    export BENCH_DATABASE_ADMIN_URL="postgres://sigma_owner:$owner_pw@127.0.0.1:$port/sigma"
    export BENCH_PG_ORIGIN="a throwaway cluster on 127.0.0.1:$port"
    # The database faults (SIGSTOP, LOCK TABLE) run on this cluster only, unless BENCH_PG_FAULTS=1.
    export BENCH_PG_THROWAWAY=1
    echo "PostgreSQL: throwaway cluster ($("$PG_BIN/postgres" --version)) on 127.0.0.1:$port in $PG_DIR"
}

echo
echo "== PostgreSQL source =="
if [[ -n ${BENCH_DATABASE_URL:-} ]]; then
    echo "PostgreSQL: using BENCH_DATABASE_URL (and BENCH_DATABASE_ADMIN_URL for the bench's rows)"
    export BENCH_PG_ORIGIN=${BENCH_PG_ORIGIN:-"the database of BENCH_DATABASE_URL"}
elif ! pg_start; then
    pg_cleanup
fi

echo
echo "== whole agent (benches/benchkit/), loopback only =="
"$TARGET_DIR/release/examples/benchkit" "$TARGET_DIR/release/sigma-agent-lite" \
    "$TARGET_DIR/release/examples/floor" "$WORK"

echo
echo "== scrape load: $BENCH_SCRAPERS concurrent scrapers, before/after the cached body (benches/scrapebench.rs) =="
if [[ -n $BEFORE_BIN ]]; then
    "$TARGET_DIR/release/examples/scrapebench" "$BEFORE_BIN" "$TARGET_DIR/release/sigma-agent-lite" "$WORK"
fi

echo
echo "make bench took $((SECONDS - started)) s"
