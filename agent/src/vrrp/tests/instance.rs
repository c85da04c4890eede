//! Every RFC 5798 / RFC 3768 transition of one instance, driven with explicit instants.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::{lab, lab6};
use crate::vrrp::{
    Action, Advertisement, Auth, ConfigError, DropReason, Input, Instance, InstanceConfig, State,
    TransitionReason, Version,
};

const MS: Duration = Duration::from_millis(1);

fn config(version: Version, priority: u8) -> InstanceConfig {
    InstanceConfig {
        version,
        vrid: 51,
        priority,
        advert_interval: match version {
            Version::V2 => Duration::from_secs(1),
            Version::V3 => Duration::from_secs(1),
        },
        preempt: true,
        preempt_delay: Duration::ZERO,
        accept: false,
        primary_address: lab(2),
        vips: vec![lab(10), lab(11)],
        auth: Auth::NONE,
    }
}

fn instance(c: InstanceConfig) -> Instance {
    Instance::new(c).expect("valid config")
}

fn advert(version: Version, priority: u8, interval: u16) -> Advertisement {
    Advertisement {
        version,
        vrid: 51,
        priority,
        advert_interval: interval,
        auth: Auth::NONE,
        addresses: vec![lab(10), lab(11)],
    }
}

fn recv(from: IpAddr, advert: Advertisement) -> Input {
    Input::AdvertReceived { from, advert }
}

/// A Backup started at `t0`.
fn backup(c: InstanceConfig, t0: Instant) -> Instance {
    let mut i = instance(c);
    i.handle(Input::Startup, t0);
    assert_eq!(i.state(), State::Backup);
    i
}

/// A Master: started at `t0`, no advert heard, master-down fired.
fn master(c: InstanceConfig, t0: Instant) -> (Instance, Instant) {
    let mut i = backup(c, t0);
    let at = i.master_down_deadline().expect("master-down armed");
    i.handle(Input::MasterDownTimerExpired, at);
    assert_eq!(i.state(), State::Master);
    (i, at)
}

fn transition(from: State, to: State, reason: TransitionReason) -> Action {
    Action::Transition { from, to, reason }
}

#[test]
fn owner_goes_master_at_once() {
    let t0 = Instant::now();
    let mut i = instance(config(Version::V3, 255));
    let actions = i.handle(Input::Startup, t0);
    assert_eq!(
        actions,
        vec![
            transition(State::Initialize, State::Master, TransitionReason::Owner),
            Action::SendAdvert(advert(Version::V3, 255, 100)),
            Action::AddVips,
            Action::SendGratuitousArp,
            Action::StartAdvertTimer(Duration::from_secs(1)),
        ]
    );
    assert_eq!(i.master(), Some(lab(2)));
    assert_eq!(i.advert_deadline(), Some(t0 + Duration::from_secs(1)));
    // The owner discards adverts, even a higher address with the same priority.
    assert_eq!(
        i.handle(recv(lab(3), advert(Version::V3, 255, 100)), t0),
        vec![Action::Dropped(DropReason::LocalOwner)]
    );
}

#[test]
fn startup_goes_backup_with_master_down_interval() {
    let t0 = Instant::now();
    // v3, 1 s, priority 100: Skew_Time = 156/256 s, Master_Down_Interval = 3 s + Skew_Time.
    let mut i = instance(config(Version::V3, 100));
    let skew = Duration::from_nanos(1_000_000_000 * 156 / 256);
    assert_eq!(
        i.handle(Input::Startup, t0),
        vec![
            transition(State::Initialize, State::Backup, TransitionReason::Startup),
            Action::StartMasterDownTimer(Duration::from_secs(3) + skew),
        ]
    );
    assert_eq!(i.skew_time(), skew);
    assert_eq!(i.master(), None);
    // Startup again changes nothing.
    assert_eq!(i.handle(Input::Startup, t0 + MS), vec![]);

    // v2 at 2 s: Skew_Time stays (256 - priority) / 256 s whatever the interval.
    let mut c = config(Version::V2, 200);
    c.advert_interval = Duration::from_secs(2);
    let i = backup(c, t0);
    assert_eq!(
        i.skew_time(),
        Duration::from_nanos(1_000_000_000 * 56 / 256)
    );
    assert_eq!(
        i.master_down_interval(),
        Duration::from_secs(6) + Duration::from_nanos(1_000_000_000 * 56 / 256)
    );
}

