//! Clusters, their VIPs, virtual services and real servers.

use std::collections::HashMap;

use lbfleet_proto::{
    ClusterSpec, ConnSyncSpec, GarpSpec, HealthCheck, Protocol, RealServerReport, RealServerSpec,
    ServiceReport, ServiceSpec, VipSpec,
};

use super::{now_ms, Conn, StoreError};

/// A cluster as stored: its spec with every real server's `enabled` explicit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCluster {
    pub id: i64,
    pub name: String,
    pub spec: ClusterSpec,
    pub created_at: i64,
    pub updated_at: i64,
    /// The fleet generation of the spec's last change: what `ETag`/`If-Match` carry.
    pub revision: u64,
}

#[derive(sqlx::FromRow)]
struct ClusterRow {
    id: i64,
    name: String,
    vrid: i64,
    interface: String,
    vrrp_version: i64,
    advert_interval_ms: i64,
    #[sqlx(try_from = "super::Flag")]
    preempt: bool,
    unicast_peers: String,
    preempt_delay_ms: i64,
    garp_count: i64,
    garp_spacing_ms: i64,
    garp_refresh_ms: i64,
    sync_interface: Option<String>,
    sync_id: Option<i64>,
    created_at: i64,
    updated_at: i64,
    content_generation: i64,
}

#[derive(sqlx::FromRow)]
struct ServiceRow {
    id: i64,
    cluster_id: i64,
    vip: String,
    port: i64,
    protocol: String,
    scheduler: String,
    forward: String,
    persistence_s: i64,
    persistence_prefix: Option<i64>,
    health_check: String,
}

