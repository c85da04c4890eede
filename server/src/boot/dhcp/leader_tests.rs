//! The election without a database: steps and outcomes fed by hand, time as `Instant`s chosen by the test.
#![allow(clippy::unwrap_used)]

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn seen(holder: &str, seq: i64) -> Option<Seen> {
    Some(Seen {
        holder: holder.into(),
        seq,
    })
}

#[test]
fn a_vacant_network_is_claimed_and_held_while_renewals_succeed() {
    let t0 = Instant::now();
    let mut e = Election::new(Timers::default());
    assert_eq!(e.role(t0), Role::Standby);
    assert_eq!(e.next_step(t0), Step::Observe);
    e.apply(Outcome::Observed {
        row: None,
        finished: t0,
    });
    assert_eq!(e.next_step(t0), Step::Claim { expected: None });
    e.apply(Outcome::Claimed {
        epoch: 1,
        started: t0,
    });
    assert_eq!(e.role(t0 + ms(700)), Role::Active { epoch: 1 });
    assert_eq!(e.acquisitions(), 1);
    // Renewals every 250 ms keep it active well past the first TTL.
    for i in 1..=8u64 {
        assert_eq!(e.next_step(t0 + ms(250 * i)), Step::Renew { epoch: 1 });
        e.apply(Outcome::Renewed {
            started: t0 + ms(250 * i),
        });
    }
    assert_eq!(e.role(t0 + ms(2700)), Role::Active { epoch: 1 });
}

#[test]
fn the_active_stops_answering_a_quarter_ttl_before_any_standby_may_take_over() {
    let timers = Timers::default();
    let t0 = Instant::now();
    let mut active = Election::new(timers);
    active.apply(Outcome::Claimed {
        epoch: 3,
        started: t0,
    });
    // Its renewal started at t0 + 100 and committed; the standby first saw that row at t0 + 150.
    active.apply(Outcome::Renewed {
        started: t0 + ms(100),
    });
    let mut standby = Election::new(timers);
    standby.apply(Outcome::Observed {
        row: seen("a", 7),
        finished: t0 + ms(150),
    });
    // Then the active's database goes silent (renewals fail) and the standby keeps seeing the same row.
    active.apply(Outcome::Failed { at: t0 + ms(350) });
    for i in 1..10u64 {
        standby.apply(Outcome::Observed {
            row: seen("a", 7),
            finished: t0 + ms(150 + 100 * i),
        });
    }
    assert_eq!(active.role(t0 + ms(849)), Role::Active { epoch: 3 });
    assert_eq!(active.role(t0 + ms(850)), Role::Standby);
    assert_eq!(standby.next_step(t0 + ms(1149)), Step::Observe);
    assert_eq!(
        standby.next_step(t0 + ms(1150)),
        Step::Claim {
            expected: seen("a", 7)
        }
    );
    // Every instant at which the standby may claim is after the active stopped answering.
    for t in (0..3000).step_by(10) {
        let now = t0 + ms(t);
        let standby_claims = matches!(standby.next_step(now), Step::Claim { .. });
        let active_answers = matches!(active.role(now), Role::Active { .. });
        assert!(!(standby_claims && active_answers), "overlap at {t} ms");
    }
}

#[test]
fn a_renewed_row_restarts_the_standbys_wait_and_a_released_one_is_claimed_at_once() {
    let t0 = Instant::now();
    let mut e = Election::new(Timers::default());
    e.apply(Outcome::Observed {
        row: seen("a", 1),
        finished: t0,
    });
    e.apply(Outcome::Observed {
        row: seen("a", 2),
        finished: t0 + ms(900),
    });
    assert_eq!(e.next_step(t0 + ms(1200)), Step::Observe);
    assert_eq!(
        e.next_step(t0 + ms(1900)),
        Step::Claim {
            expected: seen("a", 2)
        }
    );
    e.apply(Outcome::Observed {
        row: seen("", 3),
        finished: t0 + ms(950),
    });
    assert_eq!(
        e.next_step(t0 + ms(950)),
        Step::Claim {
            expected: seen("", 3)
        }
    );
    // Someone else was faster: back to watching.
    e.apply(Outcome::ClaimLost);
    assert_eq!(e.next_step(t0 + ms(960)), Step::Observe);
    assert_eq!(e.role(t0 + ms(960)), Role::Standby);
    assert_eq!(e.acquisitions(), 0);
}

#[test]
fn a_deposed_active_turns_standby_and_a_late_renewal_of_the_same_epoch_resumes() {
    let t0 = Instant::now();
    let mut e = Election::new(Timers::default());
    e.apply(Outcome::Claimed {
        epoch: 5,
        started: t0,
    });
    // The renewals stalled past the validity: not active, but the epoch is still ours to renew.
    assert_eq!(e.role(t0 + ms(800)), Role::Standby);
    assert_eq!(e.next_step(t0 + ms(800)), Step::Renew { epoch: 5 });
    e.apply(Outcome::Renewed {
        started: t0 + ms(800),
    });
    assert_eq!(e.role(t0 + ms(900)), Role::Active { epoch: 5 });
    // Then a renewal finds the row taken over.
    e.apply(Outcome::Deposed);
    assert_eq!(e.role(t0 + ms(901)), Role::Standby);
    assert_eq!(e.next_step(t0 + ms(901)), Step::Observe);
    assert_eq!(e.held_epoch(), None);
}