#[test]
fn backup_becomes_master_when_master_down_fires() {
    let t0 = Instant::now();
    let mut i = backup(config(Version::V3, 100), t0);
    let at = i.master_down_deadline().expect("armed");
    assert_eq!(
        i.handle(Input::MasterDownTimerExpired, at),
        vec![
            transition(State::Backup, State::Master, TransitionReason::MasterDown),
            Action::CancelMasterDownTimer,
            Action::SendAdvert(advert(Version::V3, 100, 100)),
            Action::AddVips,
            Action::SendGratuitousArp,
            Action::StartAdvertTimer(Duration::from_secs(1)),
        ]
    );
    assert_eq!(i.master(), Some(lab(2)));
}

#[test]
fn stale_timer_expiries_are_ignored() {
    let t0 = Instant::now();
    let mut i = backup(config(Version::V3, 100), t0);
    let first = i.master_down_deadline().expect("armed");
    // An advert resets the timer; the old expiry still arrives.
    i.handle(
        recv(lab(3), advert(Version::V3, 150, 100)),
        t0 + Duration::from_secs(1),
    );
    assert_eq!(i.handle(Input::MasterDownTimerExpired, first), vec![]);
    assert_eq!(i.state(), State::Backup);
    // Advert timer while Backup: nothing to send.
    assert_eq!(i.handle(Input::AdvertTimerExpired, first), vec![]);

    let (mut m, at) = master(config(Version::V3, 100), t0);
    assert_eq!(i.handle(Input::AdvertTimerExpired, at), vec![]);
    assert_eq!(m.handle(Input::AdvertTimerExpired, at + 10 * MS), vec![]);
    assert_eq!(
        m.handle(Input::MasterDownTimerExpired, at + Duration::from_secs(9)),
        vec![]
    );
    assert_eq!(m.state(), State::Master);
}

#[test]
fn master_sends_adverts_when_the_advert_timer_fires() {
    let t0 = Instant::now();
    let (mut m, at) = master(config(Version::V2, 100), t0);
    let next = at + Duration::from_secs(1);
    assert_eq!(m.advert_deadline(), Some(next));
    assert_eq!(
        m.handle(Input::AdvertTimerExpired, next),
        vec![
            Action::SendAdvert(advert(Version::V2, 100, 1)),
            Action::StartAdvertTimer(Duration::from_secs(1)),
        ]
    );
    assert_eq!(m.advert_deadline(), Some(next + Duration::from_secs(1)));
}

#[test]
fn backup_accepts_a_higher_master_and_v3_learns_its_interval() {
    let t0 = Instant::now();
    let mut i = backup(config(Version::V3, 100), t0);
    let now = t0 + Duration::from_millis(500);
    // The master advertises every 200 ms: Master_Down_Interval = 600 ms + 156/256 of 200 ms.
    let mdi = Duration::from_millis(600) + Duration::from_nanos(200_000_000 * 156 / 256);
    assert_eq!(
        i.handle(recv(lab(3), advert(Version::V3, 200, 20)), now),
        vec![Action::StartMasterDownTimer(mdi)]
    );
    assert_eq!(i.master_advert_interval(), Duration::from_millis(200));
    assert_eq!(i.master(), Some(lab(3)));
    assert_eq!(i.master_priority(), Some(200));
    assert_eq!(i.master_down_deadline(), Some(now + mdi));
    // Equal priority is accepted too (>= local priority).
    assert_eq!(
        i.handle(recv(lab(1), advert(Version::V3, 100, 20)), now + MS),
        vec![Action::StartMasterDownTimer(mdi)]
    );
}

