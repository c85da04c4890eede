//! The import as one operation, shared by the CLI, the API and the dashboard: read each machine's files,
//! plan, and (unless a dry run, which checks the same rules and writes nothing) write every planned cluster in
//! one transaction through the fleet, so each domain rule applies and the change is all or nothing.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;

use super::mapping::{node_name, plan, ImportPlan, Machine, NotImported, PlannedMember};
use super::parser::{parse, Limits, ParseError};
use super::source::Source;
use crate::fleet::{Actor, Fleet, FleetError, PutOutcome};
use lbfleet_proto::ClusterSpec;

/// Why an import could not be planned or applied.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error(transparent)]
    Fleet(#[from] FleetError),
}

/// Pairs files with config ids: no id reads every file with `default_id`; one id applies to every file; one
/// file with several ids is read once per id (one file for a whole pair, by `@id` lines); otherwise one id
/// per file, in order.
pub fn read_machines<S: Source>(
    src: &mut S,
    files: &[PathBuf],
    ids: &[String],
    default_id: &str,
    limits: Limits,
) -> Result<Vec<Machine>, ImportError> {
    let pairs: Vec<(&PathBuf, String, bool)> = match (files.len(), ids.len()) {
        (0, _) => return Err(ImportError::Usage("no keepalived.conf given".into())),
        (_, 0) => files
            .iter()
            .map(|f| (f, default_id.to_owned(), false))
            .collect(),
        (_, 1) => files.iter().map(|f| (f, ids[0].clone(), true)).collect(),
        (1, _) => ids.iter().map(|i| (&files[0], i.clone(), true)).collect(),
        (f, i) if f == i => files
            .iter()
            .zip(ids)
            .map(|(f, i)| (f, i.clone(), true))
            .collect(),
        (f, i) => {
            return Err(ImportError::Usage(format!(
            "{f} files and {i} config ids: give none, one, one per file, or several for one file"
        )))
        }
    };
    let mut machines: Vec<Machine> = Vec::new();
    for (file, id, explicit) in pairs {
        let config = parse(src, file, &id, limits)?;
        let fallback = if explicit || files.len() == 1 {
            id.clone()
        } else {
            file.display().to_string()
        };
        let mut node = node_name(&config, &fallback);
        if machines.iter().any(|m| m.node == node) {
            node = format!("{node}@{}", file.display());
        }
        machines.push(Machine { node, config });
    }
    Ok(machines)
}

/// One planned cluster as the audit records it.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterChange {
    /// `cluster.create`, `cluster.update`, or `unchanged`.
    pub action: String,
    pub target: String,
    pub from: String,
    pub spec: ClusterSpec,
    /// The parts the machines played: assign the nodes in lbfleet (keepalived knows no MACs).
    pub members: Vec<PlannedMember>,
}

/// What an import did or would do.
#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    pub dry_run: bool,
    pub lossless: bool,
    pub clusters: Vec<ClusterChange>,
    pub not_imported: Vec<NotImported>,
}

/// Writes the plan's clusters in one transaction, or for a dry run checks them against every rule and what is
/// stored without writing.
pub async fn apply(
    fleet: &Fleet,
    actor: &Actor,
    plan: ImportPlan,
    dry_run: bool,
) -> Result<ImportReport, ImportError> {
    let specs: Vec<(String, ClusterSpec)> = plan
        .clusters
        .iter()
        .map(|c| (c.name.clone(), c.spec.clone()))
        .collect();
    let outcomes = fleet.put_clusters(actor, &specs, dry_run).await?;
    let lossless = plan.lossless();
    let clusters = plan
        .clusters
        .into_iter()
        .zip(outcomes)
        .map(|(c, (_, outcome))| ClusterChange {
            action: match outcome {
                PutOutcome::Created => "cluster.create",
                PutOutcome::Updated => "cluster.update",
                PutOutcome::Unchanged => "unchanged",
            }
            .to_owned(),
            target: format!("cluster:{}", c.name),
            from: c.loc.to_string(),
            spec: c.spec,
            members: c.members,
        })
        .collect();
    Ok(ImportReport {
        dry_run,
        lossless,
        clusters,
        not_imported: plan.not_imported,
    })
}

