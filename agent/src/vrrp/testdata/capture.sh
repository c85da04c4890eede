#!/usr/bin/env bash
# Captures VRRP adverts sent by Debian's keepalived (2.2.7 when these files were made) as golden bytes for
# agent/src/vrrp/tests.rs. Needs root, keepalived and tcpdump. Creates one network namespace with a veth pair
# (names carry this script's PID), runs keepalived in it once per case, and writes each advert's IP packet as
# hex (`<case>.hex`, one packet per line) next to this script. Addresses are in 198.18.0.0/15 only.
# Everything it creates is removed on exit, also on failure. Usage: sudo bash capture.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ns="vrrpcap$$"
work=$(mktemp -d)
kpid=
cleanup() {
  [ -n "$kpid" ] && kill "$kpid" 2>/dev/null && wait "$kpid" 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$ns"
ip -n "$ns" link add va type veth peer name vb
ip -n "$ns" addr add 198.18.0.2/24 dev va
ip -n "$ns" link set lo up
ip -n "$ns" link set va up
ip -n "$ns" link set vb up

# capture NAME CONFIG-BODY: runs keepalived with one vrrp_instance, waits for it to become MASTER and send
# adverts, stops it with SIGTERM (keepalived then sends priority 0), and keeps every VRRP packet it sent.
capture() {
  local name=$1 body=$2
  cat >"$work/$name.conf" <<CONF
global_defs {
  router_id cap
  $3
}
vrrp_instance cap {
  interface va
$body
}
CONF
  local pcap="$work/$name.pcap"
  ip netns exec "$ns" tcpdump -i va -U -w "$pcap" 'ip proto 112' 2>"$work/tcpdump.log" &
  local tpid=$!
  sleep 1
  ip netns exec "$ns" keepalived -n -l -D --vrrp -f "$work/$name.conf" -p "$work/k.pid" -r "$work/v.pid" \
    >"$work/$name.log" 2>&1 &
  kpid=$!
  # Until it has sent at least 3 adverts as MASTER.
  for _ in $(seq 1 100); do
    n=$(tcpdump -r "$pcap" 2>/dev/null | wc -l || true)
    [ "${n:-0}" -ge 3 ] && break
    sleep 0.2
  done
  kill -TERM "$kpid"; wait "$kpid" || true; kpid=
  sleep 0.5
  kill -INT "$tpid"; wait "$tpid" || true
  tcpdump -r "$pcap" -x 2>/dev/null | awk '
    /^[^ \t]/ { if (pkt != "") print pkt; pkt = ""; next }
    { for (i = 2; i <= NF; i++) pkt = pkt $i }
    END { if (pkt != "") print pkt }' >"$here/$name.hex"
  echo "$name: $(wc -l <"$here/$name.hex") packets"
}

capture keepalived_v2 "  state MASTER
  virtual_router_id 51
  priority 150
  advert_int 1
  virtual_ipaddress {
    198.18.0.10/32
  }" "vrrp_version 2"

capture keepalived_v2_auth "  state MASTER
  virtual_router_id 52
  priority 100
  advert_int 2
  authentication {
    auth_type PASS
    auth_pass s3cr3t
  }
  virtual_ipaddress {
    198.18.0.10/32
    198.18.0.11/32
  }" "vrrp_version 2"

capture keepalived_v3 "  state MASTER
  virtual_router_id 53
  priority 200
  advert_int 1
  virtual_ipaddress {
    198.18.0.10/32
  }" "vrrp_version 3"

capture keepalived_v3_multi "  state MASTER
  virtual_router_id 54
  priority 120
  advert_int 0.1
  virtual_ipaddress {
    198.18.0.10/32
    198.18.0.11/32
    198.18.0.12/32
    198.18.2.254/24
  }" "vrrp_version 3"