#[test]
fn v2_backup_keeps_its_own_interval() {
    let t0 = Instant::now();
    let mut i = backup(config(Version::V2, 100), t0);
    let mdi = i.master_down_interval();
    assert_eq!(
        i.handle(recv(lab(3), advert(Version::V2, 200, 1)), t0 + MS),
        vec![Action::StartMasterDownTimer(mdi)]
    );
    assert_eq!(i.master_advert_interval(), Duration::from_secs(1));
}

#[test]
fn priority_zero_sets_master_down_to_skew_time() {
    let t0 = Instant::now();
    let mut i = backup(config(Version::V3, 100), t0);
    i.handle(recv(lab(3), advert(Version::V3, 200, 10)), t0);
    let now = t0 + Duration::from_millis(50);
    let skew = Duration::from_nanos(100_000_000 * 156 / 256);
    assert_eq!(
        i.handle(recv(lab(3), advert(Version::V3, 0, 10)), now),
        vec![Action::StartMasterDownTimer(skew)]
    );
    assert_eq!(i.master(), None);
    let actions = i.handle(Input::MasterDownTimerExpired, now + skew);
    assert_eq!(
        actions[0],
        transition(
            State::Backup,
            State::Master,
            TransitionReason::MasterStopped
        )
    );
}

#[test]
fn preempt_discards_a_lower_master_so_master_down_runs_out() {
    let t0 = Instant::now();
    let mut i = backup(config(Version::V3, 150), t0);
    let deadline = i.master_down_deadline().expect("armed");
    assert_eq!(
        i.handle(
            recv(lab(3), advert(Version::V3, 100, 100)),
            t0 + Duration::from_secs(1)
        ),
        vec![]
    );
    assert_eq!(i.master_down_deadline(), Some(deadline), "not reset");
    assert_eq!(
        i.master(),
        Some(lab(3)),
        "reported while it is still master"
    );
    i.handle(Input::MasterDownTimerExpired, deadline);
    assert_eq!(i.state(), State::Master);
}

#[test]
fn no_preempt_accepts_a_lower_master() {
    let t0 = Instant::now();
    let mut c = config(Version::V3, 150);
    c.preempt = false;
    let mut i = backup(c, t0);
    let now = t0 + Duration::from_secs(1);
    let actions = i.handle(recv(lab(3), advert(Version::V3, 100, 100)), now);
    assert_eq!(
        actions,
        vec![Action::StartMasterDownTimer(i.master_down_interval())]
    );
    assert_eq!(
        i.master_down_deadline(),
        Some(now + i.master_down_interval())
    );
}

#[test]
fn preempt_delay_accepts_a_lower_master_until_it_has_passed() {
    let t0 = Instant::now();
    let mut c = config(Version::V3, 150);
    c.preempt_delay = Duration::from_secs(10);
    let mut i = backup(c, t0);
    let lower = advert(Version::V3, 100, 100);
    let during = t0 + Duration::from_secs(9);
    assert_eq!(
        i.handle(recv(lab(3), lower.clone()), during),
        vec![Action::StartMasterDownTimer(i.master_down_interval())]
    );
    let deadline = i.master_down_deadline().expect("armed");
    assert_eq!(
        i.handle(recv(lab(3), lower), t0 + Duration::from_secs(10)),
        vec![]
    );
    assert_eq!(i.master_down_deadline(), Some(deadline));
    i.handle(Input::MasterDownTimerExpired, deadline);
    assert_eq!(i.state(), State::Master);
}

