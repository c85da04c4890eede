#!/usr/bin/env bash
# DHCP takeover: lbfleet's hot standby (two lbfleet-server processes on one database, boot::dhcp::leader) vs
# Kea's HA hook in hot-standby (two kea-dhcp4 with libdhcp_ha.so + libdhcp_lease_cmds.so, peers over HTTP on
# the segment), in one run, on the same lab: a bridge in a namespace made here, joined by veth pairs to the two
# servers (198.18.0.1 and 198.18.0.3) and to the client namespace (198.18.0.2), where lbfleet-dhcp-probe acts
# as a relay forwarding to both servers (the segment's broadcast address) and starts a DORA for a NEW MAC
# every 20 ms. A round: both servers up, the active one answering; `kill -9` of the active; the takeover time
# is from the kill to the first ACK the survivor gives a new client. Each system runs with its default timers
# and with tightened ones; the ratio is lbfleet/Kea (goal <= 0.5).
#
# Bounded: a fixed number of rounds, each probe bounded in clients and time (the Kea default-timers round may
# take ~70 s: its standby waits max-response-delay, 60 s).
#
# usage: bench/dhcp-takeover.sh [ROUNDS]     (as root; results on stdout, progress on stderr)
#   SERVER_BIN, PROBE_BIN: the binaries (default target/release/{lbfleet-server,lbfleet-dhcp-probe})
#   SYSTEMS: which to run (default "lbfleet kea"; ratios need both)
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-3}
SYSTEMS=${SYSTEMS:-lbfleet kea}
SERVER_BIN=${SERVER_BIN:-target/release/lbfleet-server}
PROBE_BIN=${PROBE_BIN:-target/release/lbfleet-dhcp-probe}
HOOKS=${KEA_HOOKS:-/usr/lib/x86_64-linux-gnu/kea/hooks}
ID=$$
NS_W=lbtw$ID NS_C=lbtc$ID NS_1=lbt1$ID NS_2=lbt2$ID
WORK=$(mktemp -d /tmp/lbfleet-bench-takeover.XXXXXX)
PID_1= PID_2= PROBE_PID=

for tool in kea-dhcp4 ip curl; do
  command -v "$tool" >/dev/null || { echo "bench-dhcp-takeover: $tool is missing (scripts/install-deps.sh installs it)" >&2; exit 1; }
done
for f in "$HOOKS/libdhcp_ha.so" "$HOOKS/libdhcp_lease_cmds.so"; do
  [ -e "$f" ] || { echo "bench-dhcp-takeover: $f is missing (kea-dhcp4-server)" >&2; exit 1; }
done
for b in "$SERVER_BIN" "$PROBE_BIN"; do
  [ -x "$b" ] || { echo "bench-dhcp-takeover: build first: cargo build --release -p lbfleet-server ($b)" >&2; exit 1; }
done

stop() { # PID variable names
  for v in "$@"; do
    local pid=${!v}
    if [ -n "$pid" ]; then
      kill -9 "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
      printf -v "$v" '%s' ''
    fi
  done
}

