//! The balancer image the fleet site boots: the image `lbfleet-images` builds (`make image`: Debian's kernel,
//! the initramfs with busybox, modules, the agent and `/init`, which brings up the `BOOTIF` NIC by DHCP and
//! runs the agent). `make demo` passes the image it just built; tests build one into their own directory.

use std::path::{Path, PathBuf};

use lbfleet_images::build::{build_image, BuildOptions};

use super::LabError;

/// `LBFLEET_IMAGE_DIR` (a built image directory, `make demo`) when set; otherwise builds an image with the
/// agent of the running profile into `out_root/<version>/` and returns that directory.
pub fn balancer_image(out_root: &Path) -> Result<PathBuf, LabError> {
    if let Some(dir) = std::env::var_os("LBFLEET_IMAGE_DIR") {
        let dir = PathBuf::from(dir);
        return if dir.join("vmlinuz").is_file() && dir.join("initrd.img").is_file() {
            Ok(dir)
        } else {
            Err(LabError::Other(format!(
                "LBFLEET_IMAGE_DIR={} holds no vmlinuz and initrd.img (run `make image`)",
                dir.display()
            )))
        };
    }
    let agent = crate::guest::workspace_binary("lbfleet-agent", "lbfleet-agent")
        .map_err(|e| LabError::Other(e.to_string()))?;
    let built = build_image(&BuildOptions::new(agent, out_root))
        .map_err(|e| LabError::Other(format!("building the balancer image: {e}")))?;
    Ok(built.dir)
}

/// The agent of [`broken_agent_initrd`]: `lbfleet-agent run` exits at once (status 70), every other
/// subcommand (`bootargs`, which `/init` needs to bring the boot NIC up) is the real agent. It sits in
/// `/usr/sbin`, which comes before the real agent's `/usr/bin` on `/init`'s `PATH`.
pub const BROKEN_AGENT: &str = "#!/bin/sh\n\
# lbfleet test image: an agent that exits at start.\n\
if [ \"$1\" = run ]; then\n\
    echo \"lbfleet-agent (broken test image): exiting at start\" >&2\n\
    exit 70\n\
fi\n\
exec /usr/bin/lbfleet-agent \"$@\"\n";

/// Writes to `out` the initramfs `good` with an overlay appended (the kernel unpacks concatenated archives in
/// order, later files replacing earlier ones): [`BROKEN_AGENT`] as `/usr/sbin/lbfleet-agent`, and
/// `/etc/lbfleet/agent-reboot-after` set to `reboot_after`, so that `/init` reboots the machine after that
/// many failed starts. An image whose agent exits at start, for the rollout tests' canary.
pub fn broken_agent_initrd(good: &Path, out: &Path, reboot_after: u32) -> Result<(), LabError> {
    let mut bytes = std::fs::read(good).map_err(super::io_err(good))?;
    bytes.extend(broken_agent_overlay(bytes.len(), reboot_after));
    std::fs::write(out, bytes).map_err(super::io_err(out))
}

/// The overlay archive to append after `len` bytes: zero padding to a 4-byte boundary (where the kernel looks
/// for the next archive's header), then the newc archive.
fn broken_agent_overlay(len: usize, reboot_after: u32) -> Vec<u8> {
    let mut out = vec![0u8; (4 - len % 4) % 4];
    let mut w = lbfleet_images::cpio::CpioWriter::new();
    w.file("usr/sbin/lbfleet-agent", 0o755, BROKEN_AGENT.as_bytes());
    w.file(
        "etc/lbfleet/agent-reboot-after",
        0o644,
        format!("{reboot_after}\n").as_bytes(),
    );
    out.extend(w.finish());
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use lbfleet_images::cpio::EntryKind;

    #[test]
    fn the_broken_overlay_starts_aligned_and_holds_the_agent_and_the_count() {
        for len in [1000, 1001, 1002, 1003] {
            let overlay = broken_agent_overlay(len, 3);
            let pad = (4 - len % 4) % 4;
            assert!(overlay[..pad].iter().all(|b| *b == 0));
            assert_eq!((len + pad) % 4, 0);
            let entries = lbfleet_images::cpio::read(&overlay[pad..]).unwrap();
            let file = |p: &str| {
                entries
                    .iter()
                    .find(|e| e.path == p)
                    .unwrap_or_else(|| panic!("{p} missing"))
                    .clone()
            };
            let agent = file("usr/sbin/lbfleet-agent");
            assert_eq!(
                agent.kind,
                EntryKind::File(BROKEN_AGENT.as_bytes().to_vec())
            );
            assert_eq!(agent.mode, 0o755);
            assert_eq!(
                file("etc/lbfleet/agent-reboot-after").kind,
                EntryKind::File(b"3\n".to_vec())
            );
        }
    }
}
