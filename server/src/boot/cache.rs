//! The boot cache: what this server needs to boot a known node while the database is unreachable (its address,
//! its image with the manifest's digests, its last role document, and the fleet's boot-credential key), kept in
//! a file of the server's state directory.
//!
//! The file is rewritten atomically (temporary file, fsync, rename, fsync of the directory) whenever the
//! snapshot read from the database changes, and at start. It is integrity-protected: its first line carries an
//! HMAC-SHA256 of the rest under a key of this server's own (`boot-cache.key`, 0600, made on first start), so a
//! cache changed behind the server's back is refused with a log line, never used. The file and the key are
//! readable by the server's user only (the cache holds the boot-credential key), and the directory must not be
//! the TFTP root. Bounded: at most `MAX_NODES` nodes and `MAX_CACHE_BYTES` bytes; a larger snapshot is not
//! written (the previous cache stays, with an error in the log).
//!
//! `run` keeps it current and tracks whether the database answers (`BootCache::db_reachable`); the boot script
//! (`boot::http`) and the agent API (`api::agent`) answer from it while it does not.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::fleet::boot_cache::{BootKey, BootSnapshot, CachedImage, CachedNode};
use crate::fleet::{Fleet, FleetError};
use crate::store::now_ms;

/// The cache file in the state directory.
pub const CACHE_FILE: &str = "boot-cache.json";
/// The key of its HMAC (hex), made on first start.
pub const KEY_FILE: &str = "boot-cache.key";
/// Largest cache file written or read.
pub const MAX_CACHE_BYTES: usize = 64 * 1024 * 1024;
/// Most nodes a cache holds.
pub const MAX_NODES: usize = 10_000;
/// How often the database is read again while it answers (besides every change), and probed while it does not.
const REFRESH_UP: Duration = Duration::from_secs(10);
const PROBE_DOWN: Duration = Duration::from_secs(2);
/// Changes arriving within this time are folded into one refresh (agent reports are changes too, and a refresh
/// reads every known node).
const DEBOUNCE: Duration = Duration::from_secs(1);

const MAGIC: &str = "lbfleet-boot-cache 1 hmac-sha256=";

/// Why the cache could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("boot cache {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "boot cache {path} refused: its HMAC does not match (changed behind the server's back, or written \
             with another key)"
    )]
    Tampered { path: PathBuf },
    #[error("boot cache {path} refused: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("boot cache refused: {what} exceeds the bound of {limit}")]
    TooLarge { what: &'static str, limit: usize },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_owned(),
        source,
    }
}

#[derive(Serialize, Deserialize)]
struct CacheBody {
    written_at_ms: i64,
    snapshot: BootSnapshot,
}

#[derive(Debug)]
struct Loaded {
    snapshot: BootSnapshot,
    key: BootKey,
    by_mac: HashMap<String, usize>,
}

impl Loaded {
    fn new(snapshot: BootSnapshot) -> Result<Loaded, String> {
        let key =
            BootKey::from_hex(&snapshot.boot_key).ok_or("the boot key is not 32 bytes of hex")?;
        let by_mac = snapshot
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.mac.clone(), i))
            .collect();
        Ok(Loaded {
            snapshot,
            key,
            by_mac,
        })
    }
}

/// The cache of one server: the verified file's contents in memory, whether the database answers, and the
/// image files already checked against their digests.
#[derive(Debug)]
pub struct BootCache {
    dir: PathBuf,
    key: [u8; 32],
    current: RwLock<Option<Arc<Loaded>>>,
    /// Bumped whenever the contents change (wakes role long-polls answered from the cache).
    changed: watch::Sender<u64>,
    db_reachable: AtomicBool,
    /// Image files whose digest matched: (path) -> (length, modification time, digest).
    verified: Mutex<HashMap<PathBuf, (u64, SystemTime, String)>>,
    /// How long a boot credential handed out from the cache is valid.
    pub credential_ttl: Duration,
}

/// Creates `dir` (0700) if missing.
fn private_dir(dir: &Path) -> Result<(), CacheError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))
}

