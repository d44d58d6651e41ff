#!/usr/bin/env bash
# Check the operations files of sigma-agent-lite:
#   1. promtool check rules   prometheus/sigma-agent-lite.rules.yml
#   2. promtool test rules    prometheus/sigma-agent-lite.rules.test.yml
#   3. the Grafana dashboard is valid JSON (python3 -m json.tool) and sane:
#      schemaVersion, uid, unique panel ids, every query on ${datasource}
#   4. every PromQL expression of the dashboard parses (they are written as
#      recording rules into a temporary file for promtool check rules)
#   5. every metric name the rules and the dashboard use (metric-names.sh)
#      is one the agent documents
#   6. the env template documents every AGENT_* option, all commented out
#   7. routes.example has the NODE ROUTE LISTEN_PORT HOST:PORT format
#   8. systemd-analyze verify on the unit, and its `systemd-analyze security`
#      exposure score (offline; must stay <= $MAX_EXPOSURE)
#
# Needs: promtool (Debian package `prometheus`), python3, systemd-analyze
# (Debian package `systemd`; step 8 prints SKIP when it is missing).
# Every step runs even when an earlier one failed; the exit status is non-zero
# if any step failed. Usage: scripts/check-ops.sh   (from any directory)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RULES=$here/prometheus/sigma-agent-lite.rules.yml
RULES_TEST=$here/prometheus/sigma-agent-lite.rules.test.yml
DASHBOARD=$here/grafana/sigma-agent-lite.json
UNIT=$here/systemd/sigma-agent-lite.service
ENVFILE=$here/sigma-agent-lite.env
ROUTES=$here/routes.example
MAX_EXPOSURE=${MAX_EXPOSURE:-2.0}

# The agent's documented metrics (its interface; keep in sync with the code).
KNOWN_METRICS="
sigma_backend_reachable
sigma_backend_probe_latency_ms
sigma_backend_probe_failures_total
sigma_backend_dns_lookup_seconds
sigma_backend_addresses
sigma_backend_addresses_reachable
sigma_envoy_backend_healthy
sigma_backend_view_mismatch
sigma_envoy_admin_up
sigma_envoy_admin_fetch_duration_seconds
sigma_envoy_admin_errors_total
sigma_envoy_admin_response_bytes
sigma_probe_cycles_total
sigma_probe_cycle_overruns_total
sigma_probe_cycle_duration_seconds
sigma_probe_interval_seconds
sigma_probe_last_cycle_end_timestamp_seconds
sigma_routes
sigma_route_source_errors_total
sigma_route_source_up
sigma_route_fetch_duration_seconds
sigma_vps_registered
sigma_health_probe_enabled
sigma_agent_resource_errors_total
sigma_log_lines_dropped_total
sigma_build_info
process_resident_memory_bytes
process_virtual_memory_bytes
process_virtual_memory_max_bytes
process_cpu_seconds_total
process_open_fds
process_max_fds
process_start_time_seconds
"
# The agent's documented environment variables.
AGENT_VARS="AGENT_HEALTH_PROBE AGENT_HEALTH_PROBE_INTERVAL AGENT_HEALTH_PROBE_TIMEOUT
AGENT_ROUTES_FILE AGENT_METRICS_LISTEN AGENT_METRICS_PORT AGENT_DATABASE_URL
AGENT_HOSTNAME AGENT_MCP_STDIO AGENT_MCP_LISTEN AGENT_DNS_SERVER AGENT_WEB_TLS_CERT
AGENT_WEB_TLS_KEY AGENT_WEB_CLIENT_CA AGENT_WEB_AUTH_TOKEN_FILE RUST_LOG"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

passed=0 failed=0 skipped=0
failures=()

# run NAME FUNCTION: run a check in a subshell with errexit in force (a
# function called from `if` would run with errexit silently disabled).
run() {
  local name=$1 rc
  echo
  echo "=== $name"
  set +e
  ( set -euo pipefail; "$2" )
  rc=$?
  set -e
  case $rc in
    0) echo "--- PASS: $name"; passed=$((passed + 1)) ;;
    77) echo "--- SKIP: $name"; skipped=$((skipped + 1)) ;;
    *) echo "--- FAIL: $name (exit $rc)"; failed=$((failed + 1)); failures+=("$name") ;;
  esac
}

