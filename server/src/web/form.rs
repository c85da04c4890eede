//! Helpers shared by the dashboard's forms: the outcome redirect, read-modify-write of a cluster spec, and small
//! field parsers.

use axum::response::Response;
use lbfleet_proto::ClusterSpec;
use serde::Deserialize;

use super::error::{fleet_error_text, WebError};
use super::flash::redirect_with;
use crate::fleet::{Actor, FleetError, Precondition, PutOutcome};
use crate::state::AppState;

/// The outcome of a form: back to `back` with a message; refusals by the fleet's rules are messages too.
pub(super) fn done(back: &str, result: Result<String, FleetError>) -> Result<Response, WebError> {
    match result {
        Ok(msg) => Ok(redirect_with(back, true, &msg)),
        Err(FleetError::Store(e)) if !e.is_constraint() => Err(FleetError::Store(e).into()),
        Err(e) => Ok(redirect_with(back, false, &fleet_error_text(&e).1)),
    }
}

/// Read-modify-write of a cluster's spec that never overwrites a concurrent change: the write carries the
/// revision the edit was computed from, and when someone changed the cluster in between, `edit` is applied again
/// to the fresh spec (at most 3 more times). `edit` refuses with a message for the operator (`Ok(Err(..))`).
pub(super) async fn edit_spec<T>(
    s: &AppState,
    actor: &Actor,
    name: &str,
    mut edit: impl FnMut(&mut ClusterSpec) -> Result<T, String>,
) -> Result<Result<(T, PutOutcome), String>, FleetError> {
    let mut retries = 0;
    loop {
        let current = s.fleet.get_cluster(name).await?;
        let mut spec = current.spec;
        let out = match edit(&mut spec) {
            Ok(v) => v,
            Err(m) => return Ok(Err(m)),
        };
        match s
            .fleet
            .put_cluster_if(actor, name, &spec, Precondition::Revision(current.revision))
            .await
        {
            Ok((outcome, _)) => return Ok(Ok((out, outcome))),
            Err(FleetError::PreconditionFailed(m)) if retries < 3 => {
                retries += 1;
                tracing::debug!(
                    cluster = name,
                    retries,
                    reason = m,
                    "cluster changed meanwhile; edit re-applied"
                );
            }
            Err(e) => return Err(e),
        }
    }
}

pub(super) fn default_back() -> String {
    "/".into()
}

/// A form that carries nothing but its CSRF token.
#[derive(Deserialize)]
pub struct Empty {}

pub(super) fn non_empty(s: &str) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_owned())
}
