//! `lbfleet-images`: builds the boot image a diskless balancer runs: Debian's kernel (`vmlinuz`) and a
//! reproducible initramfs (`initrd.img`: static busybox, NIC and IPVS modules with `modules.dep`, the agent
//! with exactly its shared libraries, `/init`), described by `manifest.json`. The QEMU test harness builds its
//! guests with the same `Initramfs` builder.
//!
//! ```no_run
//! # fn main() -> Result<(), lbfleet_images::ImageError> {
//! let opts = lbfleet_images::BuildOptions::new("target/release/lbfleet-agent", "target/images");
//! let built = lbfleet_images::build_image(&opts)?;
//! println!("{} ({} bytes of initrd)", built.dir.display(), built.initrd_bytes);
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};

pub mod build;
pub mod cpio;
pub mod initramfs;
pub mod kernel;
pub mod manifest;
pub mod modules;

pub use build::{build_image, BuildOptions, BuiltImage, MAX_INITRD_BYTES};
pub use initramfs::Initramfs;
pub use kernel::{find_kernel, Kernel};
pub use manifest::{FileDigest, Manifest, ManifestError, INITRD_FILE, KERNEL_FILE, MANIFEST_FILE};

/// The image's `/init` (a busybox shell script), committed as `images/init`.
pub const INIT_SCRIPT: &str = include_str!("../init");
/// The script busybox `udhcpc` runs on lease events, committed as `images/udhcpc.script`.
pub const UDHCPC_SCRIPT: &str = include_str!("../udhcpc.script");

/// Why an image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("missing on this machine: {}; install them with `make deps` (scripts/install-deps.sh)", .0.join(", "))]
    Missing(Vec<String>),
    #[error("{0}")]
    Module(String),
    #[error("{0}")]
    Tool(String),
    #[error("initrd is {bytes} bytes, over the {max}-byte budget")]
    TooLarge { bytes: u64, max: u64 },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

impl ImageError {
    /// Maps an I/O error to one that names the path.
    pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
        move |source| ImageError::Io {
            path: path.to_owned(),
            source,
        }
    }
}
