#!/usr/bin/env python3
"""Interop test: the official MCP Python SDK (`mcp` on PyPI) against the agent's MCP server, over
stdio and over Streamable HTTP (`--mcp-http`, the SDK's `streamable_http_client`).

Spawns `sigma-agent-lite --mcp-stdio --routes-file FILE --health-probe --health-probe-interval 1
--metrics-port 0` once per SDK client mode and, in each: lists the tools, calls
`query_backend_health` without and with `unreachable_only`, and checks that a bad argument is
a tool error (`isError`) and an unknown tool a JSON-RPC -32602. The routes file points at one
listening port on 127.0.0.1 (reachable) and one closed port (refused), so the answers are
deterministic once the first probe cycle has completed (the test polls for that, with a
deadline). The SDK validates `structuredContent` against the tool's `outputSchema` itself.

Client modes (mcp >= 2.x `Client(mode=...)`): "legacy" (initialize handshake, 2025-11-25),
"auto" (probes server/discover, adopts 2026-07-28 when offered) and "2026-07-28" (pinned, no
probe). Modes the installed SDK lacks are reported and skipped. A final raw-pipe check sends
lines the SDK never would (too-long line, junk, notification, big id).

Over HTTP the agent runs with `--mcp-http --metrics-listen 127.0.0.1:0` (the port is read from
its start-up log line) and the SDK's `Client` is given the URL `http://127.0.0.1:PORT/mcp`.

Usage: tests/mcp_interop.py [--binary PATH] [--modes legacy,auto,2026-07-28] [--transports stdio,http]
Exit status: 0 all passed, 1 a check failed, 2 the environment is unusable.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import anyio

try:
    import mcp
    from mcp.client.client import Client
    from mcp.client.stdio import StdioServerParameters
    from mcp.shared.exceptions import MCPError
except ImportError as e:  # pragma: no cover - environment problem, not a test failure
    print(f"error: the MCP Python SDK is not importable ({e}); pip install mcp", file=sys.stderr)
    sys.exit(2)

TOOL = "query_backend_health"
FIRST_CYCLE_DEADLINE_S = 20.0
"""How long to wait for the first probe cycle: interval 1 s plus probe timeouts, with slack."""
REQUEST_TIMEOUT_S = 10.0
ALL_MODES = ["legacy", "auto", "2026-07-28"]
EXPECTED_VERSION = {"legacy": "2025-11-25", "auto": "2026-07-28", "2026-07-28": "2026-07-28"}


class Failure(Exception):
    pass


def check(cond: bool, what: str) -> None:
    if not cond:
        raise Failure(what)


def sdk_modes() -> list[str]:
    """The client modes the installed SDK offers, of the ones this test knows."""
    fields = getattr(Client, "__dataclass_fields__", {})
    if "mode" not in fields:
        return []  # mcp 1.x: handshake only, through ClientSession (not covered here)
    try:
        from mcp_types.version import MODERN_PROTOCOL_VERSIONS
    except ImportError:
        MODERN_PROTOCOL_VERSIONS = ()
    return [m for m in ALL_MODES if m in ("legacy", "auto") or m in MODERN_PROTOCOL_VERSIONS]


def backends_fixture(tmp: Path) -> tuple[Path, socket.socket]:
    """A routes file with one reachable and one refused backend; keep the socket open."""
    up = socket.socket()
    up.bind(("127.0.0.1", 0))
    up.listen(64)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()  # nothing listens there now: connect is refused
    routes = tmp / "routes.txt"
    routes.write_text(
        f"interop-node route-up 10001 127.0.0.1:{up.getsockname()[1]}\n"
        f"interop-node route-down 10002 127.0.0.1:{closed_port}\n"
    )
    return routes, up


def server_args(routes: Path) -> list[str]:
    return [
        "--mcp-stdio",
        "--routes-file",
        str(routes),
        "--health-probe",
        "--health-probe-interval",
        "1",
        "--metrics-port",
        "0",
    ]


def text_of(result) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


async def call_until_probed(client: Client) -> dict:
    """Calls the tool until the first cycle has completed; returns structuredContent."""
    deadline = time.monotonic() + FIRST_CYCLE_DEADLINE_S
    while True:
        result = await client.call_tool(TOOL, {})
        check(not result.is_error, f"tool error: {text_of(result)}")
        sc = result.structured_content
        check(isinstance(sc, dict), f"structuredContent is {type(sc).__name__}")
        check(json.loads(text_of(result)) == sc, "text block differs from structuredContent")
        if sc["status"] == "current":
            return sc
        check(sc["status"] == "awaiting_first_cycle", f"unexpected status {sc['status']}: {sc['note']}")
        check("no probe cycle has completed yet" in sc["note"], f"note: {sc['note']}")
        if time.monotonic() > deadline:
            raise Failure(f"no probe cycle completed within {FIRST_CYCLE_DEADLINE_S}s")
        await anyio.sleep(0.3)


class HttpAgent:
    """The agent with MCP over Streamable HTTP on a loopback port; stopped on exit."""

    def __init__(self, binary: str, routes: Path):
        args = server_args(routes)
        args = [a for a in args if a != "--mcp-stdio"]
        i = args.index("--metrics-port")
        del args[i : i + 2]
        self.proc = subprocess.Popen(
            [binary, "--mcp-http", "--metrics-listen", "127.0.0.1:0", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 10
        self.url = None
        assert self.proc.stderr is not None
        while self.url is None:
            line = self.proc.stderr.readline()
            if not line or time.monotonic() > deadline:
                raise Failure(f"agent did not start: {line!r}")
            if "; http 127.0.0.1:" in line:
                port = line.split("; http 127.0.0.1:")[1].split()[0].rstrip(";")
                self.url = f"http://127.0.0.1:{port}/mcp"
        # Keep draining stderr so the agent never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()

    def __enter__(self) -> "HttpAgent":
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


async def run_mode(binary: str, routes: Path, mode: str, transport: str = "stdio") -> None:
    if transport == "http":
        with HttpAgent(binary, routes) as agent:
            await run_checks(agent.url, mode)
    else:
        await run_checks(StdioServerParameters(command=binary, args=server_args(routes)), mode)


async def run_checks(server, mode: str) -> None:
    async with Client(server, mode=mode, read_timeout_seconds=REQUEST_TIMEOUT_S) as client:
        version = client.protocol_version
        check(version == EXPECTED_VERSION[mode], f"negotiated {version}, expected {EXPECTED_VERSION[mode]}")

        listed = await client.list_tools()
        names = [t.name for t in listed.tools]
        check(names == [TOOL], f"tools/list gave {names}")
        tool = listed.tools[0]
        check(tool.annotations is not None and tool.annotations.read_only_hint is True, "readOnlyHint")
        check(tool.output_schema is not None and tool.output_schema.get("type") == "object", "outputSchema")
        check(tool.input_schema.get("additionalProperties") is False, "inputSchema")

        sc = await call_until_probed(client)
        check(sc["summary"]["routes"] == 2, f"summary {sc['summary']}")
        check(sc["summary"]["cycles_completed"] >= 1, f"summary {sc['summary']}")
        by_route = {b["route"]: b for b in sc["backends"]}
        check(set(by_route) == {"route-up", "route-down"}, f"backends {list(by_route)}")
        up, down = by_route["route-up"], by_route["route-down"]
        check(up["reachable"] is True and up["reason"] is None, f"route-up: {up}")
        check(isinstance(up["latency_ms"], (int, float)), f"route-up latency: {up}")
        check(up["address"] == "127.0.0.1", f"route-up address: {up}")
        check(down["reachable"] is False and down["reason"] == "refused", f"route-down: {down}")
        check(down["latency_ms"] is None and down["consecutive_failures"] >= 1, f"route-down: {down}")

        only = await client.call_tool(TOOL, {"unreachable_only": True})
        check(not only.is_error, f"filtered call failed: {text_of(only)}")
        routes_only = [b["route"] for b in only.structured_content["backends"]]
        check(routes_only == ["route-down"], f"unreachable_only gave {routes_only}")

        bad = await client.call_tool(TOOL, {"unreachable_only": "yes"})
        check(bad.is_error is True, "a string for unreachable_only must be a tool error")
        check("boolean" in text_of(bad), f"bad-argument message: {text_of(bad)}")
        unknown_arg = await client.call_tool(TOOL, {"node": "x"})
        check(unknown_arg.is_error is True, "an unknown argument must be a tool error")

        try:
            await client.call_tool("no_such_tool", {})
        except MCPError as e:
            check(e.code == -32602, f"unknown tool gave code {e.code}")
        else:
            raise Failure("unknown tool did not raise")

        if mode == "legacy":
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                await client.send_ping()


def raw_pipe_checks(binary: str, routes: Path) -> None:
    """Lines no SDK sends, straight down the pipe; one reply line per request, none otherwise."""
    lines = [
        b"x" * ((1 << 20) + 10),  # too long: -32700, id null
        b'{"jsonrpc":"2.0","id":1,"method":"ping"}',  # still served after the long line
        b"not json",
        b'{"jsonrpc":"2.0","method":"notifications/initialized"}',  # no reply
        b'{"jsonrpc":"2.0","id":123456789012345678901234567890,"method":"ping"}',
        b'[{"jsonrpc":"2.0","id":2,"method":"ping"}]',
        b'{"jsonrpc":"2.0","id":"d","method":"server/discover","params":{"_meta":'
        b'{"io.modelcontextprotocol/protocolVersion":"2026-07-28",'
        b'"io.modelcontextprotocol/clientCapabilities":{}}}}',
        b'{"jsonrpc":"2.0","id":"v","method":"tools/list","params":{"_meta":'
        b'{"io.modelcontextprotocol/protocolVersion":"1900-01-01",'
        b'"io.modelcontextprotocol/clientCapabilities":{}}}}',
    ]
    proc = subprocess.run(
        [binary, *server_args(routes)],
        input=b"\r\n".join(lines) + b"\r\n",
        capture_output=True,
        timeout=30,
    )
    out = proc.stdout.decode().splitlines()
    check(len(out) == 7, f"expected 7 reply lines, got {len(out)}: {out!r}; stderr: {proc.stderr[-500:]!r}")
    replies = [json.loads(x) for x in out]
    check(replies[0]["id"] is None and replies[0]["error"]["code"] == -32700, f"too long: {replies[0]}")
    check(replies[1] == {"jsonrpc": "2.0", "id": 1, "result": {}}, f"ping: {replies[1]}")
    check(replies[2]["error"]["code"] == -32700, f"junk: {replies[2]}")
    check('"id":123456789012345678901234567890,' in out[3], f"big id: {out[3]}")
    check(replies[4]["error"]["code"] == -32600, f"batch: {replies[4]}")
    check("2026-07-28" in replies[5]["result"]["supportedVersions"], f"discover: {replies[5]}")
    err = replies[6]["error"]
    check(err["code"] == -32022 and err["data"]["requested"] == "1900-01-01", f"-32022: {replies[6]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", default=os.environ.get("SIGMA_AGENT_BIN", "target/debug/sigma-agent-lite"))
    ap.add_argument("--modes", default=",".join(ALL_MODES))
    ap.add_argument("--transports", default="stdio,http")
    args = ap.parse_args()
    if not os.access(args.binary, os.X_OK):
        print(f"error: {args.binary} is not an executable; cargo build first", file=sys.stderr)
        return 2
    available = sdk_modes()
    wanted = [m for m in args.modes.split(",") if m]
    version = getattr(mcp, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version

        version = dist_version("mcp")
    print(f"mcp SDK {version}; client modes available: {available or 'none (1.x API)'}")
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        routes, listener = backends_fixture(Path(tmp))
        with listener:
            for transport in [t for t in args.transports.split(",") if t]:
                for mode in wanted:
                    if mode not in available:
                        print(f"SKIP mode={mode} transport={transport}: not supported by this SDK")
                        continue
                    try:
                        anyio.run(run_mode, args.binary, routes, mode, transport)
                        print(f"PASS mode={mode} transport={transport}")
                    except Exception as e:  # noqa: BLE001 - report every failure, keep going
                        failed += 1
                        print(f"FAIL mode={mode} transport={transport}: {type(e).__name__}: {e}")
            try:
                raw_pipe_checks(args.binary, routes)
                print("PASS raw pipe")
            except Exception as e:  # noqa: BLE001
                failed += 1
                print(f"FAIL raw pipe: {type(e).__name__}: {e}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
