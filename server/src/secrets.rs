//! Secrets: random bearer tokens (256 bits, stored as SHA-256) and passwords (argon2id).
//!
//! Bearer tokens are long random strings, so a fast hash is enough to make a stolen database useless;
//! passwords are chosen by people, so they get a slow, salted hash.

use argon2::password_hash::{PasswordHash, SaltString};
use argon2::Argon2;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Prefixes make a leaked secret recognisable (and greppable by secret scanners).
pub const API_TOKEN_PREFIX: &str = "lbf_tok_";
pub const NODE_CREDENTIAL_PREFIX: &str = "lbf_node_";
pub const ENROLLMENT_TOKEN_PREFIX: &str = "lbf_enr_";

/// A new random secret with `prefix`: 32 random bytes, base64url without padding.
pub fn new_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// The stored form of a bearer secret.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A generated password for a new user: 20 characters from an unambiguous alphabet (~115 bits).
pub fn new_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rngs::OsRng;
    (0..20)
        .map(|_| ALPHABET[(rng.next_u32() as usize) % ALPHABET.len()] as char)
        .collect()
}

#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(String);

/// Password hashes and checks that may run at once, and so the number of argon2 buffers that may exist: the
/// machine's cores (the login gate runs as many check threads, see `login_gate::LoginLimits`).
pub fn hashing_concurrency() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Largest argon2 memory cost (KiB) a stored hash may ask for when verifying (the default is 19 MiB).
const MAX_VERIFY_M_COST: u32 = 256 * 1024;

/// Argon2 working memory, shared by every password hash and check in the process: at most `cap` buffers ever
/// exist, each kept for the next caller; a caller finding none free waits (hashing is bounded anyway).
///
/// Allocating 19 MiB per check and freeing it fragments the allocator's heap: small allocations land in the
/// freed block, the next check extends the heap, and the process grows by ~19 MiB per login (issue 13's flood
/// reached gigabytes that way). A per-thread buffer would be kept by every blocking-pool thread that ever
/// hashed (user creation and password changes run there), hundreds of them at worst.
struct BlockPool {
    cap: usize,
    state: std::sync::Mutex<PoolState>,
    freed: std::sync::Condvar,
    /// Buffers allocated (or re-allocated to another size) since start, for tests.
    allocations: std::sync::atomic::AtomicUsize,
}

#[derive(Default)]
struct PoolState {
    free: Vec<Vec<argon2::Block>>,
    /// Buffers in existence (free or lent).
    created: usize,
}

impl BlockPool {
    fn global() -> &'static BlockPool {
        static POOL: std::sync::OnceLock<BlockPool> = std::sync::OnceLock::new();
        POOL.get_or_init(|| BlockPool {
            cap: hashing_concurrency().max(1),
            state: std::sync::Mutex::new(PoolState::default()),
            freed: std::sync::Condvar::new(),
            allocations: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Runs `f` with a buffer of exactly `blocks` blocks, waiting for a free buffer if all `cap` are in use.
    fn with<T>(&self, blocks: usize, f: impl FnOnce(&mut [argon2::Block]) -> T) -> T {
        let mut buf = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if let Some(b) = st.free.pop() {
                    break b;
                }
                if st.created < self.cap {
                    st.created += 1;
                    break Vec::new();
                }
                st = self.freed.wait(st).unwrap_or_else(|p| p.into_inner());
            }
        };
        if buf.len() != blocks {
            // First use, or a stored hash with other parameters: the old buffer goes before the new one comes.
            buf.clear();
            buf.shrink_to_fit();
            buf.resize(blocks, argon2::Block::default());
            self.allocations
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let out = f(&mut buf);
        // Keep only default-sized buffers: a rare bigger one (an old hash's parameters) is not worth holding.
        if blocks > default_block_count() {
            buf = Vec::new();
        }
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.free.push(buf);
        drop(st);
        self.freed.notify_one();
        out
    }
}

/// Blocks of the default argon2 parameters (what `hash_password` uses).
fn default_block_count() -> usize {
    argon2::Params::default().block_count()
}

/// Argon2 buffers allocated since start (never more than `hashing_concurrency()` while every hash uses the
/// default parameters). For tests and metrics.
pub fn argon2_buffers_allocated() -> usize {
    BlockPool::global()
        .allocations
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// Hashes a password with argon2id and a random salt (PHC string format), in a buffer of the shared pool.
/// CPU-heavy: call off the async runtime.
pub fn hash_password(password: &str) -> Result<String, HashError> {
    let mut salt_bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt_bytes);
    hash_password_with_salt(password, &salt_bytes)
}

fn hash_password_with_salt(password: &str, salt_bytes: &[u8]) -> Result<String, HashError> {
    let err = |e: &dyn std::fmt::Display| HashError(e.to_string());
    let salt = SaltString::encode_b64(salt_bytes).map_err(|e| err(&e))?;
    let params = argon2::Params::default();
    let hasher = Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        params.clone(),
    );
    let mut out = [0u8; argon2::Params::DEFAULT_OUTPUT_LEN];
    BlockPool::global()
        .with(params.block_count(), |blocks| {
            hasher.hash_password_into_with_memory(password.as_bytes(), salt_bytes, &mut out, blocks)
        })
        .map_err(|e| err(&e))?;
    let phc = PasswordHash {
        algorithm: argon2::Algorithm::Argon2id.ident(),
        version: Some(argon2::Version::V0x13.into()),
        params: argon2::password_hash::ParamsString::try_from(&params).map_err(|e| err(&e))?,
        salt: Some(salt.as_salt()),
        hash: Some(argon2::password_hash::Output::new(&out).map_err(|e| err(&e))?),
    };
    Ok(phc.to_string())
}

