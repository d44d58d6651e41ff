#!/usr/bin/env bash
# Print every metric name the alert rules and the Grafana dashboard refer to,
# one per line, sorted and unique, so a test can check them against the
# /metrics output of a running agent, e.g.
#
#   scripts/metric-names.sh | while read -r m; do
#     grep -q "^$m[ {]" metrics.txt || echo "missing: $m"; done
#
# (sigma_build_info{version="..."} 1 matches "^name[ {]"; a metric the agent
# only creates later, e.g. failures of a reason that has not happened yet,
# needs the # HELP/# TYPE line or a run that produces it.)
#
# Names: sigma_* and process_*. `up` is left out (Prometheus makes it, the
# agent never exports it) unless --with-up is given, and so is any name
# defined by a recording rule (there are none today). Comment lines of the
# rules file are ignored; names in annotations and panel descriptions count.
#
# Usage: scripts/metric-names.sh [--with-up] [FILE...]
#   FILE defaults to the rules file and the dashboard next to this script.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
with_up=0
files=()
for arg in "$@"; do
  case $arg in
    --with-up) with_up=1 ;;
    -h|--help) sed -n '2,22p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) files+=("$arg") ;;
  esac
done
if [ ${#files[@]} -eq 0 ]; then
  files=("$here/prometheus/sigma-agent-lite.rules.yml" "$here/grafana/sigma-agent-lite.json")
fi
for f in "${files[@]}"; do
  [ -r "$f" ] || { echo "metric-names.sh: cannot read $f" >&2; exit 1; }
done

# All files without their comment lines (the JSON dashboard has none).
text=$(grep -hv '^[[:space:]]*#' "${files[@]}" || true)

# Names defined by recording rules ("record: name").
recorded=$(printf '%s\n' "$text" | sed -n 's/^[[:space:]-]*record:[[:space:]]*\([a-zA-Z_:][a-zA-Z0-9_:]*\).*/\1/p' | sort -u)

{
  printf '%s\n' "$text" | grep -oE '\b(sigma|process)_[a-zA-Z0-9_]+' || true
  if [ "$with_up" = 1 ] && printf '%s\n' "$text" | grep -qE '\bup\{'; then
    echo up
  fi
} | sort -u | { if [ -n "$recorded" ]; then grep -vxF -f <(printf '%s\n' "$recorded"); else cat; fi; }
