#!/usr/bin/env bash
# Captures keepalived's IPv6 VRRPv3 adverts and its unsolicited neighbour advertisement (Debian keepalived
# 2.2.7 when these files were made) as golden bytes for agent/src/vrrp/tests/packet.rs. Needs root, keepalived
# and python3 (capture6_sniff.py reads the peer veth with an AF_PACKET socket; no tcpdump needed). One network
# namespace with a veth pair, DAD off so the link-local address is usable at once; addresses in 2001:2::/48
# only. Writes keepalived_v3_ipv6.hex (each advert's IPv6 packet, one per line: priority 150, then the
# priority 0 one keepalived sends on SIGTERM) and keepalived_ipv6_na.hex (Ethernet header, space, IPv6
# packet). Everything it creates is removed on exit. Usage: sudo bash capture6.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ns="vrrpcap6$$"
work=$(mktemp -d)
kpid=
cleanup() {
  [ -n "$kpid" ] && kill "$kpid" 2>/dev/null && wait "$kpid" 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
cat >"$work/k6.conf" <<'CONF'
global_defs {
  router_id cap6
  vrrp_version 3
}
vrrp_instance cap6 {
  interface va
  state MASTER
  virtual_router_id 51
  priority 150
  advert_int 1
  virtual_ipaddress {
    2001:2::10/128
  }
}
CONF
ip netns add "$ns"
ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
ip -n "$ns" link add va type veth peer name vb
for l in lo va vb; do ip -n "$ns" link set "$l" up; done
ip netns exec "$ns" python3 "$here/capture6_sniff.py" vb "$work/out.txt" 5 &
spid=$!
sleep 0.3
ip netns exec "$ns" keepalived -n -l -D --vrrp -f "$work/k6.conf" -p "$work/k.pid" -r "$work/v.pid" \
  >"$work/k.log" 2>&1 &
kpid=$!
sleep 3.5
kill -TERM "$kpid"; wait "$kpid" || true; kpid=
wait "$spid"
awk '$2 ~ /^6c/ {print $2}' "$work/out.txt" >"$here/keepalived_v3_ipv6.hex"
awk '$2 ~ /3aff2001/ {print $1" "$2; exit}' "$work/out.txt" >"$here/keepalived_ipv6_na.hex"
wc -l "$here/keepalived_v3_ipv6.hex" "$here/keepalived_ipv6_na.hex"
