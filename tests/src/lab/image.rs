//! The balancer image for lab machines, built by `lbfleet-images` (the same builder as `make image`) from this
//! workspace's agent: `vmlinuz`, `initrd.img` and `manifest.json` in `<dir>/images-build/<version>/`.

use std::path::{Path, PathBuf};

use super::LabError;

/// Builds the image (agent built first, with the test's profile) and returns its directory.
pub fn balancer_image(dir: &Path) -> Result<PathBuf, LabError> {
    let agent = crate::guest::workspace_binary("lbfleet-agent", "lbfleet-agent")
        .map_err(|e| LabError::Other(e.to_string()))?;
    let opts = lbfleet_images::build::BuildOptions::new(agent, dir.join("images-build"));
    let built = lbfleet_images::build::build_image(&opts)
        .map_err(|e| LabError::Other(format!("image build: {e}")))?;
    Ok(built.dir)
}
