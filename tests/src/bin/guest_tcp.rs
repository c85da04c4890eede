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

use std::io::{BufRead, BufReader, Write};
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

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: guest-tcp echo-server ADDR:PORT | hold ADDR:PORT GATE... | chat ADDR:PORT INTERVAL_MS MAX STOP_FILE";
    let parse = |s: Option<&String>| -> Result<SocketAddr, String> {
        let s = s.ok_or_else(|| usage.to_owned())?;
        s.parse().map_err(|e| format!("{s}: {e}"))
    };
    let result = match args.first().map(String::as_str) {
        Some("echo-server") => parse(args.get(1)).and_then(echo_server).map(|()| true),
        Some("hold") => parse(args.get(1)).and_then(|a| hold(a, &args[2..])),
        Some("chat") => {
            let number = |i: usize| -> Result<u64, String> {
                let s = args.get(i).ok_or_else(|| usage.to_owned())?;
                s.parse().map_err(|e| format!("{s}: {e}"))
            };
            match (parse(args.get(1)), number(2), number(3), args.get(4)) {
                (Ok(a), Ok(ms), Ok(max), Some(stop)) => chat(
                    a,
                    Duration::from_millis(ms),
                    usize::try_from(max).unwrap_or(usize::MAX),
                    Path::new(stop),
                ),
                (Err(e), ..) | (_, Err(e), ..) | (_, _, Err(e), _) => Err(e),
                _ => Err(usage.to_owned()),
            }
        }
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
