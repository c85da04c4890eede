#!/usr/bin/env bash
# DHCP throughput: lbfleet-server vs Kea (memfile, multi-threaded) vs dnsmasq (--no-ping), in one run, on the
# same lab: two network namespaces made here and joined by a veth pair, server 198.18.0.1/15, perfdhcp as a
# relay agent at 198.18.0.2. Each server hands out a /15 pool. perfdhcp runs DORA at increasing rates for a
# fixed time; a server "sustains" a rate when at most 1% of DISCOVER-OFFER and REQUEST-ACK exchanges drop.
# Every server restarts with an empty lease store for each step. Bounded: fixed steps, fixed seconds each.
#
# With --postgres both lease stores are one PostgreSQL 15 cluster this script starts (initdb in its work directory
# as the postgres user, Unix socket only, trust authentication, removed afterwards): lbfleet-server with
# `--database postgres://` against Kea with its PostgreSQL lease backend (`kea-admin db-init pgsql`), same
# cluster, same lab. Each step starts from an empty lease table (a new lbfleet database; Kea's lease4 truncated).
#
# usage: bench/dhcp.sh [SECONDS_PER_STEP] [--postgres]   (as root; results table on stdout)
set -euo pipefail
cd "$(dirname "$0")/.."

STEP_SECONDS=5 POSTGRES=0
for arg in "$@"; do
  case $arg in
    --postgres) POSTGRES=1 ;;
    ''|*[!0-9]*) echo "usage: bench/dhcp.sh [SECONDS_PER_STEP] [--postgres]" >&2; exit 2 ;;
    *) STEP_SECONDS=$arg ;;
  esac
done
RATES=(50 100 150 200 250 300 400 500 1000 2000 3000 4000 5000 6000 7000 8000 9000 10000 11000 12000 14000 16000)
SERVER_BIN=${SERVER_BIN:-target/release/lbfleet-server}
ID=$$
NS_S=lbbs$ID NS_C=lbbc$ID IF_S=lbbs$ID IF_C=lbbc$ID
WORK=$(mktemp -d /tmp/lbfleet-bench-dhcp.XXXXXX)
SERVER_PID=

for tool in perfdhcp kea-dhcp4 dnsmasq ip; do
  command -v "$tool" >/dev/null || { echo "bench-dhcp: $tool is missing (scripts/install-deps.sh installs it)" >&2; exit 1; }
done
[ -x "$SERVER_BIN" ] || { echo "bench-dhcp: build first: cargo build --release -p lbfleet-server" >&2; exit 1; }

PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
PG_DIR= PG_PORT=55432 PG_PID=
if [ "$POSTGRES" = 1 ]; then
  [ -n "$PG_BIN" ] && command -v kea-admin >/dev/null && command -v psql >/dev/null || {
    echo "bench-dhcp: --postgres needs postgresql and kea-admin (scripts/install-deps.sh installs them)" >&2; exit 1; }
fi

cleanup() {
  stop_server
  if [ -n "$PG_PID" ]; then
    kill -INT "$PG_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$PG_PID" 2>/dev/null || break; sleep 0.1; done
  fi
  ip netns pids "$NS_S" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  ip netns pids "$NS_C" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  ip netns del "$NS_S" 2>/dev/null || true
  ip netns del "$NS_C" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

stop_server() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
  fi
}

ip netns add "$NS_S"
ip netns add "$NS_C"
ip link add "$IF_S" type veth peer name "$IF_C"
ip link set "$IF_S" netns "$NS_S"
ip link set "$IF_C" netns "$NS_C"
ip -n "$NS_S" addr add 198.18.0.1/15 dev "$IF_S"
ip -n "$NS_C" addr add 198.18.0.2/15 dev "$IF_C"
for ns in "$NS_S" "$NS_C"; do ip -n "$ns" link set lo up; done
ip -n "$NS_S" link set "$IF_S" up
ip -n "$NS_C" link set "$IF_C" up

POOL_FIRST=198.18.1.0 POOL_LAST=198.19.255.254

