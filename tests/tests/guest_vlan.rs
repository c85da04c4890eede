//! VM tier: tagged VLANs (issue 23 item 2) in a QEMU guest with Debian's kernel (the host kernel has no 8021q).
//!
//! Inside the guest: a bridge with three namespaces on it, balancers `a` (198.18.0.2) and `b` (198.18.0.3)
//! and a prober `pr` that lives on VLAN 100 only (198.18.100.200 on `eth0.100`). Each balancer runs
//! lbfleet-agent (`apply --role --watch`) with VRRP on VLAN 100: `a` (150) names it
//! `{"parent": "eth0", "vlan": 100}`, `b` (100) `"eth0.100"`; `a` has no such interface (the agent creates
//! it), `b` has one already (made by hand: the agent must leave it). Neither VLAN has an address of its own:
//! the adverts go out from the parent's. Then: `a` is master and the prober reaches the VIP on the VLAN; `a`'s
//! parent link goes down, `a` goes to FAULT and `b` takes the VIP; the link returns and `a` takes it back;
//! the roles drop the VLAN and `a`'s (created) `eth0.100` is gone while `b`'s (found) one stays.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use lbfleet_tests::guest::{self, Initramfs, Section, SharedGuest};
use serde_json::json;

const VIP: &str = "198.18.100.10";

fn role(generation: u64, node: &str, priority: u8, interface: serde_json::Value) -> Vec<u8> {
    let vip = if interface == json!("eth0") {
        "198.18.0.10/24"
    } else {
        "198.18.100.10/24"
    };
    serde_json::to_vec(&json!({
        "generation": generation, "node": node, "cluster": "ext", "role": "active",
        "vrrp": {"version": 3, "vrid": 51, "interface": interface, "priority": priority,
                 "advert_interval_ms": 100, "preempt": true, "vips": [vip], "unicast_peers": [],
                 "garp": {"count": 2, "spacing_ms": 50, "refresh_ms": 0}},
        "services": []
    }))
    .unwrap()
}

const SCRIPT: &str = r#"
# Busybox's shell runs its own applets before anything on PATH; iproute2's ip by path.
ip() { /usr/local/sbin/ip "$@"; }
. /lib/guest-lib.sh
# Waits (at most 30 s) until PATTERN is in FILE N times.
waitcount() {
  i=0
  while [ "$(grep -c "$2" "$1" 2>/dev/null)" -lt "$3" ]; do
    i=$((i+1))
    if [ $i -gt 300 ]; then echo "TIMEOUT waiting for $3 x '$2' in $1"; cat "$1"; return 1; fi
    sleep 0.1
  done
}
export RUST_LOG=info
mount -t tmpfs tmpfs /run

ip link add br0 type bridge
ip link set br0 up
for n in a b pr; do
  ip netns add $n
  ip link add v$n type veth peer name eth0 netns $n
  ip link set v$n master br0 up
  ip -n $n link set lo up
  ip -n $n link set eth0 up
done
ip -n a addr add 198.18.0.2/24 dev eth0
ip -n b addr add 198.18.0.3/24 dev eth0
ip -n b link add link eth0 name eth0.100 type vlan id 100
ip -n b link set eth0.100 up
ip -n pr link add link eth0 name eth0.100 type vlan id 100
ip -n pr addr add 198.18.100.200/24 dev eth0.100
ip -n pr link set eth0.100 up
run before_a ip -n a link show

cp /a1.json /tmp/a.json
cp /b1.json /tmp/b.json
ip netns exec a lbfleet-agent apply --role /tmp/a.json --watch --resync 1s --state-dir /tmp/sa > /tmp/a.log 2>&1 &
ip netns exec b lbfleet-agent apply --role /tmp/b.json --watch --resync 1s --state-dir /tmp/sb > /tmp/b.log 2>&1 &
waitcount /tmp/a.log "to=Master" 1
waitcount /tmp/b.log "to=Backup" 1
run created ip -n a -d link show eth0.100
# The VIP is added before the transition is logged; wait for it anyway (a loaded CI host), then for an answer.
retry 100 sh -c '/usr/local/sbin/ip -n a -4 addr show dev eth0.100 | grep -q 198.18.100.10/24' >/dev/null
run a_vip ip -n a -4 addr show dev eth0.100
run ping_a retry 20 ip netns exec pr ping -c 1 -W 1 198.18.100.10

# How often each has entered a state so far (b may have been master for a moment at startup, before a
# preempted it): the waits below count from here.
count() { grep -c "$2" "$1"; }
bm=$(count /tmp/b.log "to=Master"); bb=$(count /tmp/b.log "to=Backup"); am=$(count /tmp/a.log "to=Master")
# a's parent link goes down: a is FAULT (VIP released), b takes over on its VLAN.
ip -n a link set eth0 down
waitcount /tmp/a.log "to=Fault" 1
waitcount /tmp/b.log "to=Master" $((bm+1))
run a_vip_fault ip -n a -4 addr show dev eth0.100
run b_vip ip -n b -4 addr show dev eth0.100
run ping_b retry 20 ip netns exec pr ping -c 1 -W 1 198.18.100.10

