//! The sans-IO parts of a read transfer: option negotiation (RFC 2347/2348/2349/7440), safe path resolution,
//! and the sliding-window sender state with block-number rollover.

use std::ops::RangeInclusive;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// Server-side limits on what a client may negotiate.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest block size granted (default 1468: fits a 1500-byte MTU without fragmentation).
    pub max_blksize: u16,
    /// Largest window granted (RFC 7440).
    pub max_windowsize: u16,
    /// Retransmission timeout when the client does not ask for one.
    pub default_timeout: Duration,
    /// Largest retransmission timeout a client may ask for (RFC 2349 allows 255 s; with retries that would let
    /// one silent client hold a transfer slot for over twenty minutes). Larger requests are not acknowledged,
    /// so the default applies.
    pub max_timeout: Duration,
    /// Longest time one transfer may hold its slot, however slowly the client acknowledges.
    pub max_duration: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_blksize: 1468,
            max_windowsize: 64,
            default_timeout: Duration::from_secs(1),
            max_timeout: Duration::from_secs(5),
            max_duration: Duration::from_secs(300),
        }
    }
}

/// What was agreed for one transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub blksize: u16,
    pub windowsize: u16,
    pub timeout: Duration,
    /// Options to confirm in an OACK; empty means: no OACK, start with DATA block 1.
    pub oack: Vec<(String, String)>,
}

/// Applies the client's options within `limits`. Unknown or malformed options are ignored (RFC 2347 lets the
/// server leave out what it does not accept).
pub fn negotiate(options: &[(String, String)], file_size: u64, limits: &Limits) -> Negotiated {
    let mut n = Negotiated {
        blksize: 512,
        windowsize: 1,
        timeout: limits.default_timeout,
        oack: Vec::new(),
    };
    for (name, value) in options {
        match name.as_str() {
            "blksize" => {
                if let Ok(v @ 8..=65464) = value.parse::<u32>() {
                    n.blksize = u16::try_from(v).unwrap_or(512).min(limits.max_blksize);
                    n.oack.push((name.clone(), n.blksize.to_string()));
                }
            }
            "timeout" => {
                if let Ok(v @ 1..=255) = value.parse::<u64>() {
                    if Duration::from_secs(v) > limits.max_timeout {
                        continue;
                    }
                    n.timeout = Duration::from_secs(v);
                    n.oack.push((name.clone(), v.to_string()));
                }
            }
            "tsize" if value.parse::<u64>().is_ok() => {
                n.oack.push((name.clone(), file_size.to_string()));
            }
            "windowsize" => {
                if let Ok(v @ 1..=65535) = value.parse::<u32>() {
                    n.windowsize = u16::try_from(v).unwrap_or(1).min(limits.max_windowsize);
                    n.oack.push((name.clone(), n.windowsize.to_string()));
                }
            }
            _ => {}
        }
    }
    n
}

/// Why a requested file is not served. The message is what the client sees: it never names server paths.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("access violation")]
    Forbidden,
    #[error("file not found")]
    NotFound,
}

/// Maps a requested name to a regular file inside `root` (which must be canonical). Refuses absolute paths,
/// `..`, and anything (such as a symlink) that resolves outside the root.
pub fn resolve(root: &Path, requested: &str) -> Result<PathBuf, Refusal> {
    if requested.is_empty()
        || requested.starts_with('/')
        || requested.contains('\\')
        || requested.contains('\0')
    {
        return Err(Refusal::Forbidden);
    }
    let rel = Path::new(requested);
    if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(Refusal::Forbidden);
    }
    let full = root
        .join(rel)
        .canonicalize()
        .map_err(|_| Refusal::NotFound)?;
    if !full.starts_with(root) {
        return Err(Refusal::Forbidden);
    }
    match full.metadata() {
        Ok(m) if m.is_file() => Ok(full),
        Ok(_) => Err(Refusal::Forbidden),
        Err(_) => Err(Refusal::NotFound),
    }
}

/// Sender state of a read transfer. Blocks are counted absolutely from 1; on the wire the number wraps from
/// 65535 to 0, so files over 65,535 blocks work with clients that follow that (tftp-hpa, curl, iPXE).
#[derive(Debug, Clone)]
pub struct Sender {
    blksize: u64,
    window: u64,
    total_blocks: u64,
    acked: u64,
}

/// What an ACK did to the transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// New blocks are acknowledged; send the next window.
    Advanced,
    /// Old or foreign block number: ignore it (never resend on a duplicate, which would double the traffic).
    Ignored,
    /// The last block is acknowledged.
    Done,
}

impl Sender {
    pub fn new(file_size: u64, n: &Negotiated) -> Self {
        let blksize = u64::from(n.blksize.max(8));
        // A file that is an exact multiple of the block size ends with an empty block.
        Sender {
            blksize,
            window: u64::from(n.windowsize.max(1)),
            total_blocks: file_size / blksize + 1,
            acked: 0,
        }
    }

    pub fn total_blocks(&self) -> u64 {
        self.total_blocks
    }

    /// The absolute blocks to send now: the window after the last acknowledged block.
    pub fn window(&self) -> RangeInclusive<u64> {
        let first = self.acked + 1;
        first..=(self.acked + self.window).min(self.total_blocks)
    }

