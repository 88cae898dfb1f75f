//! Fan-out: an event goes to every endpoint of its account whose filters match it, once,
//! in the transaction that stores it.

use merpati_domain::delivery::DeliveryStatus;
use merpati_domain::endpoint::DisableReason;
use merpati_domain::ids::{ChannelId, EndpointId};
use merpati_domain::{SharedStore, StoreError};

use crate::support::*;

pub async fn an_event_goes_to_every_matching_endpoint_and_no_other(store: &SharedStore) {
    let t = tree(store, "acct", 2).await;
    endpoint(store, &t.account, "all", |_| {}).await;
    endpoint(store, &t.account, "sms_only", |e| {
        e.events = Some(vec!["sms".into()])
    })
    .await;
    endpoint(store, &t.account, "devices_only", |e| {
        e.events = Some(vec!["device.*".into()])
    })
    .await;
    endpoint(store, &t.account, "this_device", |e| {
        e.device_ids = vec![t.devices[0].device_id.clone()]
    })
    .await;
    endpoint(store, &t.account, "other_device", |e| {
        e.device_ids = vec![t.devices[1].device_id.clone()]
    })
    .await;
    let quiet = ChannelId::from("ch_none");
    store
        .create_channel(t.account.clone(), channel_row(&quiet, &t.business))
        .await
        .unwrap();
    endpoint(store, &t.account, "other_channel", |e| {
        e.channel_ids = vec![quiet]
    })
    .await;
    // Another account's endpoint never sees this account's events.
    let other = tree(store, "other", 1).await;
    endpoint(store, &other.account, "elsewhere", |_| {}).await;

    let result = ingest(store, &t.devices[0], vec![sms(&t.devices[0], 1, "hi")], T0).await;
    assert_eq!(result.new_deliveries, 3);
    let e = event(store, &t.account, &result.items[0].event_id).await;
    let mut to: Vec<&str> = e
        .deliveries
        .iter()
        .map(|d| d.endpoint_id.as_str())
        .collect();
    to.sort();
    assert_eq!(to, ["all", "sms_only", "this_device"]);
    assert!(e
        .deliveries
        .iter()
        .all(|d| d.status == DeliveryStatus::Pending && d.next_attempt_at == Some(T0)));
    // What was stored is what is delivered: the payload, with the system id in it.
    assert_eq!(e.payload["type"], "sms");
    assert_eq!(e.payload["data"]["id"], result.items[0].id);
    assert_eq!(e.payload["data"]["device"], "dev0");
    let claimed = claim(store, T0).await;
    assert_eq!(endpoints_of(&claimed), ["all", "sms_only", "this_device"]);
    assert!(claimed
        .iter()
        .all(|d| d.attempt == 1 && d.event_id == e.summary.id));
    assert_eq!(&*claimed[0].payload, &*e.payload.to_string());
}

pub async fn a_disabled_endpoint_s_deliveries_are_held(store: &SharedStore) {
    let t = tree(store, "acct", 1).await;
    endpoint(store, &t.account, "off", |e| {
        e.disabled = true;
        e.disabled_reason = Some(DisableReason::Manual);
        e.disabled_at = Some(T0);
    })
    .await;
    endpoint(store, &t.account, "on", |_| {}).await;
    let id = one_event(store, &t.devices[0], 1, T0).await;
    let e = event(store, &t.account, &id).await;
    assert_eq!(to(&e, "off")[0].status, DeliveryStatus::Held);
    assert_eq!(to(&e, "off")[0].next_attempt_at, None);
    assert_eq!(to(&e, "on")[0].status, DeliveryStatus::Pending);
    assert_eq!(endpoints_of(&claim(store, T0).await), ["on"]);
    // A delivery due when its endpoint is disabled after it was queued is held, not sent.
    let id = one_event(store, &t.devices[0], 2, T0).await;
    store
        .set_endpoint_enabled(t.account.clone(), "on".into(), false, T0)
        .await
        .unwrap();
    assert!(claim(store, T0).await.is_empty());
    let e = event(store, &t.account, &id).await;
    assert_eq!(to(&e, "on")[0].status, DeliveryStatus::Held);
}

pub async fn replay_and_resend_make_new_deliveries_of_the_same_event(store: &SharedStore) {
    let t = tree(store, "acct", 1).await;
    endpoint(store, &t.account, "a", |_| {}).await;
    endpoint(store, &t.account, "ussd_only", |e| {
        e.events = Some(vec!["ussd".into()])
    })
    .await;
    let id = one_event(store, &t.devices[0], 1, T0).await;
    let first = claim(store, T0).await;
    assert_eq!(endpoints_of(&first), ["a"]);
    record(
        store,
        vec![attempt(
            &first[0],
            T0,
            Some(500),
            merpati_domain::retry::NextStep::Failed,
        )],
        WEEK_MS,
    )
    .await;

    // Every endpoint it matches now: one more delivery to `a`.
    let due = store
        .replay_event(t.account.clone(), id.clone(), None, T0 + 1)
        .await
        .unwrap();
    assert_eq!(due, 1);
    // An endpoint named explicitly gets it whatever its filters say.
    let due = store
        .replay_event(
            t.account.clone(),
            id.clone(),
            Some("ussd_only".into()),
            T0 + 1,
        )
        .await
        .unwrap();
    assert_eq!(due, 1);
    let again = claim(store, T0 + 1).await;
    assert_eq!(endpoints_of(&again), ["a", "ussd_only"]);
    assert!(again.iter().all(|d| d.event_id == id && d.attempt == 1));

    let resent = store
        .resend_delivery(t.account.clone(), first[0].delivery_id, T0 + 2)
        .await
        .unwrap();
    assert_ne!(resent, first[0].delivery_id);
    let e = event(store, &t.account, &id).await;
    assert_eq!(to(&e, "a").len(), 3);

    let missing = store
        .replay_event(
            t.account.clone(),
            id.clone(),
            Some(EndpointId::from("nope")),
            T0,
        )
        .await;
    assert_eq!(missing, Err(StoreError::NotFound("endpoint")));
    let other = tree(store, "other", 0).await;
    let walled = store
        .resend_delivery(other.account.clone(), first[0].delivery_id, T0)
        .await;
    assert_eq!(walled, Err(StoreError::NotFound("delivery")));
    store
        .set_endpoint_enabled(t.account.clone(), "a".into(), false, T0)
        .await
        .unwrap();
    let held = store
        .resend_delivery(t.account.clone(), first[0].delivery_id, T0)
        .await;
    assert!(matches!(held, Err(StoreError::Conflict(_))), "{held:?}");
}
