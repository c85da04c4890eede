//! The whole image: picks the kernel, assembles the initramfs (busybox, modules, agent, `/init`), names the
//! image by its content, checks the size budget and writes `<out>/<version>/{vmlinuz,initrd.img,manifest.json}`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::initramfs::{gzip, Initramfs};
use crate::kernel::find_kernel;
use crate::manifest::{digest_file, is_safe_name, sha256_hex, Manifest};
use crate::modules::{ModuleIndex, BALANCER_MODULES, IPVS_MODULES, NIC_MODULES};
use crate::{ImageError, INITRD_FILE, INIT_SCRIPT, KERNEL_FILE, MANIFEST_FILE, UDHCPC_SCRIPT};

/// The initrd budget: a node loads it over the boot network on every boot.
pub const MAX_INITRD_BYTES: u64 = 40 * 1024 * 1024;

/// Kernel arguments an image asks for besides the boot contract's: `/init` and agent messages on the first
/// serial port (the last `console=` is `/dev/console`) and on the screen. `quiet` keeps the kernel's own
/// notices, among them the whole command line with the enrollment token, off the console (`dmesg` has them).
pub const DEFAULT_CMDLINE: &str = "console=tty0 console=ttyS0,115200n8 quiet";

/// Where the agent and the scripts go in the image.
pub const AGENT_PATH: &str = "/usr/bin/lbfleet-agent";
pub const UDHCPC_SCRIPT_PATH: &str = "/etc/lbfleet/udhcpc.script";
pub const IMAGE_VERSION_PATH: &str = "/etc/lbfleet/image-version";

/// What to build from. `new` fills in this machine's defaults.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The `lbfleet-agent` binary to ship.
    pub agent: PathBuf,
    /// Images go to `<out_root>/<version>/`.
    pub out_root: PathBuf,
    /// Image name; default `<agent version>-<first 8 hex digits of the content's sha256>`.
    pub version: Option<String>,
    /// Default: the agent's own `--version`.
    pub agent_version: Option<String>,
    /// Default: the newest kernel in `boot_dir` with IPVS modules.
    pub kernel_version: Option<String>,
    pub boot_dir: PathBuf,
    pub modules_root: PathBuf,
    /// Static busybox; default `/bin/busybox` or `/usr/bin/busybox`.
    pub busybox: Option<PathBuf>,
    /// `ipvsadm` for the console, if found (default: from PATH); `None` leaves it out.
    pub ipvsadm: Option<PathBuf>,
    /// More modules (with their dependencies) than the balancer set, e.g. for a test.
    pub extra_modules: Vec<String>,
    /// Kernel arguments recorded in the manifest (`cmdline`).
    pub cmdline: String,
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Static busybox on this machine (package `busybox-static`).
pub fn find_busybox() -> Result<PathBuf, ImageError> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .map(PathBuf::from)
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| ImageError::Missing(vec!["busybox (package busybox-static)".into()]))
}

impl BuildOptions {
    pub fn new(agent: impl Into<PathBuf>, out_root: impl Into<PathBuf>) -> BuildOptions {
        BuildOptions {
            agent: agent.into(),
            out_root: out_root.into(),
            version: None,
            agent_version: None,
            kernel_version: None,
            boot_dir: PathBuf::from("/boot"),
            modules_root: PathBuf::from("/lib/modules"),
            busybox: None,
            ipvsadm: which("ipvsadm"),
            extra_modules: Vec::new(),
            cmdline: DEFAULT_CMDLINE.into(),
        }
    }
}

/// A built image.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// `<out_root>/<version>`
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub initrd_bytes: u64,
    /// Size of the uncompressed cpio.
    pub cpio_bytes: u64,
    pub elapsed: Duration,
}

