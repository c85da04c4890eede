//! QEMU machines for the lab: TCG, network boot, taps on lab bridges, fixed MACs, the serial console in a
//! file. Firmware: SeaBIOS with QEMU's iPXE option ROM, or OVMF (UEFI) with QEMU's iPXE EFI ROM or with no
//! option ROM at all, so EDK2's own PXE client boots (as on most UEFI servers). Killed by PID on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::{io_err, wait, LabError, LabPrereqs};
use crate::netns::Netns;

/// What the machine boots with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS; the NIC's option ROM is QEMU's iPXE.
    BiosIpxe,
    /// OVMF; the NIC's option ROM is QEMU's iPXE (EFI part).
    UefiIpxe,
    /// OVMF without any option ROM: EDK2's PxeBcDxe over OVMF's own virtio-net driver. It downloads
    /// `ipxe.efi` by TFTP, which then loads the boot script over HTTP.
    UefiEdk2Pxe,
}

impl Firmware {
    pub fn is_uefi(self) -> bool {
        !matches!(self, Firmware::BiosIpxe)
    }

    pub fn label(self) -> &'static str {
        match self {
            Firmware::BiosIpxe => "bios-ipxe",
            Firmware::UefiIpxe => "uefi-ipxe",
            Firmware::UefiEdk2Pxe => "uefi-edk2",
        }
    }
}

/// One NIC of a machine.
#[derive(Debug, Clone)]
pub struct Nic {
    /// A tap in the site namespace (`Site::tap`).
    pub tap: String,
    pub mac: String,
    /// Network boot from this NIC (bootindex); others get no option ROM and are not booted from.
    pub boot: bool,
}

/// A machine to start.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub name: String,
    pub firmware: Firmware,
    pub nics: Vec<Nic>,
    pub memory_mib: u32,
}

impl VmSpec {
    pub fn new(name: &str, firmware: Firmware, nics: Vec<Nic>) -> VmSpec {
        VmSpec {
            name: name.to_owned(),
            firmware,
            nics,
            memory_mib: 512,
        }
    }
}

/// A running QEMU machine.
#[allow(missing_debug_implementations)] // owns a child process
pub struct Vm {
    child: Child,
    spec: VmSpec,
    console_path: PathBuf,
    console_socket: PathBuf,
    /// The connection `type_line` writes to, once opened.
    console_input: Option<std::os::unix::net::UnixStream>,
    started: Instant,
}

