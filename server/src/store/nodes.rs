//! Nodes, their assignments, role generations and agent reports.

use lbfleet_proto::{NodeState, Role};

use super::{now_ms, Conn, StoreError};

/// A node with its assignment (if any), as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct NodeRow {
    pub id: i64,
    pub mac: String,
    pub hostname: Option<String>,
    #[sqlx(try_from = "String")]
    pub state: NodeState,
    pub image: Option<String>,
    pub address: Option<String>,
    pub reserved_address: Option<String>,
    pub role_generation: i64,
    pub applied_generation: i64,
    pub agent_version: Option<String>,
    pub image_version: Option<String>,
    pub vrrp_state: Option<String>,
    pub last_report: Option<String>,
    pub last_seen_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub cluster_id: Option<i64>,
    pub cluster: Option<String>,
    pub role: Option<String>,
    pub priority: Option<i64>,
    /// Remote reboot requests so far (goes into the role document).
    pub reboot_generation: i64,
    /// When a reboot was requested and the node has not enrolled since (ms since the epoch).
    pub reboot_requested_at: Option<i64>,
    /// When its reports started to say MASTER, by the server's clock (the first report carrying its newest
    /// transition to MASTER); `None` when not master.
    pub master_since_at: Option<i64>,
}

impl NodeRow {
    /// The name the node goes by: its hostname, else its MAC.
    pub fn name(&self) -> &str {
        self.hostname.as_deref().unwrap_or(&self.mac)
    }
}

const SELECT_NODE: &str = "SELECT n.id, n.mac, n.hostname, n.state, n.image, n.address, n.reserved_address, n.role_generation, \
     n.applied_generation, n.agent_version, n.image_version, n.vrrp_state, n.last_report, n.last_seen_at, \
     n.created_at, n.updated_at, a.cluster_id, c.name AS cluster, a.role, a.priority, n.reboot_generation, n.reboot_requested_at, n.master_since_at \
     FROM nodes n LEFT JOIN assignments a ON a.node_id = n.id LEFT JOIN clusters c ON c.id = a.cluster_id";

/// How a node is named in a URL: numeric id, MAC, or hostname.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKey {
    Id(i64),
    Mac(String),
    Hostname(String),
}

pub async fn get(conn: &mut Conn, key: &NodeKey) -> Result<Option<NodeRow>, StoreError> {
    let sql = match key {
        NodeKey::Id(_) => format!("{SELECT_NODE} WHERE n.id = $1"),
        NodeKey::Mac(_) => format!("{SELECT_NODE} WHERE n.mac = $1"),
        NodeKey::Hostname(_) => format!("{SELECT_NODE} WHERE n.hostname = $1"),
    };
    let q = sqlx::query_as(&sql);
    let q = match key {
        NodeKey::Id(id) => q.bind(*id),
        NodeKey::Mac(text) | NodeKey::Hostname(text) => q.bind(text.clone()),
    };
    Ok(q.fetch_optional(conn).await?)
}

/// Filters for listing nodes; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct NodeFilter {
    pub state: Option<NodeState>,
    pub cluster: Option<String>,
}

pub async fn list(conn: &mut Conn, f: &NodeFilter) -> Result<Vec<NodeRow>, StoreError> {
    let sql = format!(
        "{SELECT_NODE} WHERE ($1 IS NULL OR n.state = $1) AND ($2 IS NULL OR c.name = $2) ORDER BY n.id"
    );
    Ok(sqlx::query_as(&sql)
        .bind(f.state.map(NodeState::as_str))
        .bind(f.cluster.clone())
        .fetch_all(conn)
        .await?)
}

pub async fn insert(
    conn: &mut Conn,
    mac: &str,
    hostname: Option<&str>,
    state: NodeState,
    image: Option<&str>,
) -> Result<i64, StoreError> {
    let now = now_ms();
    Ok(sqlx::query_scalar(
        "INSERT INTO nodes (mac, hostname, state, image, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5) RETURNING id",
    )
    .bind(mac)
    .bind(hostname)
    .bind(state.as_str())
    .bind(image)
    .bind(now)
    .fetch_one(conn)
    .await?)
}

