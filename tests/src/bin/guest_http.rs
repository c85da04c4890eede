//! `guest-http`: the real servers of the guest's health-check tests and benchmark.
//!
//! `guest-http HEALTH_FILE ADDR:PORT...` listens on every address and answers each HTTP request with
//! `200 ok` while HEALTH_FILE exists and `503 failing` when it does not, then closes the connection. The
//! guest script takes a server "down" by removing the file. Prints `listening` once every socket is bound.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

fn answer(mut conn: TcpStream, health: &Path) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = [0u8; 2048];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") && got.len() < 16 * 1024 {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let (status, body) = if health.exists() {
        ("200 OK", "ok\n")
    } else {
        ("503 Service Unavailable", "failing\n")
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(resp.as_bytes());
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((health, addrs)) = args.split_first() else {
        eprintln!("usage: guest-http HEALTH_FILE ADDR:PORT...");
        return ExitCode::from(2);
    };
    let health = PathBuf::from(health);
    let mut listeners = Vec::new();
    for a in addrs {
        let addr: SocketAddr = match a.parse() {
            Ok(a) => a,
            Err(e) => {
                eprintln!("bad address {a}: {e}");
                return ExitCode::from(2);
            }
        };
        match TcpListener::bind(addr) {
            Ok(l) => listeners.push(l),
            Err(e) => {
                eprintln!("bind {addr}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!("listening");
    let threads: Vec<_> = listeners
        .into_iter()
        .map(|l| {
            let health = health.clone();
            std::thread::spawn(move || {
                for conn in l.incoming().flatten() {
                    let health = health.clone();
                    std::thread::spawn(move || answer(conn, &health));
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    ExitCode::SUCCESS
}
