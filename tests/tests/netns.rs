//! The kit's netns module (`lbfleet_tests::netns`) on the host kernel: namespaces go away on drop, also when
//! the test panics, with what ran inside; a veth pair with addresses carries a datagram; `run_inside` puts a
//! thread (and what it starts) in the namespace. Needs root and iproute2 (`netns::require`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use lbfleet_tests::netns::{self, Netns};

fn exists(name: &str) -> bool {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

fn alive(pid: u32) -> bool {
    // Gone, or a zombie waiting to be reaped, counts as dead.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'))
    })
}

#[test]
fn a_namespace_and_what_runs_inside_go_on_drop_also_on_panic() {
    if !netns::require(&["sleep"]) {
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let failed = std::thread::spawn(move || {
        let ns = Netns::unique("lbk").unwrap();
        // Started outside any handle of ours (not an NsProcess): only the namespace's drop can stop it.
        let child = ns
            .command("sleep")
            .arg("300")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        tx.send((ns.name().to_owned(), child.id())).unwrap();
        std::mem::forget(child);
        lbfleet_tests::wait::wait_for(
            "sleep to run inside",
            Duration::from_secs(5),
            Duration::from_millis(10),
            || {
                Command::new("ip")
                    .args(["netns", "pids", ns.name()])
                    .output()
                    .is_ok_and(|o| !o.stdout.is_empty())
            },
        );
        panic!("a test failing with its namespace alive");
    })
    .join();
    assert!(failed.is_err(), "the thread should have panicked");
    let (name, pid) = rx.recv().unwrap();
    assert!(!exists(&name), "{name} left behind after a panic");
    lbfleet_tests::wait::wait_for(
        "the process inside to be killed",
        Duration::from_secs(5),
        Duration::from_millis(10),
        || !alive(pid),
    );
}

#[test]
fn a_veth_pair_with_addresses_carries_traffic_and_run_inside_is_inside() {
    if !netns::require(&["false"]) {
        return;
    }
    let a = Netns::unique("lbka").unwrap();
    let b = Netns::unique("lbkb").unwrap();
    netns::veth(&a, "va", &b, "vb").unwrap();
    a.addr_add("198.18.3.1/24", "va").unwrap();
    b.addr_add("198.18.3.2/24", "vb").unwrap();
    a.link_up("va").unwrap();
    b.link_up("vb").unwrap();
    assert!(a.holds("198.18.3.1") && !a.holds("198.18.3.2"));
    let (mac_a, mac_b) = (a.mac("va").unwrap(), b.mac("vb").unwrap());
    assert_eq!(mac_a.len(), 17, "{mac_a}");
    assert_ne!(mac_a, mac_b);
    assert!(a.mac("nope").is_err());
    // A socket keeps the namespace it was made in: one bound in `b`, one in `a`, a datagram across the veth.
    let rx = b
        .run_inside(|| std::net::UdpSocket::bind("198.18.3.2:0"))
        .unwrap()
        .unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let to = rx.local_addr().unwrap();
    let tx = a
        .run_inside(|| std::net::UdpSocket::bind("198.18.3.1:0"))
        .unwrap()
        .unwrap();
    // The first datagram may wait for ARP; a few, bounded, until one arrives.
    let mut buf = [0u8; 16];
    let got = (0..5).find_map(|_| {
        tx.send_to(b"over the veth", to).unwrap();
        rx.recv_from(&mut buf).ok()
    });
    let (n, from) = got.expect("a datagram from a to b");
    assert_eq!(
        (&buf[..n], from),
        (&b"over the veth"[..], tx.local_addr().unwrap())
    );
    assert!(a.exec(&["false"]).is_err());
    // The caller's own namespace does not have `b`'s address: that bind happened inside.
    assert!(std::net::UdpSocket::bind("198.18.3.2:0").is_err());
    // A panic inside is the caller's panic.
    let inner = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        b.run_inside(|| panic!("inside")).ok();
    }));
    assert!(inner.is_err());
    let names = (a.name().to_owned(), b.name().to_owned());
    drop((a, b));
    assert!(!exists(&names.0) && !exists(&names.1));
}
