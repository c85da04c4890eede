//! People and automation: users, passwords, API tokens, login sessions, and the first admin. Secrets are stored
//! only as hashes; callers hand in hashes, never plain tokens.

use std::time::Duration;

use lbfleet_proto::UserRole;
use serde_json::json;

use super::{rules, Actor, FieldError, Fleet, FleetError, Result};
use crate::audit::AuditAction;
use crate::secrets;
use crate::store::{self, now_ms, StoreError};

impl Fleet {
    /// Creates a user; returns the password (generated when `password` is `None`).
    pub async fn create_user(
        &self,
        actor: &Actor,
        name: &str,
        role: UserRole,
        password: Option<String>,
    ) -> Result<String> {
        rules::hostname(name).map_err(|e| FieldError::new("name", e.message))?;
        let password = password.unwrap_or_else(secrets::new_password);
        rules::password(&password)?;
        let hash = hash_password(password.clone()).await?;
        let mut tx = self.store.begin().await?;
        if store::auth::user_by_name(&mut tx, name).await?.is_some() {
            return Err(FleetError::Conflict(format!(
                "user {name:?} already exists"
            )));
        }
        store::auth::insert_user(&mut tx, name, role.as_str(), &hash).await?;
        store::audit::append(
            &mut tx,
            &actor.0,
            AuditAction::UserCreate,
            &format!("user:{name}"),
            None,
            Some(&json!({"role": role})),
        )
        .await?;
        store::commit(tx).await?;
        Ok(password)
    }

    pub async fn set_password(
        &self,
        actor: &Actor,
        name: &str,
        password: Option<String>,
    ) -> Result<String> {
        let password = password.unwrap_or_else(secrets::new_password);
        rules::password(&password)?;
        let hash = hash_password(password.clone()).await?;
        let mut tx = self.store.begin().await?;
        let user = store::auth::user_by_name(&mut tx, name)
            .await?
            .ok_or_else(|| FleetError::NotFound(format!("no user {name:?}")))?;
        store::auth::set_password(&mut tx, user.id, &hash).await?;
        store::audit::append(
            &mut tx,
            &actor.0,
            AuditAction::UserPassword,
            &format!("user:{name}"),
            None,
            None,
        )
        .await?;
        store::commit(tx).await?;
        Ok(password)
    }

    pub async fn delete_user(&self, actor: &Actor, name: &str) -> Result<()> {
        let mut tx = self.store.begin().await?;
        let user = store::auth::user_by_name(&mut tx, name)
            .await?
            .ok_or_else(|| FleetError::NotFound(format!("no user {name:?}")))?;
        if user.role == "admin" {
            let admins = store::auth::users(&mut tx)
                .await?
                .iter()
                .filter(|u| u.role == "admin" && !u.disabled)
                .count();
            if admins <= 1 {
                return Err(FleetError::Conflict("cannot delete the last admin".into()));
            }
        }
        store::auth::delete_user(&mut tx, user.id).await?;
        store::audit::append(
            &mut tx,
            &actor.0,
            AuditAction::UserDelete,
            &format!("user:{name}"),
            Some(&json!({"role": user.role})),
            None,
        )
        .await?;
        store::commit(tx).await?;
        Ok(())
    }

    /// Creates an API token for a user; the plain token is returned once.
    pub async fn create_token(
        &self,
        actor: &Actor,
        user: &str,
        label: &str,
        ttl: Option<Duration>,
    ) -> Result<(i64, String)> {
        if label.is_empty() || label.len() > 64 || label.chars().any(|c| c.is_control()) {
            return Err(FieldError::new(
                "name",
                "must be 1 to 64 characters without control characters",
            )
            .into());
        }
        let mut tx = self.store.begin().await?;
        let u = store::auth::user_by_name(&mut tx, user)
            .await?
            .ok_or_else(|| FleetError::NotFound(format!("no user {user:?}")))?;
        let token = secrets::new_secret(secrets::API_TOKEN_PREFIX);
        let expires_at =
            ttl.map(|t| now_ms().saturating_add(i64::try_from(t.as_millis()).unwrap_or(i64::MAX)));
        let id = store::auth::insert_token(
            &mut tx,
            u.id,
            label,
            &secrets::hash_secret(&token),
            expires_at,
        )
        .await?;
        store::audit::append(
            &mut tx,
            &actor.0,
            AuditAction::TokenCreate,
            &format!("user:{user}"),
            None,
            Some(&json!({"token_id": id, "name": label, "expires_at": expires_at})),
        )
        .await?;
        store::commit(tx).await?;
        Ok((id, token))
    }

    pub async fn revoke_token(&self, actor: &Actor, id: i64) -> Result<()> {
        let mut tx = self.store.begin().await?;
        if store::auth::delete_token(&mut tx, id).await? == 0 {
            return Err(FleetError::NotFound(format!("no API token with id {id}")));
        }
        store::audit::append(
            &mut tx,
            &actor.0,
            AuditAction::TokenRevoke,
            &format!("token:{id}"),
            None,
            None,
        )
        .await?;
        store::commit(tx).await?;
        Ok(())
    }

    /// Creates the first admin if there are no users at all; returns its generated password.
    pub async fn bootstrap_admin(&self) -> Result<Option<String>> {
        let mut conn = self.store.read().await?;
        if store::auth::user_count(&mut conn).await? > 0 {
            return Ok(None);
        }
        drop(conn);
        Ok(Some(
            self.create_user(&Actor::system(), "admin", UserRole::Admin, None)
                .await?,
        ))
    }