#[derive(sqlx::FromRow)]
struct RealServerRow {
    service_id: i64,
    address: String,
    port: i64,
    weight: i64,
    #[sqlx(try_from = "super::Flag")]
    enabled: bool,
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn int<T: TryFrom<i64>>(what: &str, v: i64) -> Result<T, StoreError> {
    T::try_from(v).map_err(|_| corrupt(what, format!("{v} out of range")))
}

/// Loads one cluster (`Some(name)`) or all of them, ordered by name.
pub async fn load(conn: &mut Conn, name: Option<&str>) -> Result<Vec<StoredCluster>, StoreError> {
    let clusters: Vec<ClusterRow> = sqlx::query_as(
        "SELECT id, name, vrid, interface, vrrp_version, advert_interval_ms, preempt, unicast_peers, \
         preempt_delay_ms, garp_count, garp_spacing_ms, garp_refresh_ms, sync_interface, sync_id, created_at, \
         updated_at, content_generation FROM clusters WHERE ($1 IS NULL OR name = $1) ORDER BY name",
    )
    .bind(name)
    .fetch_all(&mut *conn)
    .await?;
    if clusters.is_empty() {
        return Ok(vec![]);
    }
    let filter = |sql: &str, order: &str| {
        format!("{sql} WHERE ($1 IS NULL OR c.name = $1) ORDER BY {order}")
    };
    let vips: Vec<(i64, String, i64, Option<String>)> = sqlx::query_as(&filter(
        "SELECT v.cluster_id, v.address, v.prefix, v.interface FROM cluster_vips v JOIN clusters c ON c.id = v.cluster_id",
        "v.cluster_id, v.position",
    ))
    .bind(name)
    .fetch_all(&mut *conn)
    .await?;
    let services: Vec<ServiceRow> = sqlx::query_as(&filter(
        "SELECT s.id, s.cluster_id, s.vip, s.port, s.protocol, s.scheduler, s.forward, s.persistence_s, \
         s.persistence_prefix, s.health_check FROM virtual_services s JOIN clusters c ON c.id = s.cluster_id",
        "s.cluster_id, s.position",
    ))
    .bind(name)
    .fetch_all(&mut *conn)
    .await?;
    let servers: Vec<RealServerRow> = sqlx::query_as(&filter(
        "SELECT r.service_id, r.address, r.port, r.weight, r.enabled FROM real_servers r \
         JOIN virtual_services s ON s.id = r.service_id JOIN clusters c ON c.id = s.cluster_id",
        "r.service_id, r.position",
    ))
    .bind(name)
    .fetch_all(&mut *conn)
    .await?;

    let mut rs_by_service: HashMap<i64, Vec<RealServerSpec>> = HashMap::new();
    for r in servers {
        rs_by_service
            .entry(r.service_id)
            .or_default()
            .push(RealServerSpec {
                address: r.address,
                port: int("real_servers.port", r.port)?,
                weight: int("real_servers.weight", r.weight)?,
                enabled: Some(r.enabled),
            });
    }
    let mut svc_by_cluster: HashMap<i64, Vec<ServiceSpec>> = HashMap::new();
    for s in services {
        let check: HealthCheck = serde_json::from_str(&s.health_check)
            .map_err(|e| corrupt("virtual_services.health_check", e))?;
        svc_by_cluster
            .entry(s.cluster_id)
            .or_default()
            .push(ServiceSpec {
                vip: s.vip,
                port: int("virtual_services.port", s.port)?,
                protocol: s
                    .protocol
                    .parse()
                    .map_err(|e| corrupt("virtual_services.protocol", e))?,
                scheduler: s
                    .scheduler
                    .parse()
                    .map_err(|e| corrupt("virtual_services.scheduler", e))?,
                forward: s
                    .forward
                    .parse()
                    .map_err(|e| corrupt("virtual_services.forward", e))?,
                persistence_s: int("virtual_services.persistence_s", s.persistence_s)?,
                persistence_prefix: s
                    .persistence_prefix
                    .map(|p| int("virtual_services.persistence_prefix", p))
                    .transpose()?,
                check,
                real_servers: rs_by_service.remove(&s.id).unwrap_or_default(),
            });
    }
    let mut vips_by_cluster: HashMap<i64, Vec<VipSpec>> = HashMap::new();
    for (cid, addr, prefix, interface) in vips {
        vips_by_cluster.entry(cid).or_default().push(VipSpec {
            address: format!("{addr}/{prefix}"),
            interface,
        });
    }

    clusters
        .into_iter()
        .map(|c| {
            Ok(StoredCluster {
                spec: ClusterSpec {
                    vrid: int("clusters.vrid", c.vrid)?,
                    interface: c.interface,
                    vrrp_version: int("clusters.vrrp_version", c.vrrp_version)?,
                    advert_interval_ms: int("clusters.advert_interval_ms", c.advert_interval_ms)?,
                    preempt: c.preempt,
                    preempt_delay_ms: int("clusters.preempt_delay_ms", c.preempt_delay_ms)?,
                    vips: vips_by_cluster.remove(&c.id).unwrap_or_default(),
                    unicast_peers: serde_json::from_str(&c.unicast_peers)
                        .map_err(|e| corrupt("clusters.unicast_peers", e))?,
                    garp: GarpSpec {
                        count: int("clusters.garp_count", c.garp_count)?,
                        spacing_ms: int("clusters.garp_spacing_ms", c.garp_spacing_ms)?,
                        refresh_ms: int("clusters.garp_refresh_ms", c.garp_refresh_ms)?,
                    },
                    conn_sync: match (c.sync_interface, c.sync_id) {
                        (Some(interface), Some(id)) => Some(ConnSyncSpec {
                            interface,
                            sync_id: int("clusters.sync_id", id)?,
                        }),
                        _ => None,
                    },
                    services: svc_by_cluster.remove(&c.id).unwrap_or_default(),
                },
                id: c.id,
                name: c.name,
                created_at: c.created_at,
                updated_at: c.updated_at,
                revision: int("clusters.content_generation", c.content_generation)?,
            })
        })
        .collect()
}

/// Every cluster's id, name and content generation, by name (what the cluster cache is checked against).
pub async fn generations(
    conn: &mut Conn,
    name: Option<&str>,
) -> Result<Vec<(i64, String, i64)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT id, name, content_generation FROM clusters WHERE ($1 IS NULL OR name = $1) ORDER BY name",
    )
    .bind(name)
    .fetch_all(conn)
    .await?)
}

