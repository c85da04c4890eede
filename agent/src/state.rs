//! What the agent keeps on the node between restarts (tmpfs `/run/lbfleet/` on a diskless box): the last role
//! document it received and its node credential, so a restarted agent keeps serving with the server down.

use std::io;
use std::path::{Path, PathBuf};

use lbfleet_proto::RoleDocument;

/// Default state directory on a node.
pub const DEFAULT_STATE_DIR: &str = "/run/lbfleet";

/// Why the state directory could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not a role document: {source}")]
    BadRole {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// The agent's state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn new(dir: impl Into<PathBuf>) -> StateDir {
        StateDir { dir: dir.into() }
    }

    pub fn role_path(&self) -> PathBuf {
        self.dir.join("role.json")
    }

    fn credential_path(&self) -> PathBuf {
        self.dir.join("credential")
    }

    fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
        move |source| StateError::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// Writes via a temporary file and rename, so a crash never leaves half a file.
    fn write_atomic(&self, path: &Path, bytes: &[u8], private: bool) -> Result<(), StateError> {
        std::fs::create_dir_all(&self.dir).map_err(Self::io_err(&self.dir))?;
        let tmp = path.with_extension("tmp");
        {
            use std::io::Write;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            if private {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = opts.open(&tmp).map_err(Self::io_err(&tmp))?;
            f.write_all(bytes).map_err(Self::io_err(&tmp))?;
        }
        std::fs::rename(&tmp, path).map_err(Self::io_err(path))
    }

    /// The last role document, if one was saved.
    pub fn load_role(&self) -> Result<Option<RoleDocument>, StateError> {
        let path = self.role_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| StateError::BadRole { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    pub fn save_role(&self, role: &RoleDocument) -> Result<(), StateError> {
        let path = self.role_path();
        let bytes = serde_json::to_vec_pretty(role).map_err(|source| StateError::BadRole {
            path: path.clone(),
            source,
        })?;
        self.write_atomic(&path, &bytes, false)
    }

    pub fn load_credential(&self) -> Result<Option<String>, StateError> {
        let path = self.credential_path();
        match std::fs::read_to_string(&path) {
            Ok(s) if !s.trim().is_empty() => Ok(Some(s.trim().to_owned())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    pub fn save_credential(&self, credential: &str) -> Result<(), StateError> {
        self.write_atomic(&self.credential_path(), credential.as_bytes(), true)
    }
}

/// Settings the boot script passes on the kernel command line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BootParams {
    pub server: Option<String>,
    pub token: Option<String>,
    pub mac: Option<String>,
    /// The image the node booted (`lbfleet.image=`, written by the server's boot script).
    pub image: Option<String>,
    /// The server certificate to pin (`lbfleet.server_cert=sha256:HEX`), as written.
    pub server_cert: Option<String>,
}

/// Parses `lbfleet.server=`, `lbfleet.token=`, `lbfleet.mac=`, `lbfleet.image=` and PXELINUX's
/// `BOOTIF=01-aa-bb-..`.
pub fn parse_cmdline(cmdline: &str) -> BootParams {
    let mut p = BootParams::default();
    for word in cmdline.split_whitespace() {
        if let Some(v) = word.strip_prefix("lbfleet.server=") {
            p.server = Some(v.to_owned());
        } else if let Some(v) = word.strip_prefix("lbfleet.token=") {
            p.token = Some(v.to_owned());
        } else if let Some(v) = word.strip_prefix("lbfleet.server_cert=") {
            p.server_cert = Some(v.to_owned());
        } else if let Some(v) = word.strip_prefix("lbfleet.image=") {
            p.image = Some(v.to_owned());
        } else if let Some(v) = word.strip_prefix("lbfleet.mac=") {
            p.mac = Some(v.to_ascii_lowercase());
        } else if let Some(v) = word.strip_prefix("BOOTIF=") {
            // "01-" is the ARP hardware type (Ethernet).
            if p.mac.is_none() {
                if let Some(hw) = v.strip_prefix("01-") {
                    p.mac = Some(hw.replace('-', ":").to_ascii_lowercase());
                }
            }
        }
    }
    p
}

/// MAC of the first interface with a real hardware address, from `/sys/class/net`.
pub fn first_mac(sys_class_net: &Path) -> Option<String> {
    let mut names: Vec<_> = std::fs::read_dir(sys_class_net)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .filter(|n| n != "lo")
        .collect();
    names.sort();
    names.into_iter().find_map(|n| {
        let mac = std::fs::read_to_string(sys_class_net.join(&n).join("address")).ok()?;
        let mac = mac.trim().to_ascii_lowercase();
        (mac.len() == 17 && mac != "00:00:00:00:00:00").then_some(mac)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cmdline_parameters() {
        let p = parse_cmdline(
            "console=ttyS0 BOOTIF=01-52-54-00-AA-BB-CC lbfleet.server=http://198.18.0.1:8080 lbfleet.token=lbf_enr_x lbfleet.image=2026.11.1 quiet",
        );
        assert_eq!(p.image.as_deref(), Some("2026.11.1"));
        assert_eq!(p.server.as_deref(), Some("http://198.18.0.1:8080"));
        assert_eq!(p.token.as_deref(), Some("lbf_enr_x"));
        assert_eq!(p.mac.as_deref(), Some("52:54:00:aa:bb:cc"));
        let p = parse_cmdline("lbfleet.mac=52:54:00:00:00:01 BOOTIF=01-52-54-00-aa-bb-cc");
        assert_eq!(p.mac.as_deref(), Some("52:54:00:00:00:01"));
        assert_eq!(parse_cmdline("quiet"), BootParams::default());
    }

    #[test]
    fn role_and_credential_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join("lbfleet"));
        assert!(state.load_role().unwrap().is_none());
        assert!(state.load_credential().unwrap().is_none());
        let role = RoleDocument {
            generation: 3,
            node: "lb-01".into(),
            cluster: None,
            role: None,
            vrrp: None,
            services: vec![],
        };
        state.save_role(&role).unwrap();
        state.save_credential("lbf_node_secret").unwrap();
        let again = StateDir::new(dir.path().join("lbfleet"));
        assert_eq!(again.load_role().unwrap(), Some(role));
        assert_eq!(
            again.load_credential().unwrap().as_deref(),
            Some("lbf_node_secret")
        );
        std::fs::write(again.role_path(), b"{not json").unwrap();
        assert!(matches!(again.load_role(), Err(StateError::BadRole { .. })));
    }
}
