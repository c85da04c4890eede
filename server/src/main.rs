//! `lbfleet-server`: parses the command line, starts logging, and hands over to the library.

use std::io::Read;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use lbfleet_server::boot::images;
use lbfleet_server::config::{
    self, AuditCommand, Cli, Command, DbCommand, ExportCommand, ImageCommand, ImportCommand,
    LogFormat, RealServerFormat, ServerConfig, TokenCommand, UserCommand,
};
use lbfleet_server::fleet::Actor;
use lbfleet_server::open_fleet;
use tracing_subscriber::EnvFilter;

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Installs the SIGTERM/SIGINT handlers now (before the server announces itself, so a signal that arrives
/// right after start-up is not lost to the default action) and returns the future that waits for either.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    })
}

fn read_password_stdin() -> anyhow::Result<String> {
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .context("reading the password from stdin")?;
    let p = s.trim_end_matches(['\n', '\r']).to_owned();
    anyhow::ensure!(!p.is_empty(), "no password on stdin");
    Ok(p)
}

async fn fleet_for(db: &config::DbArgs) -> anyhow::Result<lbfleet_server::fleet::Fleet> {
    let url = config::database_url(db)?;
    let cfg = ServerConfig::with_database(url);
    Ok(open_fleet(&cfg).await?)
}