pub async fn load_one(conn: &mut Conn, name: &str) -> Result<Option<StoredCluster>, StoreError> {
    Ok(load(conn, Some(name)).await?.into_iter().next())
}

/// Creates the cluster row or updates its VRRP fields; returns its id.
pub async fn upsert(conn: &mut Conn, name: &str, spec: &ClusterSpec) -> Result<i64, StoreError> {
    let now = now_ms();
    let peers =
        serde_json::to_string(&spec.unicast_peers).map_err(|e| corrupt("unicast_peers", e))?;
    Ok(sqlx::query_scalar(
        "INSERT INTO clusters (name, vrid, interface, vrrp_version, advert_interval_ms, preempt, unicast_peers, \
         created_at, updated_at, preempt_delay_ms, garp_count, garp_spacing_ms, garp_refresh_ms, sync_interface, \
         sync_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9, $10, $11, $12, $13, $14) \
         ON CONFLICT (name) DO UPDATE SET vrid = excluded.vrid, interface = excluded.interface, \
         vrrp_version = excluded.vrrp_version, advert_interval_ms = excluded.advert_interval_ms, \
         preempt = excluded.preempt, unicast_peers = excluded.unicast_peers, updated_at = excluded.updated_at, \
         preempt_delay_ms = excluded.preempt_delay_ms, garp_count = excluded.garp_count, \
         garp_spacing_ms = excluded.garp_spacing_ms, garp_refresh_ms = excluded.garp_refresh_ms, \
         sync_interface = excluded.sync_interface, sync_id = excluded.sync_id \
         RETURNING id",
    )
    .bind(name)
    .bind(i64::from(spec.vrid))
    .bind(&spec.interface)
    .bind(i64::from(spec.vrrp_version))
    .bind(i64::from(spec.advert_interval_ms))
    .bind(i64::from(spec.preempt))
    .bind(peers)
    .bind(now)
    .bind(i64::from(spec.preempt_delay_ms))
    .bind(i64::from(spec.garp.count))
    .bind(i64::from(spec.garp.spacing_ms))
    .bind(i64::from(spec.garp.refresh_ms))
    .bind(spec.conn_sync.as_ref().map(|c| c.interface.clone()))
    .bind(spec.conn_sync.as_ref().map(|c| i64::from(c.sync_id)))
    .fetch_one(conn)
    .await?)
}

