//! The IPVS generic netlink family on a `NetlinkSocket`: resolves the family id, applies batches of changes,
//! dumps services, destinations and sync daemons. Blocking (callers run it on a blocking thread).

use tracing::trace;

use crate::netlink::{genl, DecodeError, NetlinkError, NetlinkSocket};

use super::codec::{self, IpvsRequest, SyncDaemon, SyncState, IPVS_GENL_NAME};
use super::{DestEntry, IpvsTable, ServiceEntry, ServiceKey};

/// A generic netlink socket talking to the kernel's IPVS family.
#[derive(Debug)]
pub struct IpvsSocket {
    sock: NetlinkSocket,
    family: u16,
}

impl IpvsSocket {
    /// Opens the socket and resolves the `IPVS` family id (`NetlinkError::NoFamily` without ip_vs).
    pub fn open() -> Result<IpvsSocket, NetlinkError> {
        let mut sock = NetlinkSocket::open(libc::NETLINK_GENERIC)?;
        let family = sock.resolve_family(IPVS_GENL_NAME)?;
        trace!(family, pid = sock.pid(), "IPVS netlink socket open");
        Ok(IpvsSocket { sock, family })
    }

    pub fn family(&self) -> u16 {
        self.family
    }

    /// Sends one change and waits for its ACK.
    pub fn execute(&mut self, req: &IpvsRequest) -> Result<(), NetlinkError> {
        self.execute_batch(std::slice::from_ref(req))
            .pop()
            .unwrap_or_else(|| Err(NetlinkError::NoReply(describe(req))))
    }

    /// Sends changes in batches and returns one result per request, in order; a refused one does not stop
    /// the rest.
    pub fn execute_batch(&mut self, reqs: &[IpvsRequest]) -> Vec<Result<(), NetlinkError>> {
        let family = self.family;
        self.sock
            .execute_batch(reqs, |req, seq, pid| req.encode(family, seq, pid), describe)
    }

    fn dump<T>(
        &mut self,
        req: &IpvsRequest,
        mut parse: impl FnMut(&[u8]) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, NetlinkError> {
        let family = self.family;
        self.sock.dump(
            &describe(req),
            |seq, pid| req.encode(family, seq, pid),
            |_, payload| parse(genl::split(payload)?.attrs).map(Some),
        )
    }

    pub fn services(&mut self) -> Result<Vec<ServiceEntry>, NetlinkError> {
        self.dump(&IpvsRequest::DumpServices, codec::parse_service)
    }

    pub fn dests(&mut self, key: &ServiceKey) -> Result<Vec<DestEntry>, NetlinkError> {
        let family = key.family();
        self.dump(&IpvsRequest::DumpDests(*key), |a| {
            codec::parse_dest(a, family)
        })
    }

    /// The kernel's whole IPVS table, services and destinations sorted.
    pub fn table(&mut self) -> Result<IpvsTable, NetlinkError> {
        let mut services = self.services()?;
        services.sort_by_key(|s| s.service.key);
        let mut table = IpvsTable::default();
        for s in services {
            let mut dests = self.dests(&s.service.key)?;
            dests.sort_by_key(|d| d.dest.key);
            table.services.push((s, dests));
        }
        Ok(table)
    }

    /// The running connection-sync daemons.
    pub fn sync_daemons(&mut self) -> Result<Vec<SyncDaemon>, NetlinkError> {
        self.dump(&IpvsRequest::DumpDaemons, codec::parse_daemon)
    }

    /// Makes the kernel run exactly `want` (or no sync daemon): stops daemons of another state or with other
    /// settings, starts the wanted one if it is not running. Returns whether anything changed.
    pub fn ensure_sync_daemon(&mut self, want: Option<&SyncDaemon>) -> Result<bool, NetlinkError> {
        let running = self.sync_daemons()?;
        let mut changed = false;
        for d in &running {
            if Some(d) != want {
                self.execute(&IpvsRequest::DelDaemon(d.state))?;
                changed = true;
            }
        }
        if let Some(w) = want {
            if !running.contains(w) {
                self.execute(&IpvsRequest::NewDaemon(w.clone()))?;
                changed = true;
            }
        }
        Ok(changed)
    }
}

/// A short name for a request in errors and logs.
pub fn describe(req: &IpvsRequest) -> String {
    match req {
        IpvsRequest::NewService(s) => format!("add service {}", s.key),
        IpvsRequest::SetService(s) => format!("edit service {}", s.key),
        IpvsRequest::DelService(k) => format!("delete service {k}"),
        IpvsRequest::DumpServices => "dump services".into(),
        IpvsRequest::NewDest(k, d) => format!("add destination {} to {k}", d.key),
        IpvsRequest::SetDest(k, d) => format!("edit destination {} of {k}", d.key),
        IpvsRequest::DelDest(k, d) => format!("delete destination {d} of {k}"),
        IpvsRequest::DumpDests(k) => format!("dump destinations of {k}"),
        IpvsRequest::NewDaemon(d) => format!(
            "start {} sync daemon on {} (sync id {})",
            sync_state_name(d.state),
            d.interface,
            d.sync_id
        ),
        IpvsRequest::DelDaemon(s) => format!("stop {} sync daemon", sync_state_name(*s)),
        IpvsRequest::DumpDaemons => "dump sync daemons".into(),
    }
}

fn sync_state_name(s: SyncState) -> &'static str {
    match s {
        SyncState::Master => "master",
        SyncState::Backup => "backup",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host kernel has no IPVS (it runs in the guest tests), so opening must fail with a typed error,
    /// never hang or panic. With ip_vs loaded, it must succeed.
    #[test]
    fn open_resolves_the_family_or_reports_no_ipvs() {
        match IpvsSocket::open() {
            Ok(mut s) => {
                assert_ne!(s.family(), 0);
                assert!(s.table().is_ok());
            }
            Err(e) => assert!(
                matches!(e, NetlinkError::NoFamily(_) | NetlinkError::Io { .. }),
                "{e}"
            ),
        }
    }
}