need_promtool() {
  if ! command -v promtool >/dev/null; then
    echo "promtool not found: apt-get install -y prometheus" >&2
    return 1
  fi
}

check_rules() {
  need_promtool
  promtool check rules "$RULES"
}

test_rules() {
  need_promtool
  # rule_files in the test file are relative to the test file's directory.
  promtool test rules "$RULES_TEST"
}

need_python() {
  if ! command -v python3 >/dev/null || ! python3 -c 'import json' 2>/dev/null; then
    echo "python3 not found or not working: apt-get install -y python3" >&2
    return 1
  fi
}

check_dashboard_json() {
  need_python
  python3 -m json.tool "$DASHBOARD" >/dev/null
  echo "valid JSON: $DASHBOARD"
  python3 - "$DASHBOARD" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
errors = []
if not 36 <= d.get("schemaVersion", 0) <= 41:
    errors.append("schemaVersion %r not in 36..41" % d.get("schemaVersion"))
if not d.get("uid"):
    errors.append("no uid")
tv = {v["name"]: v for v in d["templating"]["list"]}
if tv.get("datasource", {}).get("type") != "datasource" or tv["datasource"].get("query") != "prometheus":
    errors.append("no ${datasource} variable of type datasource/prometheus")
for name in ("instance", "node"):
    if name not in tv:
        errors.append("no $%s variable" % name)
ids = [p["id"] for p in d["panels"]]
if len(ids) != len(set(ids)):
    errors.append("duplicate panel ids")
for p in d["panels"]:
    if p["type"] == "row":
        continue
    if p.get("datasource", {}).get("uid") != "${datasource}":
        errors.append("panel %r: datasource is not ${datasource}" % p["title"])
    if not p.get("targets"):
        errors.append("panel %r: no query" % p["title"])
    for t in p.get("targets", []):
        if not t.get("expr"):
            errors.append("panel %r: empty expr" % p["title"])
        if t.get("datasource", {}).get("uid") != "${datasource}":
            errors.append("panel %r ref %s: datasource is not ${datasource}" % (p["title"], t.get("refId")))
    g = p["gridPos"]
    if g["x"] + g["w"] > 24:
        errors.append("panel %r is wider than the grid" % p["title"])
for e in errors:
    print("dashboard:", e, file=sys.stderr)
print("%d panels, %d queries, schemaVersion %s" % (
    len([p for p in d["panels"] if p["type"] != "row"]),
    sum(len(p.get("targets", [])) for p in d["panels"]), d["schemaVersion"]))
sys.exit(1 if errors else 0)
PY
}

check_dashboard_promql() {
  need_promtool
  need_python
  # Grafana variables are replaced by plain values; label_values(SELECTOR, l)
  # variable queries are checked as SELECTOR.
  python3 - "$DASHBOARD" >"$tmp/dashboard.rules.yml" <<'PY'
import json, re, sys
d = json.load(open(sys.argv[1]))
subst = [("$__rate_interval", "1m"), ("$__interval", "1m"), ("$__range", "1h"),
         ("$job", "sigma-agent-lite"), ("$instance", ".*"), ("$node", ".*")]
def fix(e):
    for a, b in subst:
        e = e.replace(a, b)
    return e
rules = []
for p in d["panels"]:
    for t in p.get("targets", []):
        rules.append(("dashboard:panel_%d_%s" % (p["id"], t["refId"]), fix(t["expr"])))
for v in d["templating"]["list"]:
    if v.get("type") == "query":
        m = re.fullmatch(r"label_values\((.*),\s*\w+\)", v["definition"])
        rules.append(("dashboard:variable_" + v["name"], fix(m.group(1) if m else v["definition"])))
print("groups:\n  - name: dashboard\n    rules:")
for name, expr in rules:
    print("      - record: %s\n        expr: %s" % (name, json.dumps(expr)))
PY
  promtool check rules "$tmp/dashboard.rules.yml"
}

check_metric_names() {
  local names unknown
  names=$("$here/metric-names.sh")
  unknown=$(printf '%s\n' "$names" | grep -vxF -f <(printf '%s\n' $KNOWN_METRICS) || true)
  echo "$(printf '%s\n' "$names" | wc -l) metric names referenced"
  if [ -n "$unknown" ]; then
    echo "not exported by the agent (typo?):" >&2
    printf '  %s\n' $unknown >&2
    return 1
  fi
}

