//! Image files checked against the sha256 of their manifest before they are served. With several servers each
//! holds its own copy of an image's files (installed with `lbfleet-server image add`), and the manifest's
//! digests live in the database (or, while it is unreachable, in the boot cache): a server never serves a file
//! whose bytes differ from what the fleet agreed on. A file is read again only when its length or modification
//! time changed since it last matched.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

/// The files that matched their digest, by length and modification time.
#[derive(Debug, Default)]
pub struct FileDigests {
    verified: Mutex<HashMap<PathBuf, (u64, SystemTime, String)>>,
}

impl FileDigests {
    /// Checks the file at `path` against `expected` (hex sha256); the reason when it does not match.
    pub async fn verify(&self, path: &Path, expected: &str) -> Result<(), String> {
        let meta = tokio::fs::metadata(path)
            .await
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let stamp = (
            meta.len(),
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        );
        {
            let seen = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((len, mtime, digest)) = seen.get(path) {
                if (*len, *mtime) == stamp && digest.eq_ignore_ascii_case(expected) {
                    return Ok(());
                }
            }
        }
        let owned = path.to_owned();
        let digest = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
            let mut f = std::fs::File::open(&owned)?;
            let mut h = Sha256::new();
            std::io::copy(&mut f, &mut h)?;
            Ok(hex::encode(h.finalize()))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if !digest.eq_ignore_ascii_case(expected) {
            return Err(format!(
                "{} does not match the manifest (sha256 {digest}, expected {expected})",
                path.display()
            ));
        }
        let mut seen = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() > 1024 {
            seen.clear();
        }
        seen.insert(path.to_owned(), (stamp.0, stamp.1, digest));
        Ok(())
    }
}
