//! Read-only TFTP server for the boot directory: RFC 1350 with blksize, tsize, timeout and windowsize.
//!
//! The listening loop is async and only decodes requests; each transfer runs on its own blocking thread with
//! its own socket (a new transfer ID, as RFC 1350 asks), like tftp-hpa's process per transfer, bounded by a
//! semaphore. Why not the `tftpd` crate (1.0.0, read before writing this): it binds its own socket (no port-0
//! listener for tests, no `SO_BINDTODEVICE`), has no bound on concurrent transfers, answers with error
//! messages that contain the server's absolute paths, turns absolute request paths into relative ones instead
//! of refusing them, and has ~85 `unwrap()` calls outside tests.

pub mod packet;
pub mod transfer;

use std::fs::File;
use std::io;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::{watch, Semaphore};

use packet::{encode_data, ErrorCode, Packet};
use transfer::{negotiate, resolve, AckOutcome, Limits, Negotiated, Refusal, Sender};

/// Retransmissions of one window before the transfer is abandoned.
const MAX_RETRIES: u32 = 5;

/// TFTP settings.
#[derive(Debug, Clone)]
pub struct TftpConfig {
    /// Directory served; nothing outside it is ever read.
    pub root: PathBuf,
    pub limits: Limits,
    /// Transfers running at once; more are refused with "server busy".
    pub max_transfers: usize,
    /// Transfers one client address may run at once, so one host cannot take every slot.
    pub max_per_client: usize,
}

/// A PXE client fetches one file at a time; a few retries in parallel are fine, a slot-hogger is not.
pub const DEFAULT_MAX_PER_CLIENT: usize = 4;

/// Transfers per client address; a slot is given back when its guard drops.
#[derive(Debug, Default)]
struct PerClient(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

struct ClientSlot {
    table: Arc<PerClient>,
    ip: std::net::IpAddr,
}

impl PerClient {
    fn take(self: &Arc<Self>, ip: std::net::IpAddr, max: usize) -> Option<ClientSlot> {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = t.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            table: self.clone(),
            ip,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut t = self.table.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = t.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                t.remove(&self.ip);
            }
        }
    }
}

/// Counters for metrics and tests.
#[derive(Debug, Default)]
pub struct TftpStats {
    pub requests: AtomicU64,
    pub refused: AtomicU64,
    pub malformed: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    pub bytes_sent: AtomicU64,
}

