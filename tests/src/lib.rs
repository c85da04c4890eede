//! lbfleet's end-to-end harness: QEMU guests with real IPVS (`guest`, initramfs built with `lbfleet-images`),
//! helpers to compare IPVS tables as `ipvsadm -Ln` prints them (`ipvsadm`) and to read netlink
//! bytes out of strace dumps (`strace`).

pub mod guest;
pub mod ipvsadm;
pub mod lab;
pub mod strace;