/// Checks a password against a stored PHC hash; a malformed stored hash never verifies.
/// Works in a buffer of the shared pool (see `BlockPool`).
pub fn verify_password(password: &str, stored: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(stored) else {
        return false;
    };
    let Ok(algorithm) = argon2::Algorithm::try_from(parsed.algorithm) else {
        return false;
    };
    let version = match parsed.version.map(argon2::Version::try_from) {
        None => argon2::Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let Ok(params) = argon2::Params::try_from(&parsed) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    if params.m_cost() > MAX_VERIFY_M_COST {
        return false;
    }
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let expected = expected.as_bytes();
    let mut out = vec![0u8; expected.len()];
    let hasher = Argon2::new(algorithm, version, params.clone());
    let computed = BlockPool::global().with(params.block_count(), |blocks| {
        hasher
            .hash_password_into_with_memory(password.as_bytes(), salt, &mut out, blocks)
            .is_ok()
    });
    computed
        && out.len() == expected.len()
        && out
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Compares two strings in time independent of where they differ.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_prefixed_and_hash_stably() {
        let a = new_secret(API_TOKEN_PREFIX);
        let b = new_secret(API_TOKEN_PREFIX);
        assert_ne!(a, b);
        assert!(a.starts_with("lbf_tok_") && a.len() == 8 + 43);
        assert_eq!(hash_secret(&a), hash_secret(&a));
        assert_ne!(hash_secret(&a), hash_secret(&b));
        assert_eq!(new_password().len(), 20);
    }

    #[test]
    fn passwords_verify_only_with_the_right_password() {
        let h = hash_password("correct horse").expect("hash");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("correct horse", "not a hash"));
        assert!(
            constant_time_eq("abc", "abc")
                && !constant_time_eq("abc", "abd")
                && !constant_time_eq("a", "ab")
        );
    }

    #[test]
    fn pooled_hash_is_the_argon2_crates_phc_string() {
        use argon2::password_hash::PasswordHasher;
        let salt = [7u8; 16];
        let ours = hash_password_with_salt("correct horse", &salt).expect("hash");
        let reference = Argon2::default()
            .hash_password(
                b"correct horse",
                &SaltString::encode_b64(&salt).expect("salt"),
            )
            .expect("reference hash")
            .to_string();
        assert_eq!(ours, reference);
    }

    /// Many hashes and checks from more threads than the pool holds: all finish, all verify, and no more
    /// buffers than the hashing concurrency were ever allocated in this process (every test here uses the
    /// default parameters, so the bound holds whatever runs in parallel).
    #[test]
    fn hashing_reuses_a_bounded_pool_of_buffers() {
        let cap = hashing_concurrency();
        let threads: Vec<_> = (0..2 * cap + 2)
            .map(|i| {
                std::thread::spawn(move || {
                    for j in 0..2 {
                        let pw = format!("password-{i}-{j}");
                        let h = hash_password(&pw).expect("hash");
                        assert!(verify_password(&pw, &h));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("hashing thread");
        }
        let allocated = argon2_buffers_allocated();
        assert!(
            (1..=cap).contains(&allocated),
            "{allocated} argon2 buffers allocated for {} hashes and checks; the pool holds {cap}",
            4 * (2 * cap + 2)
        );
    }
}
