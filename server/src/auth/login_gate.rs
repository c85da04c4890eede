//! The gate in front of password checks: bounds the CPU and memory a flood of logins can take.
//!
//! Argon2 costs ~19 MiB and tens of milliseconds per check, and the login endpoint needs no credentials, so
//! every check is admitted here first: user names longer than `MAX_USERNAME_BYTES` are refused before
//! anything else, failures are counted per client address, per (user name, address) and per user name, and at
//! most `workers` checks run at once behind a queue of at most `queue` waiting ones, of which one address may
//! hold at most `per_address_in_flight`. Past the address and (user name, address) counts, or a bound of the
//! queue, the answer is 429 at once, so memory stays bounded and a login from another address is not stuck
//! behind a flood.
//!
//! The per-user-name count never refuses: anyone can send wrong passwords for a name from many addresses, and
//! a hard lock would lock the real user out. Past `per_user_failures`, each check of that name first waits a
//! delay that grows with the failures, up to `per_user_max_delay`, while holding its address's in-flight share
//! (not a queue place): a guessing run from many addresses is slowed to a few tries per address and delay,
//! and the owner, from an address of their own, still logs in after at most that delay.
//!
//! The checks run on `workers` threads of the gate's own, not on tokio's blocking pool, and in argon2 buffers
//! from `secrets`' bounded pool (one per core, reused), so a flood never allocates 19 MiB per attempt.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Longest user name accepted at login (and at user creation).
pub const MAX_USERNAME_BYTES: usize = 64;

/// Bytes of a refused (too long) user name that may appear in the log.
const LOGGED_PREFIX_BYTES: usize = 16;

/// Bounds of the gate; `Default` sizes the worker pool by the machine's cores.
#[derive(Debug, Clone)]
pub struct LoginLimits {
    /// Password checks running at once.
    pub workers: usize,
    /// Password checks waiting for a worker; past it, 429.
    pub queue: usize,
    /// Checks one client address may have running or waiting at once.
    pub per_address_in_flight: usize,
    /// Failed logins per (user name, address) within `window` before that pair is refused.
    pub per_user_address_failures: u32,
    /// Failed logins per client address (any user name) within `window`.
    pub per_address_failures: u32,
    /// Failed logins per user name (any address) within `window` before checks of that name are delayed.
    pub per_user_failures: u32,
    /// The delay added per failure past `per_user_failures`.
    pub per_user_delay_step: Duration,
    /// The longest delay added to a check of one user name.
    pub per_user_max_delay: Duration,
    pub window: Duration,
}

impl Default for LoginLimits {
    fn default() -> Self {
        // As many as the argon2 buffers `secrets` keeps (one per core).
        let cores = crate::secrets::hashing_concurrency();
        LoginLimits {
            workers: cores,
            queue: 4 * cores + 4,
            // At most half the workers: a flood from one address always leaves a worker for everyone else.
            per_address_in_flight: (cores / 2).max(1),
            per_user_address_failures: 5,
            per_address_failures: 30,
            per_user_failures: 20,
            per_user_delay_step: Duration::from_millis(100),
            per_user_max_delay: Duration::from_secs(2),
            window: Duration::from_secs(300),
        }
    }
}

/// Why a login was turned away before its password was checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginRefused {
    #[error("user name longer than {MAX_USERNAME_BYTES} bytes")]
    NameTooLong,
    #[error("too many failed logins; retry in {retry_after_s} s")]
    TooManyFailures { retry_after_s: u64 },
    #[error("too many logins in progress; retry in a second")]
    Busy,
}

/// A window counter: failures since `since`.
#[derive(Debug, Clone, Copy)]
struct Count {
    n: u32,
    since: Instant,
}

#[derive(Debug, Default)]
struct Counters {
    per_user_address: HashMap<(String, IpAddr), Count>,
    per_address: HashMap<IpAddr, Count>,
    per_user: HashMap<String, Count>,
    in_flight: HashMap<IpAddr, usize>,
    waiting: usize,
}

/// Entries kept per map before expired ones are swept (bounds memory under a distributed flood).
const MAX_ENTRIES: usize = 100_000;

type Job = Box<dyn FnOnce() + Send>;

/// The threads password checks run on; they end when the gate is dropped.
#[derive(Debug)]
struct HashThreads {
    jobs: Mutex<std::sync::mpsc::Sender<Job>>,
}

impl HashThreads {
    fn new(n: usize) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..n {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("lbfleet-argon2-{i}"))
                .spawn(move || loop {
                    let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    match job {
                        Ok(job) => job(),
                        Err(_) => break,
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password-check thread");
            }
        }
        HashThreads {
            jobs: Mutex::new(tx),
        }
    }

    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job)
            .ok()?;
        rx.await.ok()
    }
}

/// The login gate (one per server).
#[derive(Debug)]
pub struct LoginGate {
    limits: LoginLimits,
    workers: Arc<Semaphore>,
    threads: HashThreads,
    counters: Mutex<Counters>,
}

