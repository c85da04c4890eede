//! Component tests of the dashboard over plain HTTP (no browser): login, cookies, CSRF, roles, escaping,
//! security headers, audit export.

#![allow(clippy::unwrap_used)]

mod common;

use common::{cluster_spec, TestServer, PASSWORD};
use reqwest::header::{CONTENT_SECURITY_POLICY, COOKIE, LOCATION, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::json;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The value of the first `name="csrf"` field in a page.
fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").unwrap() + "name=\"csrf\" value=\"".len();
    html[at..].split('"').next().unwrap().to_owned()
}

fn cookie_pair(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap().to_owned())
}

/// A logged-in dashboard session: the cookie header and the CSRF token of its forms.
struct Session {
    cookie: String,
    csrf: String,
}

async fn try_login(srv: &TestServer, user: &str, password: &str) -> reqwest::Response {
    let http = client();
    let page = http.get(srv.url("/login")).send().await.unwrap();
    let login_cookie = cookie_pair(&page, "lbfleet_login_csrf").unwrap();
    let csrf = csrf_of(&page.text().await.unwrap());
    http.post(srv.url("/login"))
        .header(COOKIE, login_cookie)
        .form(&[
            ("csrf", csrf.as_str()),
            ("username", user),
            ("password", password),
            ("next", "/nodes"),
        ])
        .send()
        .await
        .unwrap()
}