#[test]
fn master_yields_to_a_higher_priority() {
    let t0 = Instant::now();
    let (mut m, at) = master(config(Version::V3, 100), t0);
    let now = at + Duration::from_millis(300);
    let actions = m.handle(recv(lab(1), advert(Version::V3, 101, 50)), now);
    // Learned 500 ms from the new master.
    let mdi = Duration::from_millis(1500) + Duration::from_nanos(500_000_000 * 156 / 256);
    assert_eq!(
        actions,
        vec![
            // A last advert at its own priority, so the new master re-announces the VIPs (the hosts'
            // caches point at the one that yields).
            Action::SendAdvert(advert(Version::V3, 100, 100)),
            Action::CancelAdvertTimer,
            transition(
                State::Master,
                State::Backup,
                TransitionReason::HigherPriority {
                    from: lab(1),
                    priority: 101
                }
            ),
            Action::RemoveVips,
            Action::StartMasterDownTimer(mdi),
        ]
    );
    assert_eq!(m.master(), Some(lab(1)));
    assert_eq!(m.advert_deadline(), None);
}

#[test]
fn equal_priority_breaks_the_tie_on_the_higher_address() {
    let t0 = Instant::now();
    let (mut m, at) = master(config(Version::V3, 100), t0);
    // Lower address, same priority: keep Master.
    assert_eq!(
        m.handle(recv(lab(1), advert(Version::V3, 100, 100)), at + MS),
        vec![]
    );
    assert_eq!(m.state(), State::Master);
    // Lower priority: keep Master.
    assert_eq!(
        m.handle(recv(lab(9), advert(Version::V3, 99, 100)), at + MS),
        vec![]
    );
    // Higher address, same priority: yield.
    let actions = m.handle(recv(lab(3), advert(Version::V3, 100, 100)), at + 2 * MS);
    assert_eq!(
        actions[0],
        Action::SendAdvert(advert(Version::V3, 100, 100))
    );
    assert_eq!(
        actions[2],
        transition(
            State::Master,
            State::Backup,
            TransitionReason::HigherAddress { from: lab(3) }
        )
    );
    assert_eq!(m.state(), State::Backup);
}

#[test]
fn master_answers_priority_zero_with_an_advert() {
    let t0 = Instant::now();
    let (mut m, at) = master(config(Version::V3, 100), t0);
    let now = at + Duration::from_millis(300);
    assert_eq!(
        m.handle(recv(lab(3), advert(Version::V3, 0, 100)), now),
        vec![
            Action::SendAdvert(advert(Version::V3, 100, 100)),
            Action::StartAdvertTimer(Duration::from_secs(1)),
        ]
    );
    assert_eq!(m.advert_deadline(), Some(now + Duration::from_secs(1)));
}

#[test]
fn shutdown_as_master_sends_priority_zero_and_releases_the_vips() {
    let t0 = Instant::now();
    let (mut m, at) = master(config(Version::V3, 100), t0);
    assert_eq!(
        m.handle(Input::Shutdown, at + MS),
        vec![
            Action::CancelAdvertTimer,
            Action::SendAdvert(advert(Version::V3, 0, 100)),
            Action::RemoveVips,
            transition(State::Master, State::Initialize, TransitionReason::Shutdown),
        ]
    );
    assert_eq!(m.master(), None);
    // Stopped: adverts and timers do nothing, a second shutdown too; startup runs again.
    assert_eq!(
        m.handle(recv(lab(3), advert(Version::V3, 200, 100)), at + MS),
        vec![]
    );
    assert_eq!(
        m.handle(Input::AdvertTimerExpired, at + Duration::from_secs(5)),
        vec![]
    );
    assert_eq!(
        m.handle(Input::Shutdown, at + Duration::from_secs(5)),
        vec![]
    );
    m.handle(Input::Startup, at + Duration::from_secs(6));
    assert_eq!(m.state(), State::Backup);
}

#[test]
fn shutdown_as_backup_cancels_master_down() {
    let t0 = Instant::now();
    let mut i = backup(config(Version::V2, 100), t0);
    assert_eq!(
        i.handle(Input::Shutdown, t0 + MS),
        vec![
            Action::CancelMasterDownTimer,
            transition(State::Backup, State::Initialize, TransitionReason::Shutdown),
        ]
    );
    assert_eq!(i.master_down_deadline(), None);
}

