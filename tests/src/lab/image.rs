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
