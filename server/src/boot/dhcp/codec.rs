//! DHCPv4 wire format: strict `decode` of client requests and `encode` of our replies, around `dhcproto`.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +---------------+---------------+---------------+---------------+
//! |     op (1)    |   htype (1)   |   hlen (1)    |   hops (1)    |
//! +---------------+---------------+---------------+---------------+
//! |                            xid (4)                            |
//! +-------------------------------+-------------------------------+
//! |           secs (2)            |           flags (2)           |
//! +-------------------------------+-------------------------------+
//! |                          ciaddr  (4)                          |
//! |                          yiaddr  (4)                          |
//! |                          siaddr  (4)                          |
//! |                          giaddr  (4)                          |
//! |                          chaddr  (16)                         |
//! |                          sname   (64)                         |
//! |                          file    (128)                        |
//! |                  magic cookie 99.130.83.99 (4)                |
//! |                          options (variable, TLV, 255 = end)   |
//! +---------------------------------------------------------------+
//! ```
//!
//! `dhcproto` is lenient in ways a server facing untrusted links cannot be: it stops parsing options at the
//! first bad one and silently returns the rest, and some of its option parsers `debug_assert!` on lengths.
//! So [`decode`] walks the option TLVs itself first, rejects anything malformed with a typed error, and only
//! then lets `dhcproto` build the [`Message`]; afterwards it checks that every option made it through.

use dhcproto::v4::{DhcpOption, DhcpOptions, HType, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Encodable};
use thiserror::Error;

/// Fixed BOOTP header (236 bytes) plus the magic cookie.
pub const HEADER_LEN: usize = 240;
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// More option TLVs than any real client sends (a PXE ROM sends about ten); beyond this a packet is hostile.
pub const MAX_OPTIONS: usize = 128;
/// RFC 2131 section 2: every client must accept 576-byte IP datagrams, i.e. 548 bytes of DHCP.
pub const MIN_MAX_MESSAGE: usize = 576 - IP_UDP_HEADERS;
const IP_UDP_HEADERS: usize = 28;
/// BOOTP relays and some old clients discard replies shorter than the 300-byte BOOTP minimum.
const MIN_REPLY_LEN: usize = 300;

/// Why a received datagram is not a request we will act on.
#[derive(Debug, Error)]
pub enum DecodeError {
    #[error("packet is {0} bytes, shorter than the 240-byte DHCP header")]
    Truncated(usize),
    #[error("op {0} is not BOOTREQUEST")]
    NotBootRequest(u8),
    #[error("hardware type {htype} length {hlen} is not Ethernet")]
    NotEthernet { htype: u8, hlen: u8 },
    #[error("magic cookie {0:?} is not 99.130.83.99 (plain BOOTP is not served)")]
    BadMagicCookie([u8; 4]),
    #[error("option {code} at offset {offset} runs past the end of the packet")]
    OptionOverrun { code: u8, offset: usize },
    #[error("more than {MAX_OPTIONS} options")]
    TooManyOptions,
    #[error("option {0} appears twice, non-consecutively")]
    DuplicateOption(u8),
    #[error("option {code} has invalid length {len}")]
    BadOptionLength { code: u8, len: usize },
    #[error("option {0} could not be parsed")]
    OptionUndecodable(u8),
    #[error("options do not close with the end option (truncated packet?)")]
    MissingEnd,
    #[error("option overload (52) is not supported")]
    OptionOverload,
    #[error("no DHCP message type (option 53)")]
    MissingMessageType,
    #[error("malformed DHCP message: {0}")]
    Malformed(#[from] dhcproto::error::DecodeError),
}

/// Why a reply could not be serialised.
#[derive(Debug, Error)]
pub enum EncodeError {
    #[error("reply does not fit in {limit} bytes even without optional options")]
    TooLarge { limit: usize },
    #[error("encoding failed: {0}")]
    Dhcproto(#[from] dhcproto::error::EncodeError),
}

/// Parses a datagram received on the server port into a client request.
pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::Truncated(bytes.len()));
    }
    let (op, htype, hlen) = (bytes[0], bytes[1], bytes[2]);
    if op != 1 {
        return Err(DecodeError::NotBootRequest(op));
    }
    if htype != 1 || hlen != 6 {
        return Err(DecodeError::NotEthernet { htype, hlen });
    }
    let cookie = [bytes[236], bytes[237], bytes[238], bytes[239]];
    if cookie != MAGIC_COOKIE {
        return Err(DecodeError::BadMagicCookie(cookie));
    }
    let codes = scan_options(&bytes[HEADER_LEN..])?;
    let message = Message::from_bytes(bytes)?;
    // dhcproto stops at the first option it cannot parse and returns what it had; make that an error.
    if let Some(&code) = codes
        .iter()
        .find(|&&c| !message.opts().contains(OptionCode::from(c)))
    {
        return Err(DecodeError::OptionUndecodable(code));
    }
    if message.opcode() != Opcode::BootRequest || message.htype() != HType::Eth {
        return Err(DecodeError::NotBootRequest(op));
    }
    if message.opts().msg_type().is_none() {
        return Err(DecodeError::MissingMessageType);
    }
    Ok(message)
}

