//! A minimal initramfs for firmware tests: static busybox and an `/init` that prints [`INIT_MARKER`] with the
//! kernel command line and powers off. It proves the chain firmware -> DHCP -> iPXE -> HTTP -> kernel ->
//! initrd without the agent (the full image comes from `lbfleet-images`).

use std::path::{Path, PathBuf};

use lbfleet_images::cpio::CpioWriter;

use super::{io_err, LabError, LabPrereqs};

/// Printed by the minimal `/init` as soon as it runs.
pub const INIT_MARKER: &str = "LBFLEET-LAB-INIT-REACHED";
/// Printed after the `cmdline: ...` line, so a reader waiting for it sees the whole line.
pub const INIT_DONE: &str = "LBFLEET-LAB-INIT-DONE";

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc
/bin/busybox mount -t proc proc /proc
echo "LBFLEET-LAB-INIT-REACHED uptime=$(/bin/busybox cut -d' ' -f1 /proc/uptime)"
echo "cmdline: $(/bin/busybox cat /proc/cmdline)"
echo "LBFLEET-LAB-INIT-DONE"
/bin/busybox poweroff -f
"#;

/// Writes the marker initramfs to `dir/marker-initrd.img` and returns its path.
pub fn marker_initrd(prereqs: &LabPrereqs, dir: &Path) -> Result<PathBuf, LabError> {
    let busybox = std::fs::read(&prereqs.busybox).map_err(io_err(&prereqs.busybox))?;
    let mut cpio = CpioWriter::new();
    cpio.file("/bin/busybox", 0o755, &busybox);
    cpio.file("/init", 0o755, INIT.as_bytes());
    let path = dir.join("marker-initrd.img");
    std::fs::write(&path, cpio.finish()).map_err(io_err(&path))?;
    Ok(path)
}
