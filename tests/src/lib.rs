//! lbfleet's end-to-end harness: QEMU guests with real IPVS (`guest`, initramfs built with `lbfleet-images`),
//! helpers to compare IPVS tables as `ipvsadm -Ln` prints them (`ipvsadm`) and to read netlink bytes out of
//! strace dumps (`strace`), the netns/QEMU PXE lab (`lab`) and the network-namespace lab of the VRRP tests
//! (`vrrp_lab`); `prereq` is the one rule for a missing prerequisite (fail; `LBFLEET_SKIP` outside CI).

pub mod guest;
pub mod ipvsadm;
pub mod lab;
pub mod prereq;
pub mod strace;
pub mod vrrp_lab;
