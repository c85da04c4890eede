//! A writer (and a small reader, for checks) for the `newc` cpio format the kernel unpacks as an initramfs.
//!
//! ```text
//! "070701" ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
//!          (13 fields, 8 hex digits each) | name + NUL, padded to 4 | data, padded to 4
//! ```
//! The archive ends with an entry named `TRAILER!!!`.
//!
//! The writer is reproducible: entries are emitted sorted by path (a parent sorts before its children),
//! inode numbers follow that order, owners are root and every mtime is 0, so the same content always gives
//! the same bytes. Adding a path twice keeps the last content (a test image can replace `/init`).

use std::collections::BTreeMap;

const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const TRAILER: &str = "TRAILER!!!";

/// What a path in the archive is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
}

/// One archive member as the reader returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    /// Permission bits (`0o755`), without the file type.
    pub mode: u32,
    pub kind: EntryKind,
}

/// Collects entries in memory; parent directories are created on demand.
#[derive(Debug, Default, Clone)]
pub struct CpioWriter {
    entries: BTreeMap<String, (u32, EntryKind)>,
}

impl CpioWriter {
    pub fn new() -> Self {
        Self::default()
    }

    fn parents(&mut self, path: &str) {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        for i in 1..parts.len() {
            self.entries
                .entry(parts[..i].join("/"))
                .or_insert((0o755, EntryKind::Dir));
        }
    }

    fn put(&mut self, path: &str, mode: u32, kind: EntryKind) {
        let path = path.trim_matches('/');
        if path.is_empty() {
            return;
        }
        self.parents(path);
        self.entries.insert(path.to_owned(), (mode & 0o7777, kind));
    }

    pub fn dir(&mut self, path: &str) {
        let path = path.trim_matches('/');
        if !self.entries.contains_key(path) {
            self.put(path, 0o755, EntryKind::Dir);
        }
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.put(path, mode, EntryKind::File(data.to_vec()));
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.put(path, 0o777, EntryKind::Symlink(target.to_owned()));
    }

    /// Whether `path` (with or without a leading `/`) was added.
    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(path.trim_matches('/'))
    }

    /// The archive bytes, entries in path order.
    pub fn finish(self) -> Vec<u8> {
        let mut out = Vec::new();
        for (ino, (path, (mode, kind))) in self.entries.iter().enumerate() {
            let (ftype, data): (u32, &[u8]) = match kind {
                EntryKind::Dir => (S_IFDIR, &[]),
                EntryKind::File(d) => (S_IFREG, d),
                EntryKind::Symlink(t) => (S_IFLNK, t.as_bytes()),
            };
            let nlink = if ftype == S_IFDIR { 2 } else { 1 };
            write_entry(&mut out, ino + 1, ftype | mode, nlink, path, data);
        }
        write_entry(&mut out, 0, 0, 1, TRAILER, &[]);
        out
    }
}

