//! Network namespaces and links for the lab, through iproute2. A [`Netns`] deletes itself on drop; deleting a
//! namespace removes every interface inside it (bridges, taps, veth ends; a veth pair dies with either end).

use std::process::{Command, Output, Stdio};

use super::LabError;

/// A network namespace this process created; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `name` (callers put a unique suffix in it: see `lab::unique_suffix`).
    pub fn create(name: &str) -> Result<Netns, LabError> {
        run(Command::new("ip").args(["netns", "add", name]))?;
        Ok(Netns {
            name: name.to_owned(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<(), LabError> {
        run(Command::new("ip").args(["-n", &self.name]).args(args)).map(|_| ())
    }

    /// A command that runs `program` inside the namespace (`ip netns exec` execs it, so the child's PID is
    /// the program's own).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `argv` in the namespace and returns its output; a non-zero exit is an error.
    pub fn exec(&self, argv: &[&str]) -> Result<Output, LabError> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| LabError::Other("empty command".into()))?;
        run(self.command(program).args(args))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A veth pair: `a_name` in `a`, `b_name` in `b`, both down.
pub fn veth(a: &Netns, a_name: &str, b: &Netns, b_name: &str) -> Result<(), LabError> {
    a.ip(&[
        "link", "add", a_name, "type", "veth", "peer", "name", b_name, "netns", &b.name,
    ])
}

/// Runs `cmd`, turning a failure to start or a non-zero exit into `LabError::Command`.
pub fn run(cmd: &mut Command) -> Result<Output, LabError> {
    let command = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| LabError::Command {
            command: command.clone(),
            stderr: e.to_string(),
        })?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(LabError::Command {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// A process started in a namespace (a real server, a client load); killed by PID on drop.
#[derive(Debug)]
pub struct NsProcess {
    child: std::process::Child,
}

impl NsProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops it now (SIGKILL) and reaps it, e.g. a real server that must go away in a test.
    pub fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for NsProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Netns {
    /// Starts `argv` in the namespace in the background, output discarded.
    pub fn spawn(&self, argv: &[&str]) -> Result<NsProcess, LabError> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| LabError::Other("empty command".into()))?;
        let child = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| LabError::Command {
                command: argv.join(" "),
                stderr: e.to_string(),
            })?;
        Ok(NsProcess { child })
    }
}
