//! keepalived.conf import end to end: the `lbfleet-server import keepalived` command against a real database
//! (dry run, apply as one change, all or nothing, exit status by losslessness), `POST /api/v1/import/keepalived`
//! on the real server, the dashboard's import page (preview, apply, CSRF, role), and every sample Debian's
//! keepalived package ships; the export (`lbfleet-server export keepalived`, `GET .../keepalived`) read back by
//! the import gives every test cluster back.

#![allow(clippy::unwrap_used)]

mod common;
mod keepalived_clusters;

use std::path::Path;
use std::process::Command;

use common::{cluster_spec, db_url, TestServer, PASSWORD};
use reqwest::header::{COOKIE, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_lbfleet-server");

/// One file for a pair (lb1 active, lb2 backup), its services in an included file.
const MAIN: &str = r#"
global_defs {
  @lb1 router_id lb1
  @lb2 router_id lb2
}
vrrp_instance EXT {
  @lb1 state MASTER
  @lb2 state BACKUP
  interface eth0
  virtual_router_id 61
  @lb1 priority 150
  @lb2 priority 100
  virtual_ipaddress {
    198.18.0.40/32
  }
}
include conf.d/*.conf
"#;

const SERVICES: &str = r#"
$RS_CHECK= \
  TCP_CHECK { \
    connect_timeout 2 \
  }
virtual_server 198.18.0.40 80 {
  delay_loop 5
  lb_algo rr
  lb_kind NAT
  protocol TCP
  ~SEQ(N, 1, 3) real_server 198.18.2.${N} 8080 { $RS_CHECK }
}
"#;

fn write_site(dir: &Path, services: &str) -> String {
    std::fs::create_dir_all(dir.join("conf.d")).unwrap();
    std::fs::write(dir.join("keepalived.conf"), MAIN).unwrap();
    std::fs::write(dir.join("conf.d/web.conf"), services).unwrap();
    dir.join("keepalived.conf").display().to_string()
}

/// Runs the CLI: (exit code, stdout, stderr).
fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("LBFLEET_DATABASE")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn import(db: &str, file: &str, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec![
        "import",
        "keepalived",
        file,
        "--config-id",
        "lb1",
        "--config-id",
        "lb2",
        "--database",
        db,
    ];
    args.extend_from_slice(extra);
    cli(&args)
}

#[test]
fn cli_dry_run_then_apply_as_one_change() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_site(dir.path(), SERVICES);
    let db = db_url(&dir.path().join("lbfleet.db"));

    let (code, out, err) = import(&db, &file, &["--dry-run"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.starts_with("plan (dry run, nothing written):"), "{out}");
    assert!(out.contains("cluster.create cluster:ext"), "{out}");
    assert!(out.contains("node lb1: active with priority 150"), "{out}");
    assert!(out.contains("node lb2: backup with priority 100"), "{out}");
    assert!(
        out.contains("real server 198.18.2.3:8080 weight 1"),
        "{out}"
    );
    assert!(out.contains("lossless"), "{out}");

    // The dry run wrote nothing: the audit log is empty, and the same plan still creates.
    let (code, out, _) = cli(&["audit", "verify", "--database", &db]);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["rows"], 0);

    let (code, out, err) = import(&db, &file, &["--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["dry_run"], false);
    assert_eq!(report["clusters"][0]["action"], "cluster.create");
    assert_eq!(report["clusters"][0]["target"], "cluster:ext");
    let svc = &report["clusters"][0]["spec"]["services"][0];
    assert_eq!(svc["real_servers"].as_array().unwrap().len(), 3);
    assert_eq!(svc["check"]["kind"], "tcp");
    assert_eq!(svc["check"]["on_down"], "remove");
    let (_, out, _) = cli(&["audit", "verify", "--database", &db]);
    let audit: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (audit["ok"].as_bool(), audit["rows"].as_i64()),
        (Some(true), Some(1))
    );

    // Again: nothing changes.
    let (code, out, _) = import(&db, &file, &[]);
    assert_eq!(code, 0);
    assert!(out.contains("unchanged cluster:ext"), "{out}");
}

#[test]
fn exit_status_says_whether_the_import_was_lossless() {
    let dir = tempfile::tempdir().unwrap();
    let lossy = SERVICES.replace("lb_algo rr", "lb_algo rr\n  alpha\n  notify_up /bin/true");
    let file = write_site(dir.path(), &lossy);
    let db = db_url(&dir.path().join("lbfleet.db"));
    let (code, out, _) = import(&db, &file, &[]);
    assert_eq!(code, 2, "{out}");
    let web = dir.path().join("conf.d/web.conf").display().to_string();
    assert!(
        out.contains(&format!("{web}:9: alpha: lbfleet starts")),
        "{out}"
    );
    assert!(
        out.contains(&format!("{web}:10: notify_up /bin/true:")),
        "{out}"
    );
    assert!(out.contains("NOT lossless"), "{out}");
    // What could be imported was.
    assert!(out.contains("cluster.create cluster:ext"), "{out}");
}

#[test]
fn all_or_nothing_when_the_fleet_refuses_one_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let two = format!(
        "{MAIN}\nvrrp_instance INT {{\n interface eth1\n virtual_router_id 62\n virtual_ipaddress {{\n 198.18.0.41\n }}\n}}\n"
    );
    std::fs::write(dir.path().join("two.conf"), two).unwrap();
    std::fs::create_dir_all(dir.path().join("conf.d")).unwrap();
    let file = dir.path().join("two.conf").display().to_string();
    let db = db_url(&dir.path().join("lbfleet.db"));

    // Another cluster already owns the second cluster's VIP: nothing of the import may be written.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (path, tokens) = rt.block_on(async {
        let srv = TestServer::start(dir.path()).await;
        let (s, _) = srv
            .put(
                "/api/v1/clusters/other",
                &srv.tokens.admin,
                cluster_spec(70, "198.18.0.41"),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
        srv.stop().await
    });
    let (code, out, err) = import(&db, &file, &[]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("VIP 198.18.0.41 already belongs to cluster \"other\""),
        "{err}"
    );
    rt.block_on(async {
        let srv = TestServer::start_with(path, tokens, |_| {}).await;
        let (s, v) = srv.get("/api/v1/clusters", &srv.tokens.viewer).await;
        assert_eq!(s, StatusCode::OK);
        let names: Vec<&str> = v["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["other"],
            "the import's first cluster was not written either"
        );
        srv.stop().await;
    });
}

#[tokio::test]
async fn api_import_with_dry_run_then_apply() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    let body = |dry_run: bool| {
        json!({
            "files": [
                {"name": "keepalived.conf", "text": MAIN},
                {"name": "conf.d/web.conf", "text": SERVICES},
            ],
            "config_ids": ["lb1", "lb2"],
            "dry_run": dry_run,
        })
    };
    let (s, _) = srv
        .post("/api/v1/import/keepalived", &srv.tokens.viewer, body(true))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    let before = srv.audit_len().await;
    let (s, v) = srv
        .post(
            "/api/v1/import/keepalived",
            &srv.tokens.operator,
            body(true),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["dry_run"].as_bool(), v["lossless"].as_bool()),
        (Some(true), Some(true))
    );
    assert_eq!(v["clusters"][0]["action"], "cluster.create");
    assert_eq!(v["clusters"][0]["members"][0]["node"], "lb1");
    assert_eq!(srv.audit_len().await, before);
    let (s, _) = srv.get("/api/v1/clusters/ext", &srv.tokens.viewer).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let (s, v) = srv
        .post(
            "/api/v1/import/keepalived",
            &srv.tokens.operator,
            body(false),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(srv.audit_len().await, before + 1);
    let (s, c) = srv.get("/api/v1/clusters/ext", &srv.tokens.viewer).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(c["spec"]["vrid"], 61);
    assert_eq!(
        c["spec"]["services"][0]["real_servers"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // Bad requests: a name escaping the upload, a parse that does not end, no file.
    for (bad, want) in [
        (
            json!({"files": [{"name": "../x", "text": ""}]}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"files": [{"name": "k.conf", "text": "$A=x${A}\nv $A\n"}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (json!({"files": []}), StatusCode::BAD_REQUEST),
    ] {
        let (s, v) = srv
            .post(
                "/api/v1/import/keepalived",
                &srv.tokens.operator,
                bad.clone(),
            )
            .await;
        assert_eq!(s, want, "{bad}: {v}");
    }
    srv.stop().await;
}

/// Every sample Debian's keepalived package ships imports without a panic, and every directive it did not
/// import is named with a line of that file that holds it.
#[test]
fn every_shipped_sample_imports_or_names_what_it_did_not() {
    let samples = Path::new("/usr/share/doc/keepalived/samples");
    assert!(
        samples.is_dir(),
        "{} is missing: install keepalived (scripts/install-deps.sh)",
        samples.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let mut seen = 0;
    let mut entries: Vec<_> = std::fs::read_dir(samples)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("keepalived.conf") {
            continue;
        }
        seen += 1;
        let db = db_url(&dir.path().join(format!("{name}.db")));
        let (code, out, err) = cli(&[
            "import",
            "keepalived",
            path.to_str().unwrap(),
            "--config-id",
            "lb1",
            "--dry-run",
            "--json",
            "--database",
            &db,
        ]);
        assert!(code == 0 || code == 2, "{name}: exit {code}\n{err}");
        let report: Value = serde_json::from_str(&out).unwrap();
        let lines: Vec<String> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        let not = report["not_imported"].as_array().unwrap();
        assert_eq!(code == 0, not.is_empty(), "{name}");
        for n in not {
            let loc = n["loc"].as_str().unwrap();
            let (file, line) = loc.rsplit_once(':').unwrap();
            assert_eq!(file, path.to_str().unwrap(), "{name}: {n}");
            let text = &lines[line.parse::<usize>().unwrap() - 1];
            // The keyword, or for a service from a virtual_server_group its address on the group's line.
            let words: Vec<&str> = n["directive"]
                .as_str()
                .unwrap()
                .split_whitespace()
                .take(2)
                .collect();
            assert!(
                words.is_empty() || words.iter().any(|w| text.contains(w)),
                "{name}: line {line} ({text:?}) does not hold {words:?}"
            );
        }
    }
    assert!(seen >= 20, "only {seen} samples in {}", samples.display());
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The value of the first `name="csrf"` field of a page.
fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").unwrap() + "name=\"csrf\" value=\"".len();
    html[at..].split('"').next().unwrap().to_owned()
}

fn cookie_of(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap().to_owned())
        .unwrap()
}

/// Logs in to the dashboard: (session cookie, CSRF token of its forms).
async fn dashboard_login(srv: &TestServer, user: &str) -> (String, String) {
    let http = no_redirects();
    let page = http.get(srv.url("/login")).send().await.unwrap();
    let login_cookie = cookie_of(&page, "lbfleet_login_csrf");
    let csrf = csrf_of(&page.text().await.unwrap());
    let resp = http
        .post(srv.url("/login"))
        .header(COOKIE, login_cookie)
        .form(&[
            ("csrf", csrf.as_str()),
            ("username", user),
            ("password", PASSWORD),
            ("next", "/import"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let cookie = cookie_of(&resp, "lbfleet_session");
    let page = http
        .get(srv.url("/"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    (cookie.clone(), csrf_of(&page))
}

/// The `previewed` digest a preview page carries to its Apply button.
fn previewed_of(html: &str) -> String {
    let at =
        html.find("name=\"previewed\" value=\"").unwrap() + "name=\"previewed\" value=\"".len();
    html[at..].split('"').next().unwrap().to_owned()
}

async fn post_import(
    srv: &TestServer,
    cookie: &str,
    form: &[(&str, &str)],
) -> (StatusCode, String) {
    let resp = no_redirects()
        .post(srv.url("/import"))
        .header(COOKIE, cookie)
        .form(form)
        .send()
        .await
        .unwrap();
    (resp.status(), resp.text().await.unwrap())
}

/// The dashboard's import page: a preview (dry run) of the text box and the uploaded included files shows the
/// plan and every directive not imported with its file:line and writes nothing; apply writes it as one audited
/// change; the form needs the CSRF token and the operator role; bad uploads and refused plans say why.
#[tokio::test]
async fn dashboard_import_page_previews_then_applies() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    let lossy = SERVICES.replace("lb_algo rr", "lb_algo rr\n  alpha");
    let extra = json!([{"name": "conf.d/web.conf", "text": lossy}]).to_string();

    // A viewer sees the page without the form, and may not post it.
    let (view_cookie, view_csrf) = dashboard_login(&srv, "view").await;
    let page = no_redirects()
        .get(srv.url("/import"))
        .header(COOKIE, &view_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("Importing needs the operator role"), "{html}");
    assert!(!html.contains("id=\"import-form\""), "{html}");
    let (st, _) = post_import(
        &srv,
        &view_cookie,
        &[("csrf", &view_csrf), ("text", MAIN), ("action", "apply")],
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    let (cookie, csrf) = dashboard_login(&srv, "oper").await;
    let html = no_redirects()
        .get(srv.url("/import"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("id=\"import-form\""), "{html}");
    assert!(html.contains("href=\"/import\""), "the menu links the page");

    // Without the CSRF token: refused, nothing written.
    let before = srv.audit_len().await;
    let (st, _) = post_import(
        &srv,
        &cookie,
        &[("text", MAIN), ("extra_files", &extra), ("action", "apply")],
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    // Preview: the plan, what was not imported with its file:line, nothing written, and an Apply button.
    let form = |action: &'static str| {
        vec![
            ("csrf", csrf.clone()),
            ("text", MAIN.to_owned()),
            ("main_name", "keepalived.conf".to_owned()),
            ("config_ids", "lb1 lb2".to_owned()),
            ("extra_files", extra.clone()),
            ("action", action.to_owned()),
        ]
    };
    let preview = form("preview");
    let refs: Vec<(&str, &str)> = preview.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (st, html) = post_import(&srv, &cookie, &refs).await;
    assert_eq!(st, StatusCode::OK, "{html}");
    assert!(
        html.contains("Preview: 1 cluster(s), 1 directive(s) not imported"),
        "{html}"
    );
    assert!(html.contains("cluster.create cluster:ext"), "{html}");
    assert!(
        html.contains("node lb2: backup with priority 100"),
        "{html}"
    );
    assert!(html.contains("/upload/conf.d/web.conf:9"), "{html}");
    assert!(html.contains("id=\"import-apply\""), "{html}");
    assert!(html.contains("<li>conf.d/web.conf</li>"), "{html}");
    assert_eq!(srv.audit_len().await, before);
    let (s, _) = srv.get("/api/v1/clusters/ext", &srv.tokens.viewer).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let previewed = previewed_of(&html);
    assert_eq!(previewed.len(), 64, "{html}");

    // Apply takes exactly what was previewed: other config ids, or no preview at all, are refused.
    let mut changed = form("apply");
    changed.push(("previewed", previewed.clone()));
    changed[3].1 = "lb2 lb1".to_owned();
    let refs: Vec<(&str, &str)> = changed.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (st, html) = post_import(&srv, &cookie, &refs).await;
    assert_eq!(st, StatusCode::OK, "{html}");
    assert!(html.contains("changed since the preview"), "{html}");
    let unpreviewed = form("apply");
    let refs: Vec<(&str, &str)> = unpreviewed.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (_, html) = post_import(&srv, &cookie, &refs).await;
    assert!(
        html.contains("changed since the preview (or there was none)"),
        "{html}"
    );
    assert_eq!(srv.audit_len().await, before);

    // Apply: one audited change by the user; no Apply button any more.
    let mut apply = form("apply");
    apply.push(("previewed", previewed));
    let refs: Vec<(&str, &str)> = apply.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (st, html) = post_import(&srv, &cookie, &refs).await;
    assert_eq!(st, StatusCode::OK, "{html}");
    assert!(html.contains("Applied: 1 cluster(s)"), "{html}");
    assert!(!html.contains("id=\"import-apply\""), "{html}");
    assert_eq!(srv.audit_len().await, before + 1);
    let (s, c) = srv.get("/api/v1/clusters/ext", &srv.tokens.viewer).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(c["spec"]["vrid"], 61);
    let (_, audit) = srv.get("/api/v1/audit", &srv.tokens.viewer).await;
    let rows = audit["entries"].as_array().unwrap();
    assert!(
        rows.iter()
            .any(|r| r["actor"] == "oper" && r["action"] == "cluster.create"),
        "{audit}"
    );

    // A file name escaping the upload, an unreadable upload field and a plan the fleet refuses: the reason,
    // nothing written.
    let taken = MAIN.replace("198.18.0.40/32", "198.18.0.40/32\n 198.18.0.41");
    let (s, _) = srv
        .put(
            "/api/v1/clusters/other",
            &srv.tokens.admin,
            cluster_spec(70, "198.18.0.41"),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let before = srv.audit_len().await;
    let bad_name = json!([{"name": "../x.conf", "text": ""}]).to_string();
    for (text, extra_files, want) in [
        (MAIN, bad_name.as_str(), "must be a relative path without"),
        (MAIN, "{not json", "the uploaded files could not be read"),
        (
            taken.as_str(),
            "[]",
            "VIP 198.18.0.41 already belongs to cluster &#34;other&#34;",
        ),
        ("", "[]", "paste a keepalived.conf or load one"),
    ] {
        let (st, html) = post_import(
            &srv,
            &cookie,
            &[
                ("csrf", &csrf),
                ("text", text),
                ("config_ids", "lb1"),
                ("extra_files", extra_files),
                ("action", "preview"),
            ],
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{html}");
        assert!(html.contains("id=\"import-failure\""), "{html}");
        assert!(html.contains(want), "{want}: {html}");
    }
    assert_eq!(srv.audit_len().await, before);
    srv.stop().await;
}

/// Every test cluster's members exported (the CLI, and the API giving the same text), then both files imported
/// (a dry run against the same database): the same spec, "unchanged", the same members, nothing lost either way.
#[tokio::test]
async fn import_of_the_export_gives_every_test_cluster_back() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    keepalived_clusters::create_all(&srv).await;
    let db = db_url(&srv.db_path);
    for (name, _, members) in keepalived_clusters::clusters() {
        let (s, stored) = srv
            .get(&format!("/api/v1/clusters/{name}"), &srv.tokens.viewer)
            .await;
        assert_eq!(s, StatusCode::OK);
        let mut files = Vec::new();
        for (node, _, _, _) in &members {
            let out_file = dir.path().join(format!("{name}-{node}.conf"));
            let (code, out, err) = cli(&[
                "export",
                "keepalived",
                name,
                "--node",
                node,
                "--output",
                out_file.to_str().unwrap(),
                "--database",
                &db,
            ]);
            assert_eq!(code, 0, "{name} {node}: {out}\n{err}");
            let text = std::fs::read_to_string(&out_file).unwrap();
            assert!(text.contains(&format!("vrrp_instance {name} {{")), "{text}");
            // The API gives the same file.
            let resp = srv
                .http
                .get(srv.url(&format!("/api/v1/clusters/{name}/keepalived?node={node}")))
                .bearer_auth(&srv.tokens.viewer)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            assert_eq!(resp.headers()["x-lbfleet-not-exported"], "0");
            assert_eq!(resp.text().await.unwrap(), text, "{name} {node}");
            files.push(json!({"name": format!("{node}.conf"), "text": text}));
        }
        let mains: Vec<String> = members.iter().map(|m| format!("{}.conf", m.0)).collect();
        let (s, report) = srv
            .post(
                "/api/v1/import/keepalived",
                &srv.tokens.operator,
                json!({"files": files, "main": mains, "dry_run": true}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{name}: {report}");
        assert_eq!(report["not_imported"], json!([]), "{name}: {report}");
        assert_eq!(report["lossless"], true, "{name}");
        let clusters = report["clusters"].as_array().unwrap();
        assert_eq!(clusters.len(), 1, "{name}: {report}");
        let c = &clusters[0];
        assert_eq!(c["target"], format!("cluster:{name}"));
        assert_eq!(
            c["spec"],
            keepalived_clusters::comparable(stored["spec"].clone()),
            "{name}: the import of the export differs from the cluster"
        );
        assert_eq!(c["action"], "unchanged", "{name}: {report}");
        let mut got: Vec<(String, String, i64)> = c["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["node"].as_str().unwrap().to_owned(),
                    m["role"].as_str().unwrap().to_owned(),
                    m["priority"].as_i64().unwrap(),
                )
            })
            .collect();
        got.sort();
        let mut want: Vec<(String, String, i64)> = members
            .iter()
            .map(|(n, _, r, p)| (n.to_string(), r.to_string(), i64::from(*p)))
            .collect();
        want.sort();
        assert_eq!(got, want, "{name}: members");
    }

    // Not a member, an unknown cluster: said, nothing written.
    let (code, _, err) = cli(&[
        "export",
        "keepalived",
        "web",
        "--node",
        "lb-dr-a",
        "--database",
        &db,
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains(
            "node \"lb-dr-a\" is not a member of cluster \"web\" (members: lb-web-a, lb-web-b)"
        ),
        "{err}"
    );
    let resp = srv
        .http
        .get(srv.url("/api/v1/clusters/web/keepalived?node=lb-dr-a"))
        .bearer_auth(&srv.tokens.viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let (code, _, _) = cli(&[
        "export",
        "keepalived",
        "nope",
        "--node",
        "lb-dr-a",
        "--database",
        &db,
    ]);
    assert_eq!(code, 1);
    srv.stop().await;
}

/// What keepalived cannot express is named, in the file and on stderr, and the exit status says so.
#[tokio::test]
async fn export_names_what_keepalived_cannot_express() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    let mut spec = cluster_spec(71, "198.18.0.71");
    spec["services"][0]["check"]["rise"] = json!(3);
    spec["services"][0]["check"]["body_contains"] = json!("ok");
    let (s, v) = srv
        .put("/api/v1/clusters/lossy", &srv.tokens.operator, spec)
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    srv.enrolled_node("52:54:00:00:71:01", "lb-71").await;
    let (s, v) = srv
        .post(
            "/api/v1/nodes/lb-71/assign",
            &srv.tokens.operator,
            json!({"cluster": "lossy", "role": "active"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let db = db_url(&srv.db_path);
    let (code, out, err) = cli(&[
        "export",
        "keepalived",
        "lossy",
        "--node",
        "lb-71",
        "--database",
        &db,
    ]);
    assert_eq!(code, 2, "{out}\n{err}");
    for want in [
        "rise 3: keepalived marks a server up after one good check",
        "body_contains: keepalived's HTTP check has no counterpart",
    ] {
        assert!(
            out.contains(&format!(
                "# not exported: service tcp 198.18.0.71:80 real server 198.18.2.1:8080: {want}"
            )),
            "{out}"
        );
        assert!(err.contains(want), "{err}");
    }
    assert!(out.contains("virtual_server 198.18.0.71 80 {"), "{out}");
    srv.stop().await;
}

/// A site of 500 virtual servers (well over the 64 KiB an ordinary form or API body may have) imports through
/// the API and the dashboard's page: the import endpoints take bodies as large as a cluster PUT.
#[tokio::test]
async fn a_large_site_imports_through_the_api_and_the_page() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    let mut services = String::new();
    for port in 1000..1500u16 {
        services.push_str(&format!(
            "virtual_server 198.18.0.40 {port} {{\n  delay_loop 5\n  lb_algo rr\n  lb_kind NAT\n  protocol TCP\n  real_server 198.18.2.1 {port} {{\n    weight 1\n    TCP_CHECK {{\n      connect_timeout 2\n    }}\n  }}\n  real_server 198.18.2.2 {port} {{\n    weight 2\n    TCP_CHECK {{\n      connect_timeout 2\n    }}\n  }}\n}}\n"
        ));
    }
    assert!(services.len() > 128 * 1024, "{} bytes", services.len());
    let (s, v) = srv
        .post(
            "/api/v1/import/keepalived",
            &srv.tokens.operator,
            json!({
                "files": [
                    {"name": "keepalived.conf", "text": MAIN},
                    {"name": "conf.d/web.conf", "text": services},
                ],
                "config_ids": ["lb1"],
                "dry_run": true,
            }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["clusters"][0]["spec"]["services"]
            .as_array()
            .unwrap()
            .len(),
        500
    );

    let (cookie, csrf) = dashboard_login(&srv, "oper").await;
    let extra = json!([{"name": "conf.d/web.conf", "text": services}]).to_string();
    let mut form = vec![
        ("csrf", csrf.as_str()),
        ("text", MAIN),
        ("config_ids", "lb1"),
        ("extra_files", extra.as_str()),
        ("action", "preview"),
    ];
    let (st, html) = post_import(&srv, &cookie, &form).await;
    assert_eq!(st, StatusCode::OK, "{html}");
    let previewed = previewed_of(&html);
    form[4].1 = "apply";
    form.push(("previewed", previewed.as_str()));
    let (st, html) = post_import(&srv, &cookie, &form).await;
    assert_eq!(st, StatusCode::OK, "{html}");
    assert!(html.contains("Applied: 1 cluster(s), lossless"), "{html}");
    let (s, c) = srv.get("/api/v1/clusters/ext", &srv.tokens.viewer).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(c["spec"]["services"].as_array().unwrap().len(), 500);
    srv.stop().await;
}