/// Replaces the cluster's VIPs and services (with their real servers) by those of `spec`.
/// `spec` must be validated: VIPs in `address/prefix` form, every `enabled` explicit.
pub async fn replace_contents(
    conn: &mut Conn,
    id: i64,
    spec: &ClusterSpec,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM cluster_vips WHERE cluster_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM virtual_services WHERE cluster_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    let mut vips = Vec::with_capacity(spec.vips.len());
    for vip in &spec.vips {
        let (addr, prefix) = vip
            .address
            .split_once('/')
            .ok_or_else(|| corrupt("vips", format!("{} has no prefix", vip.address)))?;
        vips.push((
            addr,
            prefix.parse::<i64>().map_err(|e| corrupt("vips", e))?,
            vip,
        ));
    }
    for (chunk_no, chunk) in vips.chunks(ROWS_PER_INSERT).enumerate() {
        let sql = format!(
            "INSERT INTO cluster_vips (cluster_id, position, address, prefix, interface) VALUES {}",
            placeholders(chunk.len(), 5)
        );
        let mut q = sqlx::query(&sql);
        for (i, (addr, prefix, vip)) in chunk.iter().enumerate() {
            q = q
                .bind(id)
                .bind(position(chunk_no, i))
                .bind(*addr)
                .bind(*prefix)
                .bind(&vip.interface);
        }
        q.execute(&mut *conn).await?;
    }
    let mut checks = Vec::with_capacity(spec.services.len());
    for s in &spec.services {
        checks.push(serde_json::to_string(&s.check).map_err(|e| corrupt("health_check", e))?);
    }
    for (chunk_no, chunk) in spec.services.chunks(ROWS_PER_INSERT).enumerate() {
        let sql = format!(
            "INSERT INTO virtual_services (cluster_id, position, vip, port, protocol, scheduler, forward, \
             persistence_s, persistence_prefix, health_check) VALUES {}",
            placeholders(chunk.len(), 10)
        );
        let mut q = sqlx::query(&sql);
        for (i, s) in chunk.iter().enumerate() {
            q = q
                .bind(id)
                .bind(position(chunk_no, i))
                .bind(&s.vip)
                .bind(i64::from(s.port))
                .bind(s.protocol.as_str())
                .bind(s.scheduler.as_str())
                .bind(s.forward.as_str())
                .bind(i64::from(s.persistence_s))
                .bind(s.persistence_prefix.map(i64::from))
                .bind(&checks[chunk_no * ROWS_PER_INSERT + i]);
        }
        q.execute(&mut *conn).await?;
    }
    // The services' ids by position (a multi-row INSERT's RETURNING order is not promised).
    let ids: Vec<(i64, i64)> =
        sqlx::query_as("SELECT position, id FROM virtual_services WHERE cluster_id = $1")
            .bind(id)
            .fetch_all(&mut *conn)
            .await?;
    let mut service_ids = vec![None; spec.services.len()];
    for (pos, sid) in ids {
        if let Some(slot) = usize::try_from(pos)
            .ok()
            .and_then(|p| service_ids.get_mut(p))
        {
            *slot = Some(sid);
        }
    }
    let mut rows = Vec::new();
    for (s, sid) in spec.services.iter().zip(&service_ids) {
        let sid = sid.ok_or_else(|| corrupt("virtual_services", "a service row went missing"))?;
        rows.extend(
            s.real_servers
                .iter()
                .enumerate()
                .map(|(pos, r)| (sid, pos, r)),
        );
    }
    insert_real_servers(conn, &rows).await
}

/// Rows inserted per statement: one round trip for many rows (a 30,000-real-server role is 300 statements,
/// not 30,000), at most 1,000 parameters, far under SQLite's and PostgreSQL's limits.
const ROWS_PER_INSERT: usize = 100;

/// `($1, .., $cols), ($cols+1, ..), ..` for `rows` rows.
fn placeholders(rows: usize, cols: usize) -> String {
    let mut sql = String::with_capacity(rows * cols * 5);
    for r in 0..rows {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..cols {
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push('$');
            sql.push_str(&(r * cols + c + 1).to_string());
        }
        sql.push(')');
    }
    sql
}

/// The position of row `i` of chunk `chunk_no`.
fn position(chunk_no: usize, i: usize) -> i64 {
    i64::try_from(chunk_no * ROWS_PER_INSERT + i).unwrap_or(i64::MAX)
}