#[test]
fn a_database_silent_for_a_ttl_makes_the_server_unreachable_until_it_answers() {
    let t0 = Instant::now();
    let mut e = Election::new(Timers::default());
    e.apply(Outcome::Observed {
        row: seen("a", 1),
        finished: t0,
    });
    e.apply(Outcome::Failed { at: t0 + ms(100) });
    e.apply(Outcome::Failed { at: t0 + ms(400) });
    assert_eq!(e.role(t0 + ms(1099)), Role::Standby);
    assert_eq!(e.role(t0 + ms(1100)), Role::Unreachable);
    // While unreachable the standby cannot claim anything: a claim is a statement that fails too. When the
    // database answers with the row unchanged for a TTL, the standby claims it with that exact (holder, seq).
    e.apply(Outcome::Observed {
        row: seen("a", 1),
        finished: t0 + ms(1500),
    });
    assert_eq!(e.role(t0 + ms(1500)), Role::Standby);
    assert_eq!(
        e.next_step(t0 + ms(1500)),
        Step::Claim {
            expected: seen("a", 1)
        }
    );
    // An active whose database fails: standby for the rest of the TTL after the failures began, then unreachable.
    let mut a = Election::new(Timers::default());
    a.apply(Outcome::Claimed {
        epoch: 1,
        started: t0,
    });
    a.apply(Outcome::Failed { at: t0 + ms(250) });
    assert_eq!(a.role(t0 + ms(749)), Role::Active { epoch: 1 });
    assert_eq!(a.role(t0 + ms(1000)), Role::Standby);
    assert_eq!(a.role(t0 + ms(1250)), Role::Unreachable);
}

mod known {
    use super::super::*;
    use crate::boot::dhcp::testdata::request;
    use crate::boot::dhcp::{Lease, ReservationMap};
    use dhcproto::v4::DhcpOption;

    fn discover(mac: Mac) -> Message {
        request(MessageType::Discover, mac.0, vec![])
    }

    fn request_selecting(mac: Mac, addr: Ipv4Addr, server: Ipv4Addr) -> Message {
        request(
            MessageType::Request,
            mac.0,
            vec![
                DhcpOption::ServerIdentifier(server),
                DhcpOption::RequestedIpAddress(addr),
            ],
        )
    }

    #[test]
    fn without_the_database_only_known_macs_get_their_known_address() {
        let cfg = DhcpConfig::lab();
        let now = 1_000_000;
        let bound = Mac([0x52, 0x54, 0, 0, 0, 1]);
        let reserved = Mac([0x52, 0x54, 0, 0, 0, 2]);
        let stranger = Mac([0x52, 0x54, 0, 0, 0, 3]);
        let mut table = LeaseTable::restore([Lease {
            address: Ipv4Addr::new(198, 18, 1, 20),
            mac: bound,
            state: LeaseState::Bound,
            expires_at: now + 60_000,
        }]);
        let mut reservations = ReservationMap::default();
        reservations.insert(reserved, Ipv4Addr::new(198, 18, 0, 50), None);
        let before = table.len();

        let offer = answer_known(&discover(bound), now, &mut table, &cfg, &reservations);
        let Decision::Reply(r) = offer else {
            panic!("known MAC gets an offer: {offer:?}")
        };
        assert_eq!(r.message.yiaddr(), Ipv4Addr::new(198, 18, 1, 20));
        let ack = answer_known(
            &request_selecting(bound, Ipv4Addr::new(198, 18, 1, 20), cfg.server_address),
            now,
            &mut table,
            &cfg,
            &reservations,
        );
        assert!(
            matches!(&ack, Decision::Reply(r) if r.message_type() == Some(MessageType::Ack)),
            "{ack:?}"
        );
        let reserved_offer =
            answer_known(&discover(reserved), now, &mut table, &cfg, &reservations);
        assert!(
            matches!(&reserved_offer, Decision::Reply(r) if r.message.yiaddr() == Ipv4Addr::new(198, 18, 0, 50)),
            "{reserved_offer:?}"
        );
        // A stranger gets nothing and the pool is untouched.
        let len = table.len();
        assert!(matches!(
            answer_known(&discover(stranger), now, &mut table, &cfg, &reservations),
            Decision::Drop { .. }
        ));
        assert_eq!(table.len(), len);
        assert!(table.lease_of(stranger).is_none());
        // A known MAC asking for another address gets no NAK (the other server might know better): silence.
        assert!(matches!(
            answer_known(
                &request_selecting(bound, Ipv4Addr::new(198, 18, 1, 99), cfg.server_address),
                now,
                &mut table,
                &cfg,
                &reservations
            ),
            Decision::Drop { .. }
        ));
        // An expired lease is not knowledge (the ACK above renewed it for the lease time).
        assert!(matches!(
            answer_known(
                &discover(bound),
                now + cfg.lease_time.as_millis() as u64 + 1,
                &mut table,
                &cfg,
                &reservations
            ),
            Decision::Drop { .. }
        ));
        assert!(before <= table.len());
    }
}