#[test]
fn set_priority_is_advertised_at_once_and_bounded() {
    let t0 = Instant::now();
    let (mut m, at) = master(config(Version::V3, 150), t0);
    assert_eq!(
        m.handle(Input::SetPriority(50), at + MS),
        vec![
            Action::SendAdvert(advert(Version::V3, 50, 100)),
            Action::StartAdvertTimer(Duration::from_secs(1)),
        ]
    );
    assert_eq!(
        m.handle(Input::SetPriority(50), at + MS),
        vec![],
        "unchanged"
    );
    m.handle(Input::SetPriority(0), at + MS);
    assert_eq!(m.priority(), 1, "0 is reserved for stop");
    m.handle(Input::SetPriority(255), at + MS);
    assert_eq!(m.priority(), 254, "255 is the owner's");
    // Lowered below a backup's adverts, it now yields to them.
    m.handle(Input::SetPriority(100), at + MS);
    m.handle(recv(lab(1), advert(Version::V3, 120, 100)), at + 2 * MS);
    assert_eq!(m.state(), State::Backup);

    // A Backup's skew follows its running priority.
    let mut b = backup(config(Version::V3, 100), t0);
    assert_eq!(b.handle(Input::SetPriority(200), t0 + MS), vec![]);
    assert_eq!(
        b.skew_time(),
        Duration::from_nanos(1_000_000_000 * 56 / 256)
    );
}

#[test]
fn adverts_are_checked_against_the_config() {
    let t0 = Instant::now();
    let mut v3 = backup(config(Version::V3, 100), t0);
    let dropped = |i: &mut Instance, from, a| i.handle(recv(from, a), t0 + MS);

    let other_vrid = Advertisement {
        vrid: 52,
        ..advert(Version::V3, 200, 100)
    };
    assert_eq!(
        dropped(&mut v3, lab(3), other_vrid),
        vec![Action::Dropped(DropReason::VridMismatch)]
    );
    assert_eq!(
        dropped(&mut v3, lab(3), advert(Version::V2, 200, 1)),
        vec![Action::Dropped(DropReason::VersionMismatch)]
    );
    assert_eq!(
        dropped(&mut v3, lab(2), advert(Version::V3, 200, 100)),
        vec![Action::Dropped(DropReason::OwnAdvert)]
    );
    assert_eq!(
        dropped(&mut v3, lab(3), advert(Version::V3, 200, 0)),
        vec![Action::Dropped(DropReason::IntervalMismatch)]
    );
    // v3: another interval is learned, other addresses are accepted (RFC 5798: MAY still process).
    let other_vips = Advertisement {
        addresses: vec![lab(99)],
        ..advert(Version::V3, 200, 50)
    };
    assert!(matches!(
        dropped(&mut v3, lab(3), other_vips)[..],
        [Action::StartMasterDownTimer(_)]
    ));
    assert_eq!(v3.state(), State::Backup, "drops changed nothing");

    let mut c = config(Version::V2, 100);
    c.auth = Auth::simple_text(b"pw");
    let mut v2 = backup(c, t0);
    let with_pw = |priority, interval| Advertisement {
        auth: Auth::simple_text(b"pw"),
        ..advert(Version::V2, priority, interval)
    };
    assert_eq!(
        dropped(&mut v2, lab(3), advert(Version::V2, 200, 1)),
        vec![Action::Dropped(DropReason::AuthMismatch)]
    );
    let wrong_pw = Advertisement {
        auth: Auth::simple_text(b"px"),
        ..advert(Version::V2, 200, 1)
    };
    assert_eq!(
        dropped(&mut v2, lab(3), wrong_pw),
        vec![Action::Dropped(DropReason::AuthMismatch)]
    );
    assert_eq!(
        dropped(&mut v2, lab(3), with_pw(200, 2)),
        vec![Action::Dropped(DropReason::IntervalMismatch)]
    );
    let other_vips = Advertisement {
        addresses: vec![lab(11), lab(99)],
        ..with_pw(200, 1)
    };
    assert_eq!(
        dropped(&mut v2, lab(3), other_vips.clone()),
        vec![Action::Dropped(DropReason::AddressMismatch)]
    );
    // The owner may announce other addresses; the order does not matter.
    let owner = Advertisement {
        priority: 255,
        ..other_vips
    };
    assert!(matches!(
        dropped(&mut v2, lab(3), owner)[..],
        [Action::StartMasterDownTimer(_)]
    ));
    let reordered = Advertisement {
        addresses: vec![lab(11), lab(10)],
        ..with_pw(200, 1)
    };
    assert!(matches!(
        dropped(&mut v2, lab(3), reordered)[..],
        [Action::StartMasterDownTimer(_)]
    ));
}