/// `lbfleet-agent --version` prints `lbfleet-agent 0.1.0`.
fn agent_version_of(agent: &Path) -> Result<String, ImageError> {
    // ETXTBSY: a process forked elsewhere in this program (another thread spawning a command) may still hold
    // a copy of the descriptor that just wrote the file, until its own exec closes it; that takes moments.
    const ETXTBSY: i32 = 26;
    let mut attempts = 0;
    let out = loop {
        match Command::new(agent).arg("--version").output() {
            Err(e) if e.raw_os_error() == Some(ETXTBSY) && attempts < 100 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            r => break r.map_err(ImageError::io(agent))?,
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .nth(1)
        .filter(|_| out.status.success())
        .map(str::to_owned)
        .ok_or_else(|| {
            ImageError::Tool(format!(
                "{} --version printed {text:?}, not `lbfleet-agent VERSION`",
                agent.display()
            ))
        })
}

/// The balancer's initramfs without the version file: busybox, `/init`, the udhcpc script, the agent, the
/// modules, `ipvsadm` if given.
pub fn balancer_initramfs(
    opts: &BuildOptions,
    index: &ModuleIndex,
) -> Result<Initramfs, ImageError> {
    let busybox = match &opts.busybox {
        Some(p) => p.clone(),
        None => find_busybox()?,
    };
    let mut img = Initramfs::new()?;
    img.busybox(&busybox)?;
    img.file("/init", 0o755, INIT_SCRIPT.as_bytes());
    img.file(UDHCPC_SCRIPT_PATH, 0o755, UDHCPC_SCRIPT.as_bytes());
    img.binary(&opts.agent, AGENT_PATH)?;
    if let Some(ipvsadm) = &opts.ipvsadm {
        img.binary(ipvsadm, "/usr/sbin/ipvsadm")?;
    }
    let required: Vec<&str> = IPVS_MODULES
        .iter()
        .copied()
        .chain(["nf_conntrack", "ipip"])
        .chain(opts.extra_modules.iter().map(String::as_str))
        .collect();
    let optional: Vec<&str> = NIC_MODULES
        .iter()
        .chain(BALANCER_MODULES)
        .copied()
        .collect();
    img.modules(index, &required, &optional)?;
    Ok(img)
}

/// Builds the image into `<out_root>/<version>/`, replacing an earlier build of the same version.
pub fn build_image(opts: &BuildOptions) -> Result<BuiltImage, ImageError> {
    let start = Instant::now();
    let kernel = find_kernel(
        &opts.boot_dir,
        &opts.modules_root,
        opts.kernel_version.as_deref(),
    )?;
    let index = ModuleIndex::load(&opts.modules_root, &kernel.version)?;
    let agent_version = match &opts.agent_version {
        Some(v) => v.clone(),
        None => agent_version_of(&opts.agent)?,
    };
    let img = balancer_initramfs(opts, &index)?;
    let kernel_bytes = std::fs::read(&kernel.path).map_err(ImageError::io(&kernel.path))?;

    // Name the image by its content: the same inputs give the same version, different ones another.
    let version = match &opts.version {
        Some(v) => v.clone(),
        None => {
            let probe = img.to_cpio();
            let digest = sha256_hex(
                &[sha256_hex(&kernel_bytes), sha256_hex(&probe)]
                    .concat()
                    .into_bytes(),
            );
            format!("{agent_version}-{}", &digest[..8])
        }
    };
    if !is_safe_name(&version) {
        return Err(ImageError::Tool(format!(
            "image version {version:?}: must be 1 to 64 of [A-Za-z0-9._-], not starting with '.'"
        )));
    }
    let mut img = img;
    img.file(IMAGE_VERSION_PATH, 0o644, format!("{version}\n").as_bytes());
    let cpio = img.to_cpio();
    let initrd = gzip(&cpio)?;
    let initrd_bytes = initrd.len() as u64;
    if initrd_bytes > MAX_INITRD_BYTES {
        return Err(ImageError::TooLarge {
            bytes: initrd_bytes,
            max: MAX_INITRD_BYTES,
        });
    }

    std::fs::create_dir_all(&opts.out_root).map_err(ImageError::io(&opts.out_root))?;
    let staging = opts.out_root.join(format!(".{version}.tmp"));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(ImageError::io(&staging))?;
    }
    std::fs::create_dir(&staging).map_err(ImageError::io(&staging))?;
    let kernel_out = staging.join(KERNEL_FILE);
    std::fs::write(&kernel_out, &kernel_bytes).map_err(ImageError::io(&kernel_out))?;
    let initrd_out = staging.join(INITRD_FILE);
    std::fs::write(&initrd_out, &initrd).map_err(ImageError::io(&initrd_out))?;
    let mut files = BTreeMap::new();
    for f in [KERNEL_FILE, INITRD_FILE] {
        files.insert(f.to_owned(), digest_file(&staging.join(f))?);
    }
    let manifest = Manifest {
        version: version.clone(),
        kernel_version: kernel.version.clone(),
        agent_version,
        kernel: KERNEL_FILE.into(),
        initrd: INITRD_FILE.into(),
        cmdline: opts.cmdline.clone(),
        files,
    };
    let manifest_out = staging.join(MANIFEST_FILE);
    std::fs::write(&manifest_out, manifest.to_json()).map_err(ImageError::io(&manifest_out))?;
    let dir = opts.out_root.join(&version);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(ImageError::io(&dir))?;
    }
    std::fs::rename(&staging, &dir).map_err(ImageError::io(&dir))?;
    Ok(BuiltImage {
        dir,
        manifest,
        initrd_bytes,
        cpio_bytes: cpio.len() as u64,
        elapsed: start.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::cpio::{read, EntryKind};

    /// A fake machine: a kernel, a modules tree with IPVS, a "busybox" and an "agent" (shell scripts, so
    /// `ldd` finds no libraries and the test needs nothing installed).
    fn fake_machine(root: &Path) -> BuildOptions {
        let ver = "6.1.0-99-amd64";
        let boot = root.join("boot");
        std::fs::create_dir_all(&boot).unwrap();
        std::fs::write(boot.join(format!("vmlinuz-{ver}")), b"fake kernel").unwrap();
        let mods = root.join("modules");
        let kdir = mods.join(ver);
        let mut dep = String::new();
        for name in IPVS_MODULES
            .iter()
            .chain(&["nf_conntrack", "ipip", "virtio_net"])
        {
            let rel = if name.starts_with("ip_vs") {
                format!("kernel/net/netfilter/ipvs/{name}.ko")
            } else {
                format!("kernel/misc/{name}.ko")
            };
            std::fs::create_dir_all(kdir.join(&rel).parent().unwrap()).unwrap();
            std::fs::write(kdir.join(&rel), name.as_bytes()).unwrap();
            dep.push_str(&format!("{rel}:\n"));
        }
        std::fs::write(kdir.join("modules.dep"), dep).unwrap();
        std::fs::write(
            kdir.join("modules.builtin"),
            "kernel/net/packet/af_packet.ko\n",
        )
        .unwrap();
        let busybox = root.join("busybox");
        std::fs::write(&busybox, b"#!/bin/sh\necho busybox\n").unwrap();
        let agent = root.join("lbfleet-agent");
        std::fs::write(&agent, b"#!/bin/sh\necho lbfleet-agent 9.8.7\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut opts = BuildOptions::new(&agent, root.join("out"));
        opts.boot_dir = boot;
        opts.modules_root = mods;
        opts.busybox = Some(busybox);
        opts.ipvsadm = None;
        opts
    }

    fn initrd_entries(dir: &Path) -> Vec<crate::cpio::Entry> {
        let gz = std::fs::read(dir.join(INITRD_FILE)).unwrap();
        let mut cpio = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut cpio).unwrap();
        read(&cpio).unwrap()
    }

    #[test]
    fn same_inputs_same_sha256_and_a_changed_input_changes_the_version() {
        let root = tempfile::tempdir().unwrap();
        let opts = fake_machine(root.path());
        let a = build_image(&opts).unwrap();
        let first = std::fs::read(a.dir.join(INITRD_FILE)).unwrap();
        assert!(
            a.manifest.version.starts_with("9.8.7-"),
            "{}",
            a.manifest.version
        );
        assert_eq!(a.manifest.agent_version, "9.8.7");
        assert_eq!(a.manifest.kernel_version, "6.1.0-99-amd64");
        // Rebuild (the directory is replaced): byte-identical initrd, same manifest.
        let b = build_image(&opts).unwrap();
        assert_eq!(a.manifest, b.manifest);
        assert_eq!(std::fs::read(b.dir.join(INITRD_FILE)).unwrap(), first);
        Manifest::read(&b.dir).unwrap().verify(&b.dir).unwrap();
        // Another agent: another content hash, so another version.
        std::fs::write(
            &opts.agent,
            b"#!/bin/sh\necho lbfleet-agent 9.8.7\n# changed\n",
        )
        .unwrap();
        let c = build_image(&opts).unwrap();
        assert_ne!(c.manifest.version, a.manifest.version);
        assert_ne!(
            c.manifest.files[INITRD_FILE].sha256,
            a.manifest.files[INITRD_FILE].sha256
        );
    }

    #[test]
    fn the_initrd_holds_init_agent_modules_and_version() {
        let root = tempfile::tempdir().unwrap();
        let mut opts = fake_machine(root.path());
        opts.version = Some("test-1".into());
        let built = build_image(&opts).unwrap();
        assert_eq!(built.dir, root.path().join("out/test-1"));
        let entries = initrd_entries(&built.dir);
        let file = |p: &str| match entries.iter().find(|e| e.path == p).map(|e| &e.kind) {
            Some(EntryKind::File(d)) => d.clone(),
            other => panic!("{p}: {other:?}"),
        };
        assert_eq!(file("init"), INIT_SCRIPT.as_bytes());
        assert_eq!(file("etc/lbfleet/udhcpc.script"), UDHCPC_SCRIPT.as_bytes());
        assert_eq!(file("etc/lbfleet/image-version"), b"test-1\n");
        assert!(file("usr/bin/lbfleet-agent").starts_with(b"#!/bin/sh"));
        let load = String::from_utf8(file("etc/lbfleet/modules.load")).unwrap();
        for m in [
            "ip_vs.ko",
            "ip_vs_mh.ko",
            "nf_conntrack.ko",
            "ipip.ko",
            "virtio_net.ko",
        ] {
            assert!(load.contains(m), "{m} not in {load}");
        }
        // Modules the fake kernel lacks (e1000, mlx5_core) are optional; af_packet is built in.
        assert!(!load.contains("e1000") && !load.contains("af_packet"));
        let init = entries.iter().find(|e| e.path == "init").unwrap();
        assert_eq!(init.mode, 0o755);
        // The mtimes are zero and entries sorted: checked by the byte equality above and in cpio's tests.
        let paths: Vec<&String> = entries.iter().map(|e| &e.path).collect();
        let mut sorted = paths.clone();
        sorted.sort();
        assert_eq!(paths, sorted);
    }

    #[test]
    fn a_missing_required_module_or_a_bad_version_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        let mut opts = fake_machine(root.path());
        opts.extra_modules = vec!["no_such_module".into()];
        let err = build_image(&opts).unwrap_err();
        assert!(err.to_string().contains("no_such_module"), "{err}");
        let mut opts = fake_machine(root.path());
        opts.version = Some("../escape".into());
        assert!(build_image(&opts).is_err());
        assert!(!root.path().join("escape").exists());
    }
}
