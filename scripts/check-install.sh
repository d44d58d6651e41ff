#!/usr/bin/env bash
# `make install DESTDIR=<temp dir>` installs exactly the expected files with the expected
# modes, the unit points at the installed binary, and `make uninstall` removes them again
# (keeping the operator's environment file). Run by `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=$(mktemp -d)
trap 'rm -rf "$dest"' EXIT
make --no-print-directory install DESTDIR="$dest" PREFIX=/opt/sal >/dev/null
got=$(cd "$dest" && find . -type f -printf '%m %p\n' | sort)
want="600 ./etc/default/sigma-agent-lite
644 ./etc/sigma-agent-lite/routes.example
644 ./lib/systemd/system/sigma-agent-lite.service
755 ./opt/sal/bin/sigma-agent-lite"
if [ "$got" != "$want" ]; then
    printf 'check-install: FAIL, installed files differ\n--- want\n%s\n--- got\n%s\n' "$want" "$got"
    exit 1
fi
grep -qx 'ExecStart=/opt/sal/bin/sigma-agent-lite' "$dest/lib/systemd/system/sigma-agent-lite.service" || {
    echo "check-install: FAIL, the unit's ExecStart does not name the installed binary"; exit 1; }
"$dest/opt/sal/bin/sigma-agent-lite" --version | grep -q '^sigma-agent-lite ' || {
    echo "check-install: FAIL, the installed binary does not run"; exit 1; }
make --no-print-directory uninstall DESTDIR="$dest" PREFIX=/opt/sal >/dev/null
left=$(cd "$dest" && find . -type f | sort)
if [ "$left" != "./etc/default/sigma-agent-lite" ]; then
    printf 'check-install: FAIL, uninstall left:\n%s\n' "$left"; exit 1
fi
echo "check-install: 4 files installed as expected, uninstall kept only the environment file"