# As the postgres user (the cluster's owner).
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; }
psql_pg() { as_pg psql -h "$PG_DIR" -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 -qAt "$@"; }

if [ "$POSTGRES" = 1 ]; then
  PG_DIR=$WORK/pg
  mkdir -p "$PG_DIR"
  chown postgres:postgres "$PG_DIR"
  chmod 755 "$WORK"
  as_pg "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres -A trust >/dev/null
  # Durable commits, as in production (no fsync=off here: both servers pay the same).
  as_pg "$PG_BIN/postgres" -D "$PG_DIR/data" -p "$PG_PORT" -k "$PG_DIR" -c listen_addresses= \
    -c max_connections=100 -c shared_buffers=128MB >"$WORK/pg.log" 2>&1 &
  PG_PID=$!
  for _ in $(seq 1 100); do psql_pg -d postgres -c 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.1; done
  psql_pg -d postgres -c 'CREATE DATABASE kea' >/dev/null
  as_pg kea-admin db-init pgsql -h "$PG_DIR" -P "$PG_PORT" -u postgres -n kea >"$WORK/kea-admin.log" 2>&1 || {
    echo "kea-admin db-init failed:" >&2; cat "$WORK/kea-admin.log" >&2; exit 1; }
fi

start_lbfleet() {
  local db
  if [ "$POSTGRES" = 1 ]; then
    psql_pg -d postgres -c 'DROP DATABASE IF EXISTS lbfleet' -c 'CREATE DATABASE lbfleet' >/dev/null
    db="postgres://postgres@localhost/lbfleet?host=$PG_DIR&port=$PG_PORT"
  else
    rm -f "$WORK"/lbfleet.db*
    db="sqlite://$WORK/lbfleet.db"
  fi
  ip netns exec "$NS_S" "$SERVER_BIN" serve --database "$db" --state-dir "$WORK" --listen 127.0.0.1:18081 \
    --boot-interface "$IF_S" --boot-server-address 198.18.0.1 --boot-subnet 198.18.0.0/15 \
    --boot-pool "$POOL_FIRST-$POOL_LAST" --boot-tftp-port 0 --boot-max-discovered 130000 \
    >"$WORK/lbfleet.out" 2>"$WORK/lbfleet.log" &
  SERVER_PID=$!
  for _ in $(seq 1 100); do
    ip netns exec "$NS_S" curl -fs -o /dev/null http://127.0.0.1:18081/healthz && return 0
    sleep 0.1
  done
  echo "lbfleet did not start" >&2; tail "$WORK/lbfleet.log" >&2; return 1
}

start_kea() {
  local leases
  if [ "$POSTGRES" = 1 ]; then
    psql_pg -d kea -c 'TRUNCATE lease4' >/dev/null
    leases="{ \"type\": \"postgresql\", \"name\": \"kea\", \"host\": \"$PG_DIR\", \"port\": $PG_PORT, \"user\": \"postgres\" }"
  else
    rm -f "$WORK"/kea-leases4.csv*
    leases="{ \"type\": \"memfile\", \"persist\": true, \"name\": \"$WORK/kea-leases4.csv\", \"lfc-interval\": 0 }"
  fi
  cat >"$WORK/kea.json" <<EOF
{ "Dhcp4": {
    "interfaces-config": { "interfaces": ["$IF_S"], "dhcp-socket-type": "udp" },
    "lease-database": $leases,
    "multi-threading": { "enable-multi-threading": true, "thread-pool-size": 2, "packet-queue-size": 256 },
    "valid-lifetime": 3600,
    "subnet4": [ { "id": 1, "subnet": "198.18.0.0/15", "pools": [ { "pool": "$POOL_FIRST - $POOL_LAST" } ] } ],
    "loggers": [ { "name": "kea-dhcp4", "severity": "WARN", "output_options": [ { "output": "$WORK/kea.log" } ] } ]
} }
EOF
  KEA_PIDFILE_DIR=$WORK KEA_LOCKFILE_DIR=$WORK ip netns exec "$NS_S" kea-dhcp4 -c "$WORK/kea.json" >"$WORK/kea.out" 2>&1 &
  SERVER_PID=$!
  sleep 1.5
  kill -0 "$SERVER_PID" 2>/dev/null || { echo "kea did not start" >&2; cat "$WORK/kea.out" >&2; return 1; }
}

