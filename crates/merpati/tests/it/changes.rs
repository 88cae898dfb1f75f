//! Committed changes on the bus: each write that changes what a person watches is told
//! once its commit is durable. Each change is checked against the store the moment it
//! arrives: what the bus tells, the API already shows.

use std::time::Duration;

use merpati_domain::endpoint::DisableReason;
use merpati_runtime::bus::{
    Change, DeliveryOutcome, DeviceStatus, EndpointState, Received, Subscriber,
};
use serde_json::{json, Value};

use crate::helpers::*;

/// The changes a test watches. Changes of different writers may arrive in any order (a
/// delivery's outcome can be told before the request that stored its event has told of
/// it), so what a test does not look for yet is kept for later.
struct Watcher {
    changes: Subscriber,
    kept: Vec<Change>,
}

impl Watcher {
    fn new(changes: Subscriber) -> Watcher {
        Watcher {
            changes,
            kept: Vec::new(),
        }
    }

    /// The first change `wanted` picks out, kept or still to come; none may be missed.
    async fn next<T>(&mut self, mut wanted: impl FnMut(&Change) -> Option<T>) -> T {
        if let Some(i) = self.kept.iter().position(|c| wanted(c).is_some()) {
            return wanted(&self.kept.remove(i)).expect("picked");
        }
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let received = tokio::time::timeout_at(deadline, self.changes.recv())
                .await
                .expect("the change within the test's patience")
                .expect("the bus is open");
            match received {
                Received::Change(change) => match wanted(&change) {
                    Some(found) => return found,
                    None => self.kept.push(change),
                },
                Received::Missed(n) => panic!("missed {n} changes"),
            }
        }
    }
}

