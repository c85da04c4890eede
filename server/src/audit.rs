//! The tamper-evident audit chain: how a row's hash is computed and how a sequence of rows is verified.
//!
//! `hash = SHA-256(seq ‖ at ‖ actor ‖ action ‖ target ‖ before ‖ after ‖ prev_hash)`, each field length-prefixed
//! (a missing JSON value has its own marker), so no two different rows encode alike. Editing a row breaks its
//! hash; deleting one breaks the next row's `prev_hash` (or, for the newest rows, the stored chain head).

use lbfleet_proto::wire_enum;
use serde::Serialize;
use sha2::{Digest, Sha256};

wire_enum!(
    /// What an audit row records; the wire name is what the row stores (and what its hash covers).
    AuditAction {
        ClusterCreate => "cluster.create", ClusterUpdate => "cluster.update", ClusterDelete => "cluster.delete",
        ClusterSwitchover => "cluster.switchover",
        RealServerAdd => "real_server.add", RealServerRemove => "real_server.remove",
        RealServerWeight => "real_server.weight", RealServerEnable => "real_server.enable",
        RealServerDrain => "real_server.drain",
        NodeRegister => "node.register", NodeDiscover => "node.discover", NodeApprove => "node.approve",
        NodeReject => "node.reject", NodeAssign => "node.assign", NodeUnassign => "node.unassign",
        NodeRetire => "node.retire", NodeEnrollmentToken => "node.enrollment_token", NodeEnroll => "node.enroll",
        NodeServing => "node.serving", NodeImage => "node.image",
        NodeExpectBoot => "node.expect_boot", NodeCircuitPin => "node.circuit_pin",
        ImageCreate => "image.create", ImageUpdate => "image.update", ImageDelete => "image.delete",
        UserCreate => "user.create", UserPassword => "user.password", UserDelete => "user.delete",
        TokenCreate => "token.create", TokenRevoke => "token.revoke",
        AlertAcknowledge => "alert.acknowledge",
        ServerRemove => "server.remove",
        NodeReboot => "node.reboot",
        RolloutCreate => "rollout.create", RolloutStep => "rollout.step", RolloutPause => "rollout.pause",
        RolloutResume => "rollout.resume", RolloutAbort => "rollout.abort",
    }
);

/// Hash that the first row chains from.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audit row as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct AuditRow {
    pub seq: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub before_json: Option<String>,
    pub after_json: Option<String>,
    pub prev_hash: String,
    pub hash: String,
}

/// Computes the hash of a row from its fields and its predecessor's hash.
#[allow(clippy::too_many_arguments)]
pub fn row_hash(
    seq: i64,
    at: i64,
    actor: &str,
    action: &str,
    target: &str,
    before: Option<&str>,
    after: Option<&str>,
    prev_hash: &str,
) -> String {
    let mut h = Sha256::new();
    h.update(b"lbfleet-audit-v1");
    h.update(seq.to_be_bytes());
    h.update(at.to_be_bytes());
    for field in [
        Some(actor),
        Some(action),
        Some(target),
        before,
        after,
        Some(prev_hash),
    ] {
        match field {
            Some(s) => {
                h.update((s.len() as u64).to_be_bytes());
                h.update(s.as_bytes());
            }
            None => h.update(u64::MAX.to_be_bytes()),
        }
    }
    hex::encode(h.finalize())
}

/// Outcome of verifying the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    pub ok: bool,
    pub rows: u64,
    /// Hash of the newest row: record it elsewhere to detect a rewrite of the whole chain.
    pub head_hash: String,
    /// The first problem found, if any.
    pub problem: Option<String>,
    /// Sequence number of the first bad row.
    pub bad_seq: Option<i64>,
}

/// Incremental verifier: feed rows in `seq` order, then `finish` with the stored chain head.
#[derive(Debug)]
pub struct Verifier {
    expected_seq: i64,
    prev_hash: String,
    rows: u64,
    problem: Option<(i64, String)>,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier {
            expected_seq: 1,
            prev_hash: GENESIS.to_owned(),
            rows: 0,
            problem: None,
        }
    }
}