/// Inserts real servers (service id, position in the service, spec), many rows a statement, across services.
async fn insert_real_servers(
    conn: &mut Conn,
    rows: &[(i64, usize, &RealServerSpec)],
) -> Result<(), StoreError> {
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let sql = format!(
            "INSERT INTO real_servers (service_id, position, address, port, weight, enabled) VALUES {}",
            placeholders(chunk.len(), 6)
        );
        let mut q = sqlx::query(&sql);
        for (sid, pos, r) in chunk {
            q = q
                .bind(*sid)
                .bind(i64::try_from(*pos).unwrap_or(i64::MAX))
                .bind(&r.address)
                .bind(i64::from(r.port))
                .bind(i64::from(r.weight))
                .bind(i64::from(r.enabled.unwrap_or(true)));
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

async fn insert_real_server(
    conn: &mut Conn,
    service_id: i64,
    position: i64,
    r: &RealServerSpec,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO real_servers (service_id, position, address, port, weight, enabled) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(service_id)
    .bind(position)
    .bind(&r.address)
    .bind(i64::from(r.port))
    .bind(i64::from(r.weight))
    .bind(i64::from(r.enabled.unwrap_or(true)))
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks the cluster's content as changed at fleet generation `generation`.
pub async fn touch(conn: &mut Conn, id: i64, generation: u64) -> Result<(), StoreError> {
    let g =
        i64::try_from(generation).map_err(|_| StoreError::Corrupt("generation overflow".into()))?;
    sqlx::query("UPDATE clusters SET updated_at = $1, content_generation = $2 WHERE id = $3")
        .bind(now_ms())
        .bind(g)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn content_generation(conn: &mut Conn, id: i64) -> Result<Option<i64>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT content_generation FROM clusters WHERE id = $1")
            .bind(id)
            .fetch_optional(conn)
            .await?,
    )
}

pub async fn delete(conn: &mut Conn, id: i64) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM clusters WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Fleet-wide keys owned by clusters other than `except` (to name the owner of a conflict).
#[derive(Debug, Default)]
pub struct OtherKeys {
    /// (interface, vrid) -> cluster name
    pub vrids: HashMap<(String, u32), String>,
    /// VIP address -> cluster name
    pub vips: HashMap<String, String>,
    /// (vip, port, protocol) -> cluster name
    pub services: HashMap<(String, u16, String), String>,
}

impl OtherKeys {
    /// Records `spec`'s keys as owned by cluster `name`.
    pub fn add(&mut self, name: &str, spec: &ClusterSpec) {
        self.vrids
            .insert((spec.interface.clone(), spec.vrid), name.to_owned());
        for vip in &spec.vips {
            self.vips.insert(vip.addr().to_owned(), name.to_owned());
        }
        for s in &spec.services {
            self.services.insert(
                (s.vip.clone(), s.port, s.protocol.to_string()),
                name.to_owned(),
            );
        }
    }
}

pub async fn other_keys(conn: &mut Conn, except: Option<i64>) -> Result<OtherKeys, StoreError> {
    let except = except.unwrap_or(-1);
    let mut keys = OtherKeys::default();
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT name, interface, vrid FROM clusters WHERE id != $1")
            .bind(except)
            .fetch_all(&mut *conn)
            .await?;
    for (name, iface, vrid) in rows {
        keys.vrids
            .insert((iface, int("clusters.vrid", vrid)?), name);
    }
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.name, v.address FROM cluster_vips v JOIN clusters c ON c.id = v.cluster_id WHERE c.id != $1",
    )
    .bind(except)
    .fetch_all(&mut *conn)
    .await?;
    for (name, addr) in rows {
        keys.vips.insert(addr, name);
    }
    let rows: Vec<(String, String, i64, String)> = sqlx::query_as(
        "SELECT c.name, s.vip, s.port, s.protocol FROM virtual_services s JOIN clusters c ON c.id = s.cluster_id \
         WHERE c.id != $1",
    )
    .bind(except)
    .fetch_all(&mut *conn)
    .await?;
    for (name, vip, port, proto) in rows {
        keys.services
            .insert((vip, int("virtual_services.port", port)?, proto), name);
    }
    Ok(keys)
}

/// Identifies one real server: its service (protocol, vip, port) and its own address and port. The one key
/// for a real server everywhere: specs, agent reports, the dashboard's health map and the store.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RealServerKey {
    pub protocol: Protocol,
    pub vip: String,
    pub port: u16,
    pub address: String,
    pub rs_port: u16,
}

impl RealServerKey {
    pub fn new(protocol: Protocol, vip: &str, port: u16, address: &str, rs_port: u16) -> Self {
        RealServerKey {
            protocol,
            vip: vip.to_owned(),
            port,
            address: address.to_owned(),
            rs_port,
        }
    }