/// `lbfleet-server db copy`: the whole fleet from one database into a new one.
async fn db_copy(from: &str, to: &str, json: bool) -> anyhow::Result<ExitCode> {
    use lbfleet_server::store::{redact_url, Backend, Store};
    if Backend::of(from) == Backend::Sqlite {
        let path = from
            .strip_prefix("sqlite://")
            .or_else(|| from.strip_prefix("sqlite:"))
            .unwrap_or(from);
        let path = path.split('?').next().unwrap_or(path);
        anyhow::ensure!(
            std::path::Path::new(path).is_file(),
            "source {from}: no such SQLite database file"
        );
    }
    anyhow::ensure!(
        redact_url(from) != redact_url(to),
        "--from and --to name the same database"
    );
    let source = Store::open(from)
        .await
        .map_err(|e| anyhow::anyhow!("source {}: {e}", redact_url(from)))?;
    let dest = Store::open(to)
        .await
        .map_err(|e| anyhow::anyhow!("destination {}: {e}", redact_url(to)))?;
    let report = lbfleet_server::store::copy::copy(&source, &dest).await;
    source.close().await;
    dest.close().await;
    let report = report?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for (table, rows) in &report.rows {
            println!("{table:<28} {rows:>10} rows");
        }
        println!(
            "copied {} -> {}; audit chain verified on the destination ({} rows)",
            redact_url(from),
            redact_url(to),
            report.audit_rows
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// keepalived's default config id: the first part of the host name.
fn host_config_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .and_then(|h| h.trim().split('.').next().map(str::to_owned))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Actor recorded for changes made from the command line.
fn cli_actor() -> Actor {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into());
    Actor(format!("cli:{user}"))
}

async fn main_inner(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => {
            let cfg = ServerConfig::resolve(*args)?;
            init_tracing(cfg.log_format);
            tracing::info!(config = ?cfg, "starting");
            let listeners = lbfleet_server::Listeners::bind(&cfg).await?;
            let sockets = lbfleet_server::BootSockets::bind(&cfg).await?;
            lbfleet_server::run_listeners(cfg, listeners, sockets, shutdown_signal()?).await?;
        }
        Command::User(cmd) => {
            init_tracing(LogFormat::Text);
            match cmd {
                UserCommand::Add {
                    name,
                    role,
                    password_stdin,
                    db,
                } => {
                    let fleet = fleet_for(&db).await?;
                    let given = if password_stdin {
                        Some(read_password_stdin()?)
                    } else {
                        None
                    };
                    let generated = given.is_none();
                    let password = fleet
                        .create_user(&cli_actor(), &name, role.into(), given)
                        .await?;
                    if generated {
                        println!("user {name} created; password (shown once): {password}");
                    } else {
                        println!("user {name} created");
                    }
                }
                UserCommand::List { db } => {
                    let fleet = fleet_for(&db).await?;
                    println!("{:<24} {:<9} DISABLED", "NAME", "ROLE");
                    for u in fleet.users().await? {
                        println!("{:<24} {:<9} {}", u.name, u.role, u.disabled);
                    }
                }
                UserCommand::Passwd {
                    name,
                    password_stdin,
                    db,
                } => {
                    let fleet = fleet_for(&db).await?;
                    let given = if password_stdin {
                        Some(read_password_stdin()?)
                    } else {
                        None
                    };
                    let generated = given.is_none();
                    let password = fleet.set_password(&cli_actor(), &name, given).await?;
                    if generated {
                        println!("new password for {name} (shown once): {password}");
                    } else {
                        println!("password for {name} changed");
                    }
                }
                UserCommand::Delete { name, db } => {
                    fleet_for(&db)
                        .await?
                        .delete_user(&cli_actor(), &name)
                        .await?;
                    println!("user {name} deleted");
                }
            }
        }
        Command::Token(cmd) => {
            init_tracing(LogFormat::Text);
            match cmd {
                TokenCommand::Create {
                    user,
                    name,
                    expires_in,
                    db,
                } => {
                    let ttl = expires_in
                        .as_deref()
                        .map(humantime::parse_duration)
                        .transpose()
                        .context("--expires-in")?;
                    let (id, token) = fleet_for(&db)
                        .await?
                        .create_token(&cli_actor(), &user, &name, ttl)
                        .await?;
                    eprintln!("token {id} for {user} created; it is shown only now:");
                    println!("{token}");
                }
                TokenCommand::List { db } => {
                    let fleet = fleet_for(&db).await?;
                    println!("{:<6} {:<20} {:<20} EXPIRES_AT_MS", "ID", "USER", "NAME");
                    for t in fleet.tokens().await? {
                        let exp = t
                            .expires_at
                            .map_or_else(|| "never".to_owned(), |e| e.to_string());
                        println!("{:<6} {:<20} {:<20} {}", t.id, t.user, t.name, exp);
                    }
                }
                TokenCommand::Revoke { id, db } => {
                    fleet_for(&db).await?.revoke_token(&cli_actor(), id).await?;
                    println!("token {id} revoked");
                }
            }
        }
        Command::Image(cmd) => {
            init_tracing(LogFormat::Text);
            return image_command(cmd).await;
        }
        Command::Db(DbCommand::Copy { from, to, json }) => {
            init_tracing(LogFormat::Text);
            return db_copy(&from, &to, json).await;
        }
        Command::Realserver(args) => {
            init_tracing(LogFormat::Text);
            let cluster = fleet_for(&args.db)
                .await?
                .get_cluster(&args.cluster)
                .await?;
            let plan = lbfleet_server::fleet::real_server_setup::plan(&cluster.name, &cluster.spec);
            match args.format {
                RealServerFormat::Sh => print!("{}", plan.script()),
                RealServerFormat::Json => println!("{}", serde_json::to_string_pretty(&plan)?),
            }
        }
        Command::Import(ImportCommand::Keepalived {
            files,
            config_ids,
            dry_run,
            json,
            db,
        }) => {
            init_tracing(LogFormat::Text);
            let fleet = fleet_for(&db).await?;
            let report = lbfleet_server::keepalived::import(
                &fleet,
                &cli_actor(),
                &mut lbfleet_server::keepalived::FsSource,
                &files,
                &config_ids,
                &host_config_id(),
                dry_run,
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.to_text());
            }
            if !report.lossless {
                return Ok(ExitCode::from(2));
            }
        }
        Command::Export(ExportCommand::Keepalived {
            cluster,
            node,
            output,
            db,
        }) => {
            init_tracing(LogFormat::Text);
            let view = fleet_for(&db).await?.get_cluster(&cluster).await?;
            let export = lbfleet_server::keepalived::export_member(&view, &node)?;
            match output {
                Some(path) => std::fs::write(&path, &export.text)
                    .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?,
                None => print!("{}", export.text),
            }
            for n in &export.not_exported {
                eprintln!("not exported: {n}");
            }
            if !export.lossless() {
                return Ok(ExitCode::from(2));
            }
        }
        Command::Rollout(cmd) => {
            init_tracing(LogFormat::Text);
            return rollout_command(cmd).await;
        }
        Command::Audit(AuditCommand::Verify { db }) => {
            init_tracing(LogFormat::Text);
            let fleet = fleet_for(&db).await?;
            let v = fleet.verify_audit().await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            if !v.ok {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `lbfleet-server rollout ...`: the same `Fleet` calls as the API, audited as `cli:USER`.
async fn rollout_command(cmd: config::cli::RolloutCommand) -> anyhow::Result<ExitCode> {
    use config::cli::RolloutCommand as R;
    use lbfleet_server::fleet::rollouts::{Gate, GateTimeout, RolloutRequest, RolloutState};
    let view = match cmd {
        R::Start {
            image,
            clusters,
            nodes,
            canary,
            pause_after_canary,
            gate_timeout,
            no_checks_up,
            no_in_sync,
            wait,
            db,
        } => {
            let fleet = fleet_for(&db).await?;
            let req = RolloutRequest {
                image,
                clusters,
                nodes,
                canary,
                pause_after_canary,
                max_unavailable: 1,
                gate: Gate {
                    timeout: GateTimeout(gate_timeout),
                    checks_up: !no_checks_up,
                    in_sync: !no_in_sync,
                },
            };
            let v = fleet.create_rollout(&cli_actor(), req).await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            if !wait {
                return Ok(ExitCode::SUCCESS);
            }
            let mut last = String::new();
            loop {
                let v = fleet.get_rollout(v.id).await?;
                let line = format!(
                    "rollout {}: {}{} | {}",
                    v.id,
                    v.state,
                    v.reason
                        .as_deref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default(),
                    v.steps
                        .iter()
                        .map(|s| format!("{} {}", s.node, s.phase))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                if line != last {
                    eprintln!("{line}");
                    last = line;
                }
                if !v.state.unfinished() {
                    return Ok(if v.state == RolloutState::Succeeded {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    });
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
        R::List { db } => {
            let list = fleet_for(&db).await?.list_rollouts().await?;
            println!(
                "{:>5}  {:<10} {:<20} {:<12} reason",
                "id", "state", "image", "current"
            );
            for r in list {
                println!(
                    "{:>5}  {:<10} {:<20} {:<12} {}",
                    r.id,
                    r.state,
                    r.image,
                    r.current.as_deref().unwrap_or("-"),
                    r.reason.as_deref().unwrap_or("")
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        R::Show { id, db } => fleet_for(&db).await?.get_rollout(id).await?,
        R::Pause { id, db } => {
            fleet_for(&db)
                .await?
                .pause_rollout(&cli_actor(), id)
                .await?
        }
        R::Resume { id, db } => {
            fleet_for(&db)
                .await?
                .resume_rollout(&cli_actor(), id)
                .await?
        }
        R::Abort { id, db } => {
            fleet_for(&db)
                .await?
                .abort_rollout(&cli_actor(), id)
                .await?
        }
    };
    println!("{}", serde_json::to_string_pretty(&view)?);
    Ok(ExitCode::SUCCESS)
}

async fn image_command(cmd: ImageCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ImageCommand::Add {
            dir,
            default,
            cmdline,
            args,
        } => {
            let boot_dir = config::boot_dir(&args)?;
            let fleet = fleet_for(&args.db).await?;
            let added =
                images::add(&fleet, &cli_actor(), &boot_dir, &dir, default, cmdline).await?;
            let m = &added.installed.manifest;
            println!(
                "image {} ({:?}{}): kernel {}, agent {}, files verified in {}",
                m.version,
                added.outcome,
                if added.is_default { ", default" } else { "" },
                m.kernel_version,
                m.agent_version,
                added.installed.dir.display()
            );
        }
        ImageCommand::List { args } => {
            let boot_dir = config::boot_dir(&args)?;
            let fleet = fleet_for(&args.db).await?;
            println!(
                "{:<28} {:<7} {:<18} {:<10} {:<5} FILES",
                "NAME", "DEFAULT", "KERNEL", "AGENT", "NODES"
            );
            for (i, users) in fleet.images_in_use().await? {
                let dir = images::image_dir(&boot_dir, &i.name);
                let files = if [&i.kernel, &i.initrd].iter().all(|f| dir.join(f).is_file()) {
                    "present"
                } else {
                    "MISSING"
                };
                println!(
                    "{:<28} {:<7} {:<18} {:<10} {:<5} {files}",
                    i.name,
                    if i.is_default { "yes" } else { "" },
                    i.kernel_version.as_deref().unwrap_or("-"),
                    i.agent_version.as_deref().unwrap_or("-"),
                    users
                );
            }
        }
        ImageCommand::Remove { name, args } => {
            let boot_dir = config::boot_dir(&args)?;
            let fleet = fleet_for(&args.db).await?;
            let removed = images::remove_registered(&fleet, &cli_actor(), &boot_dir, &name).await?;
            if removed {
                println!("image {name} removed (and its files)");
            } else {
                println!(
                    "image {name} removed (it had no files in {})",
                    boot_dir.display()
                );
            }
        }
        ImageCommand::Default { name, db } => {
            let fleet = fleet_for(&db).await?;
            let mut row = fleet
                .list_images()
                .await?
                .into_iter()
                .find(|i| i.name == name)
                .ok_or_else(|| anyhow::anyhow!("no image named {name:?}"))?;
            row.is_default = true;
            fleet.put_image(&cli_actor(), row).await?;
            println!("image {name} is the default");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main_inner(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
