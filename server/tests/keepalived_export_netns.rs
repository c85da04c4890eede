//! keepalived itself accepts every export: the keepalived.conf of each member of each test cluster
//! (`GET /api/v1/clusters/{name}/keepalived?node=NAME`, the same text as `lbfleet-server export keepalived`)
//! passes `keepalived -t` (its configuration test: parse, check, exit; it starts nothing). keepalived's test
//! refuses interfaces the host lacks, so it runs in a network namespace of this test holding veth interfaces
//! with the clusters' names. Needs root, iproute2 and keepalived: a missing one fails the test (only outside CI
//! may `LBFLEET_SKIP=netns` skip it).

#![allow(clippy::unwrap_used)]

mod common;
mod keepalived_clusters;

use common::TestServer;
use lbfleet_tests::netns::{self, Netns};
use reqwest::StatusCode;

/// Runs `keepalived -t -f FILE` inside `ns`: (success, what it printed).
fn keepalived_test(ns: &Netns, file: &std::path::Path) -> (bool, String) {
    let out = ns
        .command("keepalived")
        .args(["-t", "-l", "-f", file.to_str().unwrap()])
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn keepalived_accepts_every_export() {
    if !netns::require(&["keepalived"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    keepalived_clusters::create_all(&srv).await;
    let ns = Netns::unique("lbka").unwrap();
    for i in ["eth0", "eth1", "eth2"] {
        ns.ip(&[
            "link",
            "add",
            i,
            "type",
            "veth",
            "peer",
            "name",
            &format!("{i}p"),
        ])
        .unwrap();
        ns.link_up(i).unwrap();
    }

    let mut checked = 0;
    for (name, _, members) in keepalived_clusters::clusters() {
        for (node, _, _, _) in members {
            let resp = srv
                .http
                .get(srv.url(&format!("/api/v1/clusters/{name}/keepalived?node={node}")))
                .bearer_auth(&srv.tokens.viewer)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let text = resp.text().await.unwrap();
            let file = dir.path().join(format!("{name}-{node}.conf"));
            std::fs::write(&file, &text).unwrap();
            let (ok, said) = keepalived_test(&ns, &file);
            assert!(
                ok,
                "keepalived -t refused the export of {name} for {node}:\n{said}\n{text}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 5, "every member of every test cluster");

    // The check is real: keepalived refuses a keyword it does not know and an interface the host lacks.
    let file = dir.path().join("web-lb-web-a.conf");
    let good = std::fs::read_to_string(&file).unwrap();
    for (bad, what) in [
        (
            good.replace("  lb_algo rr\n", "  lb_algo rr\n  no_such_keyword 1\n"),
            "an unknown keyword",
        ),
        (
            good.replace("interface eth0", "interface eth9"),
            "a missing interface",
        ),
    ] {
        assert_ne!(bad, good);
        let broken = dir.path().join("broken.conf");
        std::fs::write(&broken, &bad).unwrap();
        let (ok, said) = keepalived_test(&ns, &broken);
        assert!(!ok, "keepalived -t accepted {what}:\n{said}");
    }
    srv.stop().await;
}
