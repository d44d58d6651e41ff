#!/bin/sh
# Runs tests/mcp_interop.py: the official MCP Python SDK against `sigma-agent-lite --mcp-stdio`,
# in each client mode the SDK has (legacy handshake, auto, pinned 2026-07-28).
# Env: MCP_VENV (default /tmp/mcpvenv; created with `pip install mcp` if missing),
#      SIGMA_AGENT_BIN (default target/debug/sigma-agent-lite; built if it is the default),
#      MCP_MODES (default legacy,auto,2026-07-28).
set -eu
cd "$(dirname "$0")/.."
venv=${MCP_VENV:-/tmp/mcpvenv}
bin=${SIGMA_AGENT_BIN:-target/debug/sigma-agent-lite}
if ! "$venv/bin/python" -c 'import mcp' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet mcp
fi
if [ -z "${SIGMA_AGENT_BIN:-}" ]; then
    cargo build --quiet
fi
exec "$venv/bin/python" tests/mcp_interop.py --binary "$bin" --modes "${MCP_MODES:-legacy,auto,2026-07-28}"
