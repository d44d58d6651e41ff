#!/usr/bin/env bash
# `make fleet`: hundreds of real agents (default 300) read their routes from one throwaway
# PostgreSQL through a transaction-mode PgBouncer, at an interval that loads the database like
# 10,000 agents at 30 s; once every agent is up and after a steady phase, PostgreSQL is restarted
# (fast shutdown, start), later PgBouncer. Figures in target/fleet.json, the time series in target/fleet.tsv, the plot
# in target/fleet.png. What it does and what it measures: scripts/fleet.py and the README's
# "Fleet scale". Takes ~4-5 minutes (plus the first release build). Not part of `make test`;
# `scripts/fleet.sh --smoke` (4 agents, under a minute) is.
#
# All traffic stays on loopback (127.0.0.1). Every process it starts is stopped at the end, also
# on failure or Ctrl-C: fleet.py stops them itself, and this script's trap stops whatever is
# left (by the pids fleet.py recorded) if fleet.py itself dies. The whole run is bounded by
# `timeout` (15 minutes; the phases are bounded in fleet.py).
#
# Needs: Rust, Python 3 (standard library only), Debian's `postgresql` and `pgbouncer`, and
# `gnuplot-nox` for the plot (installed here with apt-get when running as root and missing).
# Settings: see scripts/fleet.py (FLEET_AGENTS, FLEET_STEADY, FLEET_STRICT=1, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

if [[ ${1:-} == --smoke ]]; then
    export FLEET_SMOKE=1
elif [[ -n ${1:-} ]]; then
    echo "usage: $0 [--smoke]" >&2
    exit 2
fi
smoke=${FLEET_SMOKE:-0}

CARGO=${CARGO:-cargo}
TARGET_DIR=$(target_dir)
mkdir -p "$TARGET_DIR"
OUT=$TARGET_DIR
[[ $smoke == 1 ]] && OUT=$TARGET_DIR/fleet-smoke && mkdir -p "$OUT"

# The plot: gnuplot from Debian (no PyPI, no venv: the helper is standard-library Python).
if ! command -v gnuplot >/dev/null; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "installing gnuplot-nox (Debian) for the plot"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq --no-install-recommends gnuplot-nox >/dev/null 2>&1 || {
            apt-get update -qq && apt-get install -y -qq --no-install-recommends gnuplot-nox >/dev/null
        }
    else
        echo "NOTE: gnuplot not found (apt-get install -y gnuplot-nox): no plot will be drawn"
    fi
fi
command -v python3 >/dev/null || { echo "error: python3 is needed" >&2; exit 1; }

# Agents, their HTTP connections, the listeners, PgBouncer's clients: raise the fd limit.
agents=${FLEET_AGENTS:-300}
[[ $smoke == 1 ]] && agents=${FLEET_AGENTS:-4}
raise_nofile $((agents * 4 + ${FLEET_BACKEND_PORTS:-256} + 1024)) "lower FLEET_AGENTS"

echo "== building (release) =="
$CARGO build --release --quiet
BIN=$TARGET_DIR/release/sigma-agent-lite
export FLEET_COMMIT
FLEET_COMMIT=$(git describe --always --dirty 2>/dev/null || echo unknown)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sigma-fleet.XXXXXX")
chmod 755 "$WORK" # the database servers run as the postgres user when we are root
cleanup() {
    local rc=$?
    # fleet.py stops everything itself; this is for when it could not (killed, crashed).
    if [[ -f $WORK/pids ]]; then
        while read -r pid; do
            kill "$pid" 2>/dev/null || true
        done <"$WORK/pids"
    fi
    if [[ -f $WORK/pg/data/postmaster.pid ]]; then
        pg_bin=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
        if [[ $(id -u) -eq 0 ]]; then
            runuser -u postgres -- "$pg_bin/pg_ctl" stop -w -t 30 -m immediate -D "$WORK/pg/data" >/dev/null 2>&1 || true
        else
            "$pg_bin/pg_ctl" stop -w -t 30 -m immediate -D "$WORK/pg/data" >/dev/null 2>&1 || true
        fi
    fi
    if [[ ${FLEET_KEEP:-0} == 1 ]]; then
        echo "kept $WORK (FLEET_KEEP=1)"
    else
        rm -rf "$WORK"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "== fleet (loopback only; work dir $WORK) =="
timeout --signal=TERM --kill-after=30 900 \
    python3 scripts/fleet.py "$BIN" "$OUT" "$WORK"