impl Default for LoginGate {
    fn default() -> Self {
        LoginGate::new(LoginLimits::default())
    }
}

/// The right to run one password check; releases the address's in-flight slot when dropped.
#[derive(Debug)]
pub struct HashSlot<'a> {
    gate: &'a LoginGate,
    ip: IpAddr,
    _permit: OwnedSemaphorePermit,
}

impl Drop for HashSlot<'_> {
    fn drop(&mut self) {
        self.gate.leave(self.ip);
    }
}

/// Releases a waiting caller's queue place and in-flight slot if it gives up (client gone) before a worker.
struct Waiting<'a> {
    gate: &'a LoginGate,
    ip: IpAddr,
    armed: bool,
    /// Holds a queue place (not while it serves a per-user delay).
    queued: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut c = self.gate.lock();
        if self.queued {
            c.waiting = c.waiting.saturating_sub(1);
        }
        drop(c);
        if self.armed {
            self.gate.leave(self.ip);
        }
    }
}

fn key(user: &str) -> String {
    user.to_ascii_lowercase()
}

/// `Err(seconds left)` when `count` reached `max` within `window`; expired counts are removed.
fn over<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, Count>,
    k: &K,
    max: u32,
    window: Duration,
) -> Result<(), u64> {
    if let Some(c) = map.get(k) {
        let elapsed = c.since.elapsed();
        if elapsed >= window {
            map.remove(k);
        } else if c.n >= max {
            return Err((window - elapsed).as_secs().max(1));
        }
    }
    Ok(())
}

fn bump<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Count>, k: K, window: Duration) {
    if map.len() >= MAX_ENTRIES {
        map.retain(|_, c| c.since.elapsed() < window);
    }
    let now = Instant::now();
    let c = map.entry(k).or_insert(Count { n: 0, since: now });
    if now.duration_since(c.since) >= window {
        *c = Count { n: 0, since: now };
    }
    c.n = c.n.saturating_add(1);
}

/// What may be logged of a user name someone typed: all of it up to `MAX_USERNAME_BYTES`, else a short prefix
/// and the length.
pub fn loggable_name(user: &str) -> String {
    if user.len() <= MAX_USERNAME_BYTES {
        return user.to_owned();
    }
    let mut end = LOGGED_PREFIX_BYTES;
    while !user.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &user[..end], user.len())
}

impl LoginGate {
    pub fn new(limits: LoginLimits) -> Self {
        let workers = Arc::new(Semaphore::new(limits.workers.max(1)));
        LoginGate {
            threads: HashThreads::new(limits.workers.max(1)),
            limits,
            workers,
            counters: Mutex::new(Counters::default()),
        }
    }

