//! The VRRP tests' and benchmark's prober: pings one address every `--interval-ms` (ICMP echo over a raw
//! socket, so it needs root or CAP_NET_RAW, as inside a test namespace; ICMPv6 echo for an IPv6 address), for at most `--count` probes, and logs
//! one line per probe: `seq <n> sent_us <t> reply_us <t|->`. The last line is a summary:
//! `summary sent <n> answered <n> longest_outage_ms <ms> outages <k>`, where an outage is a run of unanswered
//! probes between answered ones (its length is the time from the last answered probe before it to the first
//! answered one after it). While running it prints `ready` at the first answer and `recovered seq <n>` when
//! an answer follows unanswered probes, so a test can wait for them. Stops early (and still prints
//! everything) once `--stop-file` exists. Its first line, `start_unix_us <t>`, is the wall-clock time of its
//! time origin, so a test can place the probes' times next to the moments it changed something.
//!
//! Usage: vrrp-prober ADDRESS [--interval-ms 10] [--count 6000] [--timeout-ms 1000] [--stop-file PATH]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        let word = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An echo request; over IPv6 (type 128) the kernel fills in the checksum of a raw ICMPv6 socket.
fn echo(id: u16, seq: u16, v6: bool) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[0] = if v6 { 128 } else { 8 }; // echo request
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    p[8..16].copy_from_slice(b"lbfleet!");
    if !v6 {
        let c = checksum(&p);
        p[2..4].copy_from_slice(&c.to_be_bytes());
    }
    p
}

fn arg(args: &[String], name: &str, default: u64) -> Result<u64, String> {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{name} needs a number")),
        None => Ok(default),
    }
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let target: IpAddr = args
        .first()
        .and_then(|a| a.parse().ok())
        .ok_or("usage: vrrp-prober ADDRESS [--interval-ms N] [--count N] [--timeout-ms N]")?;
    let interval = Duration::from_millis(arg(&args, "--interval-ms", 10)?.max(1));
    let count = arg(&args, "--count", 6000)?.min(1_000_000);
    let timeout = Duration::from_millis(arg(&args, "--timeout-ms", 1000)?);
    let stop_file: Option<PathBuf> = args
        .iter()
        .position(|a| a == "--stop-file")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);
    let stopped = || stop_file.as_ref().is_some_and(|p| p.exists());

    let v6 = target.is_ipv6();
    let mut sock = if v6 {
        Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))
    } else {
        Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))
    }
    .map_err(|e| format!("raw ICMP socket: {e}"))?;
    sock.set_nonblocking(true)
        .map_err(|e| format!("nonblocking: {e}"))?;
    let addr = SockAddr::from(SocketAddr::new(target, 0));
    let id = (std::process::id() & 0xffff) as u16;
    let start = Instant::now();
    let start_unix_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    let mut live = std::io::stdout();
    let _ = writeln!(live, "start_unix_us {start_unix_us}");
    let _ = live.flush();
    let mut sent: Vec<u64> = Vec::new();
    let mut reply: Vec<Option<u64>> = Vec::new();
    let mut buf = [0u8; 1500];
    let mut next = Instant::now();
    let mut last_answered: Option<usize> = None;
    let mut last_send = Instant::now();
    loop {
        let now = Instant::now();
        let stop = sent.len().is_multiple_of(10) && stopped();
        let done_sending = sent.len() as u64 >= count || stop;
        if done_sending && (now.duration_since(last_send) >= timeout || stop) {
            break;
        }
        if !done_sending && now >= next {
            let seq = sent.len() as u16;
            let pkt = echo(id, seq, v6);
            // A failed send (no route while the VIP moves) is an unanswered probe like any other.
            let _ = sock.send_to(&pkt, &addr);
            sent.push(start.elapsed().as_micros() as u64);
            reply.push(None);
            last_send = now;
            next += interval;
        }
        // Drain replies (the raw IPv4 socket hands over the IP header too; the ICMPv6 one does not, and
        // only echo replies carrying our id count: the probes go to the target alone).
        loop {
            let n = match sock.read(&mut buf) {
                Ok(n) if n > 0 => n,
                _ => break,
            };
            let pkt = &buf[..n];
            let icmp = match target {
                IpAddr::V4(t) => {
                    let ihl = usize::from(pkt[0] & 0x0f) * 4;
                    match pkt.get(ihl..ihl + 8) {
                        Some(icmp) if pkt.get(12..16) == Some(&t.octets()[..]) && icmp[0] == 0 => {
                            icmp
                        }
                        _ => continue,
                    }
                }
                IpAddr::V6(_) => match pkt.get(..8) {
                    Some(icmp) if icmp[0] == 129 => icmp,
                    _ => continue,
                },
            };
            if u16::from_be_bytes([icmp[4], icmp[5]]) != id {
                continue;
            }
            let seq = usize::from(u16::from_be_bytes([icmp[6], icmp[7]]));
            // Sequence numbers wrap at 65536; match the newest probe with this number.
            let idx = (0..reply.len()).rev().find(|i| i % 65536 == seq);
            if let Some(i) = idx {
                if let Some(slot) = reply.get_mut(i) {
                    slot.get_or_insert(start.elapsed().as_micros() as u64);
                }
                match last_answered {
                    None => {
                        let _ = writeln!(live, "ready");
                    }
                    Some(prev) if i > prev + 1 => {
                        let _ = writeln!(live, "recovered seq {i}");
                    }
                    _ => {}
                }
                let _ = live.flush();
                last_answered = Some(last_answered.map_or(i, |p| p.max(i)));
            }
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let mut answered = 0;
    let mut longest_us = 0u64;
    let mut outages = 0;
    let mut last_ok: Option<usize> = None;
    for (i, (s, r)) in sent.iter().zip(&reply).enumerate() {
        match r {
            Some(t) => {
                let _ = writeln!(out, "seq {i} sent_us {s} reply_us {t}");
                answered += 1;
                if let Some(prev) = last_ok {
                    if i > prev + 1 {
                        outages += 1;
                        longest_us = longest_us.max(sent[i] - sent[prev]);
                    }
                }
                last_ok = Some(i);
            }
            None => {
                let _ = writeln!(out, "seq {i} sent_us {s} reply_us -");
            }
        }
    }
    let _ = writeln!(
        out,
        "summary sent {} answered {answered} longest_outage_ms {:.1} outages {outages}",
        sent.len(),
        longest_us as f64 / 1000.0
    );
    Ok(())
}