async fn login(srv: &TestServer, user: &str) -> Session {
    let resp = try_login(srv, user, PASSWORD).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()[LOCATION], "/nodes");
    let set = resp
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("lbfleet_session="))
        .unwrap()
        .to_owned();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_owned();
    let page = client()
        .get(srv.url("/"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let csrf = csrf_of(&page.text().await.unwrap());
    Session { cookie, csrf }
}

async fn get_page(srv: &TestServer, s: &Session, path: &str) -> (StatusCode, String) {
    let resp = client()
        .get(srv.url(path))
        .header(COOKIE, &s.cookie)
        .send()
        .await
        .unwrap();
    (resp.status(), resp.text().await.unwrap())
}

async fn post_form(
    srv: &TestServer,
    s: &Session,
    path: &str,
    form: &[(&str, &str)],
) -> reqwest::Response {
    client()
        .post(srv.url(path))
        .header(COOKIE, &s.cookie)
        .form(form)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn pages_need_a_session_and_carry_security_headers() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    let resp = client()
        .get(srv.url("/nodes?state=ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        resp.headers()[LOCATION],
        "/login?next=%2Fnodes%3Fstate%3Dready"
    );
    let resp = client()
        .post(srv.url("/nodes/1/approve"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    let s = login(&srv, "view").await;
    for path in [
        "/",
        "/nodes",
        "/discovered",
        "/clusters",
        "/audit",
        "/events",
        "/login",
    ] {
        let resp = client()
            .get(srv.url(path))
            .header(COOKIE, &s.cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let csp = resp.headers()[CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert_eq!(resp.headers()["x-frame-options"], "DENY");
        assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
        let html = resp.text().await.unwrap();
        assert!(!html.contains("<script>"), "{path} has an inline script");
        assert!(!html.contains(" style="), "{path} has an inline style");
    }
    // The events filter offers every kind of event (from the enum, not a list that falls behind it).
    let (_, html) = get_page(&srv, &s, "/events").await;
    for kind in [
        "boot_script",
        "reenrolled_while_alive",
        "vrrp",
        "discovered",
    ] {
        assert!(
            html.contains(&format!("<option value=\"{kind}\"")),
            "{kind}"
        );
    }
    // Users and tokens are for admins only.
    assert_eq!(get_page(&srv, &s, "/users").await.0, StatusCode::FORBIDDEN);
    let admin = login(&srv, "admin").await;
    let (st, html) = get_page(&srv, &admin, "/users").await;
    assert_eq!(st, StatusCode::OK);
    assert!(html.contains("API tokens") && html.contains("oper"));
}

#[tokio::test]
async fn forms_need_the_csrf_token_and_the_role() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    let (st, v) = srv
        .post(
            "/api/v1/nodes",
            &srv.tokens.operator,
            json!({"mac": "52:54:00:00:00:01", "hostname": "lb-01"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let (st, _) = srv
        .put(
            "/api/v1/clusters/ext",
            &srv.tokens.operator,
            cluster_spec(51, "198.18.0.10"),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let audit_before = srv.audit_len().await;

    let viewer = login(&srv, "view").await;
    let (_, html) = get_page(&srv, &viewer, "/clusters/ext").await;
    assert!(
        !html.contains("Drain") && !html.contains("Assign a node"),
        "viewer sees no buttons"
    );
    let assign = [
        ("csrf", viewer.csrf.as_str()),
        ("cluster", "ext"),
        ("role", "active"),
        ("back", "/"),
    ];
    let resp = post_form(&srv, &viewer, "/nodes/lb-01/assign", &assign).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(resp.text().await.unwrap().contains("operator role"));

    let op = login(&srv, "oper").await;
    let no_token = [("cluster", "ext"), ("role", "active")];
    let resp = post_form(&srv, &op, "/nodes/lb-01/assign", &no_token).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let wrong = [
        ("csrf", viewer.csrf.as_str()),
        ("cluster", "ext"),
        ("role", "active"),
    ];
    let resp = post_form(&srv, &op, "/nodes/lb-01/assign", &wrong).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        srv.audit_len().await,
        audit_before,
        "refused forms change nothing"
    );

    let ok = [
        ("csrf", op.csrf.as_str()),
        ("cluster", "ext"),
        ("role", "active"),
        ("back", "/clusters/ext"),
    ];
    let resp = post_form(&srv, &op, "/nodes/lb-01/assign", &ok).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()[LOCATION], "/clusters/ext");
    let (_, v) = srv.get("/api/v1/nodes/lb-01", &srv.tokens.viewer).await;
    assert_eq!(
        (v["cluster"].as_str(), v["role"].as_str()),
        (Some("ext"), Some("active"))
    );
    assert_eq!(srv.audit_len().await, audit_before + 1);

    // A refusal by the fleet's rules comes back as a message on the page, and changes nothing.
    let resp = post_form(
        &srv,
        &op,
        "/nodes/lb-01/assign",
        &[
            ("csrf", op.csrf.as_str()),
            ("cluster", "nope"),
            ("role", "backup"),
            ("back", "/clusters/ext"),
        ],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let flash = cookie_pair(&resp, "lbfleet_flash").unwrap();
    let page = client()
        .get(srv.url("/clusters/ext"))
        .header(COOKIE, format!("{}; {flash}", op.cookie))
        .send()
        .await
        .unwrap();
    let html = page.text().await.unwrap();
    assert!(
        html.contains("no cluster named &#34;nope&#34;")
            || html.contains("no cluster named &quot;nope&quot;"),
        "{html}"
    );

    // Logging out ends the session.
    let resp = post_form(&srv, &op, "/logout", &[("csrf", op.csrf.as_str())]).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(get_page(&srv, &op, "/").await.0, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn login_form_is_rate_limited_and_has_its_own_csrf_token() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    let resp = client()
        .post(srv.url("/login"))
        .form(&[("username", "admin"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::FORBIDDEN,
        "a login form without its token"
    );
    for _ in 0..5 {
        assert_eq!(
            try_login(&srv, "oper", "wrong").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let resp = try_login(&srv, "oper", PASSWORD).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp
        .text()
        .await
        .unwrap()
        .contains("Too many failed logins"));
}

#[tokio::test]
async fn markup_in_stored_values_renders_as_text() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    // An API token's name carries the markup into the audit log (an image cmdline no longer can: issue 13
    // limits it to kernel-argument characters).
    let payload = "<script>alert('xss')</script><img src=x onerror=alert(1)>";
    let (st, v) = srv
        .post(
            "/api/v1/tokens",
            &srv.tokens.admin,
            json!({"user": "view", "name": payload}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let s = login(&srv, "view").await;
    let (_, html) = get_page(&srv, &s, "/audit").await;
    assert!(
        html.contains("&#60;script&#62;alert(&#39;xss&#39;)&#60;/script&#62;"),
        "{html}"
    );
    assert!(!html.contains("<script>alert") && !html.contains("<img src=x"));
    let (_, html) = get_page(&srv, &s, "/audit?actor=%3Cscript%3E").await;
    assert!(
        html.contains("value=\"&#60;script&#62;\""),
        "filters echo escaped"
    );
}

#[tokio::test]
async fn audit_page_filters_verifies_and_exports() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    let (st, _) = srv
        .put(
            "/api/v1/clusters/ext",
            &srv.tokens.operator,
            cluster_spec(51, "198.18.0.10"),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let s = login(&srv, "view").await;
    let (_, html) = get_page(&srv, &s, "/audit?action=cluster.create").await;
    assert!(html.contains("Chain verified"), "{html}");
    assert!(html.contains("cluster:ext") && !html.contains("user:view"));
    assert!(
        html.contains("198.18.0.10/32"),
        "the diff shows the new VIP"
    );

    let resp = client()
        .get(srv.url("/audit/export.csv?target=cluster%3A"))
        .header(COOKIE, &s.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let csv = resp.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 2, "{csv}");
    assert!(lines[0].starts_with("seq,at,time,actor,action,target"));
    assert!(lines[1].contains("\"cluster.create\"") && lines[1].contains("\"oper\""));

    let resp = client()
        .get(srv.url("/audit/export.json"))
        .header(COOKIE, &s.cookie)
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = resp.json().await.unwrap();
    let entries = v["entries"].as_array().unwrap();
    assert_eq!(entries.len(), srv.audit_len().await);
    assert_eq!(entries[0]["action"], "cluster.create");
    assert_eq!(entries[0]["after"]["vrid"], 51);
}

/// The export streams from one database cursor instead of building the whole log in memory: a log of 20,000
/// rows comes back complete, newest first, every row chained to the next, as a chunked body (no
/// Content-Length: the server never held the whole export), in CSV and JSON and filtered.
#[tokio::test]
async fn audit_export_streams_every_row_of_a_long_log() {
    const ROWS: usize = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("lbfleet.db");
    let tokens = common::seed(&db_path).await;
    // Rows of an action the seed never writes, straight through the store (as a long-lived site would have).
    let store = lbfleet_server::store::Store::open(&common::db_url(&db_path))
        .await
        .unwrap();
    let mut tx = store.begin().await.unwrap();
    for i in 0..ROWS {
        lbfleet_server::store::audit::append(
            &mut tx,
            "bulk",
            lbfleet_server::audit::AuditAction::ImageCreate,
            &format!("node:n{i}"),
            None,
            Some(&json!({"i": i, "note": "a \"quoted\", comma'd value"})),
        )
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    store.close().await;
    let srv = TestServer::start_with(db_path, tokens, |_| {}).await;
    let total = {
        let (_, v) = srv.get("/api/v1/audit?limit=1", &srv.tokens.admin).await;
        usize::try_from(v["entries"][0]["seq"].as_i64().unwrap()).unwrap()
    };
    assert!(total > ROWS);
    let s = login(&srv, "view").await;
    let fetch = |path: &'static str| {
        let (url, cookie) = (srv.url(path), s.cookie.clone());
        async move {
            let resp = client()
                .get(url)
                .header(COOKIE, cookie)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            assert!(
                resp.headers().get("content-length").is_none(),
                "{path}: the export is streamed, not buffered: {:?}",
                resp.headers()
            );
            resp.text().await.unwrap()
        }
    };

    // CSV: (seq, prev_hash, hash) of every line; before/after hold commas and quotes, so read from both ends.
    let links = |csv: &str| -> Vec<(usize, String, String)> {
        let mut lines = csv.split("\r\n");
        assert!(lines.next().unwrap().starts_with("seq,at,time,actor"));
        lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let seq = l[1..].split('"').next().unwrap().parse().unwrap();
                let mut tail = l.rsplitn(3, "\",\"");
                let hash = tail.next().unwrap().trim_end_matches('"').to_owned();
                let prev = tail.next().unwrap().to_owned();
                (seq, prev, hash)
            })
            .collect()
    };
    let rows = links(&fetch("/audit/export.csv").await);
    assert_eq!(rows.len(), total, "every row is exported");
    for (i, w) in rows.windows(2).enumerate() {
        assert_eq!(w[0].0, total - i, "newest first, none missing");
        assert_eq!(
            w[0].1, w[1].2,
            "row {} is chained to row {}",
            w[0].0, w[1].0
        );
    }
    let filtered = links(&fetch("/audit/export.csv?action=image.create").await);
    assert_eq!(filtered.len(), ROWS);

    let v: serde_json::Value = serde_json::from_str(&fetch("/audit/export.json").await).unwrap();
    let entries = v["entries"].as_array().unwrap();
    assert_eq!(entries.len(), total);
    assert_eq!(entries[0]["seq"].as_u64(), Some(total as u64));
    assert_eq!(entries[total - 1]["seq"], 1);
    let bulk: Vec<_> = entries
        .iter()
        .filter(|e| e["action"] == "image.create")
        .collect();
    assert_eq!(bulk.len(), ROWS);
    assert_eq!(bulk[0]["after"]["i"].as_u64(), Some(ROWS as u64 - 1));
    assert_eq!(bulk[0]["after"]["note"], "a \"quoted\", comma'd value");
    for w in entries.windows(2) {
        assert_eq!(w[0]["prev_hash"], w[1]["hash"]);
    }
}

/// Issue 14: the dashboard shows the registered images and lets an operator change an approved node's image
/// (what the API's `PUT /nodes/{node}/image` does), audited under the operator's name; viewers see the images
/// but no form, and their posts are refused.
#[tokio::test]
async fn images_page_and_changing_a_nodes_image_after_approval() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    let admin = srv.tokens.admin.clone();
    for (name, default) in [("2026.11.1", true), ("2026.12.0", false)] {
        let (st, v) = srv
            .put(
                &format!("/api/v1/images/{name}"),
                &admin,
                json!({"kernel": "vmlinuz", "initrd": "initrd.img", "default": default,
                       "cmdline": "console=ttyS0"}),
            )
            .await;
        assert!(st.is_success(), "{st} {v}");
    }
    let (st, v) = srv
        .post(
            "/api/v1/nodes",
            &srv.tokens.operator,
            json!({"mac": "52:54:00:dd:00:01", "hostname": "lb-01"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let id = v["id"].as_i64().unwrap();
    assert_eq!(v["state"], "ready", "{v}");

    let view = login(&srv, "view").await;
    let (st, html) = get_page(&srv, &view, "/images").await;
    assert_eq!(st, StatusCode::OK);
    let row = |html: &str, name: &str| -> String {
        let at = html
            .find(&format!("<tr data-image=\"{name}\">"))
            .unwrap_or_else(|| panic!("no row for {name}:\n{html}"));
        html[at..].split("</tr>").next().unwrap().to_owned()
    };
    let nodes_of = |row: &str| -> String {
        row.split("class=\"nodes\">")
            .nth(1)
            .unwrap()
            .split('<')
            .next()
            .unwrap()
            .to_owned()
    };
    let first = row(&html, "2026.11.1");
    assert!(
        first.contains("default") && first.contains("console=ttyS0"),
        "{first}"
    );
    assert_eq!(nodes_of(&first), "1", "lb-01 boots the default: {first}");
    assert_eq!(nodes_of(&row(&html, "2026.12.0")), "0");
    assert!(html.contains("href=\"/images\" aria-current=\"page\""));
    let (_, html) = get_page(&srv, &view, &format!("/nodes/{id}")).await;
    assert!(
        !html.contains("id=\"node-image\""),
        "no image form for a viewer"
    );
    let resp = post_form(
        &srv,
        &view,
        &format!("/nodes/{id}/image"),
        &[("csrf", view.csrf.as_str()), ("image", "2026.12.0")],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);

    let op = login(&srv, "oper").await;
    let (_, html) = get_page(&srv, &op, &format!("/nodes/{id}")).await;
    let form = html
        .split("id=\"node-image\"")
        .nth(1)
        .unwrap_or_else(|| panic!("an image form on an approved node's page:\n{html}"))
        .split("</form>")
        .next()
        .unwrap()
        .to_owned();
    assert!(
        form.contains("<option value=\"\" selected>default</option>")
            && form.contains("<option value=\"2026.12.0\">2026.12.0</option>"),
        "{form}"
    );
    let resp = post_form(
        &srv,
        &op,
        &format!("/nodes/{id}/image"),
        &[
            ("csrf", op.csrf.as_str()),
            ("image", "2026.12.0"),
            ("back", &format!("/nodes/{id}")),
        ],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()[LOCATION], format!("/nodes/{id}").as_str());
    let (_, v) = srv.get("/api/v1/nodes/lb-01", &srv.tokens.viewer).await;
    assert_eq!(v["image"], "2026.12.0", "{v}");
    let (_, html) = get_page(&srv, &op, &format!("/nodes/{id}")).await;
    assert!(
        html.contains("<option value=\"2026.12.0\" selected>2026.12.0</option>"),
        "the form shows the node's image"
    );
    let (_, html) = get_page(&srv, &op, "/images").await;
    assert_eq!(nodes_of(&row(&html, "2026.12.0")), "1");
    assert_eq!(nodes_of(&row(&html, "2026.11.1")), "0");
    let (_, v) = srv
        .get("/api/v1/audit?action=node.image", &srv.tokens.admin)
        .await;
    let e = &v["entries"][0];
    assert_eq!(
        (&e["actor"], &e["target"], &e["after"]["image"]),
        (&json!("oper"), &json!("node:lb-01"), &json!("2026.12.0")),
        "{v}"
    );

    // An unknown image is refused with a message; an empty choice goes back to the default.
    let resp = post_form(
        &srv,
        &op,
        &format!("/nodes/{id}/image"),
        &[("csrf", op.csrf.as_str()), ("image", "no-such-image")],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let (_, v) = srv.get("/api/v1/nodes/lb-01", &srv.tokens.viewer).await;
    assert_eq!(v["image"], "2026.12.0");
    let resp = post_form(
        &srv,
        &op,
        &format!("/nodes/{id}/image"),
        &[("csrf", op.csrf.as_str()), ("image", "")],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let (_, v) = srv.get("/api/v1/nodes/lb-01", &srv.tokens.viewer).await;
    assert_eq!(v["image"], serde_json::Value::Null, "{v}");
}

#[tokio::test]
async fn cluster_form_shows_validation_next_to_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    let op = login(&srv, "oper").await;
    let resp = post_form(
        &srv,
        &op,
        "/clusters",
        &[
            ("csrf", op.csrf.as_str()),
            ("name", "ext"),
            ("vrid", "0"),
            ("interface", "eth0"),
            ("vrrp_version", "3"),
            ("advert_interval_ms", "1000"),
            ("vips", "198.18.0.10/32"),
        ],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let html = resp.text().await.unwrap();
    let err = html.split("id=\"c-vrid-err\">").nth(1).unwrap();
    assert!(err.starts_with("must be 1 to 255"), "{err}");
    assert!(html.contains(
        "id=\"c-vrid\" name=\"vrid\" inputmode=\"numeric\" value=\"0\" aria-invalid=\"true\""
    ));

    let resp = post_form(
        &srv,
        &op,
        "/clusters",
        &[
            ("csrf", op.csrf.as_str()),
            ("name", "ext"),
            ("vrid", "51"),
            ("interface", "eth0"),
            ("vrrp_version", "3"),
            ("advert_interval_ms", "1000"),
            ("preempt", "on"),
            ("vips", "198.18.0.10/32"),
        ],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let resp = post_form(
        &srv,
        &op,
        "/clusters/ext/services",
        &[
            ("csrf", op.csrf.as_str()),
            ("vip", "198.18.0.10"),
            ("port", "80"),
            ("protocol", "tcp"),
            ("scheduler", "wrr"),
            ("forward", "nat"),
            ("check_kind", "http"),
            ("check_path", "/healthz"),
            ("check_status", "200"),
        ],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let resp = post_form(
        &srv,
        &op,
        "/clusters/ext/real-servers",
        &[
            ("csrf", op.csrf.as_str()),
            ("service", "tcp:198.18.0.10:80"),
            ("address", "198.18.2.1"),
            ("port", "8080"),
            ("weight", "3"),
        ],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let (_, v) = srv.get("/api/v1/clusters/ext", &srv.tokens.viewer).await;
    assert_eq!(v["spec"]["services"][0]["check"]["path"], "/healthz");
    assert_eq!(v["spec"]["services"][0]["real_servers"][0]["weight"], 3);
    let resp = post_form(
        &srv,
        &op,
        "/clusters/ext/real-servers/weight",
        &[
            ("csrf", op.csrf.as_str()),
            ("service", "tcp:198.18.0.10:80"),
            ("rs", "198.18.2.1:8080"),
            ("weight", "70000"),
        ],
    )
    .await;
    assert_eq!(
        resp.status(),
        StatusCode::SEE_OTHER,
        "refusals come back as a message"
    );
    let resp = post_form(
        &srv,
        &op,
        "/clusters/ext/real-servers/weight",
        &[
            ("csrf", op.csrf.as_str()),
            ("service", "tcp:198.18.0.10:80"),
            ("rs", "198.18.2.1:8080"),
            ("weight", "7"),
        ],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let (_, v) = srv.get("/api/v1/clusters/ext", &srv.tokens.viewer).await;
    assert_eq!(v["spec"]["services"][0]["real_servers"][0]["weight"], 7);
    let (_, html) = get_page(&srv, &op, "/clusters/ext").await;
    assert!(html.contains("aria-label=\"Weight of 198.18.2.1:8080\""));

    // Edit the service's scheduler and check; its real servers stay.
    let resp = post_form(
        &srv,
        &op,
        "/clusters/ext/services/edit",
        &[
            ("csrf", op.csrf.as_str()),
            ("service", "tcp:198.18.0.10:80"),
            ("scheduler", "rr"),
            ("forward", "nat"),
            ("persistence_s", "300"),
            ("check_kind", "tcp"),
            ("check_path", ""),
            ("check_status", ""),
        ],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let (_, v) = srv.get("/api/v1/clusters/ext", &srv.tokens.viewer).await;
    let svc = &v["spec"]["services"][0];
    assert_eq!(
        (svc["scheduler"].as_str(), svc["check"]["kind"].as_str()),
        (Some("rr"), Some("tcp"))
    );
    assert_eq!(svc["persistence_s"], 300);
    assert_eq!(svc["real_servers"][0]["weight"], 7);
}

#[tokio::test]
async fn live_stream_says_changed_and_ends_when_the_server_stops() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    let s = login(&srv, "view").await;
    let resp = client().get(srv.url("/live")).send().await.unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::SEE_OTHER,
        "the stream needs a session"
    );
    let mut resp = client()
        .get(srv.url("/live"))
        .header(COOKIE, &s.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut seen = String::new();
    while !seen.contains("event: hello") {
        seen.push_str(&String::from_utf8_lossy(
            &resp.chunk().await.unwrap().unwrap(),
        ));
    }
    let (st, _) = srv
        .post(
            "/api/v1/nodes",
            &srv.tokens.operator,
            json!({"mac": "52:54:00:00:00:07"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while !seen.contains("event: changed") {
        let chunk = tokio::time::timeout_at(deadline.into(), resp.chunk())
            .await
            .expect("a changed event within 1 s")
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    // An open stream must not hold up a graceful stop.
    tokio::time::timeout(std::time::Duration::from_secs(10), srv.stop())
        .await
        .expect("the server stops with a live stream open");
    let rest = tokio::time::timeout(std::time::Duration::from_secs(5), resp.chunk())
        .await
        .expect("the stream ends");
    assert!(matches!(rest, Ok(None) | Err(_)), "{rest:?}");
}

/// The value of the settings form's hidden `revision` input.
fn revision_of(html: &str) -> String {
    html.split("name=\"revision\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("no revision input in page"))
        .to_owned()
}

#[tokio::test]
async fn settings_form_never_overwrites_a_change_made_after_the_page_was_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    let (s, v) = srv
        .put(
            "/api/v1/clusters/ext",
            &srv.tokens.operator,
            common::cluster_spec(51, "198.18.0.10"),
        )
        .await;
    assert!(s.is_success(), "{v}");
    let op = login(&srv, "oper").await;
    let (_, page) = get_page(&srv, &op, "/clusters/ext").await;
    let shown = revision_of(&page);

    // Another operator changes the cluster through the API.
    let (s, v) = srv
        .put(
            "/api/v1/clusters/ext/services/tcp:198.18.0.10:80/real-servers/198.18.2.1:8080/weight",
            &srv.tokens.operator,
            json!({"weight": 9}),
        )
        .await;
    assert!(s.is_success(), "{v}");

    let settings = |revision: String| {
        vec![
            ("csrf", op.csrf.clone()),
            ("revision", revision),
            ("vrid", "51".to_owned()),
            ("interface", "eth0".to_owned()),
            ("vrrp_version", "3".to_owned()),
            ("advert_interval_ms", "300".to_owned()),
            ("preempt", "on".to_owned()),
            ("vips", "198.18.0.10/32".to_owned()),
        ]
    };
    let form = settings(shown.clone());
    let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let resp = post_form(&srv, &op, "/clusters/ext/settings", &pairs).await;
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let html = resp.text().await.unwrap();
    assert!(
        html.contains("was changed by someone else since this page was loaded"),
        "{html}"
    );
    // The operator's input is kept, the page now carries the current revision, and nothing was written.
    assert!(html.contains("value=\"300\""));
    let fresh = revision_of(&html);
    assert_ne!(fresh, shown);
    let (_, c) = srv.get("/api/v1/clusters/ext", &srv.tokens.operator).await;
    assert_eq!(c["spec"]["advert_interval_ms"], 100, "{c}");
    assert_eq!(c["spec"]["services"][0]["real_servers"][0]["weight"], 9);

    // Saving again from the fresh page goes through and keeps the other operator's weight.
    let form = settings(fresh);
    let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let resp = post_form(&srv, &op, "/clusters/ext/settings", &pairs).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let (_, c) = srv.get("/api/v1/clusters/ext", &srv.tokens.operator).await;
    assert_eq!(c["spec"]["advert_interval_ms"], 300, "{c}");
    assert_eq!(c["spec"]["services"][0]["real_servers"][0]["weight"], 9);
}

/// Issue 13: after login, only local paths are followed; anything a browser would read as another site goes to
/// `/`.
#[tokio::test]
async fn login_redirects_only_to_local_paths() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    for (next, expected) in [
        ("/\t/evil.example", "/"),
        ("//evil", "/"),
        ("/\\evil", "/"),
        ("/\n/evil.example", "/"),
        ("https://evil.example/", "/"),
        ("/ /evil", "/"),
        ("/clusters/ext?tab=1", "/clusters/ext?tab=1"),
    ] {
        let http = client();
        let page = http.get(srv.url("/login")).send().await.unwrap();
        let login_cookie = cookie_pair(&page, "lbfleet_login_csrf").unwrap();
        let csrf = csrf_of(&page.text().await.unwrap());
        let resp = http
            .post(srv.url("/login"))
            .header(COOKIE, login_cookie)
            .form(&[
                ("csrf", csrf.as_str()),
                ("username", "view"),
                ("password", PASSWORD),
                ("next", next),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::SEE_OTHER, "{next:?}");
        assert_eq!(resp.headers()[LOCATION], expected, "{next:?}");
    }
}

/// Issue 13: the live stream ends when its session ends (here: logout), not only when the server stops.
#[tokio::test]
async fn live_stream_ends_on_logout() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    let s = login(&srv, "view").await;
    let mut resp = client()
        .get(srv.url("/live"))
        .header(COOKIE, &s.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut seen = String::new();
    while !seen.contains("event: hello") {
        seen.push_str(&String::from_utf8_lossy(
            &resp.chunk().await.unwrap().unwrap(),
        ));
    }
    let out = post_form(&srv, &s, "/logout", &[("csrf", s.csrf.as_str())]).await;
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let next = tokio::time::timeout_at(deadline.into(), resp.chunk())
            .await
            .expect("the stream ends within 10 s of the logout");
        match next {
            Ok(Some(_)) => continue, // keep-alive comments
            Ok(None) | Err(_) => break,
        }
    }
}

/// A real server its node's checks marked down shows why (and since when, its latency, its flaps) on the node
/// and cluster pages; the transition is an event on the node page. The service edit form keeps the check
/// fields it does not show, and sets the ones it does.
#[tokio::test]
async fn a_down_real_server_shows_its_reason_and_the_edit_form_keeps_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    let op_token = srv.tokens.operator.clone();
    let mut spec = cluster_spec(51, "198.18.0.10");
    spec["services"][0]["check"] = json!({
        "kind": "http", "path": "/healthz", "expect_status": 200, "host": "www.example",
        "on_down": "remove", "quorum": {"min_healthy": 2, "priority_drop": 60},
        "sorry_server": {"address": "198.18.2.9", "port": 8080}
    });
    let (s, v) = srv.put("/api/v1/clusters/ext", &op_token, spec).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let cred = srv.enrolled_node("52:54:00:00:00:01", "lb-01").await;
    let (s, v) = srv
        .post(
            "/api/v1/nodes/lb-01/assign",
            &op_token,
            json!({"cluster": "ext", "role": "active"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, role) = srv.get("/api/v1/agent/role", &cred).await;
    let check = "HTTP GET /healthz expects 200";
    let (s, v) = srv
        .post(
            "/api/v1/agent/report",
            &cred,
            json!({
                "applied_generation": role["generation"],
                "services": [{"vip": "198.18.0.10", "port": 80, "protocol": "tcp",
                    "real_servers": [
                        {"address": "198.18.2.1", "port": 8080, "healthy": false, "weight": 0,
                         "health": {"state": "down", "since": 1_764_547_200u64,
                                    "last_error": "HTTP 500 from /healthz", "flaps": 3, "check": check}},
                        {"address": "198.18.2.2", "port": 8080, "healthy": true, "weight": 2,
                         "health": {"state": "up", "since": 1_764_547_100u64, "latency_us": 1500,
                                    "check": check}}]}],
                "health_events": [{"service": "198.18.0.10:80/tcp", "address": "198.18.2.1", "port": 8080,
                                   "from": "up", "to": "down", "at": 1_764_547_200u64,
                                   "reason": "HTTP 500 from /healthz"}]
            }),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");

    let op = login(&srv, "oper").await;
    let (s, html) = get_page(&srv, &op, "/nodes/1").await;
    assert_eq!(s, StatusCode::OK);
    let row = html
        .split("<tr data-rs=\"198.18.2.1:8080\">")
        .nth(1)
        .and_then(|r| r.split("</tr>").next())
        .unwrap_or_else(|| panic!("no row for 198.18.2.1:8080: {html}"));
    assert!(row.contains("✖ down"), "{row}");
    assert!(
        row.contains("<td class=\"rs-error\">HTTP 500 from /healthz</td>"),
        "{row}"
    );
    assert!(row.contains("2025-12-01 00:00:00Z"), "{row}");
    assert!(row.contains("<td class=\"rs-flaps\">3</td>"), "{row}");
    let up = html
        .split("<tr data-rs=\"198.18.2.2:8080\">")
        .nth(1)
        .and_then(|r| r.split("</tr>").next())
        .unwrap_or_default();
    assert!(up.contains("✔ up") && up.contains("1.5 ms"), "{up}");
    assert!(
        html.contains(
            "real server 198.18.2.1:8080 of 198.18.0.10:80/tcp is down: HTTP 500 from /healthz"
        ),
        "no health event on the node page"
    );

    // The cluster page shows the active node's view, with the reason.
    let (_, html) = get_page(&srv, &op, "/clusters/ext").await;
    let row = html
        .split("<tr data-rs=\"198.18.2.1:8080\">")
        .nth(1)
        .and_then(|r| r.split("</tr>").next())
        .unwrap_or_default();
    assert!(
        row.contains("✖ down")
            && row.contains("HTTP 500 from /healthz")
            && row.contains("3 flap(s)"),
        "{row}"
    );
    assert!(
        html.contains("quorum 2 (priority -60)"),
        "check details missing"
    );

    // Saving the service's settings changes what the form shows and keeps the rest of the check.
    let resp = post_form(
        &srv,
        &op,
        "/clusters/ext/services/edit",
        &[
            ("csrf", op.csrf.as_str()),
            ("service", "tcp:198.18.0.10:80"),
            ("scheduler", "wrr"),
            ("forward", "nat"),
            ("persistence_s", "0"),
            ("check_kind", "http"),
            ("check_path", "/ready"),
            ("check_status", ""),
            ("check_interval_ms", "2000"),
            ("check_timeout_ms", "700"),
            ("check_rise", "3"),
            ("check_fall", "4"),
            ("check_on_down", "remove"),
        ],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let (_, v) = srv.get("/api/v1/clusters/ext", &srv.tokens.viewer).await;
    let c = &v["spec"]["services"][0]["check"];
    assert_eq!(c["path"], "/ready", "{c}");
    assert_eq!(c["expect_status"], 200, "{c}");
    assert_eq!(
        (&c["interval_ms"], &c["timeout_ms"], &c["rise"], &c["fall"]),
        (&json!(2000), &json!(700), &json!(3), &json!(4)),
        "{c}"
    );
    assert_eq!(c["host"], "www.example", "{c}");
    assert_eq!(c["on_down"], "remove", "{c}");
    assert_eq!(c["quorum"]["min_healthy"], 2, "{c}");
    assert_eq!(c["sorry_server"]["address"], "198.18.2.9", "{c}");
}

/// The node actions without fields (unassign, retire, reject) share one handler: each does its own thing,
/// is audited, and a refusal by the lifecycle comes back as a message.
#[tokio::test]
async fn unassign_retire_and_reject_forms() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    let (st, v) = srv
        .post(
            "/api/v1/nodes",
            &srv.tokens.operator,
            json!({"mac": "52:54:00:00:00:01", "hostname": "lb-01"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let (st, _) = srv
        .put(
            "/api/v1/clusters/ext",
            &srv.tokens.operator,
            cluster_spec(51, "198.18.0.10"),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let op = login(&srv, "oper").await;
    let back = [("csrf", op.csrf.as_str()), ("back", "/nodes")];
    let assign = [
        ("csrf", op.csrf.as_str()),
        ("cluster", "ext"),
        ("role", "active"),
        ("back", "/nodes"),
    ];
    let resp = post_form(&srv, &op, "/nodes/lb-01/assign", &assign).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);

    let audit_before = srv.audit_len().await;
    let resp = post_form(&srv, &op, "/nodes/lb-01/unassign", &back).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let (_, v) = srv.get("/api/v1/nodes/lb-01", &srv.tokens.viewer).await;
    assert_eq!(
        (v["state"].as_str(), v["cluster"].as_str()),
        (Some("ready"), None),
        "{v}"
    );
    assert_eq!(srv.audit_len().await, audit_before + 1);

    // Reject is for discovered hardware only: refused, nothing changes.
    let resp = post_form(&srv, &op, "/nodes/lb-01/reject", &back).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let (_, v) = srv.get("/api/v1/nodes/lb-01", &srv.tokens.viewer).await;
    assert_eq!(v["state"].as_str(), Some("ready"), "{v}");
    assert_eq!(srv.audit_len().await, audit_before + 1);

    let resp = post_form(&srv, &op, "/nodes/lb-01/retire", &back).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let (_, v) = srv.get("/api/v1/nodes/lb-01", &srv.tokens.viewer).await;
    assert_eq!(v["state"].as_str(), Some("retired"), "{v}");
    assert_eq!(srv.audit_len().await, audit_before + 2);
}