    pub fn limits(&self) -> &LoginLimits {
        &self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.counters.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn leave(&self, ip: IpAddr) {
        let mut c = self.lock();
        if let Some(n) = c.in_flight.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.in_flight.remove(&ip);
            }
        }
    }

    /// Checks the cheap limits (name length, failure counts) without taking a worker; `Ok` carries the delay
    /// the check must wait first (zero unless the user name is past `per_user_failures`).
    pub fn precheck(&self, user: &str, ip: IpAddr) -> Result<Duration, LoginRefused> {
        if user.len() > MAX_USERNAME_BYTES {
            return Err(LoginRefused::NameTooLong);
        }
        let l = &self.limits;
        let mut c = self.lock();
        let k = key(user);
        let retry = [
            over(&mut c.per_address, &ip, l.per_address_failures, l.window).err(),
            over(
                &mut c.per_user_address,
                &(k.clone(), ip),
                l.per_user_address_failures,
                l.window,
            )
            .err(),
        ]
        .into_iter()
        .flatten()
        .max();
        if let Some(retry_after_s) = retry {
            return Err(LoginRefused::TooManyFailures { retry_after_s });
        }
        let failures = match c.per_user.get(&k) {
            Some(n) if n.since.elapsed() < l.window => n.n,
            _ => 0,
        };
        let past = failures.saturating_sub(l.per_user_failures.saturating_sub(1));
        Ok(l.per_user_delay_step
            .saturating_mul(past)
            .min(l.per_user_max_delay))
    }

    /// Admits one password check: the cheap limits, then a worker, waiting in the bounded queue.
    /// `Busy` at once when the queue or this address's share of it is full.
    pub async fn admit(&self, user: &str, ip: IpAddr) -> Result<HashSlot<'_>, LoginRefused> {
        let delay = self.precheck(user, ip)?;
        {
            let mut c = self.lock();
            let mine = c.in_flight.get(&ip).copied().unwrap_or(0);
            if mine >= self.limits.per_address_in_flight
                || (delay.is_zero() && c.waiting >= self.limits.queue)
            {
                return Err(LoginRefused::Busy);
            }
            *c.in_flight.entry(ip).or_insert(0) += 1;
        }
        let mut waiting = Waiting {
            gate: self,
            ip,
            armed: true,
            queued: false,
        };
        if !delay.is_zero() {
            tracing::debug!(
                user = loggable_name(user),
                client = %ip,
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                "login delayed: many failed logins for this user name"
            );
            tokio::time::sleep(delay).await;
        }
        {
            let mut c = self.lock();
            if c.waiting >= self.limits.queue {
                return Err(LoginRefused::Busy);
            }
            c.waiting += 1;
            waiting.queued = true;
        }
        let permit = self
            .workers
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| LoginRefused::Busy)?;
        waiting.armed = false;
        drop(waiting);
        Ok(HashSlot {
            gate: self,
            ip,
            _permit: permit,
        })
    }

    /// Runs a password check admitted by `slot` on the gate's threads; `None` if the thread died.
    pub async fn run<T: Send + 'static>(
        &self,
        _slot: &HashSlot<'_>,
        check: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        self.threads.run(check).await
    }

    pub fn failed(&self, user: &str, ip: IpAddr) {
        let w = self.limits.window;
        let k = key(user);
        let mut c = self.lock();
        bump(&mut c.per_address, ip, w);
        bump(&mut c.per_user_address, (k.clone(), ip), w);
        bump(&mut c.per_user, k, w);
    }

    /// A correct password clears the (user, address) count; the address and user counts run out with time.
    pub fn succeeded(&self, user: &str, ip: IpAddr) {
        self.lock().per_user_address.remove(&(key(user), ip));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        [127, 0, 0, last].into()
    }

    #[test]
    fn limits_per_user_and_address_per_address_and_per_user() {
        let g = LoginGate::new(LoginLimits {
            per_user_failures: 8,
            ..LoginLimits::default()
        });
        for _ in 0..5 {
            assert!(g.precheck("admin", ip(1)).is_ok());
            g.failed("admin", ip(1));
        }
        assert!(g.precheck("ADMIN", ip(1)).is_err());
        assert!(g.precheck("admin", ip(2)).is_ok());
        assert!(g.precheck("alice", ip(1)).is_ok());
        g.succeeded("admin", ip(1));
        assert!(g.precheck("admin", ip(1)).is_ok());
        // Per address: random names from one address.
        for i in 0..30 {
            g.failed(&format!("u{i}"), ip(3));
        }
        assert!(matches!(
            g.precheck("someone", ip(3)),
            Err(LoginRefused::TooManyFailures { .. })
        ));
        assert!(g.precheck("someone", ip(4)).is_ok());
        // Per user name: one name from many addresses is delayed, never refused, and the delay is bounded.
        for i in 0..8 {
            assert_eq!(g.precheck("bob", ip(10 + i)), Ok(Duration::ZERO));
            g.failed("bob", ip(10 + i));
        }
        assert_eq!(
            g.precheck("bob", ip(20)),
            Ok(g.limits().per_user_delay_step)
        );
        for i in 0..200u8 {
            g.failed("bob", ip(30 + (i % 100)));
        }
        assert_eq!(
            g.precheck("bob", ip(200)),
            Ok(g.limits().per_user_max_delay)
        );
    }

    #[test]
    fn long_names_are_refused_first_and_logged_short() {
        let g = LoginGate::default();
        let long = "x".repeat(65);
        assert_eq!(g.precheck(&long, ip(1)), Err(LoginRefused::NameTooLong));
        assert!(g.precheck(&"x".repeat(64), ip(1)).is_ok());
        let logged = loggable_name(&"é".repeat(1000));
        assert!(logged.len() < 40, "{logged}");
        assert!(logged.ends_with("(2000 bytes)"), "{logged}");
    }

    #[tokio::test]
    async fn queue_and_per_address_share_are_bounded() {
        let g = LoginGate::new(LoginLimits {
            workers: 1,
            queue: 2,
            per_address_in_flight: 1,
            ..LoginLimits::default()
        });
        let first = g.admit("a", ip(1)).await.expect("a worker is free");
        // The same address already has its one check in flight.
        assert_eq!(g.admit("a", ip(1)).await.err(), Some(LoginRefused::Busy));
        // Two other addresses queue; a third finds the queue full.
        let g2 = &g;
        let w2 = g2.admit("b", ip(2));
        let w3 = g2.admit("c", ip(3));
        tokio::pin!(w2, w3);
        assert!(futures::poll!(&mut w2).is_pending());
        assert!(futures::poll!(&mut w3).is_pending());
        assert_eq!(g.admit("d", ip(4)).await.err(), Some(LoginRefused::Busy));
        drop(first);
        let second = w2.await.expect("queued check runs");
        drop(second);
        let third = w3.await.expect("queued check runs");
        drop(third);
        assert!(g.lock().in_flight.is_empty());
        assert_eq!(g.lock().waiting, 0);
    }
}