/// Serves `socket` until `shutdown` turns true. Transfers in flight are told to stop.
pub async fn run(
    socket: UdpSocket,
    config: TftpConfig,
    stats: Arc<TftpStats>,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let root = config.root.canonicalize().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("TFTP root {}: {e}", config.root.display()),
        )
    })?;
    let local = socket.local_addr()?;
    let slots = Arc::new(Semaphore::new(config.max_transfers.max(1)));
    let per_client = Arc::new(PerClient::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut buf = vec![0u8; 2048];
    let mut out = Vec::with_capacity(128);
    // A flood of bad or refused requests logs a few lines per interval; every one is counted in /metrics.
    let (mut malformed_log, mut refused_log) = (
        crate::boot::loglimit::LogLimit::default(),
        crate::boot::loglimit::LogLimit::default(),
    );
    tracing::info!(%local, root = %root.display(), "TFTP listening");
    loop {
        let (len, client) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "TFTP receive failed");
                    continue;
                }
            },
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let request = match Packet::decode(&buf[..len]) {
            Ok(p) => p,
            Err(e) => {
                stats.malformed.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = malformed_log.allow(Instant::now()) {
                    tracing::warn!(%client, error = %e, len, suppressed, "malformed TFTP packet dropped");
                }
                continue;
            }
        };
        let reply_error = |code: ErrorCode, message: &str, out: &mut Vec<u8>| {
            Packet::Error {
                code,
                message: message.to_owned(),
            }
            .encode_into(out);
        };
        match request {
            Packet::ReadRequest {
                filename,
                mode,
                options,
            } => {
                stats.requests.fetch_add(1, Ordering::Relaxed);
                if mode != "octet" {
                    reply_error(
                        ErrorCode::IllegalOperation,
                        "only octet (binary) mode is served",
                        &mut out,
                    );
                    let _ = socket.send_to(&out, client).await;
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let path = match resolve(&root, &filename) {
                    Ok(p) => p,
                    Err(refusal) => {
                        stats.refused.fetch_add(1, Ordering::Relaxed);
                        if let Some(suppressed) = refused_log.allow(Instant::now()) {
                            tracing::warn!(%client, file = filename, reason = %refusal, suppressed,
                                "TFTP request refused");
                        }
                        let code = match refusal {
                            Refusal::Forbidden => ErrorCode::AccessViolation,
                            Refusal::NotFound => ErrorCode::FileNotFound,
                        };
                        reply_error(code, &refusal.to_string(), &mut out);
                        let _ = socket.send_to(&out, client).await;
                        continue;
                    }
                };
                let Some(client_slot) = per_client.take(client.ip(), config.max_per_client.max(1))
                else {
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                    if let Some(suppressed) = refused_log.allow(Instant::now()) {
                        tracing::warn!(%client, file = filename, suppressed,
                            "TFTP transfer refused: too many from this address");
                    }
                    reply_error(
                        ErrorCode::NotDefined,
                        "too many transfers from your address, retry later",
                        &mut out,
                    );
                    let _ = socket.send_to(&out, client).await;
                    continue;
                };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                    if let Some(suppressed) = refused_log.allow(Instant::now()) {
                        tracing::warn!(%client, file = filename, suppressed, "TFTP busy: transfer refused");
                    }
                    reply_error(ErrorCode::NotDefined, "server busy, retry later", &mut out);
                    let _ = socket.send_to(&out, client).await;
                    continue;
                };
                let (stats, stop, limits) = (stats.clone(), stop.clone(), config.limits);
                let local_ip = local.ip();
                tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    let _client_slot = client_slot;
                    let started = Instant::now();
                    match send_file(local_ip, client, &path, &options, &limits, &stop) {
                        Ok(bytes) => {
                            stats.completed.fetch_add(1, Ordering::Relaxed);
                            stats.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
                            tracing::info!(%client, file = filename, bytes, ms = started.elapsed().as_millis() as u64, "TFTP transfer done");
                        }
                        Err(e) => {
                            stats.failed.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(%client, file = filename, error = %e, "TFTP transfer failed");
                        }
                    }
                });
            }
            Packet::WriteRequest { filename } => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = refused_log.allow(Instant::now()) {
                    tracing::warn!(%client, file = filename, suppressed, "TFTP write refused");
                }
                reply_error(ErrorCode::AccessViolation, "read-only server", &mut out);
                let _ = socket.send_to(&out, client).await;
            }
            other => {
                // ACK/DATA/ERROR belong to a transfer's own port; on the listening port they are stray.
                tracing::debug!(%client, packet = ?other, "stray TFTP packet on the listening port");
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    Ok(())
}

/// Why a transfer ended early.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("client stopped the transfer: {0}")]
    ClientError(String),
    #[error("no acknowledgement after {MAX_RETRIES} retries")]
    Timeout,
    #[error("server shutting down")]
    Shutdown,
    #[error("transfer took longer than {0:?}")]
    TooLong(std::time::Duration),
}

/// Sends one file to `client` from a fresh socket; returns the bytes sent (payload only).
fn send_file(
    local_ip: std::net::IpAddr,
    client: SocketAddr,
    path: &std::path::Path,
    options: &[(String, String)],
    limits: &Limits,
    stop: &AtomicBool,
) -> Result<u64, TransferError> {
    let started = Instant::now();
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    let n: Negotiated = negotiate(options, size, limits);
    let sock = StdUdpSocket::bind((local_ip, 0))?;
    sock.connect(client)?;
    sock.set_read_timeout(Some(n.timeout))?;
    let mut out = Vec::with_capacity(usize::from(n.blksize) + 4);
    let mut rx = vec![0u8; 1024];

    if !n.oack.is_empty() {
        Packet::OptionAck {
            options: n.oack.clone(),
        }
        .encode_into(&mut out);
        let mut retries = 0;
        loop {
            sock.send(&out)?;
            match wait_ack(&sock, &mut rx)? {
                Some(0) => break,
                Some(_) => continue,
                None => {
                    retries += 1;
                    if retries > MAX_RETRIES || stop.load(Ordering::Relaxed) {
                        return Err(TransferError::Timeout);
                    }
                }
            }
        }
    }

    let mut sender = Sender::new(size, &n);
    let window_bytes = usize::from(n.blksize) * usize::from(n.windowsize);
    let mut file_buf = ReadAhead::new(window_bytes.max(READ_AHEAD));
    let mut retries = 0;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(TransferError::Shutdown);
        }
        if started.elapsed() > limits.max_duration {
            // Tell the client, so it stops waiting too.
            Packet::Error {
                code: ErrorCode::NotDefined,
                message: "transfer took too long".into(),
            }
            .encode_into(&mut out);
            let _ = sock.send(&out);
            return Err(TransferError::TooLong(limits.max_duration));
        }
        let window = sender.window();
        let (first_off, _) = sender.block_span(*window.start(), size);
        let (last_off, last_len) = sender.block_span(*window.end(), size);
        let span = usize::try_from(last_off - first_off).unwrap_or(0) + last_len;
        let chunk = file_buf.get(&file, first_off, span, size)?;
        for block in window.clone() {
            let (off, len) = sender.block_span(block, size);
            let start = usize::try_from(off - first_off).unwrap_or(0);
            encode_data(Sender::wire(block), &chunk[start..start + len], &mut out);
            sock.send(&out)?;
        }
        loop {
            match wait_ack(&sock, &mut rx)? {
                Some(wire) => match sender.on_ack(wire) {
                    AckOutcome::Done => return Ok(size),
                    AckOutcome::Advanced => {
                        retries = 0;
                        break;
                    }
                    AckOutcome::Ignored => continue,
                },
                None => {
                    retries += 1;
                    if retries > MAX_RETRIES {
                        return Err(TransferError::Timeout);
                    }
                    break;
                }
            }
        }
    }
}