impl Verifier {
    pub fn push(&mut self, r: &AuditRow) {
        if self.problem.is_some() {
            return;
        }
        self.rows += 1;
        if r.seq != self.expected_seq {
            self.problem = Some((
                self.expected_seq,
                format!(
                    "row {} is missing (next row present is {})",
                    self.expected_seq, r.seq
                ),
            ));
            return;
        }
        if r.prev_hash != self.prev_hash {
            self.problem = Some((
                r.seq,
                format!("row {} does not chain to row {}", r.seq, r.seq - 1),
            ));
            return;
        }
        let computed = row_hash(
            r.seq,
            r.at,
            &r.actor,
            &r.action,
            &r.target,
            r.before_json.as_deref(),
            r.after_json.as_deref(),
            &r.prev_hash,
        );
        if computed != r.hash {
            self.problem = Some((
                r.seq,
                format!(
                    "row {} was modified: its content does not match its hash",
                    r.seq
                ),
            ));
            return;
        }
        self.prev_hash = r.hash.clone();
        self.expected_seq += 1;
    }

    pub fn finish(self, head_seq: i64, head_hash: &str) -> Verification {
        let mut problem = self.problem;
        if problem.is_none() && (head_seq != self.expected_seq - 1 || head_hash != self.prev_hash) {
            problem = Some((
                self.expected_seq,
                format!(
                    "chain ends at row {} but the recorded head is row {head_seq}: newest rows were removed or altered",
                    self.expected_seq - 1
                ),
            ));
        }
        Verification {
            ok: problem.is_none(),
            rows: self.rows,
            head_hash: self.prev_hash,
            bad_seq: problem.as_ref().map(|p| p.0),
            problem: problem.map(|p| p.1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<AuditRow> {
        let mut prev = GENESIS.to_owned();
        (1..=n)
            .map(|seq| {
                let after = format!("{{\"n\":{seq}}}");
                let hash = row_hash(
                    seq,
                    1000 + seq,
                    "admin",
                    "cluster.put",
                    "cluster:ext",
                    None,
                    Some(&after),
                    &prev,
                );
                let row = AuditRow {
                    seq,
                    at: 1000 + seq,
                    actor: "admin".into(),
                    action: "cluster.put".into(),
                    target: "cluster:ext".into(),
                    before_json: None,
                    after_json: Some(after),
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                };
                prev = hash;
                row
            })
            .collect()
    }

    fn verify(rows: &[AuditRow], head: (i64, &str)) -> Verification {
        let mut v = Verifier::default();
        rows.iter().for_each(|r| v.push(r));
        v.finish(head.0, head.1)
    }

    #[test]
    fn intact_chain_verifies() {
        let rows = chain(5);
        let head = rows[4].hash.clone();
        let v = verify(&rows, (5, &head));
        assert!(v.ok, "{v:?}");
        assert_eq!(v.rows, 5);
        assert!(verify(&[], (0, GENESIS)).ok);
    }

    #[test]
    fn edited_deleted_and_truncated_rows_are_detected() {
        let rows = chain(5);
        let head = rows[4].hash.clone();

        let mut edited = rows.clone();
        edited[2].actor = "mallory".into();
        let v = verify(&edited, (5, &head));
        assert_eq!((v.ok, v.bad_seq), (false, Some(3)));

        let mut deleted = rows.clone();
        deleted.remove(1);
        let v = verify(&deleted, (5, &head));
        assert_eq!((v.ok, v.bad_seq), (false, Some(2)));

        let v = verify(&rows[..4], (5, &head));
        assert!(!v.ok && v.problem.is_some_and(|p| p.contains("newest rows")));

        // A null before/after differs from an empty string.
        assert_ne!(
            row_hash(1, 1, "a", "b", "c", None, None, GENESIS),
            row_hash(1, 1, "a", "b", "c", Some(""), None, GENESIS)
        );
    }
}
