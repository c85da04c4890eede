//! Remote reboot: the server raises `reboot_generation` in the role document; an agent that sees it above
//! the value it first saw since the machine booted hands over and reboots the machine. The hand-over comes
//! first, in [`steps`] order: the VRRP instance stops gracefully (as MASTER a priority-0 advert, so the
//! backup takes the VIPs within one advert interval instead of waiting for its master-down timer, and the
//! VIPs are removed), the connection-sync daemon stops (the backup has been receiving the connection state
//! all along), then `reboot(2)`. The machine is behind [`Machine`] so tests observe the reboot and what was
//! handed over without rebooting anything.
//!
//! The value seen first is kept in the state directory with the kernel's boot id, so an agent restarted by
//! `/init` within the same boot still reboots for a request its predecessor saw but did not carry out, and a
//! state directory that outlives a reboot never causes a second one.

use std::fmt;
use std::path::{Path, PathBuf};

use lbfleet_proto::VrrpState;
use tracing::warn;

/// Where the kernel names the current boot.
pub const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";
/// The file in the state directory: `<boot id> <reboot generation>`.
const BASELINE_FILE: &str = "reboot_baseline";

/// What the agent had handed over when it asked the machine to reboot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandOver {
    /// The VRRP state before the hand-over (`None`: the role runs no VRRP).
    pub vrrp_was: Option<VrrpState>,
    /// The VRRP instance has stopped: priority 0 advertised (when MASTER) and the VIPs removed.
    pub vrrp_stopped: bool,
    /// The connection-sync daemon is stopped.
    pub sync_stopped: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("reboot(2) failed: {0}")]
pub struct RebootError(pub std::io::Error);

/// The machine the agent runs on.
pub trait Machine: Send + Sync + fmt::Debug {
    /// Reboots now. On a real machine it does not return when it works.
    fn reboot(&self, handed_over: &HandOver) -> Result<(), RebootError>;
}

/// The real machine: `sync(2)` then `reboot(2)` with `RB_AUTOBOOT` (PXE brings it back with its image).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemMachine;

impl Machine for SystemMachine {
    #[allow(unsafe_code)]
    fn reboot(&self, handed_over: &HandOver) -> Result<(), RebootError> {
        tracing::warn!(?handed_over, "rebooting the machine as the server asked");
        // SAFETY: sync(2) takes no arguments and cannot fail.
        unsafe { libc::sync() };
        // SAFETY: reboot(2) with a constant command and no pointer arguments; it returns only on failure.
        let rc = unsafe { libc::reboot(libc::RB_AUTOBOOT) };
        if rc == -1 {
            return Err(RebootError(std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

/// One step of the hand-over before a reboot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Stop the VRRP instance gracefully: priority-0 advert when MASTER, VIPs removed.
    StopVrrp { priority_zero_advert: bool },
    /// Stop the IPVS connection-sync daemon.
    StopSync,
    /// `reboot(2)`.
    Reboot,
}

/// The steps, in order, for a node in `vrrp` state (`None`: no VRRP in its role).
pub fn steps(vrrp: Option<VrrpState>) -> Vec<Step> {
    let mut s = Vec::new();
    if let Some(state) = vrrp {
        s.push(Step::StopVrrp {
            priority_zero_advert: state == VrrpState::Master,
        });
    }
    s.push(Step::StopSync);
    s.push(Step::Reboot);
    s
}

/// Decides, role by role, whether the server asks for a reboot.
#[derive(Debug)]
pub struct RebootWatch {
    booted_with: Option<u64>,
    file: Option<PathBuf>,
    boot_id: Option<String>,
}

impl RebootWatch {
    /// A watch that remembers its first value in `state_dir` under `boot_id` (and reads it back when the
    /// boot id matches).
    pub fn load(state_dir: Option<&Path>, boot_id: Option<String>) -> RebootWatch {
        let file = state_dir.map(|d| d.join(BASELINE_FILE));
        let booted_with = match (&file, &boot_id) {
            (Some(f), Some(id)) => std::fs::read_to_string(f).ok().and_then(|t| {
                let (saved_id, g) = t.trim().split_once(' ')?;
                (saved_id == id).then(|| g.parse().ok()).flatten()
            }),
            _ => None,
        };
        RebootWatch {
            booted_with,
            file,
            boot_id,
        }
    }

    /// The kernel's boot id, if readable.
    pub fn current_boot_id() -> Option<String> {
        std::fs::read_to_string(BOOT_ID)
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    }

    /// True when `reboot_generation` asks for a reboot (above the first value seen since boot). The first
    /// value seen becomes the baseline.
    pub fn asks_reboot(&mut self, reboot_generation: u64) -> bool {
        match self.booted_with {
            Some(b) => reboot_generation > b,
            None => {
                self.set_baseline(reboot_generation);
                false
            }
        }
    }

    /// Takes `g` as the baseline (the first value, or a reboot that failed: not retried in a loop).
    pub fn set_baseline(&mut self, g: u64) {
        self.booted_with = Some(g);
        if let (Some(f), Some(id)) = (&self.file, &self.boot_id) {
            if let Err(e) = std::fs::write(f, format!("{id} {g}\n")) {
                warn!(error = %e, file = %f.display(), "cannot save the reboot baseline");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_master_advertises_priority_zero_before_anything_else_and_the_reboot_comes_last() {
        assert_eq!(
            steps(Some(VrrpState::Master)),
            [
                Step::StopVrrp {
                    priority_zero_advert: true
                },
                Step::StopSync,
                Step::Reboot
            ]
        );
        assert_eq!(
            steps(Some(VrrpState::Backup)),
            [
                Step::StopVrrp {
                    priority_zero_advert: false
                },
                Step::StopSync,
                Step::Reboot
            ]
        );
        assert_eq!(steps(None), [Step::StopSync, Step::Reboot]);
    }

    #[test]
    fn only_a_value_above_the_first_one_seen_in_this_boot_asks_for_a_reboot() {
        let dir = tempfile::tempdir().expect("dir");
        let mut w = RebootWatch::load(Some(dir.path()), Some("boot-a".into()));
        assert!(!w.asks_reboot(3), "the first value is the baseline");
        assert!(!w.asks_reboot(3));
        assert!(!w.asks_reboot(2));
        assert!(w.asks_reboot(4));
        // An agent restarted in the same boot still owes that reboot.
        let mut again = RebootWatch::load(Some(dir.path()), Some("boot-a".into()));
        assert!(again.asks_reboot(4));
        // After the reboot (another boot id), the value the machine comes up with is the new baseline.
        let mut next = RebootWatch::load(Some(dir.path()), Some("boot-b".into()));
        assert!(!next.asks_reboot(4));
        assert!(!next.asks_reboot(4));
        assert!(next.asks_reboot(5));
        // A failed reboot is not retried in a loop.
        next.set_baseline(5);
        assert!(!next.asks_reboot(5));
    }
}