/// This server's cache key: read from `KEY_FILE`, or made (0600) when missing.
fn load_or_make_key(dir: &Path) -> Result<[u8; 32], CacheError> {
    let path = dir.join(KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let bytes = hex::decode(text.trim())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok());
            bytes.ok_or_else(|| CacheError::Format {
                path: path.clone(),
                reason: "the key file does not hold 32 bytes of hex".into(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = BootKey::random().0;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(io(&path))?;
            f.write_all(hex::encode(key).as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(io(&path))?;
            Ok(key)
        }
        Err(e) => Err(io(&path)(e)),
    }
}

fn hmac_hex(key: &[u8; 32], body: &[u8]) -> Option<String> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).ok()?;
    mac.update(body);
    Some(hex::encode(mac.finalize().into_bytes()))
}

/// The bytes of a cache file for `snapshot`, signed with `key`.
fn encode(key: &[u8; 32], snapshot: &BootSnapshot) -> Result<Vec<u8>, CacheError> {
    if snapshot.nodes.len() > MAX_NODES {
        return Err(CacheError::TooLarge {
            what: "the number of known nodes",
            limit: MAX_NODES,
        });
    }
    let body = serde_json::to_vec(&CacheBody {
        written_at_ms: now_ms(),
        snapshot: snapshot.clone(),
    })
    .map_err(|e| CacheError::Format {
        path: PathBuf::new(),
        reason: e.to_string(),
    })?;
    if body.len() > MAX_CACHE_BYTES {
        return Err(CacheError::TooLarge {
            what: "the cache's size in bytes",
            limit: MAX_CACHE_BYTES,
        });
    }
    let tag = hmac_hex(key, &body).ok_or_else(|| CacheError::Format {
        path: PathBuf::new(),
        reason: "cannot compute the HMAC".into(),
    })?;
    let mut out = format!("{MAGIC}{tag}\n").into_bytes();
    out.extend_from_slice(&body);
    Ok(out)
}

/// Verifies and parses cache file bytes.
fn decode(path: &Path, key: &[u8; 32], bytes: &[u8]) -> Result<BootSnapshot, CacheError> {
    let format = |reason: &str| CacheError::Format {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let nl = bytes
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| format("no header line"))?;
    let (header, body) = (&bytes[..nl], &bytes[nl + 1..]);
    let header = std::str::from_utf8(header).map_err(|_| format("the header is not text"))?;
    let tag = header
        .strip_prefix(MAGIC)
        .ok_or_else(|| format("not a boot cache of this version"))?;
    let tag = hex::decode(tag).map_err(|_| format("the HMAC is not hex"))?;
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).map_err(|_| format("bad key"))?;
    mac.update(body);
    mac.verify_slice(&tag).map_err(|_| CacheError::Tampered {
        path: path.to_owned(),
    })?;
    let parsed: CacheBody =
        serde_json::from_slice(body).map_err(|e| format(&format!("unreadable: {e}")))?;
    if parsed.snapshot.nodes.len() > MAX_NODES {
        return Err(CacheError::TooLarge {
            what: "the number of known nodes",
            limit: MAX_NODES,
        });
    }
    Ok(parsed.snapshot)
}

impl BootCache {
    /// Opens the cache in `dir` (made 0700 if missing; the key made on first start) and loads the file if there
    /// is one. A file that does not verify is logged and ignored: the server then boots nothing from the cache
    /// until it has written a new one from the database.
    pub fn open(dir: &Path, credential_ttl: Duration) -> Result<BootCache, CacheError> {
        private_dir(dir)?;
        let key = load_or_make_key(dir)?;
        let cache = BootCache {
            dir: dir.to_owned(),
            key,
            current: RwLock::new(None),
            changed: watch::channel(0).0,
            db_reachable: AtomicBool::new(true),
            verified: Mutex::new(HashMap::new()),
            credential_ttl,
        };
        match cache.read_file() {
            Ok(Some(snapshot)) => {
                let nodes = snapshot.nodes.len();
                match Loaded::new(snapshot) {
                    Ok(l) => {
                        cache.set(Some(Arc::new(l)));
                        tracing::info!(nodes, dir = %dir.display(), "boot cache loaded");
                    }
                    Err(reason) => {
                        tracing::error!(dir = %dir.display(), reason, "boot cache refused")
                    }
                }
            }
            Ok(None) => tracing::info!(dir = %dir.display(), "no boot cache yet"),
            Err(e) => {
                tracing::error!(error = %e, "boot cache refused; booting from the cache is off until \
                the database is reachable and the cache is written again")
            }
        }
        Ok(cache)
    }

