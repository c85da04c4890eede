//! The windowsize client (RFC 7440) of the benchmark, built on lbfleet's TFTP packet codec: one download,
//! every byte compared.

use super::*;

#[derive(Debug)]
pub(super) struct Fetched {
    pub(super) bytes: u64,
    pub(super) window: u16,
    /// Times the client heard nothing for 300 ms and re-sent its last ACK.
    pub(super) timeouts: u32,
    /// Out-of-order or duplicate blocks (loss, or a window the server re-sent).
    pub(super) gaps: u32,
}

/// Reads `file` from a TFTP server, asking for `blksize` and `windowsize` (RFC 2348, 7440). Acknowledges
/// every `window`-th block (every block if the server did not grant a window) and the last one; on a gap it
/// acknowledges the last block received in order, once, so the server restarts from there. `expect`, when
/// given, is compared with every byte received.
pub(super) fn fetch_windowed(
    server: SocketAddr,
    file: &str,
    blksize: u16,
    window: u16,
    deadline: Instant,
    expect: Option<&[u8]>,
    stop: &AtomicBool,
) -> anyhow::Result<Fetched> {
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    sock.set_read_timeout(Some(Duration::from_millis(300)))?;
    let mut options = vec![
        ("blksize".to_owned(), blksize.to_string()),
        ("tsize".to_owned(), "0".to_owned()),
    ];
    if window > 1 {
        options.push(("windowsize".to_owned(), window.to_string()));
    }
    let rrq = Packet::ReadRequest {
        filename: file.to_owned(),
        mode: "octet".to_owned(),
        options,
    }
    .encode();
    let mut buf = vec![0u8; 65_536];
    let mut tries = 0;
    let (first_len, tid) = loop {
        sock.send_to(&rrq, server)?;
        match sock.recv_from(&mut buf) {
            Ok(v) => break v,
            Err(e) if is_timeout(&e) => {
                tries += 1;
                ensure!(
                    tries < 5 && Instant::now() < deadline,
                    "no answer from {server}"
                );
            }
            Err(e) => return Err(e.into()),
        }
    };
    let ack = |block: u16| Packet::Ack { block }.encode();
    let (mut blk, mut win) = (512usize, 1u16);
    let mut got: u64 = 0;
    let mut expected: u16 = 1;
    let mut in_window: u16 = 0;
    let mut last_ack: u16 = 0;
    let mut gap_acked = false;
    let mut retries = 0;
    let (mut timeouts, mut gaps) = (0u32, 0u32);
    let mut pending = Some(first_len);
    loop {
        let n = match pending.take() {
            Some(n) => n,
            None => {
                ensure!(
                    Instant::now() < deadline && !stop.load(Ordering::Relaxed),
                    "deadline passed after {got} bytes"
                );
                match sock.recv_from(&mut buf) {
                    Ok((n, from)) if from == tid => {
                        retries = 0;
                        n
                    }
                    Ok(_) => continue,
                    Err(e) if is_timeout(&e) => {
                        retries += 1;
                        timeouts += 1;
                        ensure!(retries <= 10, "server silent after {got} bytes");
                        sock.send_to(&ack(last_ack), tid)?;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        match Packet::decode(&buf[..n]) {
            Ok(Packet::OptionAck { options }) if got == 0 && expected == 1 => {
                for (k, v) in &options {
                    match k.as_str() {
                        "blksize" => blk = v.parse().context("OACK blksize")?,
                        "windowsize" => win = v.parse().context("OACK windowsize")?,
                        _ => {}
                    }
                }
                sock.send_to(&ack(0), tid)?;
            }
            Ok(Packet::Data { block, data }) if block == expected => {
                ensure!(data.len() <= blk, "block {block} larger than blksize");
                if let Some(expect) = expect {
                    let at = usize::try_from(got)?;
                    ensure!(
                        expect.get(at..at + data.len()) == Some(&data[..]),
                        "wrong bytes at offset {at}"
                    );
                }
                got += data.len() as u64;
                in_window += 1;
                gap_acked = false;
                let last = data.len() < blk;
                if in_window >= win || last {
                    sock.send_to(&ack(block), tid)?;
                    last_ack = block;
                    in_window = 0;
                }
                if last {
                    return Ok(Fetched {
                        bytes: got,
                        window: win,
                        timeouts,
                        gaps,
                    });
                }
                expected = expected.wrapping_add(1);
            }
            Ok(Packet::Data { .. }) => {
                // Out of order or a duplicate: acknowledge what we hold, once per gap (RFC 7440 section 4).
                gaps += 1;
                if !gap_acked {
                    last_ack = expected.wrapping_sub(1);
                    sock.send_to(&ack(last_ack), tid)?;
                    in_window = 0;
                    gap_acked = true;
                }
            }
            Ok(Packet::Error { code, message }) => bail!("server error {code}: {message}"),
            Ok(other) => bail!("unexpected packet {other:?}"),
            Err(e) => bail!("undecodable packet: {e}"),
        }
    }
}

pub(super) fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}
