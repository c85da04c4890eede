//! Reads the netlink bytes a program sent and received from `strace -e write=all -e read=all` output, so the
//! guest tests can compare the agent's IPVS codec with what `ipvsadm` (libnl) puts on the wire.
//!
//! strace prints each syscall line, then for data it dumps a block of lines like
//! ` | 00000  20 00 00 00 10 00 05 00  68 7a 08 6b ea 68 00 c5   .......hz.k.h.. |`.

/// Data of one `sendmsg` / `recvmsg` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    pub send: bool,
    pub bytes: Vec<u8>,
}

/// Every non-peeking `sendmsg`/`recvmsg` with its dumped bytes, in order.
pub fn parse(text: &str) -> Vec<Captured> {
    let mut out: Vec<Captured> = Vec::new();
    // Some(index in out) while the current syscall's dump is being read; None to skip (peek, other calls).
    let mut current: Option<usize> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(" | ") {
            let Some(i) = current else { continue };
            // "00000  " offset, then 16 hex bytes in 49 columns, then the ASCII column.
            let hex: String = rest.chars().skip(7).take(49).collect();
            for tok in hex.split_whitespace() {
                if let Ok(b) = u8::from_str_radix(tok, 16) {
                    out[i].bytes.push(b);
                }
            }
        } else if line.starts_with(" * ") {
            // "* N bytes in buffer K": continuation of the current call.
        } else {
            let send = line.contains("sendmsg(");
            let recv = line.contains("recvmsg(");
            current =
                if (send || recv) && !line.contains("MSG_PEEK") && !line.contains("<unfinished") {
                    out.push(Captured {
                        send,
                        bytes: Vec::new(),
                    });
                    Some(out.len() - 1)
                } else {
                    None
                };
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sent_bytes_and_skips_peeks() {
        let text = r#"sendmsg(3, {msg_name={sa_family=AF_NETLINK}, ...}, 0) = 32
 * 32 bytes in buffer 0
 | 00000  20 00 00 00 10 00 05 00  68 7a 08 6b ea 68 00 c5   .......hz.k.h.. |
 | 00010  03 01 00 00 09 00 02 00  49 50 56 53 00 00 00 00  ........IPVS.... |
recvmsg(3, {msg_iov=...}, MSG_PEEK|MSG_TRUNC) = 20
 | 00000  ff ff                                              .. |
recvmsg(3, {msg_iov=...}, 0) = 3
 * 3 bytes in buffer 0
 | 00000  01 02 03                                          ... |
"#;
        let caps = parse(text);
        assert_eq!(caps.len(), 2);
        assert!(caps[0].send);
        assert_eq!(caps[0].bytes.len(), 32);
        assert_eq!(&caps[0].bytes[16..20], &[3, 1, 0, 0]);
        assert_eq!(
            caps[1],
            Captured {
                send: false,
                bytes: vec![1, 2, 3]
            }
        );
    }
}
