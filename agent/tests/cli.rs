//! The agent's command line: secrets given through the environment never show in `--help`; `bootargs` output
//! for `/init`.
#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn help_never_prints_secrets_from_the_environment() {
    for sub in ["run", "fetch-role"] {
        let out = Command::new(env!("CARGO_BIN_EXE_lbfleet-agent"))
            .args([sub, "--help"])
            .env("LBFLEET_TOKEN", "lbf_enr_do_not_print")
            .env("LBFLEET_CREDENTIAL", "lbf_node_do_not_print")
            .env("LBFLEET_SERVER", "http://198.18.0.1:8080")
            .output()
            .unwrap();
        assert!(out.status.success(), "{sub} --help failed");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("LBFLEET_TOKEN"), "{sub}: {text}");
        assert!(
            !text.contains("do_not_print"),
            "{sub} --help shows a secret:\n{text}"
        );
        // Non-secret values may show.
        assert!(text.contains("http://198.18.0.1:8080"), "{sub}: {text}");
    }
}

/// `/init` evaluates `lbfleet-agent bootargs` in its shell: the output must be assignments a shell reads back
/// to the same values, and never carry the token.
#[test]
fn bootargs_prints_shell_assignments_without_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let cmdline = dir.path().join("cmdline");
    std::fs::write(
        &cmdline,
        "console=ttyS0 BOOTIF=01-52-54-00-12-34-56 lbfleet.server=http://198.18.0.1:8080 \
         lbfleet.token=lbf_enr_secret lbfleet.image=2026.11.30 quiet\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lbfleet-agent"))
        .args(["bootargs", "--cmdline"])
        .arg(&cmdline)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains("lbf_enr_secret"), "{text}");
    let script = format!(
        "{text}\necho \"$BOOTARG_MAC|$BOOTARG_SERVER|$BOOTARG_IMAGE|$BOOTARG_SERVER_CERT|$BOOTARG_TOKEN_GIVEN\""
    );
    let shell = Command::new("sh").args(["-c", &script]).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&shell.stdout),
        "52:54:00:12:34:56|http://198.18.0.1:8080|2026.11.30||yes\n"
    );
    // A malformed BOOTIF fails loudly instead of leaving /init without a boot NIC.
    std::fs::write(&cmdline, "BOOTIF=01-52-54-00").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lbfleet-agent"))
        .args(["bootargs", "--cmdline"])
        .arg(&cmdline)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("BOOTIF"));
}
