//! DHCP decoder: any datagram is either a request or a `DecodeError`, never a panic; a decoded request gives
//! a sane reply size.
#![no_main]

use lbfleet_server::boot::dhcp::{codec, decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = decode(data) {
        let _ = codec::message_type(&message);
        assert!(codec::max_reply_len(&message) >= codec::MIN_MAX_MESSAGE);
    }
});
