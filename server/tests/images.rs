//! Boot images in the server: `lbfleet-server image add|list|remove|default` (the binary, against a real
//! SQLite file and boot directory), then the HTTP boot of a running server serving what was added.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use lbfleet_images::manifest::digest_file;
use lbfleet_images::{Manifest, INITRD_FILE, KERNEL_FILE, MANIFEST_FILE};
use reqwest::StatusCode;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_lbfleet-server");

/// Runs the binary with the database and boot directory; returns (success, stdout, stderr).
fn cli(db: &Path, boot: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .arg("--database")
        .arg(common::db_url(db))
        .arg("--boot-dir")
        .arg(boot)
        .env_remove("LBFLEET_DATABASE")
        .env_remove("LBFLEET_BOOT_DIR")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A built image directory (as `lbfleet-images build` writes it) with the given initrd bytes.
fn built(root: &Path, version: &str, initrd: &[u8]) -> PathBuf {
    let dir = root.join(format!("build-{version}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(KERNEL_FILE), b"fake kernel").unwrap();
    std::fs::write(dir.join(INITRD_FILE), initrd).unwrap();
    let mut files = BTreeMap::new();
    for f in [KERNEL_FILE, INITRD_FILE] {
        files.insert(f.to_owned(), digest_file(&dir.join(f)).unwrap());
    }
    let m = Manifest {
        version: version.into(),
        kernel_version: "6.1.0-27-amd64".into(),
        agent_version: "0.1.0".into(),
        kernel: KERNEL_FILE.into(),
        initrd: INITRD_FILE.into(),
        cmdline: "console=ttyS0 quiet".into(),
        files,
    };
    std::fs::write(dir.join(MANIFEST_FILE), m.to_json()).unwrap();
    dir
}

#[tokio::test]
async fn image_add_list_remove_and_boot_from_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("lbfleet.db");
    let boot = dir.path().join("boot");
    let tokens = common::seed(&db).await;

    // A source whose initrd does not match its manifest is refused, naming the file; nothing is installed.
    let bad = built(&dir.path().join("bad"), "v0", b"initrd-0");
    std::fs::write(bad.join(INITRD_FILE), b"tampered").unwrap();
    let (ok, _, err) = cli(&db, &boot, &["image", "add", bad.to_str().unwrap()]);
    assert!(!ok, "{err}");
    assert!(
        err.contains("initrd.img: sha256 is") && err.matches("sha256 is").count() == 1,
        "{err}"
    );
    assert!(!boot.join("images/v0").exists());

    // The first image becomes the default; the second does not.
    let v1 = built(dir.path(), "v1", b"initrd-1");
    let (ok, out, err) = cli(&db, &boot, &["image", "add", v1.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("image v1") && out.contains("default"), "{out}");
    assert_eq!(
        std::fs::read(boot.join("images/v1").join(INITRD_FILE)).unwrap(),
        b"initrd-1"
    );
    let v2 = built(dir.path(), "v2", b"initrd-2");
    let (ok, out, err) = cli(&db, &boot, &["image", "add", v2.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    assert!(!out.contains("default"), "{out}");
    // Adding the same image again changes nothing; another build under an existing version is refused.
    let (ok, out, _) = cli(&db, &boot, &["image", "add", v2.to_str().unwrap()]);
    assert!(ok && out.contains("Unchanged"), "{out}");
    let clash = built(&dir.path().join("clash"), "v2", b"something else");
    let (ok, _, err) = cli(&db, &boot, &["image", "add", clash.to_str().unwrap()]);
    assert!(!ok && err.contains("already installed"), "{err}");
    assert_eq!(
        std::fs::read(boot.join("images/v2").join(INITRD_FILE)).unwrap(),
        b"initrd-2"
    );

    let (ok, out, _) = cli(&db, &boot, &["image", "list"]);
    assert!(ok);
    let v1_line = out.lines().find(|l| l.starts_with("v1 ")).unwrap();
    assert!(
        v1_line.contains("yes")
            && v1_line.contains("6.1.0-27-amd64")
            && v1_line.contains("present"),
        "{out}"
    );

    // A running server boots an unknown MAC from the default image, and serves its files.
    let srv = common::TestServer::start_boot(
        db.clone(),
        tokens,
        lbfleet_server::config::BootConfig::for_dir(&boot),
        tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap(),
    )
    .await;
    let op = srv.tokens.operator.clone();
    let script = srv
        .http
        .get(srv.url("/boot/52:54:00:aa:00:09.ipxe"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        script.contains("/images/v1/vmlinuz initrd=initrd.img BOOTIF=01-52-54-00-aa-00-09 ")
            && script.contains(" lbfleet.image=v1 console=ttyS0 quiet\n"),
        "{script}"
    );
    let initrd = srv
        .http
        .get(srv.url("/images/v1/initrd.img"))
        .send()
        .await
        .unwrap();
    assert_eq!(initrd.status(), StatusCode::OK);
    assert_eq!(initrd.bytes().await.unwrap().as_ref(), b"initrd-1");
    let (s, list) = srv.get("/api/v1/images", &op).await;
    assert_eq!(s, StatusCode::OK);
    let v1_api = list["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "v1")
        .unwrap();
    assert_eq!(v1_api["kernel_version"], "6.1.0-27-amd64", "{list}");
    assert_eq!(v1_api["agent_version"], "0.1.0", "{list}");
    assert_eq!(
        v1_api["initrd_sha256"],
        digest_file(&v1.join(INITRD_FILE)).unwrap().sha256,
        "{list}"
    );

    // That MAC is now a discovered node with no image of its own: it boots the default, so v1 stays.
    let (ok, _, err) = cli(&db, &boot, &["image", "remove", "v1"]);
    assert!(
        !ok && err.contains("used by 1 node") && err.contains("default"),
        "{err}"
    );
    assert!(boot.join("images/v1").is_dir());
    // Its own image, set through the API, is what its next boot script loads; null means the default again.
    let (s, v) = srv
        .put(
            "/api/v1/nodes/52:54:00:aa:00:09/image",
            &op,
            json!({"image": "v2"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["image"], "v2", "{v}");
    let script = srv
        .http
        .get(srv.url("/boot/52:54:00:aa:00:09.ipxe"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        script.contains("/images/v2/vmlinuz ") && script.contains(" lbfleet.image=v2 "),
        "{script}"
    );
    let (s, v) = srv
        .put(
            "/api/v1/nodes/52:54:00:aa:00:09/image",
            &op,
            json!({"image": "v9"}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (s, v) = srv
        .put(
            "/api/v1/nodes/52:54:00:aa:00:09/image",
            &op,
            json!({"image": null}),
        )
        .await;
    assert!(s.is_success() && v["image"].is_null(), "{s} {v}");
    // A node that names v2 keeps v2.
    let (s, v) = srv
        .post(
            "/api/v1/nodes",
            &op,
            json!({"mac": "52:54:00:aa:00:0a", "hostname": "lb-v2", "image": "v2"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (ok, _, err) = cli(&db, &boot, &["image", "remove", "v2"]);
    assert!(!ok && err.contains("used by 1 node"), "{err}");
    // Retired, it no longer holds the image.
    let (s, v) = srv.post("/api/v1/nodes/lb-v2/retire", &op, json!({})).await;
    assert!(s.is_success(), "{s} {v}");
    let (ok, out, err) = cli(&db, &boot, &["image", "remove", "v2"]);
    assert!(ok, "{out}{err}");
    assert!(!boot.join("images/v2").exists());
    assert_eq!(
        srv.http
            .get(srv.url("/images/v2/initrd.img"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );

    // `image default` names a registered image; both additions and the removal are audited, by the CLI user.
    let out = Command::new(BIN)
        .args(["image", "default", "nope", "--database"])
        .arg(common::db_url(&db))
        .env_remove("LBFLEET_DATABASE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no image named"));
    let (_, audit) = srv.get("/api/v1/audit?target=image:", &op).await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("{audit}"))
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for a in ["image.create", "image.delete"] {
        assert!(actions.contains(&a), "{audit}");
    }
}

/// Several servers on one database each hold their own copy of an image's files (`image add` on each), and
/// each serves only the bytes of the manifest the fleet stored: a copy changed on one server is refused there
/// (503, nothing served) while the other keeps serving its intact copy.
#[tokio::test]
async fn every_server_serves_an_image_only_as_its_manifest_says() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("lbfleet.db");
    let tokens = common::seed(&db).await;
    let v1 = built(dir.path(), "v1", b"initrd-1");
    let (boot_a, boot_b) = (dir.path().join("boot-a"), dir.path().join("boot-b"));
    for boot in [&boot_a, &boot_b] {
        let (ok, out, err) = cli(&db, boot, &["image", "add", v1.to_str().unwrap()]);
        assert!(ok, "{out}{err}");
        assert_eq!(
            std::fs::read(boot.join("images/v1").join(INITRD_FILE)).unwrap(),
            b"initrd-1"
        );
    }
    let mut servers = Vec::new();
    for (boot, tokens) in [(&boot_a, tokens.clone()), (&boot_b, tokens)] {
        servers.push(
            common::TestServer::start_boot(
                db.clone(),
                tokens,
                lbfleet_server::config::BootConfig::for_dir(boot),
                tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            )
            .await,
        );
    }
    let fetch = |srv: &common::TestServer| {
        let req = srv.http.get(srv.url("/images/v1/initrd.img")).send();
        async move {
            let r = req.await.unwrap();
            (r.status(), r.bytes().await.unwrap().to_vec())
        }
    };
    for srv in &servers {
        assert_eq!(fetch(srv).await, (StatusCode::OK, b"initrd-1".to_vec()));
    }
    // B's copy changes (same length, other bytes): B refuses it, A still serves its own.
    std::fs::write(boot_b.join("images/v1").join(INITRD_FILE), b"initrd-X").unwrap();
    let (status, body) = fetch(&servers[1]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        String::from_utf8_lossy(&body).contains("does not match the image's manifest"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(
        fetch(&servers[0]).await,
        (StatusCode::OK, b"initrd-1".to_vec())
    );
    // Put back, it is served again.
    std::fs::write(boot_b.join("images/v1").join(INITRD_FILE), b"initrd-1").unwrap();
    assert_eq!(
        fetch(&servers[1]).await,
        (StatusCode::OK, b"initrd-1".to_vec())
    );
}