pub async fn set_state(conn: &mut Conn, id: i64, state: NodeState) -> Result<(), StoreError> {
    sqlx::query("UPDATE nodes SET state = $1, updated_at = $2 WHERE id = $3")
        .bind(state.as_str())
        .bind(now_ms())
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn set_reserved_address(
    conn: &mut Conn,
    id: i64,
    address: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE nodes SET reserved_address = $1, updated_at = $2 WHERE id = $3")
        .bind(address)
        .bind(now_ms())
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn address_reserved_by(
    conn: &mut Conn,
    address: &str,
) -> Result<Option<String>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT COALESCE(hostname, mac) FROM nodes WHERE reserved_address = $1")
            .bind(address)
            .fetch_optional(conn)
            .await?,
    )
}

pub async fn set_identity(
    conn: &mut Conn,
    id: i64,
    hostname: Option<&str>,
    image: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE nodes SET hostname = $1, image = $2, updated_at = $3 WHERE id = $4")
        .bind(hostname)
        .bind(image)
        .bind(now_ms())
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn hostname_taken(
    conn: &mut Conn,
    hostname: &str,
    except: i64,
) -> Result<bool, StoreError> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM nodes WHERE hostname = $1 AND id != $2")
        .bind(hostname)
        .bind(except)
        .fetch_one(conn)
        .await?;
    Ok(n > 0)
}

/// The nodes whose role generation is newer than `after`, with it.
pub async fn generations_after(conn: &mut Conn, after: u64) -> Result<Vec<(i64, u64)>, StoreError> {
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let rows: Vec<(i64, i64)> =
        sqlx::query_as("SELECT id, role_generation FROM nodes WHERE role_generation > $1")
            .bind(after)
            .fetch_all(conn)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(id, g)| (id, u64::try_from(g).unwrap_or(0)))
        .collect())
}

/// Sets `generation` as the role generation of the given nodes.
pub async fn set_generation(
    conn: &mut Conn,
    ids: &[i64],
    generation: u64,
) -> Result<(), StoreError> {
    let g =
        i64::try_from(generation).map_err(|_| StoreError::Corrupt("generation overflow".into()))?;
    // Up to 100 ids a statement: one round trip for many nodes (each statement is a hop to the database
    // thread on SQLite, a network round trip on PostgreSQL).
    for chunk in ids.chunks(SET_GENERATION_CHUNK) {
        let list: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "UPDATE nodes SET role_generation = $1 WHERE id IN ({})",
            list.join(", ")
        );
        let mut q = sqlx::query(&sql).bind(g);
        for id in chunk {
            q = q.bind(*id);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

const SET_GENERATION_CHUNK: usize = 100;

/// Sets `generation` as the role generation of every member of a cluster, in one statement; returns their
/// ids.
pub async fn set_cluster_generation(
    conn: &mut Conn,
    cluster_id: i64,
    generation: u64,
) -> Result<Vec<i64>, StoreError> {
    let g =
        i64::try_from(generation).map_err(|_| StoreError::Corrupt("generation overflow".into()))?;
    Ok(sqlx::query_scalar(
        "UPDATE nodes SET role_generation = $1 \
         WHERE id IN (SELECT node_id FROM assignments WHERE cluster_id = $2) RETURNING id",
    )
    .bind(g)
    .bind(cluster_id)
    .fetch_all(conn)
    .await?)
}

/// A node with its assignment, without its last report (for its role document).
pub async fn get_for_role(conn: &mut Conn, id: i64) -> Result<Option<NodeRow>, StoreError> {
    let sql = format!(
        "{} WHERE n.id = $1",
        SELECT_NODE.replace("n.last_report", "CAST(NULL AS TEXT) AS last_report")
    );
    Ok(sqlx::query_as(&sql).bind(id).fetch_optional(conn).await?)
}

/// A node's state and role generation: what a long-poll checks before it waits.
pub async fn role_state(conn: &mut Conn, id: i64) -> Result<Option<(NodeState, i64)>, StoreError> {
    let row: Option<(String, i64)> =
        sqlx::query_as("SELECT state, role_generation FROM nodes WHERE id = $1")
            .bind(id)
            .fetch_optional(conn)
            .await?;
    row.map(|(state, g)| {
        let state = state
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("state of node {id}: {e}")))?;
        Ok((state, g))
    })
    .transpose()
}

