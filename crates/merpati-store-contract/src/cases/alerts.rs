//! Alerts as stored: rules, notifiers and windows kept per account at their revision and
//! checked against the account's own things; the engine's transaction, all or nothing;
//! announcements read in order; incidents at their revision; notifications until sent;
//! affected conversations; a link key that stays.

use std::sync::Arc;

use merpati_domain::alert::engine::{self, SendResult, Settings};
use merpati_domain::alert::{
    AlertRule, Incident, IncidentFilter, IncidentState, MaintenanceWindow, Match,
    NotificationStatus, Notifier, NotifierKind, Phase, Schedule, Tracker,
};
use merpati_domain::ids::{AccountId, AlertRuleId, ChannelId, DeviceId, NotifierId, WindowId};
use merpati_domain::presence::machine::{Change, Reason};
use merpati_domain::presence::{PresenceWrite, WriteKind};
use merpati_domain::{Page, SharedStore, StoreError};
use merpati_webhooks::Rid;

use crate::support::*;

pub(crate) fn rule(id: &str, matches: Match) -> AlertRule {
    AlertRule {
        id: AlertRuleId::from(id),
        matches,
        down_after_ms: Some(60_000),
        severity: None,
        notifiers: None,
        repeat_every_ms: None,
        escalation: None,
        notify_recovery: None,
        created_at: T0,
        updated_at: T0,
        revision: 0,
    }
}

fn slack(id: &str) -> Notifier {
    Notifier {
        id: NotifierId::from(id),
        name: format!("Notifier {id}"),
        kind: NotifierKind::Slack {
            url: "https://hooks.example.com/x".into(),
        },
        language: None,
        health: Default::default(),
        created_at: T0,
        updated_at: T0,
        revision: 0,
    }
}

fn on_channel(channel: &str) -> Match {
    Match {
        channel_id: Some(ChannelId::from(channel)),
        ..Match::default()
    }
}