#[test]
fn configs_outside_the_protocol_are_rejected() {
    let ok = config(Version::V3, 100);
    let with = |f: fn(&mut InstanceConfig)| {
        let mut c = ok.clone();
        f(&mut c);
        Instance::new(c).map(|_| ()).err()
    };
    assert_eq!(with(|_| {}), None);
    assert_eq!(with(|c| c.vrid = 0), Some(ConfigError::VridZero));
    assert_eq!(with(|c| c.priority = 0), Some(ConfigError::PriorityZero));
    assert_eq!(with(|c| c.vips.clear()), Some(ConfigError::NoVips));
    assert!(matches!(
        with(|c| c.vips = vec![lab(10); 256]),
        Some(ConfigError::TooManyVips { .. })
    ));
    for bad in [0, 5, 15, 40_960] {
        let mut c = ok.clone();
        c.advert_interval = Duration::from_millis(bad);
        assert!(
            matches!(Instance::new(c).err(), Some(ConfigError::V3Interval(_))),
            "{bad} ms"
        );
    }
    for good in [10, 100, 40_950] {
        let mut c = ok.clone();
        c.advert_interval = Duration::from_millis(good);
        assert!(Instance::new(c).is_ok(), "{good} ms");
    }
    for bad in [0, 500, 1500, 256_000] {
        let mut c = config(Version::V2, 100);
        c.advert_interval = Duration::from_millis(bad);
        assert!(
            matches!(Instance::new(c).err(), Some(ConfigError::V2Interval(_))),
            "{bad} ms"
        );
    }
}

#[test]
fn states_map_to_the_reported_state() {
    use lbfleet_proto::VrrpState;
    assert_eq!(VrrpState::from(State::Initialize), VrrpState::Init);
    assert_eq!(VrrpState::from(State::Backup), VrrpState::Backup);
    assert_eq!(VrrpState::from(State::Master), VrrpState::Master);
}

/// Link tracking (issue 23 item 0): a Master whose link goes down releases its VIPs and stops advertising; it
/// comes back as Backup and becomes Master again only through the election, announcing the VIPs.
#[test]
fn a_lost_link_is_fault_and_its_return_goes_through_backup() {
    let t0 = Instant::now();
    let (mut i, t1) = master(config(Version::V3, 150), t0);
    assert_eq!(
        i.handle(Input::LinkDown, t1 + MS),
        vec![
            Action::CancelAdvertTimer,
            Action::RemoveVips,
            transition(State::Master, State::Fault, TransitionReason::LinkDown),
        ]
    );
    assert_eq!(
        (i.state(), i.master(), i.advert_deadline()),
        (State::Fault, None, None)
    );
    // In Fault nothing is sent and nothing is heard; a second LinkDown changes nothing.
    assert_eq!(i.handle(Input::LinkDown, t1 + 2 * MS), vec![]);
    assert_eq!(
        i.handle(Input::AdvertTimerExpired, t1 + Duration::from_secs(1)),
        vec![]
    );
    assert_eq!(
        i.handle(recv(lab(3), advert(Version::V3, 100, 100)), t1 + 3 * MS),
        vec![]
    );
    assert_eq!(i.state(), State::Fault);
    // Back: Backup first, with a full Master_Down_Interval.
    let t2 = t1 + Duration::from_secs(3);
    let down = i.master_down_interval();
    assert_eq!(
        i.handle(Input::LinkUp, t2),
        vec![
            transition(State::Fault, State::Backup, TransitionReason::LinkUp),
            Action::StartMasterDownTimer(down),
        ]
    );
    // The lower-priority router that took over meanwhile does not hold it back (preempt) ...
    i.handle(recv(lab(3), advert(Version::V3, 100, 100)), t2 + MS);
    assert_eq!(i.master_down_deadline(), Some(t2 + down));
    // ... and the return to Master announces the VIPs.
    let actions = i.handle(Input::MasterDownTimerExpired, t2 + down);
    assert_eq!(
        actions[0],
        transition(State::Backup, State::Master, TransitionReason::MasterDown)
    );
    assert!(actions.contains(&Action::AddVips) && actions.contains(&Action::SendGratuitousArp));
    // A LinkUp while running changes nothing.
    assert_eq!(i.handle(Input::LinkUp, t2 + down + MS), vec![]);
}

