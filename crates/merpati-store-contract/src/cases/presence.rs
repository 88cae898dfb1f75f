//! Presence as stored: each announcement ends the device's open period, opens the next
//! (an outage dated from when the device was lost), sets its announced state, and goes out
//! as an event through fan-out; blips and engine reports are recorded, never announced.

use merpati_domain::device::Presence;
use merpati_domain::ids::{BusinessId, ChannelId, DeviceId};
use std::sync::Arc;

use merpati_domain::presence::machine::{Change, EngineReport, Input, LiveStatus, Reason};
use merpati_domain::presence::step::{CloseWhy, DeviceRequest, LinkToClose, Request};
use merpati_domain::presence::{
    HeldLink, HistoryScope, LeaseSettings, PeriodState, PresenceStep, PresenceWrite, WriteKind,
};
use merpati_domain::{SharedStore, StoreError};

use crate::support::*;

fn write(t: &Tree, device: usize, what: WriteKind) -> PresenceWrite {
    PresenceWrite {
        account_id: t.account.clone(),
        device_id: t.devices[device].device_id.clone(),
        what,
    }
}

fn up(at: i64, offline_seconds: Option<i64>) -> WriteKind {
    WriteKind::Change(Change::Connected {
        at,
        offline_seconds,
    })
}

fn down(at: i64, since: i64) -> WriteKind {
    WriteKind::Change(Change::Disconnected {
        at,
        since,
        reason: Reason::HeartbeatTimeout,
    })
}

/// A device's periods from `from` to `to`: state, start, end and reason.
async fn period_shape(
    store: &SharedStore,
    t: &Tree,
    device: &str,
    from: i64,
    to: i64,
) -> Vec<(PeriodState, i64, Option<i64>, Option<String>)> {
    store
        .presence_periods(
            t.account.clone(),
            HistoryScope::Device(device.into()),
            from,
            to,
        )
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.state, p.started_at, p.ended_at, p.reason))
        .collect()
}

pub async fn announcements_record_periods_and_go_to_subscribers(store: &SharedStore) {
    let t = tree(store, "acct", 2).await;
    endpoint(store, &t.account, "devices", |e| {
        e.events = Some(vec!["device.*".into()])
    })
    .await;
    endpoint(store, &t.account, "sms", |e| {
        e.events = Some(vec!["sms".into()])
    })
    .await;
    let applied = store
        .apply_presence(vec![write(&t, 0, up(T0, None))], T0)
        .await
        .unwrap();
    assert_eq!(applied.new_deliveries, 1);
    let connected = &applied.event_ids[&0];
    let e = event(store, &t.account, connected).await;
    assert_eq!(e.summary.event_type, "device.connected");
    assert_eq!(e.summary.device_id, Some(DeviceId::from("dev0")));
    assert_eq!(e.payload["device"]["bisnis"]["id"], "biz");
    assert_eq!(e.payload["device"]["user"]["name"], "Merchant acct");
    let told: Vec<_> = e
        .deliveries
        .iter()
        .map(|d| d.endpoint_id.as_str())
        .collect();
    assert_eq!(told, ["devices"]);
    let device = store
        .get_device(t.account.clone(), "dev0".into())
        .await
        .unwrap();
    assert_eq!(
        (device.status, device.status_since),
        (Presence::Connected, Some(T0))
    );

    // Lost at T0+60 s, announced at T0+90 s: the outage starts when it was lost.
    let (lost, announced) = (T0 + 60_000, T0 + 90_000);
    let applied = store
        .apply_presence(vec![write(&t, 0, down(announced, lost))], announced)
        .await
        .unwrap();
    let e = event(store, &t.account, &applied.event_ids[&0]).await;
    assert_eq!(e.summary.event_type, "device.disconnected");
    assert_eq!(e.payload["timestamp"], lost / 1000);
    assert_eq!(e.payload["reason"], "heartbeat_timeout");
    let device = store
        .get_device(t.account.clone(), "dev0".into())
        .await
        .unwrap();
    assert_eq!(
        (device.status, device.status_since),
        (Presence::Disconnected, Some(lost))
    );
    assert_eq!(
        period_shape(store, &t, "dev0", T0 - 1, T0 + 100_000).await,
        [
            (PeriodState::Up, T0, Some(lost), None),
            (
                PeriodState::Down,
                lost,
                None,
                Some("heartbeat_timeout".into())
            ),
        ]
    );
    // What each device shows now.
    let back = T0 + 120_000;
    store
        .apply_presence(vec![write(&t, 1, up(back, Some(30)))], back)
        .await
        .unwrap();
    for (device, status) in [
        ("dev0", LiveStatus::Disconnected),
        ("dev1", LiveStatus::Connected),
    ] {
        let view = store
            .presence_view(t.account.clone(), device.into())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((view.status, view.link_open), (status, false));
    }
    let elsewhere = store
        .presence_view("other".into(), "dev1".into())
        .await
        .unwrap();
    assert_eq!(elsewhere, None, "another account's device is not found");

    // One write with two announcements of one device (down, then up) and one of another:
    // each its event, and the first's period closed by the second.
    let (lost, down_at, up_at) = (T0 + 180_000, T0 + 200_000, T0 + 210_000);
    let applied = store
        .apply_presence(
            vec![
                write(&t, 1, down(down_at, lost)),
                write(&t, 1, up(up_at, Some(30))),
                write(&t, 0, up(up_at, Some(150))),
            ],
            up_at,
        )
        .await
        .unwrap();
    assert_eq!(applied.new_deliveries, 3);
    for (i, kind) in [
        (0, "device.disconnected"),
        (1, "device.connected"),
        (2, "device.connected"),
    ] {
        let e = event(store, &t.account, &applied.event_ids[&i]).await;
        assert_eq!(e.summary.event_type, kind, "write {i}");
    }
    assert_eq!(
        period_shape(store, &t, "dev1", T0 + 100_000, T0 + 300_000).await,
        [
            (PeriodState::Up, back, Some(lost), None),
            (
                PeriodState::Down,
                lost,
                Some(up_at),
                Some("heartbeat_timeout".into())
            ),
            (PeriodState::Up, up_at, None, None),
        ]
    );
    for device in ["dev0", "dev1"] {
        let d = store
            .get_device(t.account.clone(), device.into())
            .await
            .unwrap();
        assert_eq!(
            (d.status, d.status_since),
            (Presence::Connected, Some(up_at))
        );
    }
}

