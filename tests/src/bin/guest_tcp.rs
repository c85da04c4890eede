//! `guest-tcp`: the TCP ends of the guest's traffic tests, run inside the QEMU guest's network namespaces.
//!
//! `echo-server ADDR:PORT` echoes every line back on every connection until killed.
//! `hold ADDR:PORT GATE...` opens one connection, exchanges a line at once, then once per gate file as it
//! appears (the guest script creates them between disruptions), and prints one result line per exchange:
//! `exchange N: ok` or `exchange N: FAILED: reason`. It keeps going after a failure so every phase is
//! reported, and exits non-zero if any exchange failed.
//! `chat ADDR:PORT INTERVAL_MS MAX STOP_FILE` opens one connection and exchanges a line every INTERVAL_MS
//! (an interactive session), printing `exchange N: ok` per reply, until STOP_FILE appears or MAX exchanges
//! are done; the first failure ends it (`exchange N: FAILED: reason`, exit 1). A reply may take up to
//! `CHAT_REPLY_TIMEOUT`: TCP's retransmissions back off to seconds while a VRRP failover moves the VIP. It
//! ends with `chat done: N exchanges, longest reply M ms`. Every wait is bounded.
//! `blob-server ADDR:PORT BYTES` answers every HTTP request with `200 OK` and a body of BYTES bytes, then
//! closes the connection (the real servers of the DR/NAT throughput benchmark); a connection closed before a
//! request (a TCP health check) is just closed.
//! `download ADDR:PORT COUNT SECONDS WORKERS BYTES` fetches `GET /blob` COUNT times over WORKERS parallel
//! connections at most, one request per connection, stopping after SECONDS; a reply counts as done only with
//! exactly BYTES of body. Prints `BENCH requests=N failed=F bytes=B ms=T` (B: body bytes received in done
//! requests, T: wall time of the whole load).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Long enough for TCP to retransmit a segment lost while the agent restarts (RTO starts at 200 ms, 1 s
/// before the first RTT sample), short enough for the negative control to finish quickly.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
const GATE_TIMEOUT: Duration = Duration::from_secs(180);
/// A failover under TCG takes seconds and the retransmission after it comes at the next backoff step.
const CHAT_REPLY_TIMEOUT: Duration = Duration::from_secs(30);

fn echo_server(addr: SocketAddr) -> Result<(), String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    println!("listening on {addr}");
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        std::thread::spawn(move || {
            let Ok(mut writer) = conn.try_clone() else {
                return;
            };
            let mut reader = BufReader::new(conn);
            let mut line = String::new();
            while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
                if writer.write_all(line.as_bytes()).is_err() {
                    return;
                }
                line.clear();
            }
        });
    }
    Ok(())
}