pub async fn rules_notifiers_and_windows_are_the_account_s_at_their_revision(store: &SharedStore) {
    let t = tree(store, "acct", 1).await;
    tree(store, "other", 1).await;
    let a = t.account.clone();
    store.create_notifier(a.clone(), slack("n1")).await.unwrap();
    let mut r = rule("r1", on_channel("ch"));
    r.notifiers = Some(vec!["n1".into()]);
    let stored = store
        .create_rule(a.clone(), r.clone(), u32::MAX)
        .await
        .unwrap();
    assert_eq!(stored, r);
    assert!(matches!(
        store.create_rule(a.clone(), r.clone(), u32::MAX).await,
        Err(StoreError::Conflict(_))
    ));
    // What a rule names must be the account's.
    let mut unknown = rule("r2", Match::default());
    unknown.notifiers = Some(vec!["ghost".into()]);
    assert!(matches!(
        store.create_rule(a.clone(), unknown, u32::MAX).await,
        Err(StoreError::Invalid(_))
    ));
    let others = rule(
        "r3",
        Match {
            device_id: Some(DeviceId::from("nope")),
            ..Match::default()
        },
    );
    assert!(matches!(
        store.create_rule(a.clone(), others, u32::MAX).await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(store.list_rules(a.clone()).await.unwrap().len(), 1);
    // Another account sees none of it.
    let other = AccountId::from("other");
    assert!(store.list_rules(other.clone()).await.unwrap().is_empty());
    assert_eq!(
        store.get_rule(other.clone(), "r1".into()).await,
        Err(StoreError::NotFound("alert rule"))
    );
    assert_eq!(
        store.get_notifier(other, "n1".into()).await,
        Err(StoreError::NotFound("notifier"))
    );
    // At the revision it was read, once.
    let mut changed = r.clone();
    changed.down_after_ms = Some(0);
    let saved = store.update_rule(a.clone(), changed.clone()).await.unwrap();
    assert_eq!((saved.down_after_ms, saved.revision), (Some(0), 1));
    assert_eq!(
        store.update_rule(a.clone(), changed).await,
        Err(StoreError::Stale("alert rule"))
    );
    // A notifier a rule names stays.
    assert!(matches!(
        store.delete_notifier(a.clone(), "n1".into()).await,
        Err(StoreError::Conflict(_))
    ));
    store.delete_rule(a.clone(), "r1".into()).await.unwrap();
    store.delete_notifier(a.clone(), "n1".into()).await.unwrap();

    let w = MaintenanceWindow {
        id: WindowId::from("w1"),
        name: Some("Nightly".into()),
        matches: on_channel("ch"),
        schedule: Schedule::Weekly {
            days: vec![0, 6],
            start_minute: 22 * 60,
            duration_ms: 4 * 3_600_000,
            timezone: "Asia/Jakarta".into(),
        },
        created_at: T0,
        updated_at: T0,
        revision: 0,
    };
    assert_eq!(store.create_window(a.clone(), w.clone()).await.unwrap(), w);
    assert_eq!(store.get_window(a.clone(), "w1".into()).await.unwrap(), w);
    let mut moved = w.clone();
    moved.schedule = Schedule::Once {
        starts_at: T0,
        ends_at: T0 + 1,
    };
    store.update_window(a.clone(), moved.clone()).await.unwrap();
    assert_eq!(
        store.update_window(a.clone(), moved).await,
        Err(StoreError::Stale("maintenance window"))
    );
    store
        .delete_window(a.clone(), "w1".into(), T0)
        .await
        .unwrap();
    assert!(store.list_windows(a).await.unwrap().is_empty());
}

fn down(t: &Tree, device: usize, at: i64) -> PresenceWrite {
    PresenceWrite {
        account_id: t.account.clone(),
        device_id: t.devices[device].device_id.clone(),
        what: WriteKind::Change(Change::Disconnected {
            at,
            since: at,
            reason: Reason::LoggedOut,
        }),
    }
}

fn up(t: &Tree, device: usize, at: i64) -> PresenceWrite {
    PresenceWrite {
        account_id: t.account.clone(),
        device_id: t.devices[device].device_id.clone(),
        what: WriteKind::Change(Change::Connected {
            at,
            offline_seconds: None,
        }),
    }
}

fn settings() -> Arc<Settings> {
    Arc::new(Settings {
        group_wait_ms: 0,
        link_key: b"a key of the contract's own".to_vec(),
        ..Settings::default()
    })
}

/// The account's first incidents (all of them, in these cases).
async fn incidents(store: &SharedStore, account: AccountId) -> Vec<Incident> {
    store
        .list_incidents(
            account,
            IncidentFilter::default(),
            Page {
                after: None,
                limit: 10,
            },
        )
        .await
        .unwrap()
}

async fn run(store: &SharedStore, now: i64) -> engine::Outcome {
    let s = settings();
    store
        .alert_write(Box::new(move |tx| engine::run(tx, &s, now)))
        .await
        .unwrap()
}

/// The engine reads announcements in order, keeps its due times, opens an incident with
/// its event and notifications in one transaction, and a notification stays until sent.
pub async fn the_engine_keeps_its_due_times_and_commits_incidents_whole(store: &SharedStore) {
    let t = tree(store, "acct", 2).await;
    let a = t.account.clone();
    endpoint(store, &a, "incidents", |e| {
        e.events = Some(vec!["incident.*".into()])
    })
    .await;
    store.create_notifier(a.clone(), slack("n1")).await.unwrap();
    store
        .apply_presence(vec![up(&t, 0, T0), up(&t, 1, T0)], T0)
        .await
        .unwrap();
    store
        .apply_presence(vec![down(&t, 0, T0 + 1_000)], T0 + 1_000)
        .await
        .unwrap();
    // `sms`: five minutes after the announcement.
    let out = run(store, T0 + 1_000).await;
    assert_eq!(out.next_due, Some(T0 + 301_000));
    assert_eq!(out.notifications, 0);
    assert!(incidents(store, a.clone()).await.is_empty());
    // Taken in once: a second run at the same time changes nothing.
    assert_eq!(run(store, T0 + 1_000).await.next_due, Some(T0 + 301_000));

    let out = run(store, T0 + 301_000).await;
    assert_eq!(out.due_deliveries, 1, "incident.opened to the endpoint");
    assert_eq!(out.notifications, 1);
    let list = incidents(store, a.clone()).await;
    assert_eq!(list.len(), 1);
    let inc = &list[0];
    assert_eq!(inc.state, IncidentState::Open);
    assert_eq!(inc.devices.len(), 1);
    assert_eq!(inc.devices[0].down_at, T0 + 1_000);
    assert!(!store.timeline(inc.id.clone()).await.unwrap().is_empty());
    let due = store.due_notifications(T0 + 301_000, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].notifier_id, NotifierId::from("n1"));
    let s = settings();
    let sent = due[0].clone();
    store
        .alert_write(Box::new(move |tx| {
            engine::record_attempt(tx, &s, sent, SendResult::Sent, T0 + 302_000)
        }))
        .await
        .unwrap();
    assert!(store
        .due_notifications(T0 + 400_000, 10)
        .await
        .unwrap()
        .is_empty());
    let kept = store.incident_notifications(inc.id.clone()).await.unwrap();
    assert_eq!(kept[0].status, NotificationStatus::Sent);
    assert_eq!(kept[0].attempts, 1);
    let health = store
        .get_notifier(a.clone(), "n1".into())
        .await
        .unwrap()
        .health;
    assert_eq!(health.last_success_at, Some(T0 + 302_000));

    // Back: resolved, and the recovery notice to whoever got the alert.
    store
        .apply_presence(vec![up(&t, 0, T0 + 500_000)], T0 + 500_000)
        .await
        .unwrap();
    let out = run(store, T0 + 500_000).await;
    assert_eq!(out.notifications, 1);
    let inc = store.get_incident(a.clone(), inc.id.clone()).await.unwrap();
    assert_eq!(inc.state, IncidentState::Resolved);
    assert_eq!(inc.resolved_at, Some(T0 + 500_000));
    assert!(inc.revision > 0);
}

pub async fn an_alert_write_that_fails_leaves_nothing(store: &SharedStore) {
    let t = tree(store, "acct", 1).await;
    let tracker = Tracker {
        account_id: t.account.clone(),
        device_id: t.devices[0].device_id.clone(),
        down_since: Some(T0),
        phase: Phase::Waiting,
        due_at: Some(T0 + 5),
        incident_id: None,
        flapping: false,
    };
    let kept = tracker.clone();
    let failed = store
        .alert_write(Box::new(move |tx| {
            tx.put_tracker(&kept)?;
            tx.set_cursor(99)?;
            Err(StoreError::Invalid("changed its mind".into()))
        }))
        .await;
    assert!(matches!(failed, Err(StoreError::Invalid(_))));
    let (a, d) = (t.account.clone(), t.devices[0].device_id.clone());
    store
        .alert_write(Box::new(move |tx| {
            assert_eq!(tx.tracker(&a, &d)?, None);
            assert_eq!(tx.cursor()?, 0);
            assert_eq!(tx.next_due()?, None);
            tx.put_tracker(&tracker)?;
            assert_eq!(tx.next_due()?, Some(T0 + 5));
            assert_eq!(tx.due_trackers(T0 + 4, 10)?.len(), 0);
            assert_eq!(tx.due_trackers(T0 + 5, 10)?, vec![tracker.clone()]);
            Ok(engine::Outcome::default())
        }))
        .await
        .unwrap();
}

pub async fn an_incident_is_kept_only_at_the_revision_it_was_read(store: &SharedStore) {
    let t = tree(store, "acct", 1).await;
    store
        .create_notifier(t.account.clone(), slack("n1"))
        .await
        .unwrap();
    store.apply_presence(vec![up(&t, 0, T0)], T0).await.unwrap();
    store
        .apply_presence(vec![down(&t, 0, T0 + 1)], T0 + 1)
        .await
        .unwrap();
    run(store, T0 + 1).await;
    run(store, T0 + 400_000).await;
    let inc = incidents(store, t.account.clone()).await.remove(0);
    let stale = inc.clone();
    let fresh = inc.clone();
    store
        .alert_write(Box::new(move |tx| {
            let mut changed = fresh;
            changed.acknowledged_by = Some("Rina".into());
            tx.put_incident(&changed)?;
            Ok(engine::Outcome::default())
        }))
        .await
        .unwrap();
    let lost = store
        .alert_write(Box::new(move |tx| {
            tx.put_incident(&stale)?;
            Ok(engine::Outcome::default())
        }))
        .await;
    assert_eq!(lost.map(|_| ()), Err(StoreError::Stale("incident")));
    let now = store
        .get_incident(t.account.clone(), inc.id.clone())
        .await
        .unwrap();
    assert_eq!(now.acknowledged_by.as_deref(), Some("Rina"));
    assert_eq!(now.revision, inc.revision + 1);
    // Retention takes resolved incidents only.
    assert_eq!(store.prune_alerts(T0 + 10_000_000, 100).await.unwrap(), 0);
    let a = t.account.clone();
    let id = inc.id.clone();
    let s = settings();
    store
        .alert_write(Box::new(move |tx| {
            Ok(engine::resolve(tx, &s, &a, &id, "Rina", T0 + 500_000)?.1)
        }))
        .await
        .unwrap();
    assert_eq!(store.prune_alerts(T0 + 500_000, 100).await.unwrap(), 0);
    assert_eq!(store.prune_alerts(T0 + 500_001, 100).await.unwrap(), 1);
    assert!(store.timeline(inc.id.clone()).await.unwrap().is_empty());
    assert!(store
        .incident_notifications(inc.id.clone())
        .await
        .unwrap()
        .is_empty());
    // The link key is made once and stays.
    let key = store.link_key().await.unwrap();
    assert!(key.len() >= 32);
    assert_eq!(store.link_key().await.unwrap(), key);
}

/// Distinct senders on the channels in a window: the affected conversations.
pub async fn senders_are_counted_once_within_their_window(store: &SharedStore) {
    let t = tree(store, "acct", 2).await;
    let hour = 3_600_000;
    let (d0, d1) = (t.devices[0].clone(), t.devices[1].clone());
    let from = |d: &Arc<merpati_domain::device::DeviceContext>, rid: i64, phone: &str| {
        sms_from(d, Rid::Int(rid), phone, "halo")
    };
    ingest(store, &d0, vec![from(&d0, 1, "+62811000004")], T0).await;
    ingest(
        store,
        &d0,
        vec![from(&d0, 2, "+62811000001"), from(&d0, 3, "+62811000002")],
        T0 + 2 * hour,
    )
    .await;
    ingest(
        store,
        &d1,
        vec![from(&d1, 4, "+62811000001"), from(&d1, 5, "+62811000003")],
        T0 + 22 * hour,
    )
    .await;
    let a = t.account.clone();
    let drop_at = T0 + 25 * hour;
    store
        .alert_write(Box::new(move |tx| {
            let senders = tx.senders(
                &a,
                &[ChannelId::from("ch")],
                drop_at - 24 * hour,
                drop_at,
                100,
            )?;
            assert_eq!(senders, ["+62811000001", "+62811000002", "+62811000003"]);
            let capped = tx.senders(
                &a,
                &[ChannelId::from("ch")],
                drop_at - 24 * hour,
                drop_at,
                2,
            )?;
            assert_eq!(capped.len(), 2);
            let elsewhere = tx.senders(&a, &[ChannelId::from("none")], T0, drop_at, 100)?;
            assert!(elsewhere.is_empty());
            Ok(engine::Outcome::default())
        }))
        .await
        .unwrap();
}

/// Drops read in one run count in the order they were announced: of four drops and
/// returns read at once, the fourth makes the device flapping, not the first.
pub async fn drops_count_in_the_order_they_were_announced(store: &SharedStore) {
    let t = tree(store, "acct", 1).await;
    let a = t.account.clone();
    store.create_notifier(a.clone(), slack("n1")).await.unwrap();
    store.apply_presence(vec![up(&t, 0, T0)], T0).await.unwrap();
    for i in 1..=4 {
        let at = T0 + i * 1_000;
        store
            .apply_presence(vec![down(&t, 0, at)], at)
            .await
            .unwrap();
        store
            .apply_presence(vec![up(&t, 0, at + 500)], at + 500)
            .await
            .unwrap();
    }
    run(store, T0 + 10_000).await;
    let list = incidents(store, a).await;
    assert_eq!(list.len(), 1, "{list:?}");
    let d = &list[0].devices[0];
    assert!(d.flapping);
    assert_eq!(d.down_at, T0 + 4_000, "the fourth drop, not the first");
}

/// Trackers and devices are read many at once (the engine reads ahead what a run needs,
/// each device once): each as read alone, the missing ones left out, and within the
/// transaction that wrote them.
pub async fn trackers_and_devices_are_read_many_at_once(store: &SharedStore) {
    let t = tree(store, "acct", 3).await;
    let other = tree(store, "other", 1).await;
    let key = |t: &Tree, i: usize| (t.account.clone(), t.devices[i].device_id.clone());
    let keys = vec![
        key(&t, 0),
        key(&t, 1),
        key(&t, 2),
        (t.account.clone(), DeviceId::from("gone")),
        key(&other, 0),
    ];
    let tracker = |t: &Tree, i: usize, due: i64| Tracker {
        account_id: t.account.clone(),
        device_id: t.devices[i].device_id.clone(),
        down_since: Some(T0),
        phase: Phase::Waiting,
        due_at: Some(due),
        incident_id: None,
        flapping: false,
    };
    let kept = vec![
        tracker(&t, 0, T0 + 5),
        tracker(&t, 2, T0 + 7),
        tracker(&other, 0, T0 + 9),
    ];
    store
        .alert_write(Box::new(move |tx| {
            assert!(tx.trackers(&keys)?.is_empty());
            for k in &kept {
                tx.put_tracker(k)?;
            }
            let mut read = tx.trackers(&keys)?;
            read.sort_by_key(|t| t.due_at);
            assert_eq!(read, kept, "written in this transaction, read back");
            assert!(tx.trackers(&[])?.is_empty());

            let devices = tx.devices(&keys)?;
            assert_eq!(devices.len(), 4, "{devices:?}");
            for (account, device) in [&keys[0], &keys[1], &keys[2], &keys[4]] {
                let alone = tx.device(account, device)?.expect("there");
                let found = devices.iter().filter(|d| **d == alone).count();
                assert_eq!(found, 1, "{device} as read alone");
            }
            assert!(tx.devices(&[])?.is_empty());
            Ok(engine::Outcome::default())
        }))
        .await
        .unwrap();
}

/// Many devices down in one run, and one of them deleted before it: each of the others
/// joins one incident when due, the deleted one leaves no tracker behind.
pub async fn many_devices_down_in_one_run_join_one_incident(store: &SharedStore) {
    let t = tree(store, "acct", 4).await;
    let a = t.account.clone();
    store.create_notifier(a.clone(), slack("n1")).await.unwrap();
    let ups = (0..4).map(|i| up(&t, i, T0)).collect();
    store.apply_presence(ups, T0).await.unwrap();
    let downs = (0..4).map(|i| down(&t, i, T0 + 1_000)).collect();
    store.apply_presence(downs, T0 + 1_000).await.unwrap();
    store
        .delete_device(a.clone(), t.devices[3].device_id.clone())
        .await
        .unwrap();
    let out = run(store, T0 + 1_000).await;
    assert_eq!(out.next_due, Some(T0 + 301_000));
    let out = run(store, T0 + 301_000).await;
    assert_eq!(out.notifications, 1, "one alert for the business");
    let list = incidents(store, a.clone()).await;
    assert_eq!(list.len(), 1, "{list:?}");
    let mut down: Vec<String> = list[0]
        .devices
        .iter()
        .map(|d| d.device_id.to_string())
        .collect();
    down.sort();
    let mut expected: Vec<String> = t.devices[..3]
        .iter()
        .map(|d| d.device_id.to_string())
        .collect();
    expected.sort();
    assert_eq!(down, expected);
    let gone = t.devices[3].device_id.clone();
    store
        .alert_write(Box::new(move |tx| {
            assert_eq!(tx.tracker(&a, &gone)?, None);
            Ok(engine::Outcome::default())
        }))
        .await
        .unwrap();
}

/// A device down and up again before a run takes either in: the run sees the tracker the
/// first change made, so nothing is left waiting to fire.
pub async fn a_device_down_and_up_within_one_run_leaves_nothing_to_fire(store: &SharedStore) {
    let t = tree(store, "acct", 1).await;
    let a = t.account.clone();
    store.create_notifier(a.clone(), slack("n1")).await.unwrap();
    store.apply_presence(vec![up(&t, 0, T0)], T0).await.unwrap();
    store
        .apply_presence(vec![down(&t, 0, T0 + 1_000)], T0 + 1_000)
        .await
        .unwrap();
    store
        .apply_presence(vec![up(&t, 0, T0 + 2_000)], T0 + 2_000)
        .await
        .unwrap();
    let out = run(store, T0 + 2_000).await;
    assert_eq!(out.next_due, None, "nothing waiting");
    let out = run(store, T0 + 400_000).await;
    assert_eq!(out.notifications, 0);
    let list = incidents(store, a).await;
    assert!(list.is_empty(), "{list:?}");
}
