//! QEMU guest harness: boots Debian's kernel (`/boot/vmlinuz-*`) under TCG with an initramfs built here
//! (static busybox, the ip_vs modules and their dependencies, host binaries with their shared libraries) and
//! collects what the guest's test script prints on the serial console. The host kernel has no IPVS, so every
//! test that touches IPVS runs in such a guest.
//!
//! The guest script marks its output with `=== BEGIN name ===` / `=== END name rc=N ===`; see `GuestOutput`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lbfleet_images::modules::ModuleIndex;
use lbfleet_images::ImageError;

/// Why a guest could not be built or booted.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("guest prerequisites missing: {}; install them with `make deps` (scripts/install-deps.sh)", .0.join(", "))]
    Missing(Vec<String>),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Tool(String),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("the guest did not finish within {timeout:?}; console so far:\n{console}")]
    Timeout { timeout: Duration, console: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> HarnessError + '_ {
    move |source| HarnessError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Host programs and files a guest needs.
#[derive(Debug, Clone)]
pub struct Prereqs {
    pub qemu: PathBuf,
    pub kernel: PathBuf,
    pub kernel_version: String,
    pub busybox: PathBuf,
    pub ipvsadm: PathBuf,
    /// Records what ipvsadm sends and receives, for the codec comparison.
    pub strace: PathBuf,
    /// iproute2's `ip`, for guests that build network namespaces and veth pairs (busybox's `ip` cannot).
    pub iproute2: PathBuf,
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Finds QEMU, a Debian kernel with its modules, static busybox and ipvsadm.
pub fn prereqs() -> Result<Prereqs, HarnessError> {
    let mut missing = Vec::new();
    let qemu = which("qemu-system-x86_64");
    if qemu.is_none() {
        missing.push("qemu-system-x86_64 (package qemu-system-x86)".to_owned());
    }
    // The newest /boot/vmlinuz-<ver> that has IPVS modules: the kernel the images are built with.
    let kernel =
        match lbfleet_images::find_kernel(Path::new("/boot"), Path::new("/lib/modules"), None) {
            Ok(k) => Some((k.version, k.path)),
            Err(e) => {
                missing.push(e.to_string());
                None
            }
        };
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .map(PathBuf::from)
        .into_iter()
        .find(|p| p.is_file());
    if busybox.is_none() {
        missing.push("busybox (package busybox-static)".to_owned());
    }
    let ipvsadm = which("ipvsadm");
    if ipvsadm.is_none() {
        missing.push("ipvsadm (package ipvsadm)".to_owned());
    }
    let strace = which("strace");
    if strace.is_none() {
        missing.push("strace (package strace)".to_owned());
    }
    let iproute2 = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .map(PathBuf::from)
        .into_iter()
        // Not busybox's applet (a symlink to busybox on some systems).
        .find(|p| p.is_file() && !std::fs::read_link(p).is_ok_and(|t| t.ends_with("busybox")));
    if iproute2.is_none() {
        missing.push("ip (package iproute2)".to_owned());
    }
    match (qemu, kernel, busybox, ipvsadm, strace, iproute2) {
        (
            Some(qemu),
            Some((kernel_version, kernel)),
            Some(busybox),
            Some(ipvsadm),
            Some(strace),
            Some(iproute2),
        ) => Ok(Prereqs {
            qemu,
            kernel,
            kernel_version,
            busybox,
            ipvsadm,
            strace,
            iproute2,
        }),
        _ => Err(HarnessError::Missing(missing)),
    }
}

/// The guest tier's prerequisites, or the rule of `prereq::missing` (fail; `None` only when `LBFLEET_SKIP`
/// names `vm` outside CI).
pub fn require() -> Option<Prereqs> {
    match prereqs() {
        Ok(p) => Some(p),
        Err(e) => {
            crate::prereq::missing(crate::prereq::Tier::Vm, e);
            None
        }
    }
}

/// The ip_vs core and every scheduler module (the image's list).
pub use lbfleet_images::modules::IPVS_MODULES;

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /sbin /usr/bin /usr/sbin /usr/local/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin:/usr/local/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# IPVS refuses IPv4 destinations while the kernel has no local routing table, which appears with the first
# address; a real node has its interfaces up by now.
ip link set lo up
for m in $(cat /etc/lbfleet/modules.load); do insmod "$m" || echo "insmod $m failed"; done
echo "=== GUEST READY ==="
sh /test.sh
echo "=== GUEST DONE ==="
poweroff -f
"#;

/// Shell helpers for test scripts (`. /lib/guest-lib.sh`): `run NAME CMD...` prints CMD's output as a marked
/// section (see `GuestOutput::section`); `waitfor FILE PATTERN` waits at most 30 s for PATTERN in FILE; `retry N
/// CMD...` runs CMD until it succeeds, at most N times.
const GUEST_LIB: &str = r#"
run() { name=$1; shift; echo "=== BEGIN $name ==="; "$@" 2>&1; echo "=== END $name rc=$? ==="; }
# retry TRIES CMD...: runs CMD until it succeeds, at most TRIES times 0.1 s apart; prints the last output and
# returns the last status (a wait for an observable condition, bounded).
retry() {
  n=$1; shift; i=0
  while :; do
    out=$("$@" 2>&1); rc=$?; i=$((i+1))
    if [ $rc -eq 0 ] || [ $i -ge $n ]; then break; fi
    sleep 0.1
  done
  printf '%s\n' "$out"; return $rc
}
waitfor() {
  i=0
  while ! grep -q "$2" "$1" 2>/dev/null; do
    i=$((i+1))
    if [ $i -gt 300 ]; then echo "TIMEOUT waiting for '$2' in $1"; cat "$1"; return 1; fi
    sleep 0.1
  done
}
"#;

/// Builds a guest initramfs with the image crate's builder (`lbfleet_images::Initramfs`): the same busybox,
/// module resolution and library copying as a boot image, with the test `/init` above.
#[derive(Debug)]
pub struct Initramfs {
    prereqs: Prereqs,
    image: lbfleet_images::Initramfs,
    scratch: tempfile::TempDir,
}

impl Initramfs {
    /// Busybox as /bin/busybox, `ipvsadm` with its libraries, the ip_vs modules, and `/init`.
    pub fn new(prereqs: &Prereqs) -> Result<Initramfs, HarnessError> {
        Initramfs::with_modules(prereqs, &[])
    }

    /// Like `new`, with more kernel modules (and their dependencies) loaded after the ip_vs ones, e.g.
    /// `veth` for a guest that builds network namespaces.
    pub fn with_modules(prereqs: &Prereqs, extra: &[&str]) -> Result<Initramfs, HarnessError> {
        let scratch = tempfile::tempdir().map_err(io_err(Path::new("tempdir")))?;
        let mut image = lbfleet_images::Initramfs::new()?;
        image.busybox(&prereqs.busybox)?;
        image.file("/init", 0o755, INIT.as_bytes());
        image.file("/lib/guest-lib.sh", 0o644, GUEST_LIB.as_bytes());
        image.binary(&prereqs.ipvsadm, "/usr/sbin/ipvsadm")?;
        image.binary(&prereqs.strace, "/usr/bin/strace")?;
        let index = ModuleIndex::load(Path::new("/lib/modules"), &prereqs.kernel_version)?;
        let wanted: Vec<&str> = IPVS_MODULES.iter().chain(extra).copied().collect();
        image.modules(&index, &wanted, &[])?;
        Ok(Initramfs {
            prereqs: prereqs.clone(),
            image,
            scratch,
        })
    }

    /// Adds a host program at `guest_path`, stripped of debug info when `strip` is available, with its
    /// shared libraries at their host paths.
    pub fn binary(&mut self, host: &Path, guest_path: &str) -> Result<&mut Self, HarnessError> {
        self.image.binary(host, guest_path)?;
        Ok(self)
    }

    /// iproute2's `ip` as `/usr/local/sbin/ip` (it can create network namespaces and veth pairs). Busybox's
    /// shell prefers its own applets to PATH, so scripts call it by that path.
    pub fn iproute2(&mut self) -> Result<&mut Self, HarnessError> {
        let ip = self.prereqs.iproute2.clone();
        self.binary(&ip, "/usr/local/sbin/ip")
    }

    pub fn file(&mut self, guest_path: &str, data: &[u8]) -> &mut Self {
        self.image.file(guest_path, 0o644, data);
        self
    }

    /// The script `/init` runs after loading modules; its output is the test result.
    pub fn script(&mut self, text: &str) -> &mut Self {
        self.image.file("/test.sh", 0o755, text.as_bytes());
        self
    }

    /// Writes the archive (uncompressed: the kernel takes it as is) and returns its path (inside the
    /// builder's scratch directory).
    pub fn write(self) -> Result<(PathBuf, tempfile::TempDir), HarnessError> {
        let path = self.scratch.path().join("initrd.cpio");
        std::fs::write(&path, self.image.to_cpio()).map_err(io_err(&path))?;
        Ok((path, self.scratch))
    }

    pub fn prereqs(&self) -> &Prereqs {
        &self.prereqs
    }
}

/// Kills QEMU when dropped, so a failing or panicking test never leaves a VM behind.
struct QemuGuard(Child);

impl Drop for QemuGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// The serial console of a finished guest.
#[derive(Debug, Clone)]
pub struct GuestOutput {
    pub console: String,
    pub elapsed: Duration,
}

/// One marked section of guest output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub text: String,
    pub rc: i32,
}

impl GuestOutput {
    /// The text between `=== BEGIN name ===` and `=== END name rc=N ===`.
    pub fn section(&self, name: &str) -> Option<Section> {
        let begin = format!("=== BEGIN {name} ===");
        let end = format!("=== END {name} rc=");
        let start = self.console.find(&begin)? + begin.len();
        let rest = &self.console[start..];
        let stop = rest.find(&end)?;
        let rc = rest[stop + end.len()..]
            .split(|c: char| !c.is_ascii_digit() && c != '-')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(-1);
        Some(Section {
            text: rest[..stop].replace('\r', "").trim_matches('\n').to_owned(),
            rc,
        })
    }

    /// The named section; panics naming what is missing, with the console for diagnosis.
    pub fn require_section(&self, name: &str) -> Section {
        self.section(name)
            .unwrap_or_else(|| panic!("no section {name} in guest console:\n{}", self.console))
    }

    pub fn finished(&self) -> bool {
        self.console.contains("=== GUEST DONE ===")
    }
}

/// What a guest gets beyond the defaults (no network, the harness's kernel command line).
#[derive(Debug, Clone, Default)]
pub struct BootOptions {
    /// Appended to the kernel command line (e.g. `lbfleet.server=... lbfleet.token=...`).
    pub append: String,
    /// More QEMU arguments (e.g. a NIC).
    pub qemu_args: Vec<String>,
}

impl BootOptions {
    /// A virtio NIC with MAC `mac` on QEMU's user-mode network `net` (a /24 inside 198.18.0.0/15), isolated
    /// from the host (`restrict=on`) except for one forward: guest TCP connections to `guest_addr:guest_port`
    /// are piped by a `busybox nc` per connection to `127.0.0.1:host_port`, so the guest reaches a server
    /// the test runs on loopback and nothing else.
    pub fn user_net_to_loopback(
        prereqs: &Prereqs,
        mac: &str,
        net: &str,
        guest_addr: &str,
        guest_port: u16,
        host_port: u16,
    ) -> BootOptions {
        let netdev = format!(
            "user,id=n0,net={net},restrict=on,guestfwd=tcp:{guest_addr}:{guest_port}-cmd:{} nc 127.0.0.1 {host_port}",
            prereqs.busybox.display()
        );
        BootOptions {
            append: String::new(),
            qemu_args: vec![
                "-netdev".into(),
                netdev,
                "-device".into(),
                format!("virtio-net-pci,netdev=n0,mac={mac}"),
            ],
        }
    }
}

/// Writes `img`, boots it and keeps the console in `$TMPDIR/<log_name>` for diagnosis after a failure.
pub fn boot_image(
    img: Initramfs,
    options: &BootOptions,
    timeout: Duration,
    log_name: &str,
) -> Result<GuestOutput, HarnessError> {
    let prereqs = img.prereqs().clone();
    let (initrd, _scratch) = img.write()?;
    let out = boot_with(&prereqs, &initrd, options, timeout)?;
    eprintln!("guest finished in {:?}", out.elapsed);
    let _ = std::fs::write(std::env::temp_dir().join(log_name), &out.console);
    Ok(out)
}

/// One guest boot shared by all tests of a test binary: booted by the first test that asks, its console
/// read by the others.
#[derive(Debug)]
pub struct SharedGuest(std::sync::OnceLock<Option<Result<GuestOutput, String>>>);

impl SharedGuest {
    pub const fn new() -> Self {
        SharedGuest(std::sync::OnceLock::new())
    }

    /// The guest's output, booting it with `build` (which returns the image to boot) on first use; `None`
    /// when guest tests are skipped explicitly (see `require`). A failed boot panics in every test.
    pub fn output(
        &self,
        build: impl FnOnce(&Prereqs) -> Result<Initramfs, HarnessError>,
        log_name: &str,
    ) -> Option<&GuestOutput> {
        let result = self
            .0
            .get_or_init(|| {
                let prereqs = require()?;
                Some(
                    build(&prereqs)
                        .and_then(|img| {
                            boot_image(
                                img,
                                &BootOptions::default(),
                                Duration::from_secs(300),
                                log_name,
                            )
                        })
                        .map_err(|e| e.to_string()),
                )
            })
            .as_ref()?;
        match result {
            Ok(out) => Some(out),
            Err(e) => panic!("guest failed: {e}"),
        }
    }
}

impl Default for SharedGuest {
    fn default() -> Self {
        Self::new()
    }
}

/// Boots the kernel with `initrd` and returns the console once the guest powers off.
pub fn boot(
    prereqs: &Prereqs,
    initrd: &Path,
    timeout: Duration,
) -> Result<GuestOutput, HarnessError> {
    boot_with(prereqs, initrd, &BootOptions::default(), timeout)
}

/// `boot` with a NIC, more kernel parameters, or other QEMU arguments.
pub fn boot_with(
    prereqs: &Prereqs,
    initrd: &Path,
    options: &BootOptions,
    timeout: Duration,
) -> Result<GuestOutput, HarnessError> {
    let start = Instant::now();
    let append = format!("console=ttyS0 panic=-1 quiet loglevel=3 {}", options.append);
    let child = Command::new(&prereqs.qemu)
        .args([
            "-accel",
            "tcg",
            "-m",
            "1024",
            "-smp",
            "1",
            "-nodefaults",
            "-display",
            "none",
        ])
        .args(["-no-reboot", "-serial", "stdio", "-monitor", "none"])
        .arg("-kernel")
        .arg(&prereqs.kernel)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(append.trim_end())
        .args(&options.qemu_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_err(&prereqs.qemu))?;
    let mut guard = QemuGuard(child);
    let mut stdout = guard
        .0
        .stdout
        .take()
        .ok_or_else(|| HarnessError::Tool("no QEMU stdout".into()))?;
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut console = Vec::new();
    let deadline = start + timeout;
    loop {
        while let Ok(chunk) = rx.try_recv() {
            console.extend_from_slice(&chunk);
        }
        match guard.0.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) => {}
            Err(e) => return Err(HarnessError::Tool(format!("waiting for QEMU: {e}"))),
        }
        if Instant::now() >= deadline {
            drop(guard);
            let _ = reader.join();
            while let Ok(chunk) = rx.try_recv() {
                console.extend_from_slice(&chunk);
            }
            return Err(HarnessError::Timeout {
                timeout,
                console: String::from_utf8_lossy(&console).into_owned(),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = reader.join();
    while let Ok(chunk) = rx.try_recv() {
        console.extend_from_slice(&chunk);
    }
    let mut stderr = String::new();
    if let Some(mut e) = guard.0.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let out = GuestOutput {
        console: String::from_utf8_lossy(&console).into_owned(),
        elapsed: start.elapsed(),
    };
    if !out.finished() {
        return Err(HarnessError::Tool(format!(
            "QEMU exited before the guest finished; stderr: {stderr}\nconsole:\n{}",
            out.console
        )));
    }
    Ok(out)
}

/// Path of a binary of another workspace package. Tests and benchmarks never build: `make test` (and each
/// `make bench-*` target) builds every binary once before any test runs, so all tests use the same build.
///
/// The binary is taken from `LBFLEET_BIN_DIR` when set (`make test` sets `target/debug`, `make demo` and the
/// benchmarks `target/release`), else from the profile directory of the running executable
/// (`target/<profile>/`). A missing binary is an error that says which command builds it.
pub fn workspace_binary(package: &str, name: &str) -> Result<PathBuf, HarnessError> {
    let (dir, origin) = match std::env::var_os("LBFLEET_BIN_DIR") {
        Some(dir) => (PathBuf::from(dir), "LBFLEET_BIN_DIR"),
        None => (profile_dir()?, "the running executable's profile directory"),
    };
    let bin = dir.join(name);
    if bin.is_file() {
        Ok(bin)
    } else {
        let release = if dir.file_name().is_some_and(|p| p == "release") {
            " --release"
        } else {
            ""
        };
        Err(HarnessError::Tool(format!(
            "{} does not exist ({origin}); build it first: cargo build{release} -p {package} --bin {name} \
             (make test builds every binary before the tests)",
            bin.display()
        )))
    }
}

/// `target/<profile>` of the running test or benchmark (`target/<profile>/deps/<test>` or
/// `target/<profile>/<bin>`).
fn profile_dir() -> Result<PathBuf, HarnessError> {
    let exe = std::env::current_exe().map_err(io_err(Path::new("current_exe")))?;
    let parent = exe
        .parent()
        .ok_or_else(|| HarnessError::Tool(format!("unexpected path {}", exe.display())))?;
    Ok(if parent.file_name().is_some_and(|n| n == "deps") {
        parent.parent().unwrap_or(parent).to_path_buf()
    } else {
        parent.to_path_buf()
    })
}

/// A guest that runs until dropped (a boot image whose `/init` never powers off): QEMU with a kernel, an
/// initrd and `options`, its serial console collected in the background. Dropping it kills QEMU.
#[derive(Debug)]
pub struct RunningGuest {
    child: Option<Child>,
    console: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl RunningGuest {
    /// Starts QEMU (TCG, 1 GiB, serial console on stdout) with `append` as the whole kernel command line.
    pub fn start(
        prereqs: &Prereqs,
        kernel: &Path,
        initrd: &Path,
        append: &str,
        qemu_args: &[String],
    ) -> Result<RunningGuest, HarnessError> {
        RunningGuest::spawn(
            Command::new(&prereqs.qemu),
            prereqs,
            kernel,
            initrd,
            append,
            qemu_args,
        )
    }

    /// `start` inside the network namespace `netns` (`ip netns exec`, which execs QEMU: the child's PID is
    /// QEMU's), so `-netdev tap,ifname=...` opens taps that live in that namespace (a lab site's bridges).
    pub fn start_in_netns(
        netns: &crate::lab::Netns,
        prereqs: &Prereqs,
        kernel: &Path,
        initrd: &Path,
        append: &str,
        qemu_args: &[String],
    ) -> Result<RunningGuest, HarnessError> {
        RunningGuest::spawn(
            netns.command(&prereqs.qemu.display().to_string()),
            prereqs,
            kernel,
            initrd,
            append,
            qemu_args,
        )
    }

    fn spawn(
        mut command: Command,
        prereqs: &Prereqs,
        kernel: &Path,
        initrd: &Path,
        append: &str,
        qemu_args: &[String],
    ) -> Result<RunningGuest, HarnessError> {
        let mut child = command
            .args(["-accel", "tcg", "-m", "1024", "-smp", "1", "-nodefaults"])
            .args(["-display", "none", "-no-reboot", "-serial", "stdio"])
            .args(["-monitor", "none"])
            .arg("-kernel")
            .arg(kernel)
            .arg("-initrd")
            .arg(initrd)
            .arg("-append")
            .arg(append)
            .args(qemu_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io_err(&prereqs.qemu))?;
        let mut stdout = child
            .stdout
            .take()
            .ok_or_else(|| HarnessError::Tool("no QEMU stdout".into()))?;
        let console = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = console.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(&buf[..n]);
            }
        });
        Ok(RunningGuest {
            child: Some(child),
            console,
            reader: Some(reader),
        })
    }

    /// The console so far.
    pub fn console(&self) -> String {
        let bytes = self.console.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&bytes).replace('\r', "")
    }

    /// Whether QEMU still runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits until the console contains `pattern`, QEMU exits, or `timeout` passes.
    pub fn wait_for(&mut self, pattern: &str, timeout: Duration) -> Result<(), HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.console().contains(pattern) {
                return Ok(());
            }
            if !self.is_running() {
                return Err(HarnessError::Tool(format!(
                    "QEMU exited before {pattern:?} appeared; console:\n{}",
                    self.console()
                )));
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::Timeout {
                    timeout,
                    console: self.console(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RunningGuest {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}