# The link returns: a goes through BACKUP and takes the VIP back (preempt).
ip -n a link set eth0 up
waitcount /tmp/a.log "to=Master" $((am+1))
waitcount /tmp/b.log "to=Backup" $((bb+1))
run a_vip_back ip -n a -4 addr show dev eth0.100
run ping_back retry 20 ip netns exec pr ping -c 1 -W 1 198.18.100.10

# The roles drop the VLAN: a removes the eth0.100 it created, b keeps the one it found.
cp /a2.json /tmp/a.next && mv /tmp/a.next /tmp/a.json
cp /b2.json /tmp/b.next && mv /tmp/b.next /tmp/b.json
waitfor /tmp/a.log "VLAN interface removed"
waitfor /tmp/b.log "generation=2"
waitcount /tmp/a.log "to=Master" 3
run a_after ip -n a link show eth0.100
run b_after ip -n b link show eth0.100
run a_untagged ip -n a -4 addr show dev eth0
run logs sh -c 'echo "--- a"; cat /tmp/a.log; echo "--- b"; cat /tmp/b.log'
"#;

static GUEST: SharedGuest = SharedGuest::new();

fn section(name: &str) -> Option<Section> {
    let out = GUEST.output(
        |prereqs| {
            let agent = guest::workspace_binary("lbfleet-agent", "lbfleet-agent")?;
            let mut img =
                Initramfs::with_modules(prereqs, &["veth", "8021q", "bridge", "af_packet"])?;
            img.iproute2()?;
            img.binary(&agent, "/usr/bin/lbfleet-agent")?;
            img.file(
                "/a1.json",
                &role(1, "a", 150, json!({"parent": "eth0", "vlan": 100})),
            );
            img.file("/b1.json", &role(1, "b", 100, json!("eth0.100")));
            img.file("/a2.json", &role(2, "a", 150, json!("eth0")));
            img.file("/b2.json", &role(2, "b", 100, json!("eth0")));
            img.script(SCRIPT);
            Ok(img)
        },
        "lbfleet-guest-vlan-console.log",
    )?;
    Some(out.require_section(name))
}

fn logs() -> String {
    section("logs").map(|s| s.text).unwrap_or_default()
}

#[test]
fn the_agent_creates_the_vlan_and_holds_the_vip_on_it() {
    let Some(before) = section("before_a") else {
        return;
    };
    assert!(!before.text.contains("eth0.100"), "{}", before.text);
    let created = section("created").unwrap();
    assert_eq!(created.rc, 0, "{}\n{}", created.text, logs());
    assert!(
        created.text.contains("vlan protocol 802.1Q id 100"),
        "{}\n{}",
        created.text,
        logs()
    );
    assert!(
        created.text.contains("alias lbfleet-agent vlan"),
        "{}\n{}",
        created.text,
        logs()
    );
    let vip = section("a_vip").unwrap();
    assert!(
        vip.text.contains(&format!("{VIP}/24")),
        "{}\n{}",
        vip.text,
        logs()
    );
    let ping = section("ping_a").unwrap();
    assert_eq!(
        ping.rc,
        0,
        "the VIP answers on the VLAN: {}\n{}",
        ping.text,
        logs()
    );
}

#[test]
fn a_failover_on_the_vlan_follows_the_parents_link() {
    let Some(fault) = section("a_vip_fault") else {
        return;
    };
    assert!(
        !fault.text.contains(VIP),
        "a kept the VIP in FAULT: {}",
        fault.text
    );
    let b = section("b_vip").unwrap();
    assert!(
        b.text.contains(&format!("{VIP}/24")),
        "{}\n{}",
        b.text,
        logs()
    );
    let ping = section("ping_b").unwrap();
    assert_eq!(ping.rc, 0, "{}\n{}", ping.text, logs());
    let back = section("a_vip_back").unwrap();
    assert!(back.text.contains(&format!("{VIP}/24")), "{}", back.text);
    let ping = section("ping_back").unwrap();
    assert_eq!(ping.rc, 0, "{}\n{}", ping.text, logs());
    assert!(logs().contains("reason=link down"), "{}", logs());
}

#[test]
fn a_role_without_the_vlan_removes_only_the_vlan_the_agent_created() {
    let Some(a) = section("a_after") else {
        return;
    };
    assert_ne!(a.rc, 0, "a's created eth0.100 is still there: {}", a.text);
    let b = section("b_after").unwrap();
    assert_eq!(
        b.rc,
        0,
        "b's own eth0.100 was removed: {}\n{}",
        b.text,
        logs()
    );
    let untagged = section("a_untagged").unwrap();
    assert!(
        untagged.text.contains("198.18.0.10/24"),
        "{}",
        untagged.text
    );
}
