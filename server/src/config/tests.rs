//! `ServerConfig::resolve` and the file/flag/variable precedence, setting by setting.

use clap::Parser;

use super::*;

fn serve_args(argv: &[&str]) -> ServeArgs {
    let mut full = vec!["lbfleet-server", "serve"];
    full.extend_from_slice(argv);
    match Cli::try_parse_from(full).map(|c| c.command) {
        Ok(Command::Serve(a)) => *a,
        other => panic!("unexpected parse: {other:?}"),
    }
}

#[test]
fn defaults_file_and_flags_layer_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("lbfleet.toml");
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:9000\"\nsession_ttl = \"1h\"\ndatabase = \"sqlite://file.db\"\n",
    )
    .expect("write");
    let cfg = ServerConfig::resolve(serve_args(&[])).expect("defaults");
    assert_eq!(cfg.listen.to_string(), DEFAULT_LISTEN);
    assert_eq!(cfg.database, DEFAULT_DATABASE);
    assert_eq!(cfg.long_poll_timeout, Duration::from_secs(30));

    let p = path.to_str().expect("utf-8 path");
    let cfg = ServerConfig::resolve(serve_args(&[
        "--config",
        p,
        "--database",
        "sqlite://flag.db",
    ]))
    .expect("file");
    assert_eq!(cfg.listen.to_string(), "127.0.0.1:9000");
    assert_eq!(cfg.session_ttl, Duration::from_secs(3600));
    assert_eq!(cfg.database, "sqlite://flag.db");
}

#[test]
fn bad_files_and_values_are_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "listn = \"127.0.0.1:9000\"\n").expect("write");
    let p = path.to_str().expect("utf-8 path");
    let err = ServerConfig::resolve(serve_args(&["--config", p]))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("unknown field `listn`"), "{err}");
    let err = ServerConfig::resolve(serve_args(&["--session-ttl", "soon"]))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.starts_with("session_ttl: \"soon\" is not a duration"),
        "{err}"
    );
    let err = ServerConfig::resolve(serve_args(&["--public-url", "lb.example"]))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("must start with http"), "{err}");
}

#[test]
fn plain_http_off_loopback_needs_tls_or_the_explicit_flag() {
    let err = ServerConfig::resolve(serve_args(&["--listen", "0.0.0.0:8080"]))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.starts_with("listen: 0.0.0.0:8080 is not a loopback address and TLS is off")
            && err.contains("--allow-insecure-http"),
        "{err}"
    );
    let cfg = ServerConfig::resolve(serve_args(&[
        "--listen",
        "0.0.0.0:8080",
        "--allow-insecure-http",
    ]))
    .expect("explicitly allowed");
    assert!(!cfg.tls.is_on() && !cfg.secure_cookies());
    let cfg = ServerConfig::resolve(serve_args(&[
        "--listen",
        "0.0.0.0:8080",
        "--tls-self-signed",
        "--database",
        "sqlite://var/x/lbfleet.db",
    ]))
    .expect("TLS");
    assert_eq!(
        cfg.tls,
        crate::tls::TlsSetting::SelfSigned {
            dir: PathBuf::from("var/x")
        }
    );
    assert!(cfg.secure_cookies());
    // Loopback stays plain by default (make demo).
    let cfg = ServerConfig::resolve(serve_args(&[])).expect("defaults");
    assert!(!cfg.tls.is_on());
    let err = ServerConfig::resolve(serve_args(&["--tls-cert", "c.pem"]))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("tls_cert and tls_key go together"), "{err}");
}

#[test]
fn boot_listen_is_optional_secured_like_listen_and_apart_from_it() {
    assert_eq!(
        ServerConfig::resolve(serve_args(&[]))
            .expect("defaults")
            .boot_listen,
        None
    );
    let cfg =
        ServerConfig::resolve(serve_args(&["--boot-listen", "127.0.0.1:8081"])).expect("split");
    assert_eq!(
        cfg.boot_listen,
        Some("127.0.0.1:8081".parse().expect("addr"))
    );
    let err = ServerConfig::resolve(serve_args(&["--boot-listen", "198.18.0.1:8081"]))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.starts_with("boot_listen: 198.18.0.1:8081 is not a loopback address and TLS is off"),
        "{err}"
    );
    assert!(ServerConfig::resolve(serve_args(&[
        "--boot-listen",
        "198.18.0.1:8081",
        "--allow-insecure-http"
    ]))
    .is_ok());
    let cfg = ServerConfig::resolve(serve_args(&[
        "--listen",
        "127.0.0.1:0",
        "--boot-listen",
        "127.0.0.1:0",
    ]))
    .expect("two free ports");
    assert_eq!(cfg.boot_listen.map(|b| b.port()), Some(0));
    for clash in ["127.0.0.1:8080", "0.0.0.0:8080"] {
        let err = ServerConfig::resolve(serve_args(&[
            "--boot-listen",
            clash,
            "--allow-insecure-http",
        ]))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.starts_with("boot_listen: "), "{clash}: {err}");
        assert!(err.contains("overlaps listen"), "{clash}: {err}");
    }
}

