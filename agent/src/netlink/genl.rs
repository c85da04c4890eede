//! Generic netlink (linux/genetlink.h): the `genlmsghdr` after the netlink header, and the controller's
//! `CTRL_CMD_GETFAMILY` that turns a family name ("IPVS") into the message type to send to it. Sans-IO.

use super::{message, AttrWriter, Attrs, DecodeError, NLM_F_ACK, NLM_F_REQUEST};

pub const GENL_HDRLEN: usize = 4;
pub const GENL_ID_CTRL: u16 = 0x10;
pub const CTRL_CMD_GETFAMILY: u8 = 3;
pub const CTRL_ATTR_FAMILY_ID: u16 = 1;
pub const CTRL_ATTR_FAMILY_NAME: u16 = 2;

/// Frames a generic netlink message: nlmsghdr + genlmsghdr + attributes.
pub fn genl_message(
    family: u16,
    flags: u16,
    seq: u32,
    pid: u32,
    cmd: u8,
    version: u8,
    attrs: &[u8],
) -> Vec<u8> {
    let mut payload = Vec::with_capacity(GENL_HDRLEN + attrs.len());
    payload.push(cmd);
    payload.push(version);
    payload.extend_from_slice(&0u16.to_ne_bytes());
    payload.extend_from_slice(attrs);
    message(family, flags, seq, pid, &payload)
}

/// `CTRL_CMD_GETFAMILY` for the family called `name`.
pub fn get_family_request(name: &str, seq: u32, pid: u32) -> Vec<u8> {
    let mut w = AttrWriter::default();
    w.string(CTRL_ATTR_FAMILY_NAME, name);
    genl_message(
        GENL_ID_CTRL,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        pid,
        CTRL_CMD_GETFAMILY,
        1,
        &w.into_bytes(),
    )
}

/// Family id from a `CTRL_CMD_GETFAMILY` reply's attributes.
pub fn parse_family_id(attrs: &[u8]) -> Result<u16, DecodeError> {
    Attrs::parse(attrs)?.u16(CTRL_ATTR_FAMILY_ID, "CTRL_ATTR_FAMILY_ID")
}

/// A generic netlink payload: its command and attribute block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenlPayload<'a> {
    pub cmd: u8,
    pub version: u8,
    pub attrs: &'a [u8],
}

/// Splits a netlink payload into the `genlmsghdr` and the attributes.
pub fn split(payload: &[u8]) -> Result<GenlPayload<'_>, DecodeError> {
    if payload.len() < GENL_HDRLEN {
        return Err(DecodeError::Truncated {
            what: "genlmsghdr",
            need: GENL_HDRLEN,
            have: payload.len(),
        });
    }
    Ok(GenlPayload {
        cmd: payload[0],
        version: payload[1],
        attrs: &payload[GENL_HDRLEN..],
    })
}