/// Walks the option TLVs and returns the distinct codes seen. Mirrors dhcproto's RFC 3396 rule: consecutive
/// instances of one code are one option whose value is their concatenation, so lengths are checked on the sum.
fn scan_options(opts: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let mut seen = [false; 256];
    let mut codes = Vec::new();
    let mut count = 0usize;
    // (code, concatenated length) of the option being accumulated
    let mut run: Option<(u8, usize)> = None;
    let mut i = 0usize;
    let mut ended = false;
    while let Some(&code) = opts.get(i) {
        match code {
            0 | 255 => {
                if let Some((c, len)) = run.take() {
                    check_length(c, len)?;
                }
                if code == 255 {
                    ended = true;
                    break;
                }
                i += 1;
            }
            _ => {
                let len = *opts.get(i + 1).ok_or(DecodeError::OptionOverrun {
                    code,
                    offset: HEADER_LEN + i,
                })?;
                let end = i + 2 + usize::from(len);
                if end > opts.len() {
                    return Err(DecodeError::OptionOverrun {
                        code,
                        offset: HEADER_LEN + i,
                    });
                }
                count += 1;
                if count > MAX_OPTIONS {
                    return Err(DecodeError::TooManyOptions);
                }
                run = match run {
                    Some((c, acc)) if c == code => Some((c, acc + usize::from(len))),
                    previous => {
                        if let Some((c, acc)) = previous {
                            check_length(c, acc)?;
                        }
                        if std::mem::replace(&mut seen[usize::from(code)], true) {
                            return Err(DecodeError::DuplicateOption(code));
                        }
                        codes.push(code);
                        Some((code, usize::from(len)))
                    }
                };
                i = end;
            }
        }
    }
    // Every client we know closes with the end option; without it a packet cut at an option boundary would
    // pass as complete and silently lose e.g. its PXE options.
    if !ended {
        return Err(DecodeError::MissingEnd);
    }
    Ok(codes)
}

/// Length rules from RFC 2132 and friends for the options dhcproto parses into fixed-size values; a wrong
/// length there would either be misread or trip an assertion inside dhcproto.
fn check_length(code: u8, len: usize) -> Result<(), DecodeError> {
    let ok = match code {
        52 => return Err(DecodeError::OptionOverload),
        80 => len == 0,
        19 | 20 | 23 | 27 | 29 | 30 | 31 | 34 | 36 | 37 | 39 | 46 | 53 | 116 | 156 | 157 => {
            len == 1
        }
        13 | 22 | 26 | 57 => len == 2,
        94 => len == 3,
        1
        | 2
        | 16
        | 24
        | 28
        | 32
        | 35
        | 38
        | 50
        | 51
        | 54
        | 58
        | 59
        | 91
        | 106
        | 118
        | 150
        | 152..=155 => len == 4,
        3..=11 | 41 | 42 | 44 | 45 | 48 | 49 | 65 | 68..=76 | 89 | 92 => {
            len >= 4 && len.is_multiple_of(4)
        }
        21 | 33 => len >= 8 && len.is_multiple_of(8),
        25 => len >= 2 && len.is_multiple_of(2),
        93 => len >= 2 && len.is_multiple_of(2),
        61 => len >= 2,
        81 => len >= 3,
        151 => len >= 1,
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(DecodeError::BadOptionLength { code, len })
    }
}