    /// The key of real server `rs` of service `svc` in a cluster spec.
    pub fn of_spec(svc: &ServiceSpec, rs: &RealServerSpec) -> Self {
        RealServerKey {
            protocol: svc.protocol,
            vip: svc.vip.clone(),
            port: svc.port,
            address: rs.address.clone(),
            rs_port: rs.port,
        }
    }

    /// The key of a real server as an agent reports it.
    pub fn of_report(svc: &ServiceReport, rs: &RealServerReport) -> Self {
        RealServerKey {
            protocol: svc.protocol,
            vip: svc.vip.clone(),
            port: svc.port,
            address: rs.address.clone(),
            rs_port: rs.port,
        }
    }
}

async fn service_id(
    conn: &mut Conn,
    cluster_id: i64,
    vip: &str,
    port: u16,
    protocol: &str,
) -> Result<Option<i64>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT id FROM virtual_services WHERE cluster_id = $1 AND vip = $2 AND port = $3 AND protocol = $4",
    )
    .bind(cluster_id)
    .bind(vip)
    .bind(i64::from(port))
    .bind(protocol)
    .fetch_optional(conn)
    .await?)
}

/// Appends a real server to a service. Returns false if the service does not exist.
pub async fn add_real_server(
    conn: &mut Conn,
    cluster_id: i64,
    key: &RealServerKey,
    r: &RealServerSpec,
) -> Result<bool, StoreError> {
    let Some(sid) = service_id(conn, cluster_id, &key.vip, key.port, key.protocol.as_str()).await?
    else {
        return Ok(false);
    };
    let pos: i64 = sqlx::query_scalar(
        "SELECT COALESCE(MAX(position) + 1, 0) FROM real_servers WHERE service_id = $1",
    )
    .bind(sid)
    .fetch_one(&mut *conn)
    .await?;
    insert_real_server(conn, sid, pos, r).await?;
    Ok(true)
}

/// Changes one real server's weight and enabled flag; returns the number of rows changed (0 or 1).
pub async fn update_real_server(
    conn: &mut Conn,
    cluster_id: i64,
    key: &RealServerKey,
    weight: u32,
    enabled: bool,
) -> Result<u64, StoreError> {
    let Some(sid) = service_id(conn, cluster_id, &key.vip, key.port, key.protocol.as_str()).await?
    else {
        return Ok(0);
    };
    Ok(sqlx::query("UPDATE real_servers SET weight = $1, enabled = $2 WHERE service_id = $3 AND address = $4 AND port = $5")
        .bind(i64::from(weight))
        .bind(i64::from(enabled))
        .bind(sid)
        .bind(&key.address)
        .bind(i64::from(key.rs_port))
        .execute(conn)
        .await?
        .rows_affected())
}

pub async fn delete_real_server(
    conn: &mut Conn,
    cluster_id: i64,
    key: &RealServerKey,
) -> Result<u64, StoreError> {
    let Some(sid) = service_id(conn, cluster_id, &key.vip, key.port, key.protocol.as_str()).await?
    else {
        return Ok(0);
    };
    Ok(
        sqlx::query(
            "DELETE FROM real_servers WHERE service_id = $1 AND address = $2 AND port = $3",
        )
        .bind(sid)
        .bind(&key.address)
        .bind(i64::from(key.rs_port))
        .execute(conn)
        .await?
        .rows_affected(),
    )
}

pub async fn count(conn: &mut Conn) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM clusters")
        .fetch_one(conn)
        .await?)
}

/// Whether a cluster of this name exists (without loading it: a cluster may hold 30,000 real servers).
pub async fn exists(conn: &mut Conn, name: &str) -> Result<bool, StoreError> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM clusters WHERE name = $1")
        .bind(name)
        .fetch_one(conn)
        .await?;
    Ok(n > 0)
}
