//! Presence as stored: each announcement ends the device's open period, opens the next
//! (an outage dated from when the device was lost), sets its announced state, and goes out
//! as an event through fan-out; blips and engine reports are recorded, never announced.

use merpati_domain::device::Presence;
use merpati_domain::ids::{BusinessId, ChannelId, DeviceId};
use merpati_domain::presence::machine::{Announced, Change, EngineReport, Reason};
use merpati_domain::presence::{HistoryScope, PeriodState, PresenceWrite, WriteKind};
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
    let periods = store
        .presence_periods(
            t.account.clone(),
            HistoryScope::Device("dev0".into()),
            T0 - 1,
            T0 + 100_000,
        )
        .await
        .unwrap();
    let shape: Vec<_> = periods
        .iter()
        .map(|p| (p.state, p.started_at, p.ended_at, p.reason.as_deref()))
        .collect();
    assert_eq!(
        shape,
        [
            (PeriodState::Up, T0, Some(lost), None),
            (PeriodState::Down, lost, None, Some("heartbeat_timeout")),
        ]
    );
    // The device announced up is what a restart rebuilds; down and never seen are not.
    let back = T0 + 120_000;
    store
        .apply_presence(vec![write(&t, 1, up(back, Some(30)))], back)
        .await
        .unwrap();
    let restore = store.presence_to_restore().await.unwrap();
    let up_now: Vec<_> = restore
        .iter()
        .map(|s| {
            (
                s.device_id.as_str(),
                s.announced,
                s.since,
                s.engine.as_str(),
            )
        })
        .collect();
    assert_eq!(up_now, [("dev1", Announced::Up, Some(back), "sms")]);
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
    let restore = store.presence_to_restore().await.unwrap();
    assert_eq!(restore.len(), 1, "a device with an engine state is rebuilt");
    assert_eq!(restore[0].engine_state, Some(EngineReport::LoggedOut));
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