#[test]
fn a_backup_without_link_is_fault_and_a_link_down_at_startup_starts_in_fault() {
    let t0 = Instant::now();
    let mut i = backup(config(Version::V3, 100), t0);
    assert_eq!(
        i.handle(Input::LinkDown, t0 + MS),
        vec![
            Action::CancelMasterDownTimer,
            transition(State::Backup, State::Fault, TransitionReason::LinkDown),
        ]
    );
    assert_eq!(i.master_down_deadline(), None);
    // Shutdown from Fault: nothing to send on a dead link.
    assert_eq!(
        i.handle(Input::Shutdown, t0 + 2 * MS),
        vec![transition(
            State::Fault,
            State::Initialize,
            TransitionReason::Shutdown
        )]
    );

    // The link is down before Startup: Startup goes to Fault; LinkUp to Backup (the owner: to Master).
    let mut i = instance(config(Version::V3, 255));
    assert_eq!(i.handle(Input::LinkDown, t0), vec![]);
    assert_eq!(
        i.handle(Input::Startup, t0),
        vec![transition(
            State::Initialize,
            State::Fault,
            TransitionReason::LinkDown
        )]
    );
    let actions = i.handle(Input::LinkUp, t0 + MS);
    assert_eq!(
        actions[0],
        transition(State::Fault, State::Master, TransitionReason::LinkUp)
    );
    assert!(actions.contains(&Action::SendGratuitousArp));
    assert_eq!(
        lbfleet_proto::VrrpState::from(State::Fault),
        lbfleet_proto::VrrpState::Fault
    );
}

/// An IPv6 instance: link-local primary address, IPv6 VIPs only, v3 only; the same election as over IPv4
/// (the higher link-local address wins a tie).
#[test]
fn ipv6_instance_config_and_tie_break() {
    let ll = |x: u16| IpAddr::V6(std::net::Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, x));
    let mut c = config(Version::V3, 100);
    c.primary_address = ll(2);
    c.vips = vec![lab6(0x10)];
    assert!(Instance::new(c.clone()).is_ok());
    let mut mixed = c.clone();
    mixed.vips.push(lab(10));
    assert_eq!(
        Instance::new(mixed).err(),
        Some(ConfigError::VipFamily(lab(10)))
    );
    let mut v2 = c.clone();
    v2.version = Version::V2;
    assert_eq!(Instance::new(v2).err(), Some(ConfigError::V2OverIpv6));

    let t0 = Instant::now();
    let mut i = instance(c);
    i.handle(Input::Startup, t0);
    let at = i.master_down_deadline().expect("armed");
    i.handle(Input::MasterDownTimerExpired, at);
    assert_eq!(i.state(), State::Master);
    let mut a = advert(Version::V3, 100, 100);
    a.addresses = vec![lab6(0x10)];
    // Same priority from a lower link-local address: we stay; from a higher one: we yield.
    i.handle(recv(ll(1), a.clone()), at + MS);
    assert_eq!(i.state(), State::Master);
    i.handle(recv(ll(3), a), at + 2 * MS);
    assert_eq!(i.state(), State::Backup);
    assert_eq!(i.master(), Some(ll(3)));
}
