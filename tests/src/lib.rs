//! lbfleet's end-to-end harness: QEMU guests with real IPVS (`guest`), the initramfs writer they use
//! (`cpio`), helpers to compare IPVS tables as `ipvsadm -Ln` prints them (`ipvsadm`) and to read netlink
//! bytes out of strace dumps (`strace`).

pub mod cpio;
pub mod guest;
pub mod ipvsadm;
pub mod lab;
pub mod strace;
