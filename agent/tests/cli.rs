//! The agent's command line: secrets given through the environment never show in `--help`.
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
