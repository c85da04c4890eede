//! Finds the Debian kernel (`linux-image-amd64`) an image boots: the newest `/boot/vmlinuz-<version>` whose
//! modules include IPVS.

use std::path::{Path, PathBuf};

use crate::ImageError;

/// An installed kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    /// `6.1.0-27-amd64`
    pub version: String,
    /// `/boot/vmlinuz-6.1.0-27-amd64`
    pub path: PathBuf,
}

/// Orders Debian kernel versions by their numbers (`6.1.0-9` before `6.1.0-10`).
fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The kernel to use: `version` if given, else the newest `boot_dir/vmlinuz-*` that has
/// `modules_root/<version>/kernel/net/netfilter/ipvs/ip_vs.ko`.
pub fn find_kernel(
    boot_dir: &Path,
    modules_root: &Path,
    version: Option<&str>,
) -> Result<Kernel, ImageError> {
    let has_ipvs = |ver: &str| {
        let dir = modules_root.join(ver).join("kernel/net/netfilter/ipvs");
        ["ip_vs.ko", "ip_vs.ko.xz", "ip_vs.ko.zst"]
            .iter()
            .any(|f| dir.join(f).is_file())
    };
    let missing = || {
        ImageError::Missing(vec![format!(
            "a kernel with ip_vs modules in {} (package linux-image-amd64)",
            boot_dir.display()
        )])
    };
    if let Some(ver) = version {
        let path = boot_dir.join(format!("vmlinuz-{ver}"));
        if !path.is_file() || !has_ipvs(ver) {
            return Err(missing());
        }
        return Ok(Kernel {
            version: ver.to_owned(),
            path,
        });
    }
    let mut kernels: Vec<(Vec<u64>, Kernel)> = std::fs::read_dir(boot_dir)
        .map_err(ImageError::io(boot_dir))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let ver = name.strip_prefix("vmlinuz-")?.to_owned();
            has_ipvs(&ver).then(|| {
                (
                    version_key(&ver),
                    Kernel {
                        version: ver,
                        path: e.path(),
                    },
                )
            })
        })
        .collect();
    kernels.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.version.cmp(&b.1.version)));
    kernels.pop().map(|(_, k)| k).ok_or_else(missing)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn newest_kernel_with_ipvs_wins() {
        let root = tempfile::tempdir().unwrap();
        let boot = root.path().join("boot");
        let mods = root.path().join("modules");
        std::fs::create_dir_all(&boot).unwrap();
        for (ver, ipvs) in [
            ("6.1.0-9-amd64", true),
            ("6.1.0-10-amd64", true),
            ("6.1.0-11-amd64", false),
        ] {
            std::fs::write(boot.join(format!("vmlinuz-{ver}")), b"k").unwrap();
            let d = mods.join(ver).join("kernel/net/netfilter/ipvs");
            std::fs::create_dir_all(&d).unwrap();
            if ipvs {
                std::fs::write(d.join("ip_vs.ko"), b"m").unwrap();
            }
        }
        let k = find_kernel(&boot, &mods, None).unwrap();
        assert_eq!(k.version, "6.1.0-10-amd64");
        assert_eq!(
            find_kernel(&boot, &mods, Some("6.1.0-9-amd64"))
                .unwrap()
                .version,
            "6.1.0-9-amd64"
        );
        assert!(matches!(
            find_kernel(&boot, &mods, Some("6.1.0-11-amd64")),
            Err(ImageError::Missing(_))
        ));
    }
}