check_env_template() {
  local v bad=0
  for v in $AGENT_VARS; do
    if ! grep -q "^#$v=" "$ENVFILE"; then
      echo "$ENVFILE: no commented-out '#$v=' line" >&2; bad=1
    fi
  done
  if grep -nE '^[[:space:]]*[A-Z_]+=' "$ENVFILE" >&2; then
    echo "$ENVFILE: the lines above are not commented out" >&2; bad=1
  fi
  [ $bad = 0 ] && echo "all $(echo $AGENT_VARS | wc -w) variables documented and commented out"
  return $bad
}

check_routes_example() {
  # NODE ROUTE LISTEN_PORT HOST:PORT [KEY=VALUE...]; HOST a name, IPv4 or [IPv6].
  awk '
    /^[[:space:]]*(#|$)/ { next }
    {
      n++
      ok = NF >= 4 && $3 ~ /^[0-9]+$/ && $3 >= 1 && $3 <= 65535 &&
           ($4 ~ /^[A-Za-z0-9.-]+:[0-9]+$/ || $4 ~ /^\[[0-9A-Fa-f:.]+\]:[0-9]+$/)
      if (ok) { split($4, a, ":"); p = a[length(a)]; ok = p >= 1 && p <= 65535 }
      for (i = 5; ok && i <= NF; i++)
        ok = $i ~ /^admin_port=[0-9]+$/ || $i ~ /^cluster_type=(static|strict_dns|logical_dns)$/ ||
             $i ~ /^connect_timeout=[0-9.]+(ms|s)?$/
      if (!ok) { printf "%s:%d: bad route: %s\n", FILENAME, NR, $0 > "/dev/stderr"; bad = 1 }
    }
    END { if (!bad) printf "%d routes OK\n", n; exit bad }
  ' "$ROUTES"
}

check_unit() {
  if ! command -v systemd-analyze >/dev/null; then
    echo "SKIP: systemd-analyze not available (Debian package: systemd); unit NOT verified" >&2
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
    return 77
  fi
  # `systemd-analyze verify` also checks that the ExecStart binary exists and
  # is executable, and the agent is not installed where the checks run. So a
  # temporary copy of the unit (same file name, which verify needs) is
  # verified with ExecStart pointed at /bin/true; everything else is the
  # unit as shipped.
  local copy=$tmp/unit/sigma-agent-lite.service out sec rc
  mkdir -p "$tmp/unit"
  sed 's|^ExecStart=.*|ExecStart=/bin/true|' "$UNIT" >"$copy"
  grep -q '^ExecStart=/bin/true$' "$copy"
  # verify exits 0 on unknown keys or bad values (it only warns), so any
  # output counts as a failure.
  out=$(systemd-analyze verify "$copy" 2>&1) && rc=0 || rc=$?
  if [ $rc != 0 ] || [ -n "$out" ]; then
    printf '%s\n' "$out" >&2
    echo "systemd-analyze verify failed (exit $rc)" >&2
    return 1
  fi
  echo "systemd-analyze verify: OK ($(systemd-analyze --version | head -1))"

  # Exposure score, computed offline from the file (systemd >= 250); without
  # --offline it would need a running systemd that has the unit loaded.
  if sec=$(systemd-analyze security --offline=true --no-pager "$copy" 2>&1); then
    printf '%s\n' "$sec" | grep -E 'Overall exposure level'
    local score
    score=$(printf '%s\n' "$sec" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
    if [ -z "$score" ] || awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s > m) }'; then
      echo "exposure score '${score}' is above MAX_EXPOSURE=$MAX_EXPOSURE" >&2
      printf '%s\n' "$sec" | grep '✗' >&2 || true
      return 1
    fi
  else
    echo "SKIP: systemd-analyze security --offline not supported here; exposure score not computed" >&2
  fi
}

run "promtool check rules"              check_rules
run "promtool test rules"               test_rules
run "dashboard JSON"                    check_dashboard_json
run "dashboard PromQL"                  check_dashboard_promql
run "metric names"                      check_metric_names
run "env template"                      check_env_template
run "routes example"                    check_routes_example
run "systemd unit"                      check_unit

echo
if [ $failed -gt 0 ]; then
  printf 'FAILED: %s\n' "${failures[@]}"
fi
echo "check-ops: $passed passed, $failed failed, $skipped skipped"
[ $failed -eq 0 ]