/// Reads, plans and applies (or checks, for a dry run) in one call.
pub async fn import<S: Source>(
    fleet: &Fleet,
    actor: &Actor,
    src: &mut S,
    files: &[PathBuf],
    ids: &[String],
    default_id: &str,
    dry_run: bool,
) -> Result<ImportReport, ImportError> {
    let machines = read_machines(src, files, ids, default_id, Limits::default())?;
    apply(fleet, actor, plan(&machines), dry_run).await
}

impl ImportReport {
    /// The report for people: each cluster as the audit records it, with its services, then what was not
    /// imported.
    pub fn to_text(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "{}",
            if self.dry_run {
                "plan (dry run, nothing written):"
            } else {
                "applied as one change:"
            }
        );
        for c in &self.clusters {
            let s = &c.spec;
            let _ = writeln!(t, "{} {}   (from {})", c.action, c.target, c.from);
            let vips: Vec<String> = s.vips.iter().map(|v| v.to_string()).collect();
            let _ = writeln!(
                t,
                "  VRID {} on {}, VRRPv{}, advert {} ms, preempt {}{}, VIPs {}",
                s.vrid,
                s.interface,
                s.vrrp_version,
                s.advert_interval_ms,
                if s.preempt { "on" } else { "off" },
                if s.preempt_delay_ms > 0 {
                    format!(" after {} ms", s.preempt_delay_ms)
                } else {
                    String::new()
                },
                vips.join(", ")
            );
            if !s.unicast_peers.is_empty() {
                let _ = writeln!(t, "  unicast peers {}", s.unicast_peers.join(", "));
            }
            if let Some(sync) = &s.conn_sync {
                let _ = writeln!(
                    t,
                    "  connection sync on {} id {}",
                    sync.interface, sync.sync_id
                );
            }
            for svc in &s.services {
                let persistence = if svc.persistence_s > 0 {
                    format!(
                        ", persistence {} s{}",
                        svc.persistence_s,
                        svc.persistence_prefix
                            .map(|p| format!(" /{p}"))
                            .unwrap_or_default()
                    )
                } else {
                    String::new()
                };
                let _ = writeln!(
                    t,
                    "  service {} {} {} {}{}; check {} every {} ms, down after {}, {}",
                    svc.protocol,
                    crate::fleet::socket_text(&svc.vip, svc.port),
                    svc.scheduler,
                    svc.forward,
                    persistence,
                    svc.check.describe(),
                    svc.check.interval_ms,
                    svc.check.fall,
                    svc.check.on_down
                );
                if let Some(sorry) = &svc.check.sorry_server {
                    let _ = writeln!(
                        t,
                        "    sorry server {}",
                        crate::fleet::socket_text(&sorry.address, sorry.port)
                    );
                }
                for r in &svc.real_servers {
                    let _ = writeln!(
                        t,
                        "    real server {} weight {}",
                        crate::fleet::socket_text(&r.address, r.port),
                        r.weight
                    );
                }
                for o in &svc.check.overrides {
                    let _ = writeln!(
                        t,
                        "    check of {}: {}",
                        crate::fleet::socket_text(&o.address, o.port),
                        o.check.describe()
                    );
                }
            }
            for m in &c.members {
                let _ = writeln!(
                    t,
                    "  node {}: {} with priority {} (from {}; assign it in lbfleet)",
                    m.node, m.role, m.priority, m.loc
                );
            }
        }
        if self.clusters.is_empty() {
            let _ = writeln!(t, "no cluster");
        }
        let _ = writeln!(t, "not imported: {}", self.not_imported.len());
        for n in &self.not_imported {
            let _ = writeln!(t, "  {n}");
        }
        let _ = writeln!(
            t,
            "{}",
            if self.lossless {
                "lossless: everything read maps onto lbfleet"
            } else {
                "NOT lossless: the directives above were not imported"
            }
        );
        t
    }
}