impl Vm {
    pub fn start(
        ns: &Netns,
        dir: &Path,
        prereqs: &LabPrereqs,
        spec: VmSpec,
    ) -> Result<Vm, LabError> {
        let console_path = dir.join(format!("{}.console", spec.name));
        let console_socket = dir.join(format!("{}.sock", spec.name));
        let pidfile = dir.join(format!("{}.pid", spec.name));
        let mut cmd = ns.command(&prereqs.qemu.display().to_string());
        cmd.args(["-accel", "tcg", "-nodefaults", "-no-user-config"])
            .args(["-machine", "q35,graphics=off", "-cpu", "max"])
            .args(["-m", &spec.memory_mib.to_string()])
            .args(["-display", "none", "-monitor", "none", "-vga", "none"])
            // The serial console: everything the machine prints goes to the log file; a test may type into
            // it through the socket (`Vm::type_line`).
            .args([
                "-chardev",
                &format!(
                    "socket,id=con0,path={},server=on,wait=off,logfile={},logappend=off",
                    console_socket.display(),
                    console_path.display()
                ),
                "-serial",
                "chardev:con0",
            ])
            .args(["-pidfile", &pidfile.display().to_string()])
            .args(["-boot", "n"]);
        if spec.firmware.is_uefi() {
            // Each machine writes its own copy of the variable store.
            let vars = dir.join(format!("{}.vars.fd", spec.name));
            std::fs::copy(&prereqs.ovmf_vars, &vars).map_err(io_err(&prereqs.ovmf_vars))?;
            cmd.args([
                "-drive",
                &format!(
                    "if=pflash,format=raw,unit=0,readonly=on,file={}",
                    prereqs.ovmf_code.display()
                ),
                "-drive",
                &format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
            ]);
        }
        for (i, nic) in spec.nics.iter().enumerate() {
            cmd.args([
                "-netdev",
                &format!("tap,id=n{i},ifname={},script=no,downscript=no", nic.tap),
            ]);
            let mut device = format!("virtio-net-pci,netdev=n{i},mac={}", nic.mac);
            if nic.boot {
                device.push_str(",bootindex=1");
                if spec.firmware == Firmware::UefiEdk2Pxe {
                    device.push_str(",romfile=");
                }
            } else {
                device.push_str(",romfile=");
            }
            cmd.args(["-device", &device]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io_err(&prereqs.qemu))?;
        Ok(Vm {
            child,
            spec,
            console_path,
            console_socket,
            console_input: None,
            started: Instant::now(),
        })
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn spec(&self) -> &VmSpec {
        &self.spec
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// When QEMU was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The serial console so far (lossy UTF-8; firmware writes escape sequences).
    pub fn console(&self) -> String {
        std::fs::read(&self.console_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Types `line` and a newline on the serial console (for an image with a console shell), one byte every
    /// 10 ms over one connection kept open, as a person would: a burst written at once and a disconnect lost
    /// input under TCG.
    pub fn type_line(&mut self, line: &str) -> Result<(), LabError> {
        use std::io::Write;
        if self.console_input.is_none() {
            let s = std::os::unix::net::UnixStream::connect(&self.console_socket)
                .map_err(io_err(&self.console_socket))?;
            self.console_input = Some(s);
        }
        let path = self.console_socket.clone();
        let Some(s) = self.console_input.as_mut() else {
            return Err(LabError::Other("console not connected".into()));
        };
        for b in line.bytes().chain(std::iter::once(b'\n')) {
            s.write_all(&[b]).map_err(io_err(&path))?;
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Whether QEMU is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until the console contains `needle` (after byte offset `from`); returns the time since start.
    pub fn wait_console_from(
        &mut self,
        from: usize,
        needle: &str,
        timeout: Duration,
    ) -> Result<Duration, LabError> {
        let what = format!("{:?} on the console of {}", needle, self.spec.name);
        let path = self.console_path.clone();
        let started = self.started;
        let r = wait::until(&what, wait::scaled(timeout), || {
            let data = std::fs::read(&path).ok()?;
            let tail = data.get(from..)?;
            String::from_utf8_lossy(tail)
                .contains(needle)
                .then(|| started.elapsed())
        });
        if r.is_err() && !self.running() {
            return Err(LabError::Other(format!(
                "{} exited before {what}",
                self.spec.name
            )));
        }
        r
    }

    pub fn wait_console(&mut self, needle: &str, timeout: Duration) -> Result<Duration, LabError> {
        self.wait_console_from(0, needle, timeout)
    }

    /// Byte length of the console so far, to wait for something new after it.
    pub fn console_len(&self) -> usize {
        std::fs::metadata(&self.console_path)
            .map(|m| m.len() as usize)
            .unwrap_or(0)
    }

    /// Kills QEMU and starts the same machine again (a cold reboot), console appended to the same file.
    pub fn restart(
        &mut self,
        ns: &Netns,
        dir: &Path,
        prereqs: &LabPrereqs,
    ) -> Result<(), LabError> {
        self.kill();
        let old = std::fs::read(&self.console_path).unwrap_or_default();
        // Keep what came before for failure reports, and remove it: until the new QEMU truncates the file,
        // a reader would take the last boot's lines for this one's.
        let prefix_path = self.console_path.with_extension("console.previous");
        let _ = std::fs::write(prefix_path, old);
        let _ = std::fs::remove_file(&self.console_path);
        let fresh = Vm::start(ns, dir, prereqs, self.spec.clone())?;
        let _ = std::mem::replace(self, fresh);
        Ok(())
    }

    /// Kills QEMU (the machine loses power) and reaps it.
    pub fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}