/// Waits for an ACK: `Some(block)`, or `None` on timeout. An ERROR from the client ends the transfer; anything
/// else is ignored.
fn wait_ack(sock: &StdUdpSocket, rx: &mut [u8]) -> Result<Option<u16>, TransferError> {
    loop {
        match sock.recv(rx) {
            Ok(n) => match Packet::decode(&rx[..n]) {
                Ok(Packet::Ack { block }) => return Ok(Some(block)),
                Ok(Packet::Error { message, .. }) => {
                    return Err(TransferError::ClientError(message))
                }
                _ => continue,
            },
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None)
            }
            // The client's port is gone (ICMP unreachable): it gave up.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                return Err(TransferError::ClientError("client port unreachable".into()))
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// How much of the file one read fetches: a lock-step transfer then reads the file once per 64 KiB instead of
/// once per block, which keeps a syscall off the path between an ACK and the next DATA.
const READ_AHEAD: usize = 64 * 1024;

/// A window onto the file: `get` serves a byte range from memory, reading the file (from the range's start,
/// as much as fits) only when the range is not already held.
struct ReadAhead {
    buf: Vec<u8>,
    /// File offset of `buf[0]` and how many bytes are valid.
    start: u64,
    len: usize,
}

impl ReadAhead {
    fn new(capacity: usize) -> Self {
        ReadAhead {
            buf: vec![0u8; capacity],
            start: 0,
            len: 0,
        }
    }

    fn get(&mut self, file: &File, offset: u64, span: usize, size: u64) -> io::Result<&[u8]> {
        let held = offset >= self.start && offset + span as u64 <= self.start + self.len as u64;
        if !held {
            let rest = usize::try_from(size.saturating_sub(offset)).unwrap_or(usize::MAX);
            let want = self.buf.len().min(rest).max(span);
            if want > self.buf.len() {
                self.buf.resize(want, 0);
            }
            read_exact_at(file, &mut self.buf[..want], offset)?;
            self.start = offset;
            self.len = want;
        }
        let at = usize::try_from(offset - self.start).unwrap_or(0);
        Ok(&self.buf[at..at + span])
    }
}

fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = file.read_at(&mut buf[done..], offset + done as u64)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank during transfer",
            ));
        }
        done += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn read_ahead_serves_every_range_exactly_as_the_file_has_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        let size = data.len() as u64;
        let mut ra = ReadAhead::new(READ_AHEAD);
        // Forward in blocks, a retransmission of an earlier range, a window larger than the buffer, the tail.
        let ranges = [
            (0u64, 512usize),
            (512, 512),
            (65_024, 512),
            (65_536, 512),
            (1_024, 512),
            (100_000, 80_000),
            (199_800, 200),
            (200_000, 0),
        ];
        for (off, span) in ranges {
            let got = ra.get(&file, off, span, size).unwrap();
            assert_eq!(
                got,
                &data[off as usize..off as usize + span],
                "at {off}+{span}"
            );
        }
        // A file that shrank under the transfer is an error, not a short block.
        std::fs::write(&path, &data[..1000]).unwrap();
        let mut ra = ReadAhead::new(READ_AHEAD);
        assert!(ra.get(&file, 0, 512, size).is_err());
    }
}
