# sigma-agent-lite — `make run` to see it work, `make test` for everything CI checks.
CARGO   ?= cargo
PREFIX  ?= /usr/local
BINDIR  ?= $(PREFIX)/bin
DESTDIR ?=
SYSCONFDIR ?= /etc
UNITDIR ?= /lib/systemd/system
BIN     := target/release/sigma-agent-lite

.PHONY: all build run test test-default test-nopg lint ops install-check interop fleet-smoke bench fleet install uninstall clean

all: build

build:
	$(CARGO) build --release

# The agent's main job on loopback routes shipped in scripts/: one backend up, one down.
run: build
	RUST_LOG=$${RUST_LOG:-info} $(BIN) --health-probe --health-probe-interval 5 \
		--routes-file scripts/routes.local --metrics-listen 127.0.0.1:9102

# Every `unsafe` block says why it is sound in a `// SAFETY:` comment (tests and benches too).
CLIPPY_FLAGS := -D warnings -W clippy::undocumented_unsafe_blocks

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- $(CLIPPY_FLAGS)
	$(CARGO) clippy --all-targets --no-default-features -- $(CLIPPY_FLAGS)
	$(CARGO) clippy --all-targets --no-default-features --features postgres -- $(CLIPPY_FLAGS)

test-default:
	$(CARGO) test

test-nopg:
	$(CARGO) test --no-default-features

ops:
	scripts/check-ops.sh

install-check:
	scripts/check-install.sh

# The official MCP Python SDK (PyPI `mcp`, in a virtualenv) against --mcp-stdio and --mcp-http;
# MCP Inspector's CLI and the TypeScript SDK (npm, on Node 22) against --mcp-http.
interop:
	$(CARGO) build
	tests/mcp_interop.sh
	tests/mcp_http_clients.sh

# `make fleet` in small: 4 agents, 30 s, both restarts; checks that it all works, not the figures.
fleet-smoke:
	scripts/fleet.sh --smoke

test: lint test-default test-nopg ops install-check interop fleet-smoke

bench:
	scripts/bench.sh

# 300 agents against one PostgreSQL behind PgBouncer, both restarted mid-run (~4 min; not in
# `make test`): target/fleet.json, target/fleet.png. See the README's "Fleet scale".
fleet:
	scripts/fleet.sh

install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(BINDIR)/sigma-agent-lite
	install -d $(DESTDIR)$(UNITDIR)
	sed 's|/usr/local/bin/sigma-agent-lite|$(BINDIR)/sigma-agent-lite|' \
		scripts/systemd/sigma-agent-lite.service > $(DESTDIR)$(UNITDIR)/sigma-agent-lite.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/sigma-agent-lite.service
	test -e $(DESTDIR)$(SYSCONFDIR)/default/sigma-agent-lite || \
		install -D -m 0600 scripts/sigma-agent-lite.env $(DESTDIR)$(SYSCONFDIR)/default/sigma-agent-lite
	install -D -m 0644 scripts/routes.example $(DESTDIR)$(SYSCONFDIR)/sigma-agent-lite/routes.example

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/sigma-agent-lite
	rm -f $(DESTDIR)$(UNITDIR)/sigma-agent-lite.service
	rm -f $(DESTDIR)$(SYSCONFDIR)/sigma-agent-lite/routes.example
	@echo "kept $(DESTDIR)$(SYSCONFDIR)/default/sigma-agent-lite (your settings); remove it by hand if unwanted"

clean:
	$(CARGO) clean