/// Options a reply never sheds to fit the client's size limit: without them the reply is useless or wrong.
const ESSENTIAL: [OptionCode; 15] = [
    OptionCode::MessageType,
    OptionCode::ServerIdentifier,
    OptionCode::AddressLeaseTime,
    OptionCode::Renewal,
    OptionCode::Rebinding,
    OptionCode::SubnetMask,
    OptionCode::Router,
    OptionCode::DomainNameServer,
    OptionCode::ClassIdentifier,
    // PXE vendor options: without them UEFI PXE takes the offer for a BINL one and ignores its boot file.
    OptionCode::VendorExtensions,
    OptionCode::TFTPServerName,
    OptionCode::BootfileName,
    OptionCode::ClientIdentifier,
    OptionCode::RelayAgentInformation,
    OptionCode::Message,
];

/// Serialises a reply with its options in `order` (options of `message` missing from `order` follow in code
/// order), relay agent information last (RFC 3046 2.1), padded to the BOOTP minimum, and shed of optional
/// options from the back until it fits `max_len` bytes of DHCP payload.
pub fn encode(
    message: &Message,
    order: &[OptionCode],
    max_len: usize,
) -> Result<Vec<u8>, EncodeError> {
    let max_len = max_len.max(MIN_MAX_MESSAGE);
    let mut header = message.clone();
    // dhcproto writes nothing for an empty option set, so the header comes out as exactly 240 bytes.
    header.set_opts(DhcpOptions::new());
    let header = header.to_vec()?;

    let mut codes: Vec<OptionCode> = Vec::new();
    for code in order
        .iter()
        .copied()
        .chain(message.opts().iter().map(|(c, _)| *c))
    {
        if code != OptionCode::RelayAgentInformation
            && message.opts().contains(code)
            && !codes.contains(&code)
        {
            codes.push(code);
        }
    }
    if message.opts().contains(OptionCode::RelayAgentInformation) {
        codes.push(OptionCode::RelayAgentInformation);
    }
    let mut encoded: Vec<(OptionCode, Vec<u8>)> = Vec::with_capacity(codes.len());
    for code in codes {
        if let Some(opt) = message.opts().get(code) {
            encoded.push((code, opt.to_vec()?));
        }
    }
    loop {
        let len = header.len() + encoded.iter().map(|(_, b)| b.len()).sum::<usize>() + 1;
        if len <= max_len {
            break;
        }
        let Some(pos) = encoded.iter().rposition(|(c, _)| !ESSENTIAL.contains(c)) else {
            return Err(EncodeError::TooLarge { limit: max_len });
        };
        encoded.remove(pos);
    }
    let mut out = header;
    for (_, bytes) in &encoded {
        out.extend_from_slice(bytes);
    }
    out.extend_from_slice(&DhcpOption::End.to_vec()?);
    if out.len() < MIN_REPLY_LEN {
        out.resize(MIN_REPLY_LEN, 0);
    }
    Ok(out)
}

/// The most DHCP payload the client said it accepts (option 57), never below the RFC minimum.
pub fn max_reply_len(request: &Message) -> usize {
    match request.opts().get(OptionCode::MaxMessageSize) {
        Some(DhcpOption::MaxMessageSize(n)) => usize::from(*n)
            .saturating_sub(IP_UDP_HEADERS)
            .max(MIN_MAX_MESSAGE),
        _ => MIN_MAX_MESSAGE,
    }
}

