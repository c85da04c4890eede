//! `manifest.json`: what an image directory holds (version, kernel and agent versions, the sha256 and size of
//! each file), written by the builder and verified by `lbfleet-server image add` before an image is served.
//!
//! ```json
//! { "version": "0.1.0-3fa2b1c9", "kernel_version": "6.1.0-27-amd64", "agent_version": "0.1.0",
//!   "kernel": "vmlinuz", "initrd": "initrd.img", "cmdline": "console=tty0 console=ttyS0,115200n8",
//!   "files": { "initrd.img": { "sha256": "…", "size": 123 }, "vmlinuz": { "sha256": "…", "size": 456 } } }
//! ```

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const MANIFEST_FILE: &str = "manifest.json";
pub const KERNEL_FILE: &str = "vmlinuz";
pub const INITRD_FILE: &str = "initrd.img";
/// A manifest is a few hundred bytes; anything much larger is not one.
const MAX_MANIFEST_BYTES: u64 = 64 * 1024;

/// Digest and size of one file of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDigest {
    /// 64 lower-case hex digits.
    pub sha256: String,
    pub size: u64,
}

/// The description of an image directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The image's name on the server and in `lbfleet.image=`.
    pub version: String,
    pub kernel_version: String,
    pub agent_version: String,
    /// File name of the kernel in the directory.
    pub kernel: String,
    /// File name of the initramfs in the directory.
    pub initrd: String,
    /// Kernel arguments the image wants besides the boot contract's (console).
    #[serde(default)]
    pub cmdline: String,
    pub files: BTreeMap<String, FileDigest>,
}

/// Why a manifest or an image directory is not acceptable.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not an image manifest: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{file}: sha256 is {actual}, the manifest says {expected}")]
    Checksum {
        file: String,
        expected: String,
        actual: String,
    },
    #[error("{file}: {actual} bytes, the manifest says {expected}")]
    Size {
        file: String,
        expected: u64,
        actual: u64,
    },
}

