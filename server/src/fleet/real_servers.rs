//! Real servers one at a time: add, remove, weight, drain and enable, each touching exactly one real server of one
//! service, with its own audit row. `ServiceRef` and `RealServerRef` name them in URLs.

use lbfleet_proto::RealServerSpec;

use super::{
    rules, socket_text, to_value, Actor, FieldError, FieldErrors, Fleet, FleetError, Result,
};
use crate::audit::AuditAction;
use crate::store::{
    self,
    clusters::{RealServerKey, StoredCluster},
};

/// A change to one real server through the fine-grained endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RealServerChange {
    Weight(u32),
    Enabled(bool),
}

impl Fleet {
    /// Adds one real server to one service; nothing else changes.
    pub async fn add_real_server(
        &self,
        actor: &Actor,
        cluster: &str,
        service: &ServiceRef,
        rs: &RealServerSpec,
    ) -> Result<RealServerSpec> {
        let mut tx = self.store.begin().await?;
        let c = Self::cluster_in(&mut tx, cluster).await?;
        let svc = service.find(&c)?;
        let mut errs = FieldErrors::default();
        let vip = svc.vip.parse().ok();
        let Some(mut rs) = rules::real_server(
            "real_server",
            rs,
            vip,
            svc,
            &rules::on_link_subnets(&c.spec),
            &mut errs,
        ) else {
            return Err(FleetError::Invalid(errs));
        };
        rs.enabled = Some(rs.enabled.unwrap_or(true));
        if svc
            .real_servers
            .iter()
            .any(|r| r.address == rs.address && r.port == rs.port)
        {
            return Err(FleetError::Conflict(format!(
                "real server {}:{} already exists in service {service}",
                rs.address, rs.port
            )));
        }
        let key = service.key(&rs.address, rs.port);
        store::clusters::add_real_server(&mut tx, c.id, &key, &rs).await?;
        self.finish_real_server_change(
            tx,
            actor,
            &c,
            AuditAction::RealServerAdd,
            &key,
            None,
            Some(&rs),
        )
        .await?;
        Ok(rs)
    }

    /// Removes one real server.
    pub async fn remove_real_server(
        &self,
        actor: &Actor,
        cluster: &str,
        service: &ServiceRef,
        rs: &RealServerRef,
    ) -> Result<()> {
        let mut tx = self.store.begin().await?;
        let c = Self::cluster_in(&mut tx, cluster).await?;
        let svc = service.find(&c)?;
        let current = rs.find(svc, service)?.clone();
        let key = service.key(&current.address, current.port);
        store::clusters::delete_real_server(&mut tx, c.id, &key).await?;
        self.finish_real_server_change(
            tx,
            actor,
            &c,
            AuditAction::RealServerRemove,
            &key,
            Some(&current),
            None,
        )
        .await
    }

    /// Sets one real server's weight, or drains / enables it.
    pub async fn change_real_server(
        &self,
        actor: &Actor,
        cluster: &str,
        service: &ServiceRef,
        rs: &RealServerRef,
        change: RealServerChange,
    ) -> Result<RealServerSpec> {
        if let RealServerChange::Weight(w) = change {
            rules::weight(w)?;
        }
        let mut tx = self.store.begin().await?;
        let c = Self::cluster_in(&mut tx, cluster).await?;
        let svc = service.find(&c)?;
        let current = rs.find(svc, service)?.clone();
        let mut after = current.clone();
        let action = match change {
            RealServerChange::Weight(w) => {
                after.weight = w;
                AuditAction::RealServerWeight
            }
            RealServerChange::Enabled(true) => {
                after.enabled = Some(true);
                AuditAction::RealServerEnable
            }
            RealServerChange::Enabled(false) => {
                after.enabled = Some(false);
                AuditAction::RealServerDrain
            }
        };
        if after == current {
            return Ok(after);
        }
        let key = service.key(&current.address, current.port);
        store::clusters::update_real_server(
            &mut tx,
            c.id,
            &key,
            after.weight,
            after.enabled.unwrap_or(true),
        )
        .await?;
        self.finish_real_server_change(tx, actor, &c, action, &key, Some(&current), Some(&after))
            .await?;
        Ok(after)
    }

    #[allow(clippy::too_many_arguments)]
    async fn finish_real_server_change(
        &self,
        mut tx: store::WriteTx,
        actor: &Actor,
        c: &StoredCluster,
        action: AuditAction,
        key: &RealServerKey,
        before: Option<&RealServerSpec>,
        after: Option<&RealServerSpec>,
    ) -> Result<()> {
        let changes = Self::bump_cluster(&mut tx, c.id).await?;
        let target = format!(
            "cluster:{}/service:{}:{}:{}/real_server:{}",
            c.name,
            key.protocol,
            key.vip,
            key.port,
            socket_text(&key.address, key.rs_port)
        );
        store::audit::append(
            &mut tx,
            &actor.0,
            action,
            &target,
            before.map(to_value).as_ref(),
            after.map(to_value).as_ref(),
        )
        .await?;
        store::commit(tx).await?;
        self.notifier.announce(&changes);
        tracing::info!(
            cluster = c.name,
            actor = actor.0,
            action = action.as_str(),
            target,
            "real server changed"
        );
        Ok(())
    }
}

/// A service named in a URL: `tcp:198.18.0.10:80` or `udp:[2001:db8::10]:53`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRef {
    pub protocol: lbfleet_proto::Protocol,
    pub vip: String,
    pub port: u16,
}

