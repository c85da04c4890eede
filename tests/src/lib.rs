//! lbfleet's test kit, used by the tests of every crate:
//! - `server`: the component tests' server fixture (the real server on 127.0.0.1:0, users and tokens);
//! - `wait`: the one deadline helper (wait for an observable condition, never a fixed sleep);
//! - `prereq`: the one rule for a missing prerequisite (fail; `LBFLEET_SKIP` only outside CI);
//! - `guest`: QEMU guests with Debian's kernel and real IPVS (initramfs built with `lbfleet-images`), and
//!   `workspace_binary`, which locates the binaries built before the tests;
//! - `netns`: network namespaces (deleted on drop), veth pairs, addresses, commands and threads inside a
//!   namespace, and the netns prerequisite check (`require`), for every netns test and lab;
//! - `postgres`: PostgreSQL clusters of the tests' own (initdb in a temporary directory, removed by a watchdog
//!   even when the test process is killed), and the component tests' backend switch;
//! - `lab`: the netns/QEMU PXE lab and the demo site; `vrrp_lab`: the VRRP lab (agent, keepalived, prober);
//! - `ipvsadm`, `strace`: comparing IPVS tables as `ipvsadm -Ln` prints them, netlink bytes from strace dumps.

pub mod dsr_lab;
pub mod guest;
pub mod ipvsadm;
pub mod lab;
pub mod netns;
pub mod postgres;
pub mod prereq;
pub mod server;
pub mod strace;
pub mod vlan_arp;
pub mod vrrp_lab;
pub mod wait;
