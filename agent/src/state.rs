//! What the agent keeps on the node between restarts (tmpfs `/run/lbfleet/` on a diskless box): the last role
//! document it received and its node credential, so a restarted agent keeps serving with the server down.

use std::io;
use std::path::{Path, PathBuf};

use lbfleet_proto::{AgentReport, KernelArgs, KernelArgsError, Mac, RoleDocument};

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
    #[error("{path}: not a status document: {source}")]
    BadStatus {
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

    /// Where the running daemon writes its latest report (for `lbfleet-agent status`).
    pub fn status_path(&self) -> PathBuf {
        self.dir.join("status.json")
    }

    pub fn save_status(&self, report: &AgentReport) -> Result<(), StateError> {
        let path = self.status_path();
        let bytes = serde_json::to_vec_pretty(report).map_err(|source| StateError::BadStatus {
            path: path.clone(),
            source,
        })?;
        self.write_atomic(&path, &bytes, false)
    }

    /// The running (or last) daemon's latest report, if any.
    pub fn load_status(&self) -> Result<Option<AgentReport>, StateError> {
        let path = self.status_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| StateError::BadStatus { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }
}

/// Why the boot arguments could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BootArgsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {source}")]
    Bad {
        path: PathBuf,
        #[source]
        source: KernelArgsError,
    },
}

/// The boot script's arguments from the kernel command line (`/proc/cmdline`), read with the contract's one
/// parser (`lbfleet_proto::KernelArgs`). A missing file gives no arguments (the agent may run off a PXE
/// boot with flags); a malformed contract argument is an error.
pub fn read_kernel_args(cmdline: &Path) -> Result<KernelArgs, BootArgsError> {
    match std::fs::read_to_string(cmdline) {
        Ok(text) => KernelArgs::parse(&text).map_err(|source| BootArgsError::Bad {
            path: cmdline.to_owned(),
            source,
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(KernelArgs::default()),
        Err(source) => Err(BootArgsError::Io {
            path: cmdline.to_owned(),
            source,
        }),
    }
}

/// The interface (under `/sys/class/net`) whose hardware address is `mac`, e.g. the `BOOTIF` NIC.
pub fn interface_with_mac(sys_class_net: &Path, mac: Mac) -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir(sys_class_net)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    names.into_iter().find(|n| {
        std::fs::read_to_string(sys_class_net.join(n).join("address"))
            .ok()
            .and_then(|a| a.trim().parse::<Mac>().ok())
            == Some(mac)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn kernel_args_from_the_command_line_file() {
        let dir = tempfile::tempdir().unwrap();
        let cmdline = dir.path().join("cmdline");
        std::fs::write(
            &cmdline,
            "console=ttyS0 BOOTIF=01-52-54-00-AA-BB-CC lbfleet.server=http://198.18.0.1:8080 lbfleet.token=lbf_enr_x lbfleet.image=2026.11.1 quiet\n",
        )
        .unwrap();
        let args = read_kernel_args(&cmdline).unwrap();
        assert_eq!(args.image.as_deref(), Some("2026.11.1"));
        assert_eq!(args.server.as_deref(), Some("http://198.18.0.1:8080"));
        assert_eq!(args.token.as_deref(), Some("lbf_enr_x"));
        assert_eq!(args.bootif.unwrap().to_string(), "52:54:00:aa:bb:cc");
        assert_eq!(
            read_kernel_args(&dir.path().join("absent")).unwrap(),
            KernelArgs::default()
        );
        std::fs::write(&cmdline, "BOOTIF=01-52-54").unwrap();
        assert!(matches!(
            read_kernel_args(&cmdline),
            Err(BootArgsError::Bad { .. })
        ));
    }

    #[test]
    fn boot_interface_is_found_by_mac_not_by_name() {
        let dir = tempfile::tempdir().unwrap();
        for (name, mac) in [
            ("lo", "00:00:00:00:00:00"),
            ("eth0", "52:54:00:00:00:01"),
            ("eth1", "52:54:00:00:00:02"),
        ] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
            std::fs::write(dir.path().join(name).join("address"), format!("{mac}\n")).unwrap();
        }
        let second: Mac = "52:54:00:00:00:02".parse().unwrap();
        assert_eq!(
            interface_with_mac(dir.path(), second).as_deref(),
            Some("eth1")
        );
        let absent: Mac = "52:54:00:00:00:03".parse().unwrap();
        assert_eq!(interface_with_mac(dir.path(), absent), None);
    }

    #[test]
    fn role_and_credential_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join("lbfleet"));
        assert!(state.load_role().unwrap().is_none());
        assert!(state.load_credential().unwrap().is_none());
        let role = RoleDocument {
            reboot_generation: 0,
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
