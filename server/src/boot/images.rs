//! Image directories on disk, `<boot_dir>/images/<version>/` (what `GET /images/{version}/{file}` serves):
//! installing a built image (its manifest read, every file checked against it, copied, the copy checked
//! again, then renamed into place) and removing one; `add` and `remove_registered` also register or
//! unregister the image in the fleet (`lbfleet-server image add|remove`).

use std::path::{Path, PathBuf};

use lbfleet_images::{Manifest, ManifestError, MANIFEST_FILE};

use crate::fleet::{Actor, Fleet, FleetError, PutOutcome};
use crate::store::images::ImageRow;

/// Why an image directory could not be installed or removed.
#[derive(Debug, thiserror::Error)]
pub enum ImageDirError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(
        "image {version} is already installed in {} with different files; \
         remove it first (lbfleet-server image remove {version}) or build with another version",
        dir.display()
    )]
    Exists { version: String, dir: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Fleet(#[from] FleetError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImageDirError + '_ {
    move |source| ImageDirError::Io {
        path: path.to_owned(),
        source,
    }
}

/// An image directory in the boot directory.
#[derive(Debug, Clone)]
pub struct InstalledImage {
    pub manifest: Manifest,
    pub dir: PathBuf,
    /// False when the same files were already in place (nothing copied).
    pub copied: bool,
}

/// `<boot_dir>/images/<version>`.
pub fn image_dir(boot_dir: &Path, version: &str) -> PathBuf {
    boot_dir.join("images").join(version)
}

/// Copies the image in `src` (a directory with `manifest.json`) into `<boot_dir>/images/<version>/`.
/// Refuses a source whose files do not match its manifest, and a version already installed with other files.
/// Blocking: call from `spawn_blocking` in async code.
pub fn install(boot_dir: &Path, src: &Path) -> Result<InstalledImage, ImageDirError> {
    let manifest = Manifest::read(src)?;
    manifest.verify(src)?;
    let dir = image_dir(boot_dir, &manifest.version);
    if dir.exists() {
        let same = Manifest::read(&dir)
            .map(|m| m.files == manifest.files)
            .unwrap_or(false)
            && manifest.verify(&dir).is_ok();
        if !same {
            return Err(ImageDirError::Exists {
                version: manifest.version,
                dir,
            });
        }
        return Ok(InstalledImage {
            manifest,
            dir,
            copied: false,
        });
    }
    let images = boot_dir.join("images");
    std::fs::create_dir_all(&images).map_err(io(&images))?;
    // A dot name is never a valid version, so a half-copied directory is never served.
    let staging = images.join(format!(".{}.partial", manifest.version));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
    }
    std::fs::create_dir(&staging).map_err(io(&staging))?;
    let result = (|| {
        for name in manifest
            .files
            .keys()
            .map(String::as_str)
            .chain([MANIFEST_FILE])
        {
            let to = staging.join(name);
            std::fs::copy(src.join(name), &to).map_err(io(&to))?;
        }
        // The source may have changed while it was copied: check what landed.
        manifest.verify(&staging)?;
        std::fs::rename(&staging, &dir).map_err(io(&dir))
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    Ok(InstalledImage {
        manifest,
        dir,
        copied: true,
    })
}

/// Removes `<boot_dir>/images/<version>/`; false if it was not there.
pub fn remove(boot_dir: &Path, version: &str) -> Result<bool, ImageDirError> {
    let dir = image_dir(boot_dir, version);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(ImageDirError::Io { path: dir, source }),
    }
}

/// What `add` did.
#[derive(Debug, Clone)]
pub struct AddedImage {
    pub installed: InstalledImage,
    pub outcome: PutOutcome,
    pub is_default: bool,
}

/// `lbfleet-server image add`: installs the image in `src` into the boot directory and registers it with the
/// manifest's versions and checksums. It becomes the default image if `make_default`, if it already was, or if
/// there is no default yet (so discovery boots something). Files copied here are removed again if the
/// registration fails.
pub async fn add(
    fleet: &Fleet,
    actor: &Actor,
    boot_dir: &Path,
    src: &Path,
    make_default: bool,
    cmdline: Option<String>,
) -> Result<AddedImage, ImageDirError> {
    let (boot, source) = (boot_dir.to_owned(), src.to_owned());
    let installed = tokio::task::spawn_blocking(move || install(&boot, &source))
        .await
        .map_err(|e| ImageDirError::Io {
            path: src.to_owned(),
            source: std::io::Error::other(e),
        })??;
    let m = &installed.manifest;
    let images = fleet.list_images().await?;
    let was_default = images.iter().any(|i| i.name == m.version && i.is_default);
    let is_default = make_default || was_default || !images.iter().any(|i| i.is_default);
    let row = ImageRow {
        name: m.version.clone(),
        kernel: m.kernel.clone(),
        initrd: m.initrd.clone(),
        cmdline: cmdline.unwrap_or_else(|| m.cmdline.clone()),
        is_default,
        created_at: 0,
        kernel_version: Some(m.kernel_version.clone()),
        agent_version: Some(m.agent_version.clone()),
        kernel_sha256: m.files.get(&m.kernel).map(|d| d.sha256.clone()),
        initrd_sha256: m.files.get(&m.initrd).map(|d| d.sha256.clone()),
    };
    match fleet.put_image(actor, row).await {
        Ok(outcome) => Ok(AddedImage {
            installed,
            outcome,
            is_default,
        }),
        Err(e) => {
            if installed.copied {
                let _ = std::fs::remove_dir_all(&installed.dir);
            }
            Err(e.into())
        }
    }
}

/// `lbfleet-server image remove`: unregisters the image (refused while a node boots it, by name or as the
/// default) and deletes its directory. Returns whether a directory was removed.
pub async fn remove_registered(
    fleet: &Fleet,
    actor: &Actor,
    boot_dir: &Path,
    name: &str,
) -> Result<bool, ImageDirError> {
    // The name is checked by the fleet (it must be a registered image) before it names a directory.
    fleet.delete_image(actor, name).await?;
    remove(boot_dir, name)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::BTreeMap;

    use lbfleet_images::manifest::digest_file;
    use lbfleet_images::{INITRD_FILE, KERNEL_FILE};

    use super::*;

    fn built(root: &Path, version: &str, initrd: &[u8]) -> PathBuf {
        let dir = root.join(format!("build-{version}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(KERNEL_FILE), b"kernel").unwrap();
        std::fs::write(dir.join(INITRD_FILE), initrd).unwrap();
        let mut files = BTreeMap::new();
        for f in [KERNEL_FILE, INITRD_FILE] {
            files.insert(f.to_owned(), digest_file(&dir.join(f)).unwrap());
        }
        let m = Manifest {
            version: version.into(),
            kernel_version: "6.1.0-27-amd64".into(),
            agent_version: "0.1.0".into(),
            kernel: KERNEL_FILE.into(),
            initrd: INITRD_FILE.into(),
            cmdline: String::new(),
            files,
        };
        std::fs::write(dir.join(MANIFEST_FILE), m.to_json()).unwrap();
        dir
    }

    #[test]
    fn install_copies_verifies_and_is_idempotent() {
        let root = tempfile::tempdir().unwrap();
        let boot = root.path().join("boot");
        let src = built(root.path(), "v1", b"initrd");
        let a = install(&boot, &src).unwrap();
        assert!(a.copied);
        assert_eq!(a.dir, boot.join("images/v1"));
        assert_eq!(std::fs::read(a.dir.join(INITRD_FILE)).unwrap(), b"initrd");
        assert!(a.dir.join(MANIFEST_FILE).is_file());
        let b = install(&boot, &src).unwrap();
        assert!(!b.copied);
        // No staging directory left behind.
        let names: Vec<_> = std::fs::read_dir(boot.join("images"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["v1"]);
        assert!(remove(&boot, "v1").unwrap());
        assert!(!remove(&boot, "v1").unwrap());
    }

    #[test]
    fn a_tampered_source_or_a_different_same_version_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let boot = root.path().join("boot");
        let src = built(root.path(), "v1", b"initrd");
        std::fs::write(src.join(INITRD_FILE), b"initrX").unwrap();
        let err = install(&boot, &src).unwrap_err();
        assert!(
            matches!(&err, ImageDirError::Manifest(ManifestError::Checksum { file, .. }) if file == INITRD_FILE),
            "{err}"
        );
        assert!(!boot.join("images/v1").exists());

        let src = built(root.path(), "v2", b"one");
        install(&boot, &src).unwrap();
        let other = built(&root.path().join("other"), "v2", b"two");
        let err = install(&boot, &other).unwrap_err();
        assert!(matches!(err, ImageDirError::Exists { .. }), "{err}");
        assert!(err.to_string().contains("image remove v2"), "{err}");
        assert_eq!(
            std::fs::read(boot.join("images/v2").join(INITRD_FILE)).unwrap(),
            b"one"
        );
    }
}