/// Every node whose role generation is `generation`, with its assignment, without its last report (the wake
/// path builds role documents from these; a report can be megabytes).
pub async fn at_generation(conn: &mut Conn, generation: i64) -> Result<Vec<NodeRow>, StoreError> {
    let sql = format!(
        "{} WHERE n.role_generation = $1 ORDER BY n.id",
        SELECT_NODE.replace("n.last_report", "CAST(NULL AS TEXT) AS last_report")
    );
    Ok(sqlx::query_as(&sql)
        .bind(generation)
        .fetch_all(conn)
        .await?)
}

pub async fn upsert_assignment(
    conn: &mut Conn,
    node_id: i64,
    cluster_id: i64,
    role: Role,
    priority: u8,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO assignments (node_id, cluster_id, role, priority, created_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (node_id) DO UPDATE SET cluster_id = excluded.cluster_id, role = excluded.role, \
         priority = excluded.priority",
    )
    .bind(node_id)
    .bind(cluster_id)
    .bind(role.as_str())
    .bind(i64::from(priority))
    .bind(now_ms())
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn delete_assignment(conn: &mut Conn, node_id: i64) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM assignments WHERE node_id = $1")
        .bind(node_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// One member of a cluster.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Member {
    pub node_id: i64,
    pub name: String,
    #[sqlx(try_from = "String")]
    pub role: Role,
    pub priority: i64,
    pub address: Option<String>,
}

pub async fn members(conn: &mut Conn, cluster_id: i64) -> Result<Vec<Member>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT a.node_id, COALESCE(n.hostname, n.mac) AS name, a.role, a.priority, n.address \
         FROM assignments a JOIN nodes n ON n.id = a.node_id WHERE a.cluster_id = $1 ORDER BY a.role, a.priority DESC, n.id",
    )
    .bind(cluster_id)
    .fetch_all(conn)
    .await?)
}

/// Members of every cluster, by cluster id (for listings).
pub async fn all_members(conn: &mut Conn) -> Result<Vec<(i64, Member)>, StoreError> {
    let rows: Vec<(i64, i64, String, String, i64, Option<String>)> = sqlx::query_as(
        "SELECT a.cluster_id, a.node_id, COALESCE(n.hostname, n.mac), a.role, a.priority, n.address \
         FROM assignments a JOIN nodes n ON n.id = a.node_id ORDER BY a.role, a.priority DESC, n.id",
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|(c, node_id, name, role, priority, address)| {
            let role = role
                .parse()
                .map_err(|e| StoreError::Corrupt(format!("assignment of node {node_id}: {e}")))?;
            Ok((
                c,
                Member {
                    node_id,
                    name,
                    role,
                    priority,
                    address,
                },
            ))
        })
        .collect()
}

/// What an agent report writes onto its node.
#[derive(Debug, Clone)]
pub struct ReportUpdate<'a> {
    pub applied_generation: i64,
    pub vrrp_state: Option<&'a str>,
    pub agent_version: Option<&'a str>,
    pub image_version: Option<&'a str>,
    pub address: Option<&'a str>,
    pub report_json: &'a str,
    /// The report carries a transition to MASTER the node's stored report did not: its mastership starts now
    /// (by this server's clock). Otherwise a master keeps the start already stored.
    pub new_takeover: bool,
}

