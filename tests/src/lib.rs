//! lbfleet's end-to-end harness: QEMU guests with real IPVS (`guest`), the initramfs writer they use
//! (`cpio`), and helpers to compare IPVS tables as `ipvsadm -Ln` prints them (`ipvsadm`).

pub mod cpio;
pub mod guest;
pub mod ipvsadm;