/// The request's message type; `decode` guarantees it exists, but a hand-built `Message` may lack it.
pub fn message_type(message: &Message) -> Option<MessageType> {
    message.opts().msg_type()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::dhcp::testdata;

    fn with_options(opts: &[u8]) -> Vec<u8> {
        let mut p = testdata::header(0x01, [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
        p.extend_from_slice(opts);
        p
    }

    #[test]
    fn decodes_golden_discovers() {
        for (name, bytes) in testdata::golden_discovers() {
            let m = decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(m.opts().msg_type(), Some(MessageType::Discover), "{name}");
            assert_eq!(m.chaddr(), &testdata::QEMU_MAC, "{name}");
        }
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        for (name, bytes) in testdata::golden_discovers() {
            for cut in 0..bytes.len() {
                assert!(
                    decode(&bytes[..cut]).is_err(),
                    "{name} cut at {cut} decoded"
                );
            }
        }
    }

    #[test]
    fn rejects_non_requests_and_non_ethernet() {
        let good = with_options(&[53, 1, 1, 255]);
        assert!(decode(&good).is_ok());
        let mut p = good.clone();
        p[0] = 2; // op BOOTREPLY: a reply from another server, never ours to answer
        assert!(matches!(decode(&p), Err(DecodeError::NotBootRequest(2))));
        let mut p = good.clone();
        p[1] = 6; // htype IEEE 802
        assert!(matches!(
            decode(&p),
            Err(DecodeError::NotEthernet { htype: 6, hlen: 6 })
        ));
        let mut p = good.clone();
        p[2] = 16; // hlen
        assert!(matches!(decode(&p), Err(DecodeError::NotEthernet { .. })));
        let mut p = good.clone();
        p[236] = 0; // magic cookie
        assert!(matches!(decode(&p), Err(DecodeError::BadMagicCookie(_))));
        assert!(matches!(
            decode(&with_options(&[255])),
            Err(DecodeError::MissingMessageType)
        ));
        assert!(matches!(
            decode(&good[..239]),
            Err(DecodeError::Truncated(239))
        ));
    }

    #[test]
    fn rejects_bad_option_lengths() {
        let cases: &[(&[u8], u8)] = &[
            (&[53, 2, 1, 1, 255], 53),                  // message type of two bytes
            (&[53, 1, 1, 50, 3, 198, 18, 1, 255], 50),  // requested address of three bytes
            (&[53, 1, 1, 94, 1, 1, 255], 94),           // dhcproto would debug_assert on this
            (&[53, 1, 1, 81, 1, 0, 255], 81), // FQDN shorter than its flags: an underflow in dhcproto
            (&[53, 1, 1, 151, 0, 255], 151),  // status code without code byte: an underflow too
            (&[53, 1, 1, 80, 1, 0, 255], 80), // rapid commit carries no data
            (&[53, 1, 1, 93, 1, 0, 255], 93), // arch is a u16 list
            (&[53, 1, 1, 6, 5, 1, 2, 3, 4, 5, 255], 6), // DNS list not a multiple of 4
        ];
        for (opts, code) in cases {
            match decode(&with_options(opts)) {
                Err(DecodeError::BadOptionLength { code: c, .. }) => assert_eq!(c, *code),
                other => panic!("{opts:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn rejects_overruns_duplicates_overload_and_unparsable() {
        assert!(matches!(
            decode(&with_options(&[53, 1, 1, 60, 40, b'P'])),
            Err(DecodeError::OptionOverrun { code: 60, .. })
        ));
        assert!(matches!(
            decode(&with_options(&[53, 1, 1, 12])),
            Err(DecodeError::OptionOverrun { code: 12, .. })
        ));
        assert!(matches!(
            decode(&with_options(&[53, 1, 1, 0, 53, 1, 3, 255])),
            Err(DecodeError::DuplicateOption(53))
        ));
        assert!(matches!(
            decode(&with_options(&[53, 1, 1, 52, 1, 3, 255])),
            Err(DecodeError::OptionOverload)
        ));
        // Hostname that is not UTF-8: dhcproto gives up on it and everything after; we refuse the packet.
        assert!(matches!(
            decode(&with_options(&[
                53, 1, 1, 12, 2, 0xff, 0xfe, 61, 7, 1, 0, 0, 0, 0, 0, 1, 255
            ])),
            Err(DecodeError::OptionUndecodable(12))
        ));
    }

    #[test]
    fn consecutive_fragments_are_one_option() {
        // RFC 3396: option 60 split in two consecutive pieces.
        let m = decode(&with_options(&[
            53, 1, 1, 60, 3, b'P', b'X', b'E', 60, 6, b'C', b'l', b'i', b'e', b'n', b't', 255,
        ]))
        .expect("valid");
        assert_eq!(
            m.opts().get(OptionCode::ClassIdentifier),
            Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
        );
    }

    #[test]
    fn thousands_of_options_are_refused() {
        let mut opts = vec![53, 1, 1];
        for code in 1..=254u8 {
            // every code once, each with a length it accepts: only the count cap can refuse this
            if code == 52 || code == 53 {
                continue;
            }
            let len = [0u8, 1, 2, 3, 4, 8]
                .into_iter()
                .find(|&l| check_length(code, usize::from(l)).is_ok());
            let len = len.unwrap_or_else(|| panic!("no valid length for {code}"));
            opts.extend_from_slice(&[code, len]);
            opts.extend(std::iter::repeat_n(0u8, usize::from(len)));
        }
        opts.push(255);
        assert!(matches!(
            decode(&with_options(&opts)),
            Err(DecodeError::TooManyOptions)
        ));
        let mut opts = vec![53, 1, 1];
        for i in 0..3000u32 {
            opts.extend_from_slice(&[224 + (i % 2) as u8, 0]); // alternating codes are duplicates
        }
        opts.push(255);
        assert!(matches!(
            decode(&with_options(&opts)),
            Err(DecodeError::DuplicateOption(224))
        ));
        let mut opts = vec![53, 1, 1];
        for _ in 0..3000 {
            opts.extend_from_slice(&[224, 1, 0]); // one option concatenated 3000 times
        }
        opts.push(255);
        assert!(matches!(
            decode(&with_options(&opts)),
            Err(DecodeError::TooManyOptions)
        ));
    }

    #[test]
    fn encode_orders_options_and_puts_relay_info_last() {
        use dhcproto::v4::relay::{RelayAgentInformation, RelayInfo};
        let mut m = Message::default();
        m.set_opcode(Opcode::BootReply)
            .set_chaddr(&testdata::QEMU_MAC);
        let mut relay = RelayAgentInformation::default();
        relay.insert(RelayInfo::AgentCircuitId(vec![1, 2]));
        let opts = m.opts_mut();
        opts.insert(DhcpOption::RelayAgentInformation(relay));
        opts.insert(DhcpOption::MessageType(MessageType::Offer));
        opts.insert(DhcpOption::SubnetMask([255, 255, 0, 0].into()));
        opts.insert(DhcpOption::InterfaceMtu(1500));
        opts.insert(DhcpOption::ServerIdentifier([198, 18, 0, 1].into()));
        let bytes = encode(
            &m,
            &[
                OptionCode::MessageType,
                OptionCode::InterfaceMtu,
                OptionCode::SubnetMask,
            ],
            1500,
        )
        .expect("encodes");
        assert_eq!(bytes.len(), MIN_REPLY_LEN);
        let o = &bytes[HEADER_LEN..];
        assert_eq!(&o[..3], &[53, 1, 2]);
        assert_eq!(&o[3..7], &[26, 2, 0x05, 0xdc]);
        assert_eq!(&o[7..13], &[1, 4, 255, 255, 0, 0]);
        assert_eq!(&o[13..19], &[54, 4, 198, 18, 0, 1]);
        assert_eq!(&o[19..25], &[82, 4, 1, 2, 1, 2]);
        assert_eq!(o[25], 255);
    }

    #[test]
    fn encode_sheds_optional_options_to_fit() {
        let mut m = Message::default();
        m.set_opcode(Opcode::BootReply)
            .set_chaddr(&testdata::QEMU_MAC);
        m.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Ack));
        m.opts_mut()
            .insert(DhcpOption::NtpServers(vec![[198, 18, 0, 1].into(); 60]));
        m.opts_mut().insert(DhcpOption::DomainName("x".repeat(200)));
        let bytes = encode(&m, &[], 0).expect("fits after shedding");
        assert!(bytes.len() <= MIN_MAX_MESSAGE);
        let back = Message::from_bytes(&bytes).expect("reparses");
        assert_eq!(back.opts().msg_type(), Some(MessageType::Ack));
        // Shedding starts at the back: the NTP list (code 42, after 15 in code order) goes, the domain stays.
        assert!(!back.opts().contains(OptionCode::NtpServers));
        assert!(back.opts().contains(OptionCode::DomainName));
    }
}