pub async fn blips_and_engine_reports_are_recorded_and_deleted_devices_skipped(
    store: &SharedStore,
) {
    let t = tree(store, "acct", 2).await;
    endpoint(store, &t.account, "all", |_| {}).await;
    let blip = WriteKind::Change(Change::Blip {
        started_at: T0,
        ended_at: T0 + 2_000,
        reason: Reason::LinkClosed,
    });
    let applied = store
        .apply_presence(
            vec![
                write(&t, 0, blip),
                write(&t, 0, WriteKind::Engine(Some(EngineReport::LoggedOut))),
            ],
            T0 + 2_000,
        )
        .await
        .unwrap();
    assert!(applied.event_ids.is_empty(), "nothing announced");
    assert_eq!(applied.new_deliveries, 0);
    let blips = store
        .presence_blips(
            t.account.clone(),
            HistoryScope::Device("dev0".into()),
            T0 - 1,
            T0 + 10_000,
        )
        .await
        .unwrap();
    assert_eq!(blips.len(), 1);
    assert_eq!(
        (
            blips[0].started_at,
            blips[0].ended_at,
            blips[0].reason.as_str()
        ),
        (T0, T0 + 2_000, "link_closed")
    );
    let context = &store
        .device_for_token(merpati_domain::ids::token_hash("token-acct-dev0"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(context.engine_state, Some(EngineReport::LoggedOut));

    store
        .delete_device(t.account.clone(), "dev1".into())
        .await
        .unwrap();
    let applied = store
        .apply_presence(
            vec![write(&t, 1, up(T0, None)), write(&t, 0, up(T0, None))],
            T0,
        )
        .await
        .unwrap();
    let announced: Vec<_> = applied.event_ids.keys().copied().collect();
    assert_eq!(announced, [1], "the deleted device's write is skipped");
}

pub async fn history_is_read_by_device_channel_and_business(store: &SharedStore) {
    let t = tree(store, "acct", 2).await;
    let second = ChannelId::from("ch2");
    store
        .create_channel(t.account.clone(), channel_row(&second, &t.business))
        .await
        .unwrap();
    let elsewhere = device(store, &t.account, &second, "dev9").await;
    let mut writes = vec![write(&t, 0, up(T0, None)), write(&t, 1, up(T0 + 10, None))];
    writes.push(PresenceWrite {
        account_id: t.account.clone(),
        device_id: elsewhere.device_id.clone(),
        what: up(T0 + 20, None),
    });
    store.apply_presence(writes, T0 + 20).await.unwrap();
    let account = &t.account;
    let count = |scope: HistoryScope, from: i64, to: i64| async move {
        store
            .presence_periods(account.clone(), scope, from, to)
            .await
            .map(|p| p.len())
    };
    let window = (T0, T0 + 1_000);
    assert_eq!(
        count(HistoryScope::Channel(t.channel.clone()), window.0, window.1).await,
        Ok(2)
    );
    assert_eq!(
        count(HistoryScope::Channel(second.clone()), window.0, window.1).await,
        Ok(1)
    );
    assert_eq!(
        count(
            HistoryScope::Business(t.business.clone()),
            window.0,
            window.1
        )
        .await,
        Ok(3)
    );
    // The window is [from, to): what began at `to` is not in it.
    assert_eq!(
        count(HistoryScope::Channel(second), T0, T0 + 20).await,
        Ok(0)
    );
    assert_eq!(
        count(
            HistoryScope::Business(BusinessId::from("nope")),
            window.0,
            window.1
        )
        .await,
        Err(StoreError::NotFound("business"))
    );
    // Another account's device is not found, however its id is spelled.
    let other = tree(store, "other", 1).await;
    let walled = store
        .presence_periods(
            other.account.clone(),
            HistoryScope::Device("dev9".into()),
            window.0,
            window.1,
        )
        .await;
    assert_eq!(walled, Err(StoreError::NotFound("device")));
}

fn step(node: &str, now: i64, requests: Vec<DeviceRequest>, sweep: bool) -> PresenceStep {
    PresenceStep {
        node: node.into(),
        now,
        lease: Arc::new(LeaseSettings::default()),
        requests,
        sweep,
    }
}

fn ask(t: &Tree, device: usize, request: Request) -> DeviceRequest {
    DeviceRequest {
        account_id: t.account.clone(),
        device_id: t.devices[device].device_id.clone(),
        request,
    }
}

async fn view(store: &SharedStore, t: &Tree, device: usize) -> (LiveStatus, bool) {
    let v = store
        .presence_view(t.account.clone(), t.devices[device].device_id.clone())
        .await
        .unwrap()
        .unwrap();
    (v.status, v.link_open)
}

fn held(t: &Tree, device: usize, link: u64) -> HeldLink {
    HeldLink {
        link,
        account_id: t.account.clone(),
        device_id: t.devices[device].device_id.clone(),
    }
}

/// A device's machine is kept in the database between steps, so any node takes the next
/// one: a link on one node is replaced by a newer one on another (which the first finds
/// stale), only its own node closes a link, a revoke closes it wherever it is, deadlines
/// are swept by whoever looks, and a link whose node is gone is lost and announced after
/// the grace.
pub async fn any_node_takes_the_next_step_of_a_device(store: &SharedStore) {
    let t = tree(store, "acct", 3).await;
    endpoint(store, &t.account, "devices", |e| {
        e.events = Some(vec!["device.*".into()])
    })
    .await;
    let opened = |link| Request::Input(Input::LinkOpened { link });
    let s = store
        .step_presence(step(NODE, T0, vec![ask(&t, 0, opened(5))], false))
        .await
        .unwrap();
    let (status, event) = s.answers[0].clone().unwrap();
    assert_eq!(status, LiveStatus::Connected);
    let event = event.expect("announced");
    assert_eq!(
        s.announced
            .iter()
            .map(|a| (a.event_type, &a.event_id))
            .collect::<Vec<_>>(),
        [("device.connected", &event)]
    );
    assert_eq!(s.new_deliveries, 1);
    assert_eq!(s.next_deadline, None, "an open link needs no deadline");
    assert_eq!(view(store, &t, 0).await, (LiveStatus::Connected, true));

    // The same device links to another node: the first node's link is replaced.
    let s = store
        .step_presence(step(
            "node_b",
            T0 + 1_000,
            vec![ask(&t, 0, opened(5))],
            false,
        ))
        .await
        .unwrap();
    assert_eq!(s.answers[0], Some((LiveStatus::Connected, None)));
    assert_eq!(
        s.closes,
        [LinkToClose {
            node: NODE.into(),
            link: 5,
            why: CloseWhy::Replaced
        }]
    );
    let stale = store
        .stale_links(NODE.into(), vec![held(&t, 0, 5)])
        .await
        .unwrap();
    assert_eq!(stale, [(5, CloseWhy::Replaced)]);
    let closed = Request::Input(Input::LinkClosed {
        link: 5,
        reason: Reason::LinkClosed,
    });
    let s = store
        .step_presence(step(NODE, T0 + 2_000, vec![ask(&t, 0, closed)], false))
        .await
        .unwrap();
    assert_eq!(s.answers[0], Some((LiveStatus::Connected, None)));
    assert_eq!(
        view(store, &t, 0).await,
        (LiveStatus::Connected, true),
        "only the link's node closes it"
    );
    assert!(store
        .stale_links("node_b".into(), vec![held(&t, 0, 5)])
        .await
        .unwrap()
        .is_empty());

    // Revoked from the first node: node_b's link is lost now, and stale there.
    let s = store
        .step_presence(step(
            NODE,
            T0 + 3_000,
            vec![ask(&t, 0, Request::Revoke)],
            false,
        ))
        .await
        .unwrap();
    assert_eq!(s.answers[0], Some((LiveStatus::Pending, None)));
    assert_eq!(s.closes[0].why, CloseWhy::Revoked);
    assert_eq!(s.next_deadline, Some(T0 + 33_000), "the end of the grace");
    let stale = store
        .stale_links("node_b".into(), vec![held(&t, 0, 5)])
        .await
        .unwrap();
    assert_eq!(stale, [(5, CloseWhy::Revoked)]);

    // A heartbeat on a third node; the sweep finds the grace over.
    let s = store
        .step_presence(step(
            "node_c",
            T0 + 10_000,
            vec![ask(&t, 1, Request::Input(Input::Heartbeat))],
            false,
        ))
        .await
        .unwrap();
    assert_eq!(s.answers[0].clone().unwrap().0, LiveStatus::Connected);
    assert_eq!(s.next_deadline, Some(T0 + 33_000));
    let s = store
        .step_presence(step("node_c", T0 + 32_999, Vec::new(), true))
        .await
        .unwrap();
    assert!(s.announced.is_empty(), "not yet");
    let s = store
        .step_presence(step("node_b", T0 + 33_000, Vec::new(), true))
        .await
        .unwrap();
    assert_eq!(s.announced.len(), 1);
    assert_eq!(s.announced[0].event_type, "device.disconnected");
    assert_eq!(s.announced[0].device_id.as_str(), "dev0");
    assert_eq!(s.moves[0].status, LiveStatus::Disconnected);
    assert_eq!(s.moves[0].at, T0 + 3_000, "the outage began at the revoke");
    assert_eq!(
        s.next_deadline,
        Some(T0 + 100_000),
        "dev1's heartbeat lease"
    );
    assert_eq!(view(store, &t, 0).await, (LiveStatus::Disconnected, false));

    // dev2 links to a node that is not live: its link is lost when swept.
    store
        .step_presence(step(
            "node_gone",
            T0 + 40_000,
            vec![ask(&t, 2, opened(9))],
            false,
        ))
        .await
        .unwrap();
    let s = store
        .step_presence(step(NODE, T0 + 41_000, Vec::new(), true))
        .await
        .unwrap();
    assert_eq!(s.moves.len(), 1);
    assert_eq!(s.moves[0].status, LiveStatus::Pending);
    assert!(s.announced.is_empty(), "inside the grace");
    assert_eq!(view(store, &t, 2).await, (LiveStatus::Pending, false));
    let back = store
        .step_presence(step(NODE, T0 + 45_000, vec![ask(&t, 2, opened(11))], false))
        .await
        .unwrap();
    assert_eq!(
        back.answers[0],
        Some((LiveStatus::Connected, None)),
        "a blip"
    );
    assert!(back.closes.is_empty(), "the lost link is nobody's");

    // A device deleted meanwhile: answered None, nothing written.
    store
        .delete_device(t.account.clone(), "dev2".into())
        .await
        .unwrap();
    let s = store
        .step_presence(step(NODE, T0 + 46_000, vec![ask(&t, 2, opened(12))], false))
        .await
        .unwrap();
    assert_eq!(s.answers, [None]);
    let stale = store
        .stale_links(NODE.into(), vec![held(&t, 2, 11)])
        .await
        .unwrap();
    assert_eq!(stale, [(11, CloseWhy::Revoked)]);
}

/// After every node was down no link survived and nobody could hear the devices: links
/// are forgotten and each device up gets a full lease from the restart, so the restart
/// itself announces nothing.
pub async fn a_restart_forgets_links_and_gives_every_device_up_a_full_lease(store: &SharedStore) {
    let t = tree(store, "acct", 3).await;
    let requests = vec![
        ask(&t, 0, Request::Input(Input::LinkOpened { link: 1 })),
        ask(&t, 1, Request::Input(Input::Heartbeat)),
    ];
    store
        .step_presence(step(NODE, T0, requests, false))
        .await
        .unwrap();
    let restart = T0 + 500_000;
    let changed = store
        .restart_presence(Arc::new(LeaseSettings::default()), restart)
        .await
        .unwrap();
    assert_eq!(changed, 2, "the unknown device is untouched");
    let s = store
        .step_presence(step(NODE, restart, Vec::new(), true))
        .await
        .unwrap();
    assert!(s.announced.is_empty() && s.moves.is_empty());
    assert_eq!(s.next_deadline, Some(restart + 90_000));
    assert_eq!(view(store, &t, 0).await, (LiveStatus::Connected, false));
    let s = store
        .step_presence(step(NODE, restart + 90_000, Vec::new(), true))
        .await
        .unwrap();
    assert_eq!(s.moves.len(), 2, "both lost a lease after the restart");
    assert_eq!(view(store, &t, 2).await.0, LiveStatus::Unknown);
}
