//! What the guest tests of direct routing and tunnelling (`guest_dr`, `guest_tun`) share: the balancers' role
//! documents, shell functions for their guest scripts (counting answers, waiting for IPVS's counters, a VRRP
//! failover between two balancer namespaces) and the reading of `ipvsadm -Ln --stats`.

use serde_json::json;

/// The role document of balancer `node` in cluster `ext`: VRRP v3 (VRID 51, 100 ms) on `eth0` holding
/// `198.18.0.10/24`, active above priority 100 and backup otherwise, and one TCP service `198.18.0.10:80`
/// forwarded by `forward` (`dr`, `tun`) to `real_servers` (address, weight) on port 80, checked by TCP every
/// 200 ms.
pub fn balancer_role(
    node: &str,
    priority: u8,
    forward: &str,
    real_servers: &[(&str, u32)],
) -> Vec<u8> {
    let role = if priority > 100 { "active" } else { "backup" };
    let rs: Vec<_> = real_servers
        .iter()
        .map(|(a, w)| json!({"address": a, "port": 80, "weight": w, "enabled": true}))
        .collect();
    serde_json::to_vec(&json!({
        "generation": 1, "node": node, "cluster": "ext", "role": role,
        "vrrp": {"version": 3, "vrid": 51, "interface": "eth0", "priority": priority,
                 "advert_interval_ms": 100, "preempt": true, "vips": ["198.18.0.10/24"],
                 "unicast_peers": [], "garp": {"count": 2, "spacing_ms": 50, "refresh_ms": 0}},
        "services": [{
            "vip": "198.18.0.10", "port": 80, "protocol": "tcp", "scheduler": "wrr", "forward": forward,
            "persistence_s": 0,
            "check": {"kind": "tcp", "interval_ms": 200, "timeout_ms": 200, "rise": 1, "fall": 2,
                      "jitter_ms": 0},
            "real_servers": rs
        }]
    }))
    .unwrap_or_default()
}

/// Shell functions for the guest scripts (after `. /lib/guest-lib.sh`, with `request` defined: one
/// connection through the VIP, printing "exchange 0: ok" when answered):
/// - `count_answers N`: N requests, prints "answered K of N";
/// - `wait_conns NS N`: waits (bounded) until IPVS in namespace NS counts N connections (it folds its per-CPU
///   counters into the totals every 2 s);
/// - `failover`: takes `lb`'s link down, waits for `lb2` to become master and answer, sends 20 requests
///   (section `requests_failover`), waits for lb2's counters and prints them (section `ipvs2_stats`).
pub const SHELL: &str = r#"
count_answers() {
  ok=0; i=0
  while [ $i -lt $1 ]; do
    request | grep -q "exchange 0: ok" && ok=$((ok+1))
    i=$((i+1))
  done
  echo "answered $ok of $1"
}
wait_conns() {
  i=0
  while c=$(ip netns exec $1 ipvsadm -Ln --stats | awk '$1 == "TCP" { print $3; exit }'); [ "${c:-0}" -lt $2 ]; do
    i=$((i+1)); if [ $i -gt 80 ]; then echo "TIMEOUT waiting for the IPVS counters of $1"; break; fi
    sleep 0.1
  done
}
failover() {
  ip -n lb link set eth0 down
  waitfor /tmp/lb2.log "to=Master"
  i=0
  while ! request | grep -q "exchange 0: ok"; do
    i=$((i+1)); if [ $i -gt 100 ]; then echo "TIMEOUT waiting for an answer through lb2"; break; fi
  done
  run requests_failover count_answers 20
  wait_conns lb2 20
  run ipvs2_stats ip netns exec lb2 ipvsadm -Ln --stats
}
"#;

/// `(conns, out_pkts)` of the line with `key` (`ADDR:PORT`) in `ipvsadm -Ln --stats`.
pub fn stats_of(stats: &str, key: &str) -> (u64, u64) {
    let line = stats
        .lines()
        .find(|l| l.contains(key))
        .unwrap_or_else(|| panic!("no {key} in\n{stats}"));
    let w: Vec<&str> = line.split_whitespace().collect();
    let at = w
        .iter()
        .position(|x| x.contains(key))
        .unwrap_or_else(|| panic!("no {key} in {line}"));
    let num = |i: usize| -> u64 {
        let t = w.get(at + i).copied().unwrap_or_default();
        // ipvsadm abbreviates large counts (12K); these stay small.
        t.parse().unwrap_or_else(|_| panic!("{t:?} in {line}"))
    };
    (num(1), num(3))
}

/// The failover's checks: all 20 requests answered through `lb2`, whose IPVS counts the connections while
/// no reply passes it (`logs` are printed on a failure).
pub fn assert_failover_kept_working(requests: &str, stats: &str, logs: &str) {
    assert_eq!(requests.trim(), "answered 20 of 20", "{stats}\n{logs}");
    let (conns, out_pkts) = stats_of(stats, "198.18.0.10:80");
    assert!(conns >= 20, "{stats}");
    assert_eq!(out_pkts, 0, "lb2 saw outbound packets:\n{stats}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_lines_are_read_by_their_key() {
        let stats = "IP Virtual Server version 1.2.1 (size=4096)\n\
Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes\n\
  -> RemoteAddress:Port\n\
TCP  198.18.0.10:80                     61      366        0    24156        0\n\
  -> 198.18.0.51:80                     10       60        0     3960        0\n";
        assert_eq!(stats_of(stats, "198.18.0.10:80"), (61, 0));
        assert_eq!(stats_of(stats, "198.18.0.51:80"), (10, 0));
        let role: serde_json::Value =
            serde_json::from_slice(&balancer_role("lb2", 100, "tun", &[("198.18.1.51", 1)]))
                .unwrap_or_default();
        assert_eq!(role["role"], "backup");
        assert_eq!(role["services"][0]["forward"], "tun");
    }
}