fn exchange(
    writer: &mut TcpStream,
    reader: &mut BufReader<TcpStream>,
    n: usize,
) -> Result<(), String> {
    let msg = format!("ping {n}\n");
    writer
        .write_all(msg.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut reply = String::new();
    match reader.read_line(&mut reply) {
        Ok(0) => Err("connection closed by the peer".into()),
        Ok(_) if reply == msg => Ok(()),
        Ok(_) => Err(format!("unexpected reply {reply:?}")),
        Err(e) => Err(format!("no reply: {e}")),
    }
}

fn wait_for(gate: &Path) -> Result<(), String> {
    let deadline = Instant::now() + GATE_TIMEOUT;
    while !gate.exists() {
        if Instant::now() >= deadline {
            return Err(format!("gate {} never appeared", gate.display()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn hold(addr: SocketAddr, gates: &[String]) -> Result<bool, String> {
    let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let local = stream.local_addr().map_err(|e| e.to_string())?;
    println!("connected from {local} to {addr}");
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut all_ok = true;
    let mut report = |n: usize, r: Result<(), String>| {
        match r {
            Ok(()) => println!("exchange {n}: ok"),
            Err(e) => {
                all_ok = false;
                println!("exchange {n}: FAILED: {e}");
            }
        }
        let _ = std::io::stdout().flush();
    };
    report(0, exchange(&mut writer, &mut reader, 0));
    for (i, gate) in gates.iter().enumerate() {
        wait_for(Path::new(gate))?;
        report(i + 1, exchange(&mut writer, &mut reader, i + 1));
    }
    Ok(all_ok)
}

fn chat(addr: SocketAddr, interval: Duration, max: usize, stop: &Path) -> Result<bool, String> {
    let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(CHAT_REPLY_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let local = stream.local_addr().map_err(|e| e.to_string())?;
    println!("connected from {local} to {addr}");
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut longest = Duration::ZERO;
    let mut done = 0;
    let mut ok = true;
    while done < max && !stop.exists() {
        let sent = Instant::now();
        match exchange(&mut writer, &mut reader, done) {
            Ok(()) => println!("exchange {done}: ok"),
            Err(e) => {
                println!("exchange {done}: FAILED: {e}");
                ok = false;
                break;
            }
        }
        let _ = std::io::stdout().flush();
        longest = longest.max(sent.elapsed());
        done += 1;
        std::thread::sleep(interval);
    }
    println!(
        "chat done: {done} exchanges, longest reply {} ms",
        longest.as_millis()
    );
    Ok(ok)
}

/// Reads a request head (bounded: 16 KiB, 10 s); `None` if the peer closed or sent nothing usable.
fn read_head(conn: &mut TcpStream) -> Option<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut buf = [0u8; 2048];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        if got.len() > 16 * 1024 {
            return None;
        }
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    Some(())
}

fn blob_server(addr: SocketAddr, bytes: u64) -> Result<(), String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    println!("listening on {addr}");
    let _ = std::io::stdout().flush();
    let chunk = std::sync::Arc::new(vec![b'x'; 64 * 1024]);
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let chunk = chunk.clone();
        std::thread::spawn(move || {
            if read_head(&mut conn).is_none() {
                return;
            }
            let _ = conn.set_write_timeout(Some(Duration::from_secs(30)));
            let head =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {bytes}\r\nConnection: close\r\n\r\n");
            if conn.write_all(head.as_bytes()).is_err() {
                return;
            }
            let mut left = bytes;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                if conn.write_all(&chunk[..n]).is_err() {
                    return;
                }
                left -= n as u64;
            }
        });
    }
    Ok(())
}

/// One `GET /blob`; the body length on success.
fn fetch(addr: SocketAddr, bytes: u64) -> Result<u64, String> {
    let mut conn = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    conn.write_all(b"GET /blob HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    let mut got = Vec::with_capacity(bytes as usize + 256);
    conn.read_to_end(&mut got)
        .map_err(|e| format!("read: {e}"))?;
    let at = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no response head")?;
    if !got.starts_with(b"HTTP/1.1 200 ") {
        return Err("not 200".into());
    }
    let body = (got.len() - at - 4) as u64;
    if body == bytes {
        Ok(body)
    } else {
        Err(format!("body of {body} bytes, expected {bytes}"))
    }
}

fn download(
    addr: SocketAddr,
    count: u64,
    limit: Duration,
    workers: u64,
    bytes: u64,
) -> Result<bool, String> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let start = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let body = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..workers.max(1))
        .map(|_| {
            let (next, done, failed, body) =
                (next.clone(), done.clone(), failed.clone(), body.clone());
            std::thread::spawn(move || {
                while start.elapsed() < limit && next.fetch_add(1, Ordering::SeqCst) < count {
                    match fetch(addr, bytes) {
                        Ok(n) => {
                            done.fetch_add(1, Ordering::SeqCst);
                            body.fetch_add(n, Ordering::SeqCst);
                        }
                        Err(e) => {
                            if failed.fetch_add(1, Ordering::SeqCst) < 5 {
                                eprintln!("request failed: {e}");
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    let failed = failed.load(Ordering::SeqCst);
    println!(
        "BENCH requests={} failed={failed} bytes={} ms={ms:.1}",
        done.load(Ordering::SeqCst),
        body.load(Ordering::SeqCst)
    );
    Ok(failed == 0)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: guest-tcp echo-server ADDR:PORT | hold ADDR:PORT GATE... | chat ADDR:PORT INTERVAL_MS MAX STOP_FILE | blob-server ADDR:PORT BYTES | download ADDR:PORT COUNT SECONDS WORKERS BYTES";
    let parse = |s: Option<&String>| -> Result<SocketAddr, String> {
        let s = s.ok_or_else(|| usage.to_owned())?;
        s.parse().map_err(|e| format!("{s}: {e}"))
    };
    let number = |i: usize| -> Result<u64, String> {
        let s = args.get(i).ok_or_else(|| usage.to_owned())?;
        s.parse().map_err(|e| format!("{s}: {e}"))
    };
    let result = match args.first().map(String::as_str) {
        Some("echo-server") => parse(args.get(1)).and_then(echo_server).map(|()| true),
        Some("hold") => parse(args.get(1)).and_then(|a| hold(a, &args[2..])),
        Some("blob-server") => match (parse(args.get(1)), number(2)) {
            (Ok(a), Ok(n)) => blob_server(a, n).map(|()| true),
            (Err(e), _) | (_, Err(e)) => Err(e),
        },
        Some("download") => match (
            parse(args.get(1)),
            number(2),
            number(3),
            number(4),
            number(5),
        ) {
            (Ok(a), Ok(count), Ok(secs), Ok(workers), Ok(bytes)) => {
                download(a, count, Duration::from_secs(secs), workers, bytes)
            }
            (Err(e), ..) => Err(e),
            (_, Err(e), ..) | (_, _, Err(e), ..) | (_, _, _, Err(e), _) | (.., Err(e)) => Err(e),
        },
        Some("chat") => match (parse(args.get(1)), number(2), number(3), args.get(4)) {
            (Ok(a), Ok(ms), Ok(max), Some(stop)) => chat(
                a,
                Duration::from_millis(ms),
                usize::try_from(max).unwrap_or(usize::MAX),
                Path::new(stop),
            ),
            (Err(e), ..) | (_, Err(e), ..) | (_, _, Err(e), _) => Err(e),
            _ => Err(usage.to_owned()),
        },
        _ => Err(usage.to_owned()),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("guest-tcp: {e}");
            ExitCode::from(2)
        }
    }
}