start_dnsmasq() {
  rm -f "$WORK/dnsmasq.leases"
  ip netns exec "$NS_S" dnsmasq --no-daemon --conf-file=/dev/null --port=0 --interface="$IF_S" --bind-interfaces \
    --dhcp-range="$POOL_FIRST,$POOL_LAST,255.254.0.0,1h" --dhcp-leasefile="$WORK/dnsmasq.leases" \
    --dhcp-lease-max=200000 --no-ping --dhcp-authoritative --pid-file="$WORK/dnsmasq.pid" \
    >"$WORK/dnsmasq.out" 2>&1 &
  SERVER_PID=$!
  sleep 1
  kill -0 "$SERVER_PID" 2>/dev/null || { echo "dnsmasq did not start" >&2; cat "$WORK/dnsmasq.out" >&2; return 1; }
}

# Runs perfdhcp at $1 DORA/s; prints "achieved_rate max_drop_percent".
measure() {
  local rate=$1 out
  out=$(ip netns exec "$NS_C" timeout $((STEP_SECONDS + 15)) perfdhcp -4 -l "$IF_C" -r "$rate" -R 1000000 \
        -p "$STEP_SECONDS" 198.18.0.1 2>&1 || true)
  local achieved drops
  achieved=$(echo "$out" | awk '/^Rate:/ {print $2; exit}')
  drops=$(echo "$out" | awk '/drops ratio:/ {gsub("%",""); if ($3+0 > m) m = $3+0} END {print m+0}')
  local sent
  sent=$(echo "$out" | awk '/sent packets:/ {print $3; exit}')
  [ -n "$achieved" ] && [ -n "$sent" ] && [ "$sent" -gt 0 ] || { echo "0 100"; return; }
  echo "$achieved $drops"
}

SYSTEMS=(lbfleet kea dnsmasq)
[ "$POSTGRES" = 1 ] && SYSTEMS=(lbfleet kea)
declare -A BEST
for server in "${SYSTEMS[@]}"; do
  BEST[$server]=0
  for rate in "${RATES[@]}"; do
    "start_$server"
    read -r achieved drops < <(measure "$rate")
    stop_server
    ok=$(awk -v d="$drops" -v a="$achieved" -v r="$rate" 'BEGIN { print (d <= 1.0 && a >= 0.95 * r) ? "yes" : "no" }')
    printf '%-8s rate %6s/s  achieved %9s/s  max drops %6s%%  %s\n' "$server" "$rate" "$achieved" "$drops" "$ok" >&2
    if [ "$ok" = yes ]; then BEST[$server]=$rate; else break; fi
  done
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
echo
echo "DHCP DORA/s sustained with <= 1% drops (perfdhcp, ${STEP_SECONDS}s per step, /15 pool, fresh lease store per step)"
if [ "$POSTGRES" = 1 ]; then
  printf '  %-36s %8s\n' "lbfleet (PostgreSQL, group commit)" "${BEST[lbfleet]}"
  printf '  %-36s %8s\n' "Kea, PostgreSQL lease backend, 2 thr" "${BEST[kea]}"
  echo "  ratio lbfleet/kea (same PostgreSQL): $(ratio "${BEST[lbfleet]}" "${BEST[kea]}")"
  exit 0
fi
printf '  %-28s %8s\n' "lbfleet (SQLite, group commit)" "${BEST[lbfleet]}"
printf '  %-28s %8s\n' "Kea memfile, 2 threads" "${BEST[kea]}"
printf '  %-28s %8s\n' "dnsmasq --no-ping" "${BEST[dnsmasq]}"
echo "  ratio lbfleet/kea:     $(ratio "${BEST[lbfleet]}" "${BEST[kea]}")"
echo "  ratio lbfleet/dnsmasq: $(ratio "${BEST[lbfleet]}" "${BEST[dnsmasq]}")"