/// Writes a report onto its node and numbers it: the node's report sequence number goes up by one, and the
/// new number is returned. With `base`, only if the node's number is still `base` (a delta merged into the
/// report numbered `base`); `None` when it is not (nothing written).
pub async fn record_report(
    conn: &mut Conn,
    id: i64,
    r: &ReportUpdate<'_>,
    base: Option<i64>,
) -> Result<Option<i64>, StoreError> {
    let now = now_ms();
    Ok(sqlx::query_scalar(
        "UPDATE nodes SET applied_generation = $1, vrrp_state = $2, agent_version = COALESCE($3, agent_version), \
         image_version = COALESCE($4, image_version), address = COALESCE($5, address), last_report = $6, \
         last_seen_at = $7, report_seq = report_seq + 1, \
         master_since_at = CASE WHEN $2 = 'master' THEN \
           (CASE WHEN $11 = 1 OR master_since_at IS NULL OR vrrp_state IS NULL OR vrrp_state <> 'master' THEN $7 \
            ELSE master_since_at END) ELSE NULL END \
         WHERE id = $8 AND ($9 = 0 OR report_seq = $10) RETURNING report_seq",
    )
    .bind(r.applied_generation)
    .bind(r.vrrp_state)
    .bind(r.agent_version)
    .bind(r.image_version)
    .bind(r.address)
    .bind(r.report_json)
    .bind(now)
    .bind(id)
    .bind(i64::from(base.is_some()))
    .bind(base.unwrap_or(0))
    .bind(i64::from(r.new_takeover))
    .fetch_optional(conn)
    .await?)
}

/// The sequence number of the report a node holds (0: none numbered), the base a delta must name.
pub async fn report_seq(conn: &mut Conn, id: i64) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT report_seq FROM nodes WHERE id = $1")
            .bind(id)
            .fetch_optional(conn)
            .await?
            .unwrap_or(0),
    )
}

/// Asks the node to reboot: one more reboot generation (the caller takes a new role generation so the
/// node's long-poll hands it out). Returns the new value.
pub async fn request_reboot(conn: &mut Conn, id: i64) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "UPDATE nodes SET reboot_generation = reboot_generation + 1, reboot_requested_at = $1, updated_at = $1 \
         WHERE id = $2 RETURNING reboot_generation",
    )
    .bind(now_ms())
    .bind(id)
    .fetch_one(conn)
    .await?)
}

/// The node enrolled after the reboot it was asked for.
pub async fn clear_reboot_request(conn: &mut Conn, id: i64) -> Result<(), StoreError> {
    sqlx::query("UPDATE nodes SET reboot_requested_at = NULL WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn set_versions(
    conn: &mut Conn,
    id: i64,
    agent_version: Option<&str>,
    image_version: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE nodes SET agent_version = COALESCE($1, agent_version), image_version = COALESCE($2, image_version), \
         last_seen_at = $3 WHERE id = $4",
    )
    .bind(agent_version)
    .bind(image_version)
    .bind(now_ms())
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Node counts by state (for metrics and the overview).
pub async fn count_by_state(conn: &mut Conn) -> Result<Vec<(String, i64)>, StoreError> {
    Ok(
        sqlx::query_as("SELECT state, COUNT(*) FROM nodes GROUP BY state ORDER BY state")
            .fetch_all(conn)
            .await?,
    )
}

pub async fn count_in_state(conn: &mut Conn, state: NodeState) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT COUNT(*) FROM nodes WHERE state = $1")
            .bind(state.as_str())
            .fetch_one(conn)
            .await?,
    )
}

/// Heartbeats heard by this server, `(node id, ms since the epoch)`: `last_seen_at` moves forward only (another
/// server, or a report, may have written a newer one). One statement for the whole batch.
pub async fn record_heartbeats(conn: &mut Conn, beats: &[(i64, i64)]) -> Result<(), StoreError> {
    if beats.is_empty() {
        return Ok(());
    }
    // `VALUES` columns are `column1`, `column2` in SQLite and PostgreSQL alike.
    let rows: Vec<String> = (0..beats.len())
        .map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2))
        .collect();
    let sql = format!(
        "UPDATE nodes SET last_seen_at = v.column2 FROM (VALUES {}) AS v \
         WHERE nodes.id = v.column1 AND (nodes.last_seen_at IS NULL OR nodes.last_seen_at < v.column2)",
        rows.join(", ")
    );
    let mut q = sqlx::query(&sql);
    for (id, at) in beats {
        q = q.bind(*id).bind(*at);
    }
    q.execute(conn).await?;
    Ok(())
}

/// `(id, last_seen_at)` of every node assigned to a cluster (what liveness watches).
pub async fn assigned_last_seen(conn: &mut Conn) -> Result<Vec<(i64, Option<i64>)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT n.id, n.last_seen_at FROM nodes n JOIN assignments a ON a.node_id = n.id",
    )
    .fetch_all(conn)
    .await?)
}