    /// File offset and length of an absolute block.
    pub fn block_span(&self, block: u64, file_size: u64) -> (u64, usize) {
        let offset = (block - 1) * self.blksize;
        let len = file_size.saturating_sub(offset).min(self.blksize);
        (offset, usize::try_from(len).unwrap_or(0))
    }

    /// Wire number of an absolute block.
    pub fn wire(block: u64) -> u16 {
        (block % 65536) as u16
    }

    /// Handles an ACK carrying wire number `wire`. Within the current window it may acknowledge fewer blocks
    /// than were sent (the client lost one): the next window then restarts right after it (RFC 7440).
    pub fn on_ack(&mut self, wire: u16) -> AckOutcome {
        let last = (self.acked + self.window).min(self.total_blocks);
        for abs in self.acked + 1..=last {
            if Self::wire(abs) == wire {
                self.acked = abs;
                return if abs == self.total_blocks {
                    AckOutcome::Done
                } else {
                    AckOutcome::Advanced
                };
            }
        }
        AckOutcome::Ignored
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn negotiation_caps_and_ignores_bad_values() {
        let l = Limits::default();
        let n = negotiate(
            &opts(&[
                ("blksize", "65464"),
                ("tsize", "0"),
                ("windowsize", "8"),
                ("timeout", "3"),
            ]),
            1000,
            &l,
        );
        assert_eq!(
            (n.blksize, n.windowsize, n.timeout),
            (1468, 8, Duration::from_secs(3))
        );
        assert_eq!(
            n.oack,
            opts(&[
                ("blksize", "1468"),
                ("tsize", "1000"),
                ("windowsize", "8"),
                ("timeout", "3")
            ])
        );
        let n = negotiate(
            &opts(&[
                ("blksize", "7"),
                ("timeout", "0"),
                ("windowsize", "x"),
                ("foo", "1"),
            ]),
            1,
            &l,
        );
        assert_eq!((n.blksize, n.windowsize, n.oack.len()), (512, 1, 0));
        let n = negotiate(&opts(&[("windowsize", "1000")]), 1, &l);
        assert_eq!(n.windowsize, 64);
        // A timeout over the cap is left out of the OACK: the default applies.
        let n = negotiate(&opts(&[("timeout", "255"), ("tsize", "0")]), 1, &l);
        assert_eq!(n.timeout, l.default_timeout);
        assert_eq!(n.oack, opts(&[("tsize", "1")]));
        let n = negotiate(&opts(&[("timeout", "5")]), 1, &l);
        assert_eq!(n.timeout, Duration::from_secs(5));
    }

    #[test]
    fn paths_outside_the_root_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().canonicalize().expect("canonical");
        std::fs::create_dir(root.join("sub")).expect("mkdir");
        std::fs::write(root.join("sub/file"), b"x").expect("write");
        let outside = tempfile::NamedTempFile::new().expect("outside file");
        std::os::unix::fs::symlink(outside.path(), root.join("escape")).expect("symlink");
        std::os::unix::fs::symlink(root.join("sub/file"), root.join("inside")).expect("symlink");
        assert!(resolve(&root, "sub/file").is_ok());
        assert!(
            resolve(&root, "inside").is_ok(),
            "a symlink that stays inside is fine"
        );
        for bad in [
            "/etc/passwd",
            "../etc/passwd",
            "sub/../../etc/passwd",
            "sub/./file/..",
            "escape",
            "sub",
            "a\\b",
        ] {
            assert_eq!(resolve(&root, bad), Err(Refusal::Forbidden), "{bad}");
        }
        assert_eq!(resolve(&root, "missing"), Err(Refusal::NotFound));
    }

    #[test]
    fn window_advances_restarts_after_loss_and_rolls_over() {
        let n = Negotiated {
            blksize: 512,
            windowsize: 4,
            timeout: Duration::from_secs(1),
            oack: vec![],
        };
        let mut s = Sender::new(512 * 10, &n);
        assert_eq!(
            s.total_blocks(),
            11,
            "exact multiple ends with an empty block"
        );
        assert_eq!(s.block_span(11, 5120), (5120, 0));
        assert_eq!(s.window(), 1..=4);
        assert_eq!(s.on_ack(2), AckOutcome::Advanced, "client lost block 3");
        assert_eq!(s.window(), 3..=6);
        assert_eq!(s.on_ack(2), AckOutcome::Ignored, "duplicate");
        assert_eq!(s.on_ack(6), AckOutcome::Advanced);
        assert_eq!(s.on_ack(10), AckOutcome::Advanced);
        assert_eq!(s.window(), 11..=11);
        assert_eq!(s.on_ack(11), AckOutcome::Done);

        // 70,000 blocks: wire numbers wrap 65535 -> 0.
        let n1 = Negotiated { windowsize: 1, ..n };
        let mut s = Sender::new(512 * 70_000 + 1, &n1);
        for abs in 1..=70_000u64 {
            assert_eq!(s.window(), abs..=abs);
            assert_eq!(
                s.on_ack(Sender::wire(abs)),
                AckOutcome::Advanced,
                "block {abs}"
            );
        }
        assert_eq!(Sender::wire(65_536), 0);
        assert_eq!(s.on_ack(Sender::wire(70_001)), AckOutcome::Done);
    }
}