cleanup() {
  stop PID_1 PID_2 PROBE_PID
  for ns in "$NS_1" "$NS_2" "$NS_C" "$NS_W"; do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

ip netns add "$NS_W"
ip -n "$NS_W" link add br0 type bridge
ip -n "$NS_W" link set br0 up
join() { # namespace port address
  ip netns add "$1"
  ip -n "$1" link set lo up
  ip -n "$1" link add eth0 type veth peer name "$2" netns "$NS_W"
  ip -n "$NS_W" link set "$2" master br0 up
  ip -n "$1" addr add "$3/16" dev eth0
  ip -n "$1" link set eth0 up
}
join "$NS_1" p1 198.18.0.1
join "$NS_2" p2 198.18.0.3
join "$NS_C" pc 198.18.0.2
ip -n "$NS_C" route add default via 198.18.0.254

now() { date +%s.%N; }
ms_between() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%d", (b - a) * 1000 }'; }

# Starts the probe: new MACs from $1, every 20 ms, for at most $2 seconds; each ACK line is stamped.
start_probe() {
  local first=$1 seconds=$2
  : >"$WORK/acks"
  ip netns exec "$NS_C" "$PROBE_BIN" --server 255.255.255.255:67 --giaddr 198.18.0.2 --first "$first" \
    --count $((seconds * 50)) --rate 50 --timeout-ms 1500 2>/dev/null |
    while read -r line; do echo "$(now) $line"; done >"$WORK/acks" &
  PROBE_PID=$!
}

# Waits (at most $1 s) for an ACK stamped after $2; prints the stamp.
first_ack_after() {
  local deadline=$(($(date +%s) + $1)) t
  while [ "$(date +%s)" -le "$deadline" ]; do
    t=$(awk -v k="$2" '$2 == "ACK" && $1 > k { print $1; exit }' "$WORK/acks")
    [ -n "$t" ] && { echo "$t"; return 0; }
    sleep 0.01
  done
  return 1
}

stop_probe() {
  stop PROBE_PID
  ip netns pids "$NS_C" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
}

# One round with the servers already started, server 1 active: sets ROUND_MS to the takeover in ms.
round() { # first-mac max-seconds
  start_probe "$1" "$2"
  if ! first_ack_after 20 0 >/dev/null; then
    echo "no ACK before the kill; the servers' last log lines:" >&2
    tail -n 5 "$WORK"/*.log >&2 || true
    stop_probe
    return 1
  fi
  local killed t
  stop PID_1
  killed=$(now)
  if ! t=$(first_ack_after "$2" "$killed"); then
    echo "no takeover within $2 s" >&2
    stop_probe
    return 1
  fi
  stop_probe
  ROUND_MS=$(ms_between "$killed" "$t")
}

start_lbfleet() { # renew ttl
  rm -f "$WORK"/lbfleet.db*
  local i ns addr
  for i in 1 2; do
    ns=NS_$i; addr=198.18.0.$((i == 1 ? 1 : 3))
    mkdir -p "$WORK/boot$i"
    ip netns exec "${!ns}" "$SERVER_BIN" serve --database "sqlite://$WORK/lbfleet.db" --listen 127.0.0.1:18081 \
      --boot-interface eth0 --boot-server-address "$addr" --boot-subnet 198.18.0.0/16 \
      --boot-pool 198.18.1.0-198.18.255.254 --boot-tftp-port 0 --boot-max-discovered 30000 \
      --boot-dir "$WORK/boot$i" --boot-dhcp-leader-renew "$1" --boot-dhcp-leader-ttl "$2" \
      >/dev/null 2>"$WORK/lbfleet$i.log" &
    printf -v "PID_$i" '%s' $!
    for _ in $(seq 1 100); do
      ip netns exec "${!ns}" curl -fs -o /dev/null http://127.0.0.1:18081/healthz && break
      sleep 0.1
    done
    # Server 1 claims the vacant network at start; server 2 starts once it did.
    if [ "$i" = 1 ]; then sleep 0.5; fi
  done
}

kea_config() { # name heartbeat-delay max-response-delay max-ack-delay max-unacked-clients
  local timers=""
  if [ -n "$2" ]; then timers="\"heartbeat-delay\": $2, \"max-response-delay\": $3, \"max-ack-delay\": $4,"; fi
  cat >"$WORK/kea-$1.json" <<EOF
{ "Dhcp4": {
    "interfaces-config": { "interfaces": ["eth0"], "dhcp-socket-type": "raw" },
    "lease-database": { "type": "memfile", "persist": true, "name": "$WORK/kea-$1-leases4.csv", "lfc-interval": 0 },
    "multi-threading": { "enable-multi-threading": true, "thread-pool-size": 2, "packet-queue-size": 256 },
    "valid-lifetime": 3600,
    "subnet4": [ { "id": 1, "subnet": "198.18.0.0/16", "pools": [ { "pool": "198.18.1.0 - 198.18.255.254" } ] } ],
    "hooks-libraries": [
      { "library": "$HOOKS/libdhcp_lease_cmds.so" },
      { "library": "$HOOKS/libdhcp_ha.so", "parameters": { "high-availability": [ {
          "this-server-name": "$1",
          "mode": "hot-standby",
          $timers
          "max-unacked-clients": $5,
          "multi-threading": { "enable-multi-threading": true, "http-dedicated-listener": true,
                               "http-listener-threads": 1, "http-client-threads": 1 },
          "peers": [
            { "name": "server1", "url": "http://198.18.0.1:8001/", "role": "primary", "auto-failover": true },
            { "name": "server2", "url": "http://198.18.0.3:8001/", "role": "standby", "auto-failover": true }
          ]
      } ] } }
    ],
    "loggers": [ { "name": "kea-dhcp4", "severity": "INFO", "output_options": [ { "output": "$WORK/kea-$1.log" } ] } ]
} }
EOF
}

start_kea() { # heartbeat-delay max-response-delay max-ack-delay max-unacked-clients ("" = Kea's defaults)
  rm -f "$WORK"/kea-*-leases4.csv*
  kea_config server1 "$@"
  kea_config server2 "$@"
  local i
  for i in 1 2; do
    local ns=NS_$i
    mkdir -p "$WORK/kea$i"
    KEA_PIDFILE_DIR=$WORK/kea$i KEA_LOCKFILE_DIR=$WORK/kea$i ip netns exec "${!ns}" kea-dhcp4 -c "$WORK/kea-server$i.json" \
      >"$WORK/kea$i.out" 2>&1 &
    printf -v "PID_$i" '%s' $!
  done
  sleep 1
  kill -0 "$PID_1" 2>/dev/null && kill -0 "$PID_2" 2>/dev/null ||
    { echo "kea did not start" >&2; cat "$WORK"/kea*.out >&2; return 1; }
}

median() { sort -n | awk '{ a[NR] = $1 } END { if (NR == 0) print "n/a"; else print a[int((NR + 1) / 2)] }'; }

declare -A RESULT
run_system() { # label rounds max-seconds start-command...
  local label=$1 rounds=$2 max=$3 r ms
  shift 3
  : >"$WORK/times"
  for r in $(seq 1 "$rounds"); do
    "$@"
    if round $((r * 20000)) "$max"; then
      ms=$ROUND_MS
      echo "$ms" >>"$WORK/times"
      printf '%-40s round %d: takeover %6d ms\n' "$label" "$r" "$ms" >&2
    else
      printf '%-40s round %d: failed\n' "$label" "$r" >&2
    fi
    stop PID_1 PID_2
  done
  RESULT[$label]=$(median <"$WORK/times")
}

if [[ " $SYSTEMS " == *" lbfleet "* ]]; then
  run_system "lbfleet default (renew 250ms, ttl 1s)" "$ROUNDS" 20 start_lbfleet 250ms 1s
  run_system "lbfleet tightened (renew 100ms, ttl 400ms)" "$ROUNDS" 20 start_lbfleet 100ms 400ms
fi
# Kea's defaults: heartbeat-delay 10 s, max-response-delay 60 s, max-ack-delay 10 s, max-unacked-clients 10. The
# probe's clients send secs = 0, so they never count as unacked; max-unacked-clients 0 lets the standby take
# over when max-response-delay ends, which is Kea's quickest with these timers.
if [[ " $SYSTEMS " == *" kea "* ]]; then
  run_system "Kea HA default timers (unacked 0)" 1 90 start_kea "" "" "" 0
  run_system "Kea HA tightened (hb 1s, resp 2s, ack 1s)" "$ROUNDS" 20 start_kea 1000 2000 1000 0
fi

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0 && a != "n/a") printf "%.2f", a / b; else print "n/a" }'; }
echo
echo "DHCP takeover after kill -9 of the active server (median of rounds; ms from the kill to the survivor's"
echo "first ACK for a new client; relayed clients every 20 ms)"
for label in "lbfleet default (renew 250ms, ttl 1s)" "lbfleet tightened (renew 100ms, ttl 400ms)" \
  "Kea HA default timers (unacked 0)" "Kea HA tightened (hb 1s, resp 2s, ack 1s)"; do
  printf '  %-44s %8s ms\n' "$label" "${RESULT[$label]:-n/a}"
done
echo "  ratio lbfleet/Kea, default timers:   $(ratio "${RESULT["lbfleet default (renew 250ms, ttl 1s)"]:-n/a}" "${RESULT["Kea HA default timers (unacked 0)"]:-n/a}")"
echo "  ratio lbfleet/Kea, tightened timers: $(ratio "${RESULT["lbfleet tightened (renew 100ms, ttl 400ms)"]:-n/a}" "${RESULT["Kea HA tightened (hb 1s, resp 2s, ack 1s)"]:-n/a}")"
echo "  ratio lbfleet default/Kea tightened: $(ratio "${RESULT["lbfleet default (renew 250ms, ttl 1s)"]:-n/a}" "${RESULT["Kea HA tightened (hb 1s, resp 2s, ack 1s)"]:-n/a}")"
