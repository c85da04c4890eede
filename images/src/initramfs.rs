//! The initramfs builder shared by the image and the QEMU test harness: files, host programs with exactly
//! the shared libraries `ldd` names, kernel modules with their dependencies, `modules.dep` and a load list,
//! written as a sorted `newc` cpio and gzip-compressed without a timestamp (same content, same bytes).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cpio::CpioWriter;
use crate::modules::ModuleIndex;
use crate::ImageError;

/// Where `/init` finds the modules to load, one path per line, dependencies first.
pub const MODULES_LOAD: &str = "/etc/lbfleet/modules.load";

/// Shared libraries of a dynamically linked program, from `ldd` (none for a static one).
pub fn shared_libs(binary: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(ImageError::io(Path::new("ldd")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let errors = String::from_utf8_lossy(&out.stderr);
    if [&text, &errors]
        .iter()
        .any(|t| t.contains("not a dynamic executable") || t.contains("statically linked"))
    {
        return Ok(Vec::new());
    }
    if !out.status.success() {
        return Err(ImageError::Tool(format!(
            "ldd {} failed: {}",
            binary.display(),
            errors.trim()
        )));
    }
    if let Some(line) = text.lines().find(|l| l.contains("not found")) {
        return Err(ImageError::Tool(format!(
            "{}: a shared library is missing: {}",
            binary.display(),
            line.trim()
        )));
    }
    Ok(text
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// An initramfs being assembled.
#[derive(Debug)]
pub struct Initramfs {
    cpio: CpioWriter,
    libs: BTreeSet<PathBuf>,
    /// Kernel version and module files (relative), in load order.
    modules: Option<(ModuleIndex, Vec<String>)>,
    scratch: tempfile::TempDir,
}

impl Initramfs {
    /// An empty archive with the directories `/init` mounts on.
    pub fn new() -> Result<Initramfs, ImageError> {
        let scratch = tempfile::tempdir().map_err(ImageError::io(Path::new("tempdir")))?;
        let mut cpio = CpioWriter::new();
        for d in ["/dev", "/proc", "/sys", "/run", "/tmp", "/etc/lbfleet"] {
            cpio.dir(d);
        }
        Ok(Initramfs {
            cpio,
            libs: BTreeSet::new(),
            modules: None,
            scratch,
        })
    }

    /// Static busybox as `/bin/busybox` and `/bin/sh`; `/init` installs the other applets at boot.
    pub fn busybox(&mut self, host: &Path) -> Result<&mut Self, ImageError> {
        let data = std::fs::read(host).map_err(ImageError::io(host))?;
        if !shared_libs(host)?.is_empty() {
            return Err(ImageError::Tool(format!(
                "{} is not static (install busybox-static)",
                host.display()
            )));
        }
        self.cpio.file("/bin/busybox", 0o755, &data);
        self.cpio.symlink("/bin/sh", "busybox");
        Ok(self)
    }

    /// Adds a host program at `guest_path`, without debug info when `strip` is available, with the shared
    /// libraries `ldd` names at their host paths.
    pub fn binary(&mut self, host: &Path, guest_path: &str) -> Result<&mut Self, ImageError> {
        let stripped = self.scratch.path().join(format!(
            "{}.stripped",
            host.file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_else(|| "bin".into())
        ));
        let data = match Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(&stripped)
            .arg(host)
            .status()
        {
            Ok(s) if s.success() => std::fs::read(&stripped).map_err(ImageError::io(&stripped))?,
            _ => std::fs::read(host).map_err(ImageError::io(host))?,
        };
        self.cpio.file(guest_path, 0o755, &data);
        for lib in shared_libs(host)? {
            if self.libs.insert(lib.clone()) {
                let data = std::fs::read(&lib).map_err(ImageError::io(&lib))?;
                self.cpio.file(&lib.to_string_lossy(), 0o755, &data);
            }
        }
        Ok(self)
    }

    /// Adds `required` and the `optional` modules the kernel has, with their dependencies, under
    /// `/lib/modules/<version>/`, and appends them to the load list. May be called again (more modules of
    /// the same kernel).
    pub fn modules(
        &mut self,
        index: &ModuleIndex,
        required: &[&str],
        optional: &[&str],
    ) -> Result<&mut Self, ImageError> {
        let order = index.load_order(required, optional)?;
        let (_, list) = self
            .modules
            .get_or_insert_with(|| (index.clone(), Vec::new()));
        for m in order {
            if list.contains(&m) {
                continue;
            }
            let host = index.dir().join(&m);
            let data = std::fs::read(&host).map_err(ImageError::io(&host))?;
            let guest = format!("/lib/modules/{}/{m}", kernel_dir_name(index));
            self.cpio.file(&guest, 0o644, &data);
            list.push(m);
        }
        Ok(self)
    }

    pub fn file(&mut self, guest_path: &str, mode: u32, data: &[u8]) -> &mut Self {
        self.cpio.file(guest_path, mode, data);
        self
    }

    pub fn symlink(&mut self, guest_path: &str, target: &str) -> &mut Self {
        self.cpio.symlink(guest_path, target);
        self
    }

    /// The uncompressed archive: the load list and `modules.dep` are written last, from every module added.
    pub fn to_cpio(&self) -> Vec<u8> {
        let mut cpio = self.cpio.clone();
        if let Some((index, list)) = &self.modules {
            let ver = kernel_dir_name(index);
            let mut load = String::new();
            for m in list {
                load.push_str(&format!("/lib/modules/{ver}/{m}\n"));
            }
            cpio.file(MODULES_LOAD, 0o644, load.as_bytes());
            cpio.file(
                &format!("/lib/modules/{ver}/modules.dep"),
                0o644,
                index.dep_subset(list).as_bytes(),
            );
        }
        cpio.finish()
    }

    /// The archive, gzip-compressed (level 9, no name, mtime 0): what the kernel loads as `initrd`.
    pub fn to_gzip(&self) -> Result<Vec<u8>, ImageError> {
        gzip(&self.to_cpio())
    }
}

/// gzip without a timestamp or a file name, so equal input gives equal output.
pub fn gzip(data: &[u8]) -> Result<Vec<u8>, ImageError> {
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(3)
        .write(Vec::new(), flate2::Compression::best());
    enc.write_all(data)
        .and_then(|_| enc.finish())
        .map_err(ImageError::io(Path::new("gzip")))
}

/// The `<version>` directory name of a module index (`/lib/modules/<version>`).
fn kernel_dir_name(index: &ModuleIndex) -> String {
    index
        .dir()
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::cpio::{read, EntryKind};

    #[test]
    fn modules_land_with_load_list_and_dep_subset() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("6.1.0-t");
        std::fs::create_dir_all(dir.join("kernel")).unwrap();
        std::fs::write(
            dir.join("modules.dep"),
            "kernel/a.ko: kernel/b.ko\nkernel/b.ko:\nkernel/c.ko:\nkernel/unused.ko:\n",
        )
        .unwrap();
        for m in ["a", "b", "c", "unused"] {
            std::fs::write(dir.join(format!("kernel/{m}.ko")), m.as_bytes()).unwrap();
        }
        let idx = ModuleIndex::load(root.path(), "6.1.0-t").unwrap();
        let mut img = Initramfs::new().unwrap();
        img.modules(&idx, &["a"], &["nope"]).unwrap();
        img.modules(&idx, &["c", "b"], &[]).unwrap();
        let entries = read(&img.to_cpio()).unwrap();
        let get = |p: &str| {
            entries
                .iter()
                .find(|e| e.path == p)
                .map(|e| e.kind.clone())
                .unwrap_or_else(|| panic!("no {p}"))
        };
        assert_eq!(
            get("etc/lbfleet/modules.load"),
            EntryKind::File(
                b"/lib/modules/6.1.0-t/kernel/b.ko\n/lib/modules/6.1.0-t/kernel/a.ko\n/lib/modules/6.1.0-t/kernel/c.ko\n"
                    .to_vec()
            )
        );
        assert_eq!(
            get("lib/modules/6.1.0-t/modules.dep"),
            EntryKind::File(b"kernel/a.ko: kernel/b.ko\nkernel/b.ko:\nkernel/c.ko:\n".to_vec())
        );
        assert_eq!(
            get("lib/modules/6.1.0-t/kernel/a.ko"),
            EntryKind::File(b"a".to_vec())
        );
        assert!(!entries.iter().any(|e| e.path.ends_with("unused.ko")));
    }

    #[test]
    fn gzip_is_deterministic_and_round_trips() {
        let data = b"lbfleet".repeat(1000);
        let a = gzip(&data).unwrap();
        assert_eq!(a, gzip(&data).unwrap());
        // mtime field (bytes 4..8) is zero; no FNAME flag.
        assert_eq!(&a[4..8], &[0, 0, 0, 0]);
        assert_eq!(a[3] & 0x08, 0);
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&a[..]), &mut out).unwrap();
        assert_eq!(out, data);
    }
}