/// A name that is safe as one path component, a URL segment and a kernel argument: 1 to 64 of
/// `[A-Za-z0-9._-]`, not starting with `.`.
pub fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// sha256 (hex) and size of a file, read in 1 MiB blocks.
pub fn digest_file(path: &Path) -> Result<FileDigest, ManifestError> {
    let io = |source| ManifestError::Io {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok(FileDigest {
        sha256: hex::encode(hasher.finalize()),
        size,
    })
}

/// sha256 (hex) of bytes in memory.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

impl Manifest {
    /// Reads and checks `<dir>/manifest.json` (field shapes only; `verify` checks the files).
    pub fn read(dir: &Path) -> Result<Manifest, ManifestError> {
        let path = dir.join(MANIFEST_FILE);
        let io = |source| ManifestError::Io {
            path: path.clone(),
            source,
        };
        let meta = std::fs::metadata(&path).map_err(io)?;
        if meta.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::Invalid {
                path,
                reason: format!("{} bytes (at most {MAX_MANIFEST_BYTES})", meta.len()),
            });
        }
        let bytes = std::fs::read(&path).map_err(io)?;
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| ManifestError::Invalid {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        manifest
            .check()
            .map_err(|reason| ManifestError::Invalid { path, reason })?;
        Ok(manifest)
    }

    /// Field rules: safe names, a digest for the kernel and the initrd, well-formed digests.
    pub fn check(&self) -> Result<(), String> {
        if !is_safe_name(&self.version) {
            return Err(format!(
                "version {:?}: must be 1 to 64 of [A-Za-z0-9._-], not starting with '.'",
                self.version
            ));
        }
        for (what, v) in [
            ("kernel_version", &self.kernel_version),
            ("agent_version", &self.agent_version),
        ] {
            if v.is_empty() || v.len() > 128 || !v.chars().all(|c| c.is_ascii_graphic()) {
                return Err(format!(
                    "{what} {v:?}: must be 1 to 128 printable characters"
                ));
            }
        }
        for f in [&self.kernel, &self.initrd] {
            if !self.files.contains_key(f) {
                return Err(format!("no digest for {f:?} in files"));
            }
        }
        for (name, d) in &self.files {
            if !is_safe_name(name) || name == MANIFEST_FILE {
                return Err(format!("file name {name:?} is not allowed"));
            }
            if d.sha256.len() != 64
                || !d
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(format!("{name}: sha256 must be 64 lower-case hex digits"));
            }
        }
        if self.cmdline.len() > 1024 || self.cmdline.chars().any(|c| c.is_control()) {
            return Err("cmdline: at most 1024 characters, no control characters".into());
        }
        Ok(())
    }

    /// Checks every file the manifest lists against its size and sha256 in `dir`.
    pub fn verify(&self, dir: &Path) -> Result<(), ManifestError> {
        for (name, want) in &self.files {
            let got = digest_file(&dir.join(name))?;
            if got.size != want.size {
                return Err(ManifestError::Size {
                    file: name.clone(),
                    expected: want.size,
                    actual: got.size,
                });
            }
            if got.sha256 != want.sha256 {
                return Err(ManifestError::Checksum {
                    file: name.clone(),
                    expected: want.sha256.clone(),
                    actual: got.sha256,
                });
            }
        }
        Ok(())
    }

    /// Pretty JSON with a final newline.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn image_dir() -> (tempfile::TempDir, Manifest) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(KERNEL_FILE), b"kernel").unwrap();
        std::fs::write(dir.path().join(INITRD_FILE), b"initrd").unwrap();
        let mut files = BTreeMap::new();
        for f in [KERNEL_FILE, INITRD_FILE] {
            files.insert(f.to_owned(), digest_file(&dir.path().join(f)).unwrap());
        }
        let m = Manifest {
            version: "0.1.0-abc".into(),
            kernel_version: "6.1.0-27-amd64".into(),
            agent_version: "0.1.0".into(),
            kernel: KERNEL_FILE.into(),
            initrd: INITRD_FILE.into(),
            cmdline: "console=ttyS0".into(),
            files,
        };
        std::fs::write(dir.path().join(MANIFEST_FILE), m.to_json()).unwrap();
        (dir, m)
    }

    #[test]
    fn a_written_manifest_reads_back_and_verifies() {
        let (dir, m) = image_dir();
        let read = Manifest::read(dir.path()).unwrap();
        assert_eq!(read, m);
        read.verify(dir.path()).unwrap();
        // sha256("kernel"), as sha256sum prints it.
        assert_eq!(
            read.files[KERNEL_FILE].sha256,
            "6923dd1bc0460082c5d55a831908c24a282860b7f1cd6c2b79cf1bc8857c639c"
        );
        assert_eq!(read.files[KERNEL_FILE].size, 6);
    }

    #[test]
    fn a_changed_file_is_refused_by_name() {
        let (dir, m) = image_dir();
        std::fs::write(dir.path().join(INITRD_FILE), b"initrX").unwrap();
        let err = m.verify(dir.path()).unwrap_err();
        assert!(
            matches!(&err, ManifestError::Checksum { file, .. } if file == INITRD_FILE),
            "{err}"
        );
        std::fs::write(dir.path().join(INITRD_FILE), b"initrd+").unwrap();
        assert!(matches!(
            m.verify(dir.path()),
            Err(ManifestError::Size { .. })
        ));
        std::fs::remove_file(dir.path().join(INITRD_FILE)).unwrap();
        assert!(matches!(
            m.verify(dir.path()),
            Err(ManifestError::Io { .. })
        ));
    }

    #[test]
    fn unsafe_manifests_are_refused() {
        let (dir, m) = image_dir();
        for bad in [
            Manifest {
                version: "../x".into(),
                ..m.clone()
            },
            Manifest {
                version: ".hidden".into(),
                ..m.clone()
            },
            Manifest {
                kernel: "bzImage".into(),
                ..m.clone()
            },
            Manifest {
                files: m
                    .files
                    .iter()
                    .map(|(k, v)| (format!("../{k}"), v.clone()))
                    .collect(),
                ..m.clone()
            },
        ] {
            std::fs::write(dir.path().join(MANIFEST_FILE), bad.to_json()).unwrap();
            assert!(
                matches!(
                    Manifest::read(dir.path()),
                    Err(ManifestError::Invalid { .. })
                ),
                "{bad:?}"
            );
        }
        std::fs::write(dir.path().join(MANIFEST_FILE), b"{\"version\": 1}").unwrap();
        assert!(matches!(
            Manifest::read(dir.path()),
            Err(ManifestError::Invalid { .. })
        ));
    }
}