fn pad(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn write_entry(out: &mut Vec<u8>, ino: usize, mode: u32, nlink: u32, name: &str, data: &[u8]) {
    let header = format!(
        "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
        ino,
        mode,
        0,
        0,
        nlink,
        0,
        data.len(),
        0,
        0,
        0,
        0,
        name.len() + 1,
        0
    );
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad(out);
    out.extend_from_slice(data);
    pad(out);
}

/// A malformed archive (for the reader).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad cpio archive at byte {offset}: {reason}")]
pub struct CpioError {
    pub offset: usize,
    pub reason: &'static str,
}

/// Reads a `newc` archive back (up to its trailer): used to check what an image holds.
pub fn read(bytes: &[u8]) -> Result<Vec<Entry>, CpioError> {
    let mut entries = Vec::new();
    let mut at = 0usize;
    let err = |offset, reason| CpioError { offset, reason };
    loop {
        let header = bytes.get(at..at + 110).ok_or(err(at, "truncated header"))?;
        if &header[..6] != b"070701" {
            return Err(err(at, "bad magic"));
        }
        let field = |i: usize| -> Result<usize, CpioError> {
            let text = std::str::from_utf8(&header[6 + 8 * i..14 + 8 * i])
                .map_err(|_| err(at, "bad header field"))?;
            usize::from_str_radix(text, 16).map_err(|_| err(at, "bad header field"))
        };
        let mode = u32::try_from(field(1)?).map_err(|_| err(at, "bad mode"))?;
        let size = field(6)?;
        let namesize = field(11)?;
        let name_start = at + 110;
        let name = bytes
            .get(name_start..name_start + namesize.saturating_sub(1))
            .ok_or(err(at, "truncated name"))?;
        let name = std::str::from_utf8(name).map_err(|_| err(at, "name is not UTF-8"))?;
        let data_start = (name_start + namesize).next_multiple_of(4);
        let data = bytes
            .get(data_start..data_start + size)
            .ok_or(err(at, "truncated data"))?;
        at = (data_start + size).next_multiple_of(4);
        if name == TRAILER {
            return Ok(entries);
        }
        let kind = match mode & S_IFMT {
            S_IFDIR => EntryKind::Dir,
            S_IFREG => EntryKind::File(data.to_vec()),
            S_IFLNK => EntryKind::Symlink(String::from_utf8_lossy(data).into_owned()),
            _ => return Err(err(at, "unsupported file type")),
        };
        entries.push(Entry {
            path: name.to_owned(),
            mode: mode & 0o7777,
            kind,
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn entries_are_newc_and_aligned() {
        let mut w = CpioWriter::new();
        w.file("/bin/x", 0o755, b"abc");
        let out = w.finish();
        // "bin" directory first, then the file, then the trailer.
        assert!(out.starts_with(b"070701"));
        assert_eq!(out.len() % 4, 0);
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("bin\0"));
        assert!(text.contains("bin/x\0"));
        assert!(text.contains("TRAILER!!!\0"));
        // The file entry: inode 2, mode 0o100755 = 0x81ed, uid 0, gid 0, nlink 1, mtime 0, size 3.
        assert!(text.contains("07070100000002000081ed0000000000000000000000010000000000000003"));
    }

    #[test]
    fn golden_bytes_of_a_one_file_archive() {
        let mut w = CpioWriter::new();
        w.file("a", 0o644, b"hi");
        let out = w.finish();
        let mut want = Vec::new();
        // magic, ino 1, mode 0o100644, uid, gid, nlink 1, mtime 0, size 2, dev/rdev 0, namesize 2, check
        want.extend_from_slice(
            concat!(
                "070701", "00000001", "000081a4", "00000000", "00000000", "00000001", "00000000",
                "00000002", "00000000", "00000000", "00000000", "00000000", "00000002", "00000000"
            )
            .as_bytes(),
        );
        want.extend_from_slice(b"a\0hi\0\0");
        want.extend_from_slice(
            concat!(
                "070701", "00000000", "00000000", "00000000", "00000000", "00000001", "00000000",
                "00000000", "00000000", "00000000", "00000000", "00000000", "0000000b", "00000000"
            )
            .as_bytes(),
        );
        want.extend_from_slice(b"TRAILER!!!\0\0\0\0");
        assert_eq!(out, want);
    }

    #[test]
    fn order_of_calls_does_not_change_the_bytes() {
        let mut a = CpioWriter::new();
        a.file("/init", 0o755, b"#!/bin/sh");
        a.file("/bin/busybox", 0o755, b"BB");
        a.symlink("/bin/sh", "busybox");
        a.dir("/proc");
        let mut b = CpioWriter::new();
        b.dir("/proc");
        b.symlink("/bin/sh", "busybox");
        b.file("/bin/busybox", 0o755, b"BB");
        b.file("/init", 0o755, b"old");
        b.file("/init", 0o755, b"#!/bin/sh");
        assert_eq!(a.clone().finish(), b.finish());
        let entries = read(&a.finish()).unwrap();
        let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["bin", "bin/busybox", "bin/sh", "init", "proc"]);
        assert_eq!(entries[2].kind, EntryKind::Symlink("busybox".into()));
        assert_eq!(entries[3].kind, EntryKind::File(b"#!/bin/sh".to_vec()));
        assert_eq!(entries[3].mode, 0o755);
    }

    #[test]
    fn reader_refuses_garbage_without_panicking() {
        assert!(read(b"").is_err());
        assert!(read(b"070701zz").is_err());
        let mut w = CpioWriter::new();
        w.file("a", 0o644, b"hello");
        let out = w.finish();
        for cut in [10, 111, 120, out.len() - 20] {
            assert!(read(&out[..cut]).is_err(), "{cut}");
        }
    }
}
