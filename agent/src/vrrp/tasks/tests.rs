//! The supervisor's decisions (restart or only a new priority) and the Fault an instance reports.
#![allow(clippy::unwrap_used)]

use lbfleet_proto::VrrpState;

use super::worker::priority_changed;
use super::*;

fn config(priority: u8) -> VrrpConfig {
    serde_json::from_value(serde_json::json!({
        "version": 3, "vrid": 51, "interface": "lbf-missing0", "priority": priority,
        "advert_interval_ms": 100, "preempt": true, "vips": ["198.18.0.10/32"],
        "unicast_peers": []
    }))
    .unwrap()
}

#[test]
fn a_priority_only_change_keeps_the_instance() {
    let (a, b) = (config(150), config(120));
    assert_eq!(
        ConfigChange::between(Some(&a), Some(&a)),
        ConfigChange::Same
    );
    assert_eq!(ConfigChange::between(None, None), ConfigChange::Same);
    assert_eq!(
        ConfigChange::between(Some(&a), Some(&b)),
        ConfigChange::Priority(120)
    );
    let mut other_vrid = b.clone();
    other_vrid.vrid = 52;
    assert_eq!(
        ConfigChange::between(Some(&a), Some(&other_vrid)),
        ConfigChange::Restart
    );
    // To or from the address owner is another kind of router.
    assert_eq!(
        ConfigChange::between(Some(&a), Some(&config(255))),
        ConfigChange::Restart
    );
    assert_eq!(
        ConfigChange::between(Some(&config(255)), Some(&a)),
        ConfigChange::Restart
    );
    assert_eq!(ConfigChange::between(None, Some(&a)), ConfigChange::Restart);
    assert_eq!(ConfigChange::between(Some(&a), None), ConfigChange::Restart);
}

/// Waits for the next Fault transition the instance reports (its interface does not exist, so setup fails
/// and each new instance reports Fault once).
async fn next_fault(rx: &mut mpsc::Receiver<VrrpNotice>, within: Duration) -> Option<String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(VrrpNotice::Transition { transition, .. })) => {
                if transition.to == VrrpState::Fault {
                    return Some(transition.reason);
                }
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return None,
        }
    }
}

/// The supervisor keeps the running instance when only the priority changes (no restart: a restarted
/// instance reports its Fault again), and restarts it for any other change.
#[tokio::test]
async fn the_supervisor_sets_the_priority_instead_of_restarting() {
    let (tx, mut rx) = mpsc::channel(16);
    let mut sup = VrrpSupervisor::new();
    sup.apply(Some(&config(150)), &tx).await;
    assert!(next_fault(&mut rx, Duration::from_secs(10)).await.is_some());
    sup.apply(Some(&config(120)), &tx).await;
    assert_eq!(sup.config().map(|c| c.priority), Some(120));
    // Well past a setup retry (2 s): the kept instance reports no new fault.
    assert_eq!(next_fault(&mut rx, SETUP_RETRY * 2).await, None);
    let running = sup.running.as_ref().unwrap();
    assert_eq!(*running.base_priority.borrow(), 120);
    let mut moved = config(120);
    moved.vrid = 52;
    sup.apply(Some(&moved), &tx).await;
    assert!(next_fault(&mut rx, Duration::from_secs(10)).await.is_some());
    sup.stop().await;
}

/// The wanted priority is the quorum's when it set one, else the role's; a change of either wakes the
/// instance.
#[tokio::test]
async fn the_quorum_priority_overrides_the_role_priority() {
    let sup = VrrpSupervisor::new();
    let (base_tx, base_rx) = watch::channel(150);
    let mut p = Priority {
        base: base_rx,
        quorum: sup.quorum.0.subscribe(),
    };
    assert_eq!(p.wanted(), 150);
    sup.quorum_priority().set_priority(90);
    tokio::time::timeout(Duration::from_secs(1), p.changed())
        .await
        .unwrap();
    assert_eq!(p.wanted(), 90);
    base_tx.send_replace(140);
    tokio::time::timeout(Duration::from_secs(1), p.changed())
        .await
        .unwrap();
    assert_eq!(p.wanted(), 90);
    // Without a source nothing ever changes.
    assert!(
        tokio::time::timeout(Duration::from_millis(50), priority_changed(None))
            .await
            .is_err()
    );
}