    fn path(&self) -> PathBuf {
        self.dir.join(CACHE_FILE)
    }

    /// The verified snapshot in the file, `None` if there is no file.
    pub fn read_file(&self) -> Result<Option<BootSnapshot>, CacheError> {
        let path = self.path();
        let f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        };
        let mut bytes = Vec::new();
        let limit = (MAX_CACHE_BYTES + 256) as u64;
        std::io::Read::read_to_end(&mut std::io::Read::take(f, limit + 1), &mut bytes)
            .map_err(io(&path))?;
        if bytes.len() as u64 > limit {
            return Err(CacheError::TooLarge {
                what: "the cache file",
                limit: MAX_CACHE_BYTES,
            });
        }
        decode(&path, &self.key, &bytes).map(Some)
    }

    fn set(&self, loaded: Option<Arc<Loaded>>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = loaded;
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn loaded(&self) -> Option<Arc<Loaded>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Keeps `snapshot`: writes the file atomically when it differs from what is held. True when it wrote.
    pub fn store(&self, snapshot: BootSnapshot) -> Result<bool, CacheError> {
        if self.loaded().is_some_and(|l| l.snapshot == snapshot) {
            return Ok(false);
        }
        let bytes = encode(&self.key, &snapshot)?;
        let loaded = Loaded::new(snapshot).map_err(|reason| CacheError::Format {
            path: self.path(),
            reason,
        })?;
        let path = self.path();
        let tmp = self.dir.join(format!("{CACHE_FILE}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .map_err(io(&tmp))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        let nodes = loaded.snapshot.nodes.len();
        self.set(Some(Arc::new(loaded)));
        tracing::debug!(nodes, bytes = bytes.len(), "boot cache written");
        Ok(true)
    }

    /// The cached known node with this MAC (normalised).
    pub fn node(&self, mac: &str) -> Option<CachedNode> {
        let l = self.loaded()?;
        let i = *l.by_mac.get(mac)?;
        l.snapshot.nodes.get(i).cloned()
    }

    /// A cached image by name (the one of any known node that boots it).
    pub fn image(&self, name: &str) -> Option<CachedImage> {
        let l = self.loaded()?;
        l.snapshot
            .nodes
            .iter()
            .filter_map(|n| n.image.as_ref())
            .find(|i| i.name == name)
            .cloned()
    }

    /// The fleet's boot-credential key, as cached.
    pub fn boot_key(&self) -> Option<BootKey> {
        self.loaded().map(|l| l.key.clone())
    }

    /// Changes whenever the cache's contents change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Whether the database answered the last time the server asked it.
    pub fn db_reachable(&self) -> bool {
        self.db_reachable.load(Ordering::Relaxed)
    }

    /// Records whether the database answers; logs the transitions.
    pub fn set_db_reachable(&self, up: bool) {
        let was = self.db_reachable.swap(up, Ordering::Relaxed);
        if was && !up {
            tracing::error!(
                "database unreachable: booting known nodes from the boot cache; changes are \
                refused until it is back"
            );
        } else if !was && up {
            tracing::info!("database reachable again");
        }
    }

    /// Checks an image file against the cached manifest digest (`expected`, hex), reading it only when its
    /// length or modification time changed since the last match.
    pub async fn verify_file(&self, path: &Path, expected: &str) -> Result<(), String> {
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

/// Reads the snapshot once and keeps it; records whether the database answered.
pub async fn refresh(cache: &BootCache, fleet: &Fleet) {
    match fleet.boot_snapshot().await {
        Ok(snapshot) => {
            cache.set_db_reachable(true);
            if let Err(e) = cache.store(snapshot) {
                tracing::error!(error = %e, "boot cache not written");
            }
        }
        Err(FleetError::Store(e)) if e.is_unreachable() => cache.set_db_reachable(false),
        Err(e) => tracing::error!(error = %e, "boot cache not refreshed"),
    }
}

/// Keeps the cache current: at start, after every fleet change (folded), and periodically; while the database
/// is unreachable, probes it every few seconds. A server that started without its database (`migrate_first`)
/// runs the migrations first once it answers. Ends when `stop` turns true.
pub async fn run(
    cache: Arc<BootCache>,
    fleet: Arc<Fleet>,
    mut migrate_first: bool,
    mut stop: watch::Receiver<bool>,
) {
    let mut changes = fleet.notifier().subscribe_fleet();
    loop {
        if migrate_first {
            match fleet.migrate().await {
                Ok(()) => migrate_first = false,
                Err(e) if e.is_unreachable() => cache.set_db_reachable(false),
                Err(e) => tracing::error!(error = %e, "migrations failed"),
            }
        }
        if !migrate_first {
            refresh(&cache, &fleet).await;
        }
        let wait = if cache.db_reachable() {
            REFRESH_UP
        } else {
            PROBE_DOWN
        };
        let changed = tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                true
            }
            _ = tokio::time::sleep(wait) => false,
            _ = stop.wait_for(|s| *s) => return,
        };
        if changed {
            tokio::select! {
                _ = tokio::time::sleep(DEBOUNCE) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lbfleet_proto::NodeState;

    fn snapshot(n: usize) -> BootSnapshot {
        BootSnapshot {
            boot_key: BootKey::random().to_hex(),
            nodes: (0..n)
                .map(|i| CachedNode {
                    node_id: i as i64 + 1,
                    mac: format!("52:54:00:00:00:{i:02x}"),
                    name: format!("lb-{i}"),
                    hostname: Some(format!("lb-{i}")),
                    state: NodeState::Serving,
                    reserved_address: Some(format!("198.18.0.{}", 50 + i)),
                    lease_address: None,
                    image: Some(CachedImage {
                        name: "img".into(),
                        kernel: "vmlinuz".into(),
                        initrd: "initrd.img".into(),
                        cmdline: String::new(),
                        kernel_sha256: "00".repeat(32),
                        initrd_sha256: "11".repeat(32),
                    }),
                    role: None,
                })
                .collect(),
        }
    }

    #[test]
    fn a_written_cache_reads_back_and_a_changed_byte_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        let cache = BootCache::open(&state, Duration::from_secs(60)).expect("open");
        let snap = snapshot(3);
        assert!(cache.store(snap.clone()).expect("store"));
        // Unchanged: not written again.
        assert!(!cache.store(snap.clone()).expect("store"));
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&state.join(CACHE_FILE)), 0o600);
        assert_eq!(mode(&state.join(KEY_FILE)), 0o600);
        assert_eq!(mode(&state), 0o700);

        let reopened = BootCache::open(&state, Duration::from_secs(60)).expect("open");
        assert_eq!(
            reopened.node("52:54:00:00:00:01").map(|n| n.name),
            Some("lb-1".into())
        );
        assert!(reopened.node("52:54:00:00:00:99").is_none());
        assert_eq!(reopened.read_file().expect("read"), Some(snap));

        // Someone edits an address in the file: refused, and nothing is served from it.
        let path = state.join(CACHE_FILE);
        let text = std::fs::read_to_string(&path).expect("read");
        std::fs::write(&path, text.replacen("198.18.0.51", "198.18.0.99", 1)).expect("write");
        assert!(matches!(
            reopened.read_file(),
            Err(CacheError::Tampered { .. })
        ));
        let after = BootCache::open(&state, Duration::from_secs(60)).expect("open");
        assert!(after.node("52:54:00:00:00:01").is_none());
        assert!(after.boot_key().is_none());
        // Another server's key (a copied file) does not verify either.
        std::fs::write(&path, text).expect("write");
        std::fs::write(state.join(KEY_FILE), hex::encode([7u8; 32])).expect("write");
        let other = BootCache::open(&state, Duration::from_secs(60)).expect("open");
        assert!(other.node("52:54:00:00:00:01").is_none());
    }

    #[test]
    fn the_cache_is_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = BootCache::open(dir.path(), Duration::from_secs(60)).expect("open");
        assert!(matches!(
            cache.store(snapshot(MAX_NODES + 1)),
            Err(CacheError::TooLarge { .. })
        ));
        assert!(cache.node("52:54:00:00:00:01").is_none());
    }

    #[tokio::test]
    async fn image_files_are_checked_against_the_manifest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = BootCache::open(&dir.path().join("s"), Duration::from_secs(60)).expect("open");
        let file = dir.path().join("vmlinuz");
        std::fs::write(&file, b"kernel").expect("write");
        let good = hex::encode(Sha256::digest(b"kernel"));
        cache.verify_file(&file, &good).await.expect("verified");
        std::fs::write(&file, b"kernel, changed").expect("write");
        assert!(cache.verify_file(&file, &good).await.is_err());
    }
}