#[test]
fn max_discovered_must_leave_pool_addresses_for_registered_nodes() {
    let boot = [
        "--boot-server-address",
        "198.18.0.1",
        "--boot-subnet",
        "198.18.0.0/16",
        "--boot-pool",
        "198.18.1.0-198.18.1.255",
    ];
    let mut args = boot.to_vec();
    args.extend(["--boot-max-discovered", "256"]);
    let err = ServerConfig::resolve(serve_args(&args))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.starts_with("boot.max_discovered: 256 leaves no address of boot.pool (256 addresses)"),
        "{err}"
    );
    let mut args = boot.to_vec();
    args.extend(["--boot-max-discovered", "255"]);
    let cfg = ServerConfig::resolve(serve_args(&args)).expect("one address left");
    assert_eq!(cfg.boot.map(|b| b.max_discovered), Some(255));
    // Unset: half the pool.
    let cfg = ServerConfig::resolve(serve_args(&boot)).expect("default");
    assert_eq!(cfg.boot.map(|b| b.max_discovered), Some(128));
}

#[test]
fn link_checks_default_on_and_enrollment_windows_off_file_and_flags_override() {
    let boot = [
        "--boot-server-address",
        "198.18.0.1",
        "--boot-subnet",
        "198.18.0.0/16",
        "--boot-pool",
        "198.18.1.0-198.18.1.255",
    ];
    let cfg = ServerConfig::resolve(serve_args(&boot)).expect("defaults");
    let b = cfg.boot.expect("boot");
    assert!(b.check_link_address && !b.require_armed_enrollment);

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("lbfleet.toml");
    std::fs::write(
        &path,
        "[boot]\ncheck_link_address = false\nrequire_armed_enrollment = true\n",
    )
    .expect("write");
    let mut args = boot.to_vec();
    args.extend(["--config", path.to_str().expect("utf-8 path")]);
    let b = ServerConfig::resolve(serve_args(&args))
        .expect("file")
        .boot
        .expect("boot");
    assert!(!b.check_link_address && b.require_armed_enrollment);
    args.extend(["--boot-check-link-address", "true"]);
    let b = ServerConfig::resolve(serve_args(&args))
        .expect("flag")
        .boot
        .expect("boot");
    assert!(b.check_link_address);
}

#[test]
fn database_passwords_are_redacted() {
    assert_eq!(
        redact_url("postgres://lb:s3cret@db/lbfleet"),
        "postgres://lb:<redacted>@db/lbfleet"
    );
    assert_eq!(
        redact_url("sqlite://var/lbfleet.db"),
        "sqlite://var/lbfleet.db"
    );
    let cfg = ServerConfig::with_database("postgres://lb:s3cret@db/lbfleet");
    assert!(!format!("{cfg:?}").contains("s3cret"));
}