/// Two servers' elections on one database, driven step by step. The database is one parameter:
/// `LBFLEET_TEST_DATABASE_URL` (e.g. a PostgreSQL URL), else a fresh SQLite file.
mod on_a_database {
    use super::super::*;
    use crate::fleet::LeaseWrite;
    use crate::store::leases::LeaseRow;
    use crate::store::Store;

    async fn two_servers() -> (Fleet, Fleet, Option<tempfile::TempDir>) {
        let (url, dir) = match std::env::var("LBFLEET_TEST_DATABASE_URL") {
            Ok(u) => (u, None),
            Err(_) => {
                let d = tempfile::tempdir().unwrap();
                (
                    format!("sqlite://{}", d.path().join("ha.db").display()),
                    Some(d),
                )
            }
        };
        let a = Store::open(&url).await.unwrap();
        let b = Store::open(&url).await.unwrap();
        (
            Fleet::new(a, Duration::from_secs(600)),
            Fleet::new(b, Duration::from_secs(600)),
            dir,
        )
    }

    fn leadership(name: &str, network: &str) -> Leadership {
        Leadership::new(
            LeaderClaim {
                network: network.into(),
                holder: format!("{name}/{:08x}", rand::random::<u32>()),
                holder_address: name.into(),
                ttl_ms: 400,
            },
            Timers {
                renew: Duration::from_millis(100),
                ttl: Duration::from_millis(400),
            },
        )
    }

    fn lease(address: &str, mac: &str) -> Vec<LeaseWrite> {
        vec![LeaseWrite::Upsert(LeaseRow {
            address: address.into(),
            mac: mac.into(),
            state: "bound".into(),
            expires_at: crate::store::now_ms() + 600_000,
        })]
    }

    #[tokio::test]
    async fn one_active_a_takeover_after_the_ttl_and_a_deposed_server_cannot_write_leases() {
        let network = format!("198.18.{}.0/24", rand::random::<u8>());
        let (fa, fb, _dir) = two_servers().await;
        let (a, b) = (leadership("a", &network), leadership("b", &network));
        assert!(matches!(a.step(&fa).await, Role::Standby)); // observes: no row
        let Role::Active { epoch: ea } = a.step(&fa).await else {
            panic!("a claims the vacant network")
        };
        // b only ever sees a's row renewed: it never becomes active.
        let mut last_renewal = Instant::now();
        for _ in 0..8 {
            last_renewal = Instant::now();
            assert_eq!(a.step(&fa).await, Role::Active { epoch: ea });
            assert_eq!(b.step(&fb).await, Role::Standby);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(fa
            .write_leases_fenced(Some(&a.fence(ea)), lease("198.18.1.1", "52:54:00:00:00:01"))
            .await
            .unwrap());
        // a stops renewing (as if killed): within about a TTL b takes over, with a new epoch.
        let stopped = Instant::now();
        let eb = loop {
            if let Role::Active { epoch } = b.step(&fb).await {
                break epoch;
            }
            assert!(stopped.elapsed() < Duration::from_secs(5), "no takeover");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        // Not before a whole TTL after the start of a's last renewal.
        let since_renewal = last_renewal.elapsed();
        assert!(
            since_renewal >= Duration::from_millis(400),
            "took over {since_renewal:?} after a's last renewal began, less than the TTL"
        );
        assert!(eb > ea);
        // a stopped answering by its own clock before b could take over.
        assert_eq!(a.role(), Role::Standby);
        // a's writer, late, cannot commit a lease under the old epoch; b can.
        assert!(!fa
            .write_leases_fenced(Some(&a.fence(ea)), lease("198.18.1.2", "52:54:00:00:00:02"))
            .await
            .unwrap());
        assert!(fb
            .write_leases_fenced(Some(&b.fence(eb)), lease("198.18.1.2", "52:54:00:00:00:03"))
            .await
            .unwrap());
        let rows = fb.active_leases(0).await.unwrap();
        assert!(rows.iter().any(|r| r.address == "198.18.1.1"), "{rows:?}");
        assert!(
            rows.iter()
                .any(|r| r.address == "198.18.1.2" && r.mac == "52:54:00:00:00:03"),
            "{rows:?}"
        );
        // a's next renewal finds itself deposed.
        assert_eq!(a.step(&fa).await, Role::Standby);
        assert_eq!(a.with(|e| e.held_epoch()), None);
        // A graceful release hands the network back without a TTL's wait.
        b.release(&fb).await;
        let _ = a.step(&fa).await; // observes the released row
        assert!(matches!(a.step(&fa).await, Role::Active { .. }));
    }
}
