#!/usr/bin/env bash
# Measures what TLS to PostgreSQL costs the agent: for each binary given, VmRSS/VmHWM after
# start (database configured, not yet read) and after reads over TLS (verify-full), and the
# duration of the first read (TCP connect + TLS handshake + SCRAM + the cycle's transaction),
# as /metrics reports it (sigma_route_fetch_duration_seconds). Starts a throwaway PostgreSQL
# with ssl = on on 127.0.0.1 and certificates made here, as tests/common/pg_tls.rs does.
#   scripts/tls-measure.sh NAME=PATH_TO_BINARY [NAME=PATH ...]   (NAME no-tls*: sslmode=disable)
# Needs Debian's postgresql and the openssl command; as root, the server runs as `postgres`.
set -euo pipefail
RUNS=${RUNS:-15}
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
dir=$(mktemp -d /tmp/sigma-tls-measure.XXXXXX)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() { as_pg "$pgbin/pg_ctl" stop -m immediate -D "$dir/data" >/dev/null 2>&1 || true; rm -rf "$dir"; }
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cd "$dir"
cat > openssl.cnf <<'CNF'
[req]
distinguished_name = dn
prompt = no
[dn]
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost
CNF
ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
openssl req -x509 -config openssl.cnf -extensions ca -days 2 "${ec[@]}" -keyout ca.key -out ca.pem -subj "/CN=measure CA" 2>/dev/null
openssl req -new -config openssl.cnf "${ec[@]}" -keyout server.key -out server.csr -subj /CN=localhost 2>/dev/null
openssl x509 -req -days 2 -in server.csr -CA ca.pem -CAkey ca.key -set_serial 2 -extfile openssl.cnf -extensions server -out server.crt 2>/dev/null
chmod 600 server.key; chmod 755 "$dir"
[ "$(id -u)" = 0 ] && chown -R postgres:postgres "$dir"
as_pg "$pgbin/initdb" -D "$dir/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 --no-sync -E UTF8 --locale=C >/dev/null
as_pg "$pgbin/pg_ctl" start -w -D "$dir/data" -l "$dir/pg.log" -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir -c ssl=on -c ssl_cert_file=$dir/server.crt -c ssl_key_file=$dir/server.key -c fsync=off" >/dev/null
psql() { as_pg "$pgbin/psql" -h "$dir" -p "$port" -U postgres -qAtX -v ON_ERROR_STOP=1 "$@"; }
psql -d postgres -c "CREATE ROLE sigma_agent LOGIN PASSWORD 'measure-pw'" -c "CREATE DATABASE sigma"
psql -d sigma -f "$OLDPWD/tests/fixtures/schema.sql" >/dev/null
psql -d sigma -c "GRANT SELECT ON vps, envoy_nodes, envoy_routes TO sigma_agent" \
  -c "INSERT INTO vps (id, hostname, status) VALUES (gen_random_uuid(), 'measure-vps', 'active')"
cd "$OLDPWD"
tls_url="postgres://sigma_agent:measure-pw@localhost:$port/sigma?sslmode=verify-full&sslrootcert=$dir/ca.pem"
plain_url="postgres://sigma_agent:measure-pw@localhost:$port/sigma?sslmode=disable"

kb() { awk -v k="$2:" '$1==k {print $2}' "/proc/$1/status"; }
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v k="$2" '$1==k {print $2}'; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# RSS = RssAnon (this process's heap and stacks) + RssFile (binary and shared libraries,
# whose pages other processes using the same libraries share). kB, medians of $RUNS runs.
printf '%-12s %9s | %-22s | %-22s | %8s | %s\n' binary bytes "after start RSS(anon+file)" \
    "after reads RSS(anon+file) HWM" "1st read" "exec --version x100"
for spec in "$@"; do
    name=${spec%%=*}; bin=${spec#*=}
    # A binary named no-tls* (built without the feature) reads in clear: the baseline.
    case $name in no-tls*) url=$plain_url ;; *) url=$tls_url ;; esac
    idle=() ; busy=() ; ms=()
    for i in $(seq "$RUNS"); do
        mport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
        # After start: the database is configured (roots loaded) but not read (no --health-probe).
        "$bin" --database-url "$url" --hostname measure-vps --metrics-listen "127.0.0.1:$mport" 2>/dev/null &
        pid=$!
        for _ in $(seq 100); do curl -sf "http://127.0.0.1:$mport/healthz" >/dev/null && break; sleep 0.02; done
        idle+=("$(kb $pid VmRSS) $(kb $pid RssAnon) $(kb $pid RssFile)")
        kill $pid; wait $pid 2>/dev/null || true
        # After reads: one cycle a minute, so the metric is the first read (connect included).
        "$bin" --health-probe --health-probe-interval 60 --database-url "$url" --hostname measure-vps \
            --metrics-listen "127.0.0.1:$mport" 2>/dev/null &
        pid=$!
        for _ in $(seq 200); do
            v=$(metric "$mport" sigma_route_fetch_duration_seconds 2>/dev/null || true)
            [ -n "$v" ] && [ "$v" != 0 ] && break; sleep 0.02
        done
        [ "$(metric "$mport" sigma_route_source_up)" = 1 ] || { echo "$name: database read failed" >&2; kill $pid; exit 1; }
        ms+=("$(awk -v s="$v" 'BEGIN {printf "%.2f", s*1000}')")
        busy+=("$(kb $pid VmRSS) $(kb $pid RssAnon) $(kb $pid RssFile) $(kb $pid VmHWM)")
        threads=$(ls /proc/$pid/task | wc -l)
        kill $pid; wait $pid 2>/dev/null || true
    done
    col() { printf '%s\n' "${@:2}" | cut -d' ' -f"$1" | median; }
    # Process start alone (dynamic loading included): 100 runs of --version.
    t0=$(date +%s%N); for _ in $(seq 100); do "$bin" --version >/dev/null; done; t1=$(date +%s%N)
    printf '%-12s %9s | %5s (%4s+%4s) kB | %5s (%4s+%4s) %5s kB | %5s ms | %4s ms   threads %s\n' "$name" "$(stat -c %s "$bin")" \
        "$(col 1 "${idle[@]}")" "$(col 2 "${idle[@]}")" "$(col 3 "${idle[@]}")" \
        "$(col 1 "${busy[@]}")" "$(col 2 "${busy[@]}")" "$(col 3 "${busy[@]}")" "$(col 4 "${busy[@]}")" \
        "$(printf '%s\n' "${ms[@]}" | median)" "$(( (t1 - t0) / 1000000 ))" "$threads"
done