#[test]
fn dhcp_leader_timers_default_read_the_file_and_refuse_a_ttl_without_room_for_renewals() {
    let boot = [
        "--boot-server-address",
        "198.18.0.1",
        "--boot-subnet",
        "198.18.0.0/16",
        "--boot-pool",
        "198.18.1.0-198.18.1.255",
    ];
    let b = ServerConfig::resolve(serve_args(&boot))
        .expect("defaults")
        .boot
        .expect("boot");
    assert_eq!(
        (b.dhcp_leader_renew, b.dhcp_leader_ttl),
        (Duration::from_millis(250), Duration::from_secs(1))
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("lbfleet.toml");
    std::fs::write(
        &path,
        "[boot]\ndhcp_leader_renew = \"100ms\"\ndhcp_leader_ttl = \"400ms\"\n",
    )
    .expect("write");
    let mut args = boot.to_vec();
    args.extend(["--config", path.to_str().expect("utf-8 path")]);
    let b = ServerConfig::resolve(serve_args(&args))
        .expect("file")
        .boot
        .expect("boot");
    assert_eq!(
        (b.dhcp_leader_renew, b.dhcp_leader_ttl),
        (Duration::from_millis(100), Duration::from_millis(400))
    );
    // 3/4 of 500 ms leaves room for one 250 ms renewal only: refused, naming the key.
    args.extend(["--boot-dhcp-leader-ttl", "500ms"]);
    args.extend(["--boot-dhcp-leader-renew", "250ms"]);
    let err = ServerConfig::resolve(serve_args(&args)).expect_err("too short");
    assert!(err.to_string().contains("boot.dhcp_leader_ttl"), "{err}");
}

#[test]
fn the_boot_cache_lives_beside_the_boot_directory_never_inside_it() {
    let boot = [
        "--boot-server-address",
        "198.18.0.1",
        "--boot-dir",
        "/srv/lbfleet/boot",
    ];
    let b = ServerConfig::resolve(serve_args(&boot))
        .expect("defaults")
        .boot
        .expect("boot");
    assert_eq!(
        b.cache_dir.as_deref(),
        Some(std::path::Path::new("/srv/lbfleet/state"))
    );
    assert_eq!(b.credential_ttl, std::time::Duration::from_secs(24 * 3600));

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("lbfleet.toml");
    std::fs::write(
        &path,
        "[boot]\ncache_dir = \"/var/lib/lbfleet/cache\"\ncredential_ttl = \"2h\"\n",
    )
    .expect("write");
    let mut args = boot.to_vec();
    args.extend(["--config", path.to_str().expect("utf-8 path")]);
    let b = ServerConfig::resolve(serve_args(&args))
        .expect("file")
        .boot
        .expect("boot");
    assert_eq!(
        b.cache_dir.as_deref(),
        Some(std::path::Path::new("/var/lib/lbfleet/cache"))
    );
    assert_eq!(b.credential_ttl, std::time::Duration::from_secs(7200));
    // Inside the TFTP root, anyone could read the boot key: refused.
    args.extend(["--boot-cache-dir", "/srv/lbfleet/boot/state"]);
    let err = ServerConfig::resolve(serve_args(&args)).expect_err("inside boot_dir");
    assert!(err.to_string().contains("boot.cache_dir"), "{err}");
}

#[test]
fn traffic_history_bounds_default_read_the_file_and_flags_and_refuse_a_tiny_byte_bound() {
    let cfg = ServerConfig::resolve(serve_args(&[])).expect("defaults");
    assert_eq!(cfg.traffic, crate::retention::TrafficBounds::default());
    assert_eq!(cfg.traffic.max_rows, 2_000_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("lbfleet.toml");
    std::fs::write(
        &path,
        "traffic_max_rows = 5000\ntraffic_max_bytes = 1048576\n",
    )
    .expect("write");
    let p = path.to_str().expect("utf-8 path");
    let cfg = ServerConfig::resolve(serve_args(&["--config", p])).expect("file");
    assert_eq!(
        (cfg.traffic.max_rows, cfg.traffic.max_bytes),
        (5000, 1_048_576)
    );
    let cfg = ServerConfig::resolve(serve_args(&["--config", p, "--traffic-max-rows", "7"]))
        .expect("flag");
    assert_eq!(cfg.traffic.max_rows, 7);
    let err = ServerConfig::resolve(serve_args(&["--traffic-max-bytes", "100"]))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("traffic_max_bytes"), "{err}");
}

#[test]
fn node_liveness_settings_default_and_must_leave_room_for_a_late_beat() {
    let cfg = ServerConfig::resolve(serve_args(&[])).expect("defaults");
    assert_eq!(cfg.node_heartbeat_interval, Duration::from_secs(1));
    assert_eq!(cfg.node_silent_after, Duration::from_secs(3));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("lbfleet.toml");
    std::fs::write(
        &path,
        "node_heartbeat_interval = \"500ms\"\nnode_silent_after = \"2s\"\n",
    )
    .expect("write");
    let p = path.to_str().expect("utf-8 path");
    let cfg = ServerConfig::resolve(serve_args(&["--config", p])).expect("file");
    assert_eq!(cfg.node_heartbeat_interval, Duration::from_millis(500));
    assert_eq!(cfg.node_silent_after, Duration::from_secs(2));
    let cfg = ServerConfig::resolve(serve_args(&["--config", p, "--node-silent-after", "5s"]))
        .expect("flag over file");
    assert_eq!(cfg.node_silent_after, Duration::from_secs(5));
    let err = |args: &[&str]| {
        ServerConfig::resolve(serve_args(args))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let e = err(&[
        "--node-heartbeat-interval",
        "2s",
        "--node-silent-after",
        "3s",
    ]);
    assert!(
        e.contains("node_silent_after") && e.contains("at least twice"),
        "{e}"
    );
    let e = err(&["--node-heartbeat-interval", "10ms"]);
    assert!(e.contains("node_heartbeat_interval"), "{e}");
}
