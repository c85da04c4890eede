//! `lbfleet-dhcp-probe`: a DHCP client that acts as a relay agent, runs full DORA exchanges for many MACs and
//! prints one `ACK <mac> <address>` line per acknowledged lease as soon as it arrives. Operators use it to check
//! that a DHCP server answers; tests use it to know exactly which leases a server promised (even if the server
//! is killed mid-run). It sends only to the `--server` address given.
//!
//! With `--interface`, it is a directly attached client instead: it broadcasts from that NIC (port 68, giaddr
//! 0, broadcast flag) and listens for the broadcast replies. `--chaddr` puts a chosen MAC in the requests,
//! whatever the NIC's own address is (a spoofing client, for tests of the server's link-layer check).

use std::collections::HashMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use tokio::net::UdpSocket;

#[derive(Debug, Parser)]
#[command(
    name = "lbfleet-dhcp-probe",
    about = "Run DHCP DORA exchanges as a relay agent and print each ACK"
)]
struct Args {
    /// DHCP server to query, e.g. 198.18.0.1:67 (255.255.255.255:67: every server on the segment)
    #[arg(long)]
    server: SocketAddrV4,
    /// This host's address: the relay address (giaddr) replies come back to, on port --port
    #[arg(long, required_unless_present = "interface")]
    giaddr: Option<Ipv4Addr>,
    /// Local port to receive replies on (a relay agent uses 67; a direct client 68)
    #[arg(long)]
    port: Option<u16>,
    /// Act as a directly attached client on this interface (broadcast, no giaddr) instead of as a relay
    #[arg(long, conflicts_with = "giaddr")]
    interface: Option<String>,
    /// The client hardware address to claim (with --count 1), instead of 02:00:xx:xx:xx:xx
    #[arg(long)]
    chaddr: Option<String>,
    /// As a relay: add option 82 with this circuit-id (sub-option 1)
    #[arg(long, conflicts_with = "interface")]
    circuit_id: Option<String>,
    /// Number of clients (MACs 02:00:xx:xx:xx:xx from --first)
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// First client number
    #[arg(long, default_value_t = 1)]
    first: u32,
    /// Exchanges started per second
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Give up on a client after this many milliseconds
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
}

fn mac_of(n: u32) -> [u8; 6] {
    let b = n.to_be_bytes();
    [0x02, 0x00, b[0], b[1], b[2], b[3]]
}

fn parse_mac(text: &str) -> anyhow::Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split([':', '-']);
    for b in &mut mac {
        let part = parts.next().context("a MAC has six bytes")?;
        *b = u8::from_str_radix(part, 16).context("a MAC byte is two hex digits")?;
    }
    anyhow::ensure!(parts.next().is_none(), "a MAC has six bytes");
    Ok(mac)
}