impl std::fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.protocol, socket_text(&self.vip, self.port))
    }
}

impl std::str::FromStr for ServiceRef {
    type Err = FieldError;
    fn from_str(s: &str) -> Result<Self, FieldError> {
        let bad = || {
            FieldError::new(
                "service",
                format!("{s:?} is not PROTOCOL:VIP:PORT (e.g. tcp:198.18.0.10:80)"),
            )
        };
        let (proto, rest) = s.split_once(':').ok_or_else(bad)?;
        let protocol = proto.parse().map_err(|_| bad())?;
        let addr: std::net::SocketAddr = rest.parse().map_err(|_| bad())?;
        Ok(ServiceRef {
            protocol,
            vip: addr.ip().to_string(),
            port: addr.port(),
        })
    }
}

impl ServiceRef {
    fn find<'a>(&self, c: &'a StoredCluster) -> Result<&'a lbfleet_proto::ServiceSpec> {
        c.spec
            .services
            .iter()
            .find(|s| s.vip == self.vip && s.port == self.port && s.protocol == self.protocol)
            .ok_or_else(|| {
                FleetError::NotFound(format!("cluster {:?} has no service {self}", c.name))
            })
    }

    fn key(&self, address: &str, rs_port: u16) -> RealServerKey {
        RealServerKey::new(self.protocol, &self.vip, self.port, address, rs_port)
    }
}

/// A real server named in a URL: `198.18.2.1:80` or `[2001:db8::2:1]:80`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealServerRef {
    pub address: String,
    pub port: u16,
}

impl std::str::FromStr for RealServerRef {
    type Err = FieldError;
    fn from_str(s: &str) -> Result<Self, FieldError> {
        let addr: std::net::SocketAddr = s.parse().map_err(|_| {
            FieldError::new(
                "real_server",
                format!("{s:?} is not ADDRESS:PORT (e.g. 198.18.2.1:80)"),
            )
        })?;
        Ok(RealServerRef {
            address: addr.ip().to_string(),
            port: addr.port(),
        })
    }
}

impl RealServerRef {
    fn find<'a>(
        &self,
        svc: &'a lbfleet_proto::ServiceSpec,
        service: &ServiceRef,
    ) -> Result<&'a RealServerSpec> {
        svc.real_servers
            .iter()
            .find(|r| r.address == self.address && r.port == self.port)
            .ok_or_else(|| {
                FleetError::NotFound(format!(
                    "service {service} has no real server {}",
                    socket_text(&self.address, self.port)
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use lbfleet_proto::Role;

    use super::super::testing::{admin, fleet, member, spec};
    use super::*;

    #[tokio::test]
    async fn one_real_server_changes_and_members_get_a_new_generation() {
        let (f, _dir) = fleet().await;
        f.put_cluster(&admin(), "ext", &spec(51, "198.18.0.10"))
            .await
            .expect("create");
        let key = member(&f, 1, "ext", Role::Active).await;
        let g0 = f.get_node(&key).await.expect("node").role_generation;
        let svc: ServiceRef = "tcp:198.18.0.10:80".parse().expect("service");
        let rs = RealServerSpec {
            address: "198.18.2.3".into(),
            port: 80,
            weight: 5,
            enabled: None,
        };
        let added = f
            .add_real_server(&admin(), "ext", &svc, &rs)
            .await
            .expect("add");
        assert_eq!(added.enabled, Some(true));
        assert!(matches!(
            f.add_real_server(&admin(), "ext", &svc, &rs).await,
            Err(FleetError::Conflict(_))
        ));
        let r: RealServerRef = "198.18.2.3:80".parse().expect("rs");
        let drained = f
            .change_real_server(&admin(), "ext", &svc, &r, RealServerChange::Enabled(false))
            .await
            .expect("drain");
        assert_eq!(drained.enabled, Some(false));
        let weighted = f
            .change_real_server(&admin(), "ext", &svc, &r, RealServerChange::Weight(9))
            .await
            .expect("weight");
        assert_eq!((weighted.weight, weighted.enabled), (9, Some(false)));
        assert!(f.get_node(&key).await.expect("node").role_generation > g0);
        f.remove_real_server(&admin(), "ext", &svc, &r)
            .await
            .expect("remove");
        assert!(matches!(
            f.remove_real_server(&admin(), "ext", &svc, &r).await,
            Err(FleetError::NotFound(_))
        ));
        let other: ServiceRef = "udp:198.18.0.10:53".parse().expect("service");
        assert!(matches!(
            f.remove_real_server(&admin(), "ext", &other, &r).await,
            Err(FleetError::NotFound(_))
        ));
        let c = f.get_cluster("ext").await.expect("cluster");
        assert_eq!(c.spec.services[0].real_servers.len(), 2);
    }

    #[test]
    fn refs_parse_and_print() {
        let s: ServiceRef = "udp:[2001:db8::10]:53".parse().expect("v6");
        assert_eq!(s.to_string(), "udp:[2001:db8::10]:53");
        assert!("tcp:198.18.0.10".parse::<ServiceRef>().is_err());
        assert!("sctp:198.18.0.10:80".parse::<ServiceRef>().is_err());
        let r: RealServerRef = "[2001:db8::2:1]:80".parse().expect("v6");
        assert_eq!((r.address.as_str(), r.port), ("2001:db8::2:1", 80));
        assert!("198.18.2.1".parse::<RealServerRef>().is_err());
    }
}