fn stored(change: &Change) -> Option<Vec<(String, &'static str)>> {
    match change {
        Change::EventsStored { events, .. } => Some(
            events
                .iter()
                .map(|e| (e.id.to_string(), e.event_type))
                .collect(),
        ),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_outcomes_endpoints_and_jobs_are_told_once_committed() {
    let app = TestApp::spawn_with(&[
        ("delivery.breaker_failures", "2"),
        ("delivery.breaker_cooldown", "300ms"),
    ])
    .await;
    let mut changes = Watcher::new(app.subscribe());
    let m = app.merchant("m").await;
    let receiver = Receiver::start().await;
    let ep = app
        .endpoint(&m.key, &receiver, json!({"events": ["sms"]}))
        .await;

    // An event stored: readable the moment the bus tells it.
    let sent = app.sms(&m.device_token, 1).await;
    let event_id = sent["items"][0]["event_id"].as_str().unwrap().to_string();
    let events = changes.next(stored).await;
    assert_eq!(events, [(event_id.clone(), "sms")]);
    let (status, _) = app.get(&format!("/v1/events/{event_id}"), &m.key).await;
    assert_eq!(status, 200);

    // Its delivery's outcome: recorded when told.
    let delivery = changes
        .next(|c| match c {
            Change::Delivery(d) => Some(d.clone()),
            _ => None,
        })
        .await;
    assert_eq!(delivery.endpoint, ep.as_str());
    assert_eq!(delivery.account, "m");
    assert_eq!(
        (delivery.outcome, delivery.status_code, delivery.attempt),
        (DeliveryOutcome::Succeeded, Some(200), 1)
    );
    let (_, event) = app.get(&format!("/v1/events/{event_id}"), &m.key).await;
    assert_eq!(event["deliveries"][0]["status"], "succeeded", "{event}");

    // A re-sent item stores nothing new: nothing to tell.
    app.sms(&m.device_token, 1).await;
    // Paused by its breaker, then resumed by the probe that succeeds.
    receiver.script([Answer::status(503), Answer::status(503)]);
    let paused: Vec<String> = [
        app.sms(&m.device_token, 2).await,
        app.sms(&m.device_token, 3).await,
    ]
    .iter()
    .map(|sent| sent["items"][0]["event_id"].as_str().unwrap().to_string())
    .collect();
    let events = changes.next(stored).await;
    assert_eq!(events[0].1, "sms", "the second item, not the re-sent first");
    let pause = changes
        .next(|c| match c {
            Change::Endpoint {
                state: EndpointState::Paused { until },
                ..
            } => Some(*until),
            _ => None,
        })
        .await;
    let (_, shown) = app.get(&format!("/v1/endpoints/{ep}"), &m.key).await;
    assert!(shown["paused_until"].is_string(), "{shown}");
    assert!(pause > 0);
    changes
        .next(|c| {
            matches!(
                c,
                Change::Endpoint {
                    state: EndpointState::Resumed,
                    ..
                }
            )
            .then_some(())
        })
        .await;
    // Both delivered before the receiver is made to answer otherwise.
    for event_id in &paused {
        let event = app.settled_event(&m.key, event_id).await;
        assert_eq!(event["deliveries"][0]["status"], "succeeded", "{event}");
    }

    // Disabled and enabled by hand.
    let (status, _) = app
        .patch(
            &format!("/v1/endpoints/{ep}"),
            &m.key,
            json!({"disabled": true}),
        )
        .await;
    assert_eq!(status, 200);
    let state = changes
        .next(|c| match c {
            Change::Endpoint { state, .. } => Some(*state),
            _ => None,
        })
        .await;
    assert_eq!(state, EndpointState::Disabled(DisableReason::Manual));
    app.patch(
        &format!("/v1/endpoints/{ep}"),
        &m.key,
        json!({"disabled": false}),
    )
    .await;
    let state = changes
        .next(|c| match c {
            Change::Endpoint { state, .. } => Some(*state),
            _ => None,
        })
        .await;
    assert_eq!(state, EndpointState::Enabled);

    // Disabled by a 410: the endpoint, and the notice stored for the other endpoints.
    receiver.always(Answer::status(410));
    app.sms(&m.device_token, 4).await;
    let (endpoint, state) = changes
        .next(|c| match c {
            Change::Endpoint {
                endpoint,
                state: state @ EndpointState::Disabled(_),
                ..
            } => Some((endpoint.clone(), *state)),
            _ => None,
        })
        .await;
    assert_eq!(
        (endpoint.as_str(), state),
        (ep.as_str(), EndpointState::Disabled(DisableReason::Gone))
    );
    let (_, shown) = app.get(&format!("/v1/endpoints/{ep}"), &m.key).await;
    assert_eq!(shown["disabled_reason"], "gone");
    let notice = changes
        .next(|c| stored(c).filter(|events| events[0].1 == "endpoint.disabled"))
        .await;
    let (status, _) = app
        .get(&format!("/v1/events/{}", notice[0].0), &m.key)
        .await;
    assert_eq!(status, 200);

    // A recover job's progress, to its end.
    receiver.always(Answer::status(200));
    app.patch(
        &format!("/v1/endpoints/{ep}"),
        &m.key,
        json!({"disabled": false}),
    )
    .await;
    let job = app
        .ok_post(
            &format!("/v1/endpoints/{ep}/recover"),
            &m.key,
            json!({"since": 0}),
            202,
        )
        .await;
    let (job_id, done, total) = changes
        .next(|c| match c {
            Change::Job {
                job,
                done,
                total,
                finished: true,
                ..
            } => Some((job.to_string(), *done, *total)),
            _ => None,
        })
        .await;
    assert_eq!(job_id, job["id"].as_str().unwrap());
    assert_eq!((done, total), (1, 1), "the delivery the 410 failed");
    let (_, read) = app.get(&format!("/v1/jobs/{job_id}"), &m.key).await;
    assert_eq!(read["status"], "done");
    assert_eq!(
        (read["done"].clone(), read["total"].clone()),
        (json!(1), json!(1))
    );
}

fn device_change(c: &Change) -> Option<(DeviceStatus, i64, String)> {
    match c {
        Change::Device {
            status, at, device, ..
        } => Some((*status, *at, device.to_string())),
        _ => None,
    }
}

/// A 60 s heartbeat lease and a 30 s grace, on a clock the test moves.
const LEASE: &[(&str, &str)] = &[
    ("presence.heartbeat_timeout", "60s"),
    ("presence.grace", "30s"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_up_pending_and_down_is_told_with_its_announcements() {
    let app = TestApp::spawn_manual(LEASE).await;
    let m = app.merchant("m").await;
    let mut changes = Watcher::new(app.subscribe());
    let t0 = app.now_ms();
    let (status, _) = app
        .post("/v1/device/heartbeat", &m.device_token, json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        changes.next(device_change).await,
        (DeviceStatus::Connected, t0, "dev".into())
    );
    let (_, device) = app.get("/v1/devices/dev", &m.key).await;
    assert_eq!(device["status"], "connected");
    let connected = changes.next(stored).await;
    assert_eq!(connected[0].1, "device.connected");

    // The lease runs out: pending (not announced), then down after the grace, dated from
    // when it was lost.
    app.advance(61_000).await;
    let (status, _, _) = changes.next(device_change).await;
    assert_eq!(status, DeviceStatus::Pending);
    app.advance(30_000).await;
    let (status, at, _) = changes.next(device_change).await;
    assert_eq!((status, at), (DeviceStatus::Disconnected, t0 + 60_000));
    let (_, device) = app.get("/v1/devices/dev", &m.key).await;
    assert_eq!(device["status"], "disconnected");
    let down = changes.next(stored).await;
    assert_eq!(down[0].1, "device.disconnected");
    let (status, event) = app.get(&format!("/v1/events/{}", down[0].0), &m.key).await;
    assert_eq!(status, 200);
    assert_eq!(event["payload"]["reason"], "heartbeat_timeout");

    // Back: up again, with nothing missed on the way.
    app.post("/v1/device/heartbeat", &m.device_token, json!({}))
        .await;
    let (status, _, _) = changes.next(device_change).await;
    assert_eq!(status, DeviceStatus::Connected);
    tokio::time::sleep(Duration::from_millis(50)).await;
    while let Some(received) = changes.changes.try_recv() {
        assert!(matches!(received, Received::Change(_)), "{received:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_listening_costs_nothing_and_a_late_subscriber_starts_from_now() {
    let app = TestApp::spawn().await;
    let m = app.merchant("m").await;
    // Changes made with nobody listening are not kept for later.
    app.sms(&m.device_token, 1).await;
    let mut late = Watcher::new(app.subscribe());
    assert!(late.changes.try_recv().is_none());
    let sent: Value = app.sms(&m.device_token, 2).await;
    let events = late.next(stored).await;
    assert_eq!(events[0].0, sent["items"][0]["event_id"].as_str().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incidents_are_told_as_they_open_are_acknowledged_and_resolve() {
    use merpati_domain::alert::IncidentState;
    let app = TestApp::spawn_with(&[("alerts.group_wait", "0s")]).await;
    let mut changes = Watcher::new(app.subscribe());
    let m = app.merchant_on("m", "wa").await;
    let status = |s: &'static str| {
        let (app, token) = (&app, m.device_token.clone());
        async move {
            app.ok_post("/v1/device/status", &token, json!({"status": s}), 202)
                .await
        }
    };
    let incident = |wanted: IncidentState| {
        move |c: &Change| match c {
            Change::Incident {
                incident, state, ..
            } if *state == wanted => Some(incident.to_string()),
            _ => None,
        }
    };
    status("connected").await;
    status("logged_out").await;
    let opened = changes.next(incident(IncidentState::Open)).await;
    let (code, shown) = app.get(&format!("/v1/incidents/{opened}"), &m.key).await;
    assert_eq!(code, 200, "readable the moment it is told");
    assert_eq!(shown["state"], "open");
    app.ok_post(
        &format!("/v1/incidents/{opened}/acknowledge"),
        &m.key,
        json!({}),
        200,
    )
    .await;
    let acked = changes.next(incident(IncidentState::Acknowledged)).await;
    assert_eq!(acked, opened);
    status("connected").await;
    let resolved = changes.next(incident(IncidentState::Resolved)).await;
    assert_eq!(resolved, opened);
}