    /// Every user, by name.
    pub async fn users(&self) -> Result<Vec<store::auth::UserRow>> {
        let mut conn = self.store.read().await?;
        Ok(store::auth::users(&mut conn).await?)
    }

    /// One user with its password hash (for a login check), `None` if unknown.
    pub async fn user_for_login(&self, name: &str) -> Result<Option<store::auth::UserRow>> {
        let mut conn = self.store.read().await?;
        Ok(store::auth::user_by_name(&mut conn, name).await?)
    }

    /// Every API token (never the token itself).
    pub async fn tokens(&self) -> Result<Vec<store::auth::TokenRow>> {
        let mut conn = self.store.read().await?;
        Ok(store::auth::tokens(&mut conn).await?)
    }

    /// The enabled user behind an unexpired API token, by the token's hash.
    pub async fn token_principal(
        &self,
        token_hash: &str,
    ) -> Result<Option<store::auth::Principal>> {
        let mut conn = self.store.read().await?;
        Ok(store::auth::token_principal(&mut conn, token_hash).await?)
    }

    /// The enabled user behind an unexpired session, with the session's CSRF token, by the session's hash.
    pub async fn session_principal(
        &self,
        session_hash: &str,
    ) -> Result<Option<store::auth::Principal>> {
        let mut conn = self.store.read().await?;
        Ok(store::auth::session(&mut conn, session_hash).await?)
    }

    /// Marks an API token used now (`auth::token_use` calls this at most once a minute per token).
    pub async fn touch_token(&self, token_hash: &str) -> Result<()> {
        let mut tx = self.store.begin().await?;
        store::auth::touch_token(&mut tx, token_hash).await?;
        store::commit(tx).await?;
        Ok(())
    }

    /// Stores a new session (expired ones are swept at the same time).
    pub async fn start_session(
        &self,
        session_hash: &str,
        csrf_token: &str,
        user_id: i64,
        expires_at: i64,
    ) -> Result<()> {
        let mut tx = self.store.begin().await?;
        store::auth::insert_session(&mut tx, session_hash, csrf_token, user_id, expires_at).await?;
        store::commit(tx).await?;
        Ok(())
    }

    /// Ends a session (logout); unknown sessions are fine.
    pub async fn end_session(&self, session_hash: &str) -> Result<()> {
        let mut tx = self.store.begin().await?;
        store::auth::delete_session(&mut tx, session_hash).await?;
        store::commit(tx).await?;
        Ok(())
    }
}

async fn hash_password(password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || secrets::hash_password(&password))
        .await
        .map_err(|e| StoreError::Corrupt(format!("password hashing task failed: {e}")))?
        .map_err(|e| FleetError::Store(StoreError::Corrupt(e.to_string())))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{admin, fleet};
    use super::*;

    #[tokio::test]
    async fn users_tokens_and_sessions() {
        let (f, _dir) = fleet().await;
        let first = f.bootstrap_admin().await.expect("bootstrap");
        assert!(first.is_some_and(|p| p.len() >= 12));
        assert_eq!(f.bootstrap_admin().await.expect("again"), None);
        let err = f
            .create_user(&admin(), "alice", UserRole::Viewer, Some("short".into()))
            .await
            .expect_err("short password");
        assert!(matches!(err, FleetError::Invalid(_)));
        f.create_user(
            &admin(),
            "alice",
            UserRole::Operator,
            Some("a long password".into()),
        )
        .await
        .expect("create");
        assert!(matches!(
            f.create_user(&admin(), "alice", UserRole::Viewer, None)
                .await,
            Err(FleetError::Conflict(_))
        ));
        let names: Vec<String> = f
            .users()
            .await
            .expect("users")
            .into_iter()
            .map(|u| u.name)
            .collect();
        assert_eq!(names, ["admin", "alice"]);
        assert!(matches!(
            f.delete_user(&admin(), "admin").await,
            Err(FleetError::Conflict(_))
        ));

        let (id, token) = f
            .create_token(&admin(), "alice", "ci", None)
            .await
            .expect("token");
        let p = f
            .token_principal(&secrets::hash_secret(&token))
            .await
            .expect("lookup")
            .expect("principal");
        assert_eq!((p.name.as_str(), p.role.as_str()), ("alice", "operator"));
        assert_eq!(f.tokens().await.expect("tokens").len(), 1);
        f.revoke_token(&admin(), id).await.expect("revoke");
        assert!(f
            .token_principal(&secrets::hash_secret(&token))
            .await
            .expect("lookup")
            .is_none());

        let alice = f
            .user_for_login("alice")
            .await
            .expect("user")
            .expect("alice");
        f.start_session("hash-1", "csrf-1", alice.id, now_ms() + 60_000)
            .await
            .expect("session");
        let s = f
            .session_principal("hash-1")
            .await
            .expect("lookup")
            .expect("session");
        assert_eq!(s.csrf_token.as_deref(), Some("csrf-1"));
        f.end_session("hash-1").await.expect("end");
        assert!(f
            .session_principal("hash-1")
            .await
            .expect("lookup")
            .is_none());
        f.delete_user(&admin(), "alice").await.expect("delete");
        assert!(f.user_for_login("alice").await.expect("user").is_none());
    }
}
