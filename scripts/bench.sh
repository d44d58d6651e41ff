#!/usr/bin/env bash
# `make bench`: how light and fast the agent is, side by side with a bare mio connect loop
# (the floor: what the kernel alone costs per connect) and Prometheus' blackbox_exporter.
#
#   1. micro-benchmarks of the pure parts (benches/micro.rs): /metrics render for 1,000 and
#      10,000 routes, HTTP request-head parse, routes-file parse
#   2. the whole agent, release build, against N loopback listeners (examples/benchkit.rs):
#      CPU per probe, peak RSS, threads, fds for agent / floor / blackbox in the same rounds;
#      then the agent alone: scrape latency while a probe is pending, exec -> first 200 on
#      /healthz, RSS and fds after 100 cycles vs after 10
#   3. a table with PASS/FAIL per target, and every figure as JSON in target/bench.json
#
# All traffic stays on loopback (127.0.0.1); every loop is bounded. Takes ~3-4 minutes
# (plus the first build). Not part of `make test`.
#
# Needs: Rust; Debian package `prometheus-blackbox-exporter` for the blackbox column (without
# it the agent and floor parts still run, and the script says so).
# Settings (environment): BENCH_ROUTES (1000), BENCH_WINDOW seconds per prober and round (8),
# BENCH_ROUNDS (5), BENCH_STRICT=1 (exit 1 when a target is missed), BENCH_DATABASE_URL
# (reserved for the PostgreSQL-source figure; not built yet).
set -euo pipefail
cd "$(dirname "$0")/.."

started=$SECONDS
CARGO=${CARGO:-cargo}
TARGET_DIR=$($CARGO metadata --format-version 1 --no-deps 2>/dev/null |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
TARGET_DIR=${TARGET_DIR:-target}
WORK=$TARGET_DIR/bench-work
mkdir -p "$WORK"

export BENCH_ROUTES=${BENCH_ROUTES:-1000}
export BENCH_WINDOW=${BENCH_WINDOW:-8}
export BENCH_ROUNDS=${BENCH_ROUNDS:-5}
export BENCH_MICRO_JSON=$TARGET_DIR/bench-micro.json
export BENCH_JSON=$TARGET_DIR/bench.json

# blackbox_exporter: Debian installs it as prometheus-blackbox-exporter.
BENCH_BLACKBOX=${BENCH_BLACKBOX:-$(command -v prometheus-blackbox-exporter || command -v blackbox_exporter || true)}
export BENCH_BLACKBOX
if [[ -z $BENCH_BLACKBOX ]]; then
    echo "NOTE: blackbox_exporter not found: the blackbox column will be n/a."
    echo "      Install it with: apt-get update && apt-get install -y prometheus-blackbox-exporter"
fi

# One listener per route plus the agent, the exporter and the scrapers: raise the fd limit.
want=$((BENCH_ROUTES + 512))
hard=$(ulimit -Hn)
if [[ $hard != unlimited && $hard -lt $want ]]; then
    echo "error: the hard open-files limit ($hard) is below $want; lower BENCH_ROUTES or raise it" >&2
    exit 1
fi
ulimit -n "$want"

echo "== building (release) =="
$CARGO build --release --quiet
$CARGO build --release --quiet --example benchkit --example floor

echo
echo "== micro-benchmarks (benches/micro.rs) =="
$CARGO bench --quiet --bench micro

echo
echo "== whole agent (examples/benchkit.rs), loopback only =="
"$TARGET_DIR/release/examples/benchkit" "$TARGET_DIR/release/sigma-agent-lite" \
    "$TARGET_DIR/release/examples/floor" "$WORK"

echo
echo "make bench took $((SECONDS - started)) s"
