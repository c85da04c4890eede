//! TFTP decoder: any datagram is a packet or a `DecodeError`, never a panic; what decodes re-encodes to bytes
//! that decode to the same packet; a read request's options negotiate within the server's limits.
#![no_main]

use lbfleet_server::boot::tftp::packet::Packet;
use lbfleet_server::boot::tftp::transfer::{negotiate, Limits, Sender};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = Packet::decode(data) else {
        return;
    };
    assert_eq!(
        Packet::decode(&packet.encode()).as_ref(),
        Ok(&packet),
        "round trip"
    );
    if let Packet::ReadRequest { options, .. } = &packet {
        let limits = Limits::default();
        let size = u64::from(data.len() as u32) * 1_000_003;
        let n = negotiate(options, size, &limits);
        assert!(n.blksize >= 8 && n.blksize <= limits.max_blksize.max(512));
        assert!(n.windowsize >= 1 && n.windowsize <= limits.max_windowsize);
        let mut sender = Sender::new(size, &n);
        let window = sender.window();
        let (offset, len) = sender.block_span(*window.end(), size);
        assert!(offset + len as u64 <= size);
        let _ = sender.on_ack(Sender::wire(*window.end()));
    }
});