fn mac_text(m: &[u8]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn request(
    kind: MessageType,
    xid: u32,
    mac: &[u8; 6],
    giaddr: Ipv4Addr,
    offer: Option<(Ipv4Addr, Ipv4Addr)>,
    circuit_id: Option<&str>,
) -> anyhow::Result<Vec<u8>> {
    let direct = giaddr.is_unspecified();
    let mut msg = Message::new_with_id(
        xid,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        giaddr,
        mac,
    );
    msg.set_opcode(Opcode::BootRequest);
    if direct {
        // No address yet: ask for broadcast replies.
        msg.set_flags(dhcproto::v4::Flags::default().set_broadcast());
    } else {
        msg.set_hops(1);
    }
    msg.opts_mut().insert(DhcpOption::MessageType(kind));
    msg.opts_mut().insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
    ]));
    if let Some(c) = circuit_id {
        use dhcproto::v4::relay::{RelayAgentInformation, RelayInfo};
        let mut info = RelayAgentInformation::default();
        info.insert(RelayInfo::AgentCircuitId(c.as_bytes().to_vec()));
        msg.opts_mut()
            .insert(DhcpOption::RelayAgentInformation(info));
    }
    if let Some((address, server)) = offer {
        msg.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(address));
        msg.opts_mut().insert(DhcpOption::ServerIdentifier(server));
    }
    let mut buf = Vec::with_capacity(300);
    msg.encode(&mut Encoder::new(&mut buf))
        .context("encoding a request")?;
    Ok(buf)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let giaddr = args.giaddr.unwrap_or(Ipv4Addr::UNSPECIFIED);
    let chosen = args.chaddr.as_deref().map(parse_mac).transpose()?;
    let mac = |n: u32| chosen.unwrap_or_else(|| mac_of(n));
    let (sock, server) = match &args.interface {
        Some(iface) => {
            let sock = UdpSocket::bind(SocketAddr::from((
                Ipv4Addr::UNSPECIFIED,
                args.port.unwrap_or(68),
            )))
            .await
            .context("binding the client port")?;
            sock.bind_device(Some(iface.as_bytes()))
                .with_context(|| format!("binding to {iface} (needs root)"))?;
            sock.set_broadcast(true)?;
            let server = SocketAddr::from((Ipv4Addr::BROADCAST, args.server.port()));
            (sock, server)
        }
        None => {
            let sock = UdpSocket::bind(SocketAddr::from((giaddr, args.port.unwrap_or(67))))
                .await
                .context("binding the relay port")?;
            // A relay with several servers (hot standby) may forward to a broadcast address.
            sock.set_broadcast(true)?;
            (sock, SocketAddr::V4(args.server))
        }
    };
    let timeout = Duration::from_millis(args.timeout_ms);
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1)));
    // xid -> (client number, started)
    let mut pending: HashMap<u32, (u32, Instant)> = HashMap::new();
    let (mut started, mut acked, mut naks, mut timeouts) = (0u32, 0u32, 0u32, 0u32);
    let mut next_start = Instant::now();
    let deadline = Instant::now() + interval * args.count + timeout + Duration::from_secs(2);
    let mut buf = [0u8; 1500];
    let mut out = std::io::stdout().lock();
    while (started < args.count || !pending.is_empty()) && Instant::now() < deadline {
        if started < args.count && Instant::now() >= next_start {
            let n = args.first + started;
            let xid = n.wrapping_mul(2_654_435_761);
            sock.send_to(
                &request(
                    MessageType::Discover,
                    xid,
                    &mac(n),
                    giaddr,
                    None,
                    args.circuit_id.as_deref(),
                )?,
                server,
            )
            .await?;
            pending.insert(xid, (n, Instant::now()));
            started += 1;
            next_start += interval;
            continue;
        }
        let wait = if started < args.count {
            next_start.saturating_duration_since(Instant::now())
        } else {
            Duration::from_millis(50)
        };
        if let Ok(Ok((len, _))) = tokio::time::timeout(
            wait.max(Duration::from_micros(100)),
            sock.recv_from(&mut buf),
        )
        .await
        {
            let Ok(msg) = Message::decode(&mut Decoder::new(&buf[..len])) else {
                continue;
            };
            let Some(&(n, _)) = pending.get(&msg.xid()) else {
                continue;
            };
            match msg.opts().msg_type() {
                Some(MessageType::Offer) => {
                    let server_id = match msg.opts().get(OptionCode::ServerIdentifier) {
                        Some(DhcpOption::ServerIdentifier(s)) => *s,
                        _ => *args.server.ip(),
                    };
                    let req = request(
                        MessageType::Request,
                        msg.xid(),
                        &mac(n),
                        giaddr,
                        Some((msg.yiaddr(), server_id)),
                        args.circuit_id.as_deref(),
                    )?;
                    sock.send_to(&req, server).await?;
                }
                Some(MessageType::Ack) => {
                    pending.remove(&msg.xid());
                    acked += 1;
                    writeln!(out, "ACK {} {}", mac_text(&mac(n)), msg.yiaddr())?;
                    out.flush()?;
                }
                Some(MessageType::Nak) => {
                    pending.remove(&msg.xid());
                    naks += 1;
                }
                _ => {}
            }
        }
        let now = Instant::now();
        pending.retain(|_, (_, t)| {
            let alive = now.duration_since(*t) < timeout;
            if !alive {
                timeouts += 1;
            }
            alive
        });
    }
    timeouts += pending.len() as u32;
    eprintln!("started {started} acked {acked} nak {naks} timeout {timeouts}");
    Ok(())
}
