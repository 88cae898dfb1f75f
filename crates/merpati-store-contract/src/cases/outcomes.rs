//! Outcomes: each attempt is logged with the delivery's next step (a retry at its time, or
//! a final success or failure), and an endpoint's health follows its attempts: one that
//! answers 410, or fails for too long, is disabled and the account's other endpoints are
//! told.

use merpati_domain::delivery::DeliveryStatus;
use merpati_domain::endpoint::DisableReason;
use merpati_domain::ids::EndpointId;
use merpati_domain::retry::NextStep;
use merpati_domain::SharedStore;

use crate::support::*;

pub async fn a_retry_is_due_at_its_time_and_every_attempt_is_logged(store: &SharedStore) {
    let t = tree(store, "acct", 1).await;
    endpoint(store, &t.account, "ep", |_| {}).await;
    let id = one_event(store, &t.devices[0], 1, T0).await;
    let first = claim(store, T0).await;
    let retry_at = T0 + 5_000;
    let recorded = record(
        store,
        vec![attempt(
            &first[0],
            T0,
            Some(503),
            NextStep::RetryAt(retry_at),
        )],
        WEEK_MS,
    )
    .await;
    assert_eq!(recorded.made_due, 0);
    let e = event(store, &t.account, &id).await;
    let d = to(&e, "ep")[0];
    assert_eq!(
        (d.status, d.attempt_count, d.next_attempt_at),
        (DeliveryStatus::Pending, 1, Some(retry_at))
    );
    assert_eq!(d.attempts[0].status_code, Some(503));
    assert_eq!(d.attempts[0].response_body.as_deref(), Some("answer 503"));
    assert!(claim(store, retry_at - 1).await.is_empty());
    assert_eq!(
        store.next_due_at(fence(store).await).await.unwrap(),
        Some(retry_at)
    );
    let second = claim(store, retry_at).await;
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].attempt, 2, "the next attempt's number");
    record(
        store,
        vec![attempt(
            &second[0],
            retry_at,
            Some(200),
            NextStep::Succeeded,
        )],
        WEEK_MS,
    )
    .await;
    let e = event(store, &t.account, &id).await;
    let d = to(&e, "ep")[0];
    assert_eq!(d.status, DeliveryStatus::Succeeded);
    assert_eq!(d.completed_at, Some(retry_at + 5));
    assert_eq!(d.next_attempt_at, None, "shown only while pending");
    let attempts: Vec<_> = d
        .attempts
        .iter()
        .map(|a| (a.attempt, a.status_code))
        .collect();
    assert_eq!(attempts, [(1, Some(503)), (2, Some(200))]);
    assert_eq!(store.next_due_at(fence(store).await).await.unwrap(), None);

    // Failing for good is final too.
    let id = one_event(store, &t.devices[0], 2, T0).await;
    let due = claim(store, T0).await;
    record(
        store,
        vec![attempt(&due[0], T0, Some(400), NextStep::Failed)],
        WEEK_MS,
    )
    .await;
    let e = event(store, &t.account, &id).await;
    assert_eq!(to(&e, "ep")[0].status, DeliveryStatus::Failed);
    assert!(claim(store, T0 + WEEK_MS).await.is_empty());
}

/// A record sent again (its first commit went unanswered, and was made) changes nothing:
/// the attempt is logged once, and the delivery stays as the first record left it.
pub async fn an_attempt_recorded_twice_is_logged_once(store: &SharedStore) {
    let t = tree(store, "acct", 1).await;
    endpoint(store, &t.account, "ep", |_| {}).await;
    let id = one_event(store, &t.devices[0], 1, T0).await;
    let first = claim(store, T0).await;
    let retry_at = T0 + 5_000;
    let failed = attempt(&first[0], T0, Some(503), NextStep::RetryAt(retry_at));
    let recorded = record(store, vec![failed.clone()], WEEK_MS).await;
    assert_eq!(recorded.fenced_out, 0);
    let again = record(store, vec![failed.clone()], WEEK_MS).await;
    assert_eq!((again.fenced_out, again.made_due), (1, 0));
    let e = event(store, &t.account, &id).await;
    let d = to(&e, "ep")[0];
    assert_eq!(
        (
            d.status,
            d.attempt_count,
            d.next_attempt_at,
            d.attempts.len()
        ),
        (DeliveryStatus::Pending, 1, Some(retry_at), 1)
    );
    // Nor does it undo a later attempt's record.
    let second = claim(store, retry_at).await;
    record(
        store,
        vec![attempt(
            &second[0],
            retry_at,
            Some(200),
            NextStep::Succeeded,
        )],
        WEEK_MS,
    )
    .await;
    let late = record(store, vec![failed], WEEK_MS).await;
    assert_eq!(late.fenced_out, 1);
    let e = event(store, &t.account, &id).await;
    let d = to(&e, "ep")[0];
    assert_eq!(
        (d.status, d.attempt_count, d.attempts.len()),
        (DeliveryStatus::Succeeded, 2, 2)
    );
}

pub async fn an_endpoint_answering_410_is_disabled_and_the_others_are_told(store: &SharedStore) {
    let t = tree(store, "acct", 1).await;
    endpoint(store, &t.account, "gone", |_| {}).await;
    endpoint(store, &t.account, "watcher", |e| {
        e.events = Some(vec!["endpoint.disabled".into()])
    })
    .await;
    one_event(store, &t.devices[0], 1, T0).await;
    let waiting = one_event(store, &t.devices[0], 2, T0).await;
    let claimed = claim(store, T0).await;
    let first = claimed
        .iter()
        .find(|d| d.endpoint.id == "gone")
        .expect("claimed");
    let recorded = record(
        store,
        vec![attempt(first, T0, Some(410), NextStep::Failed)],
        WEEK_MS,
    )
    .await;
    assert_eq!(recorded.disabled.len(), 1);
    let disabled = &recorded.disabled[0];
    assert_eq!(
        (&disabled.endpoint_id, disabled.reason),
        (&EndpointId::from("gone"), DisableReason::Gone)
    );
    assert_eq!(recorded.made_due, 1, "the watcher's notice");
    let gone = store
        .get_endpoint(t.account.clone(), "gone".into())
        .await
        .unwrap();
    assert!(gone.disabled);
    assert_eq!(gone.disabled_reason, Some(DisableReason::Gone));
    assert_eq!(gone.failing_since, Some(T0));
    // Its other deliveries are held, kept for when it is enabled again.
    let e = event(store, &t.account, &waiting).await;
    assert_eq!(to(&e, "gone")[0].status, DeliveryStatus::Held);
    // The notice, to the other endpoint only.
    let notice = event(store, &t.account, &disabled.notice).await;
    assert_eq!(notice.summary.event_type, "endpoint.disabled");
    assert_eq!(notice.payload["endpoint"]["id"], "gone");
    assert_eq!(notice.payload["reason"], "gone");
    let told: Vec<_> = notice
        .deliveries
        .iter()
        .map(|d| d.endpoint_id.as_str())
        .collect();
    assert_eq!(told, ["watcher"]);
}

pub async fn an_endpoint_failing_too_long_is_disabled(store: &SharedStore) {
    let t = tree(store, "acct", 1).await;
    endpoint(store, &t.account, "down", |_| {}).await;
    let disable_after = 60_000;
    for rid in 0..2 {
        one_event(store, &t.devices[0], rid, T0).await;
    }
    let claimed = claim(store, T0).await;
    let recorded = record(
        store,
        vec![attempt(&claimed[0], T0, None, NextStep::RetryAt(T0 + 1000))],
        disable_after,
    )
    .await;
    assert!(recorded.disabled.is_empty(), "failing, not for long yet");
    let down = store
        .get_endpoint(t.account.clone(), "down".into())
        .await
        .unwrap();
    assert_eq!((down.disabled, down.failing_since), (false, Some(T0)));
    let later = T0 + disable_after;
    let recorded = record(
        store,
        vec![attempt(
            &claimed[1],
            later,
            Some(500),
            NextStep::RetryAt(later + 1000),
        )],
        disable_after,
    )
    .await;
    assert_eq!(recorded.disabled.len(), 1);
    assert_eq!(recorded.disabled[0].reason, DisableReason::Failing);
    let notice = event(store, &t.account, &recorded.disabled[0].notice).await;
    assert_eq!(notice.payload["failing_since"], T0 / 1000);
    assert!(notice.deliveries.is_empty(), "no other endpoint to tell");
}

pub async fn a_success_ends_the_failing_streak(store: &SharedStore) {
    let t = tree(store, "acct", 1).await;
    endpoint(store, &t.account, "flaky", |_| {}).await;
    for rid in 0..3 {
        one_event(store, &t.devices[0], rid, T0).await;
    }
    let claimed = claim(store, T0).await;
    let disable_after = 60_000;
    record(
        store,
        vec![attempt(&claimed[0], T0, Some(500), NextStep::Failed)],
        disable_after,
    )
    .await;
    // In one batch: a success, then a failure long after the first: a new streak.
    let later = T0 + disable_after;
    let recorded = record(
        store,
        vec![
            attempt(&claimed[1], later - 10, Some(200), NextStep::Succeeded),
            attempt(&claimed[2], later, Some(500), NextStep::Failed),
        ],
        disable_after,
    )
    .await;
    assert!(recorded.disabled.is_empty());
    let flaky = store
        .get_endpoint(t.account.clone(), "flaky".into())
        .await
        .unwrap();
    assert_eq!((flaky.disabled, flaky.failing_since), (false, Some(later)));
}

pub async fn an_endpoint_s_attempts_are_tallied_by_minute_for_a_day(store: &SharedStore) {
    let t = tree(store, "acct", 1).await;
    endpoint(store, &t.account, "ep", |_| {}).await;
    let minute = 60_000;
    for i in 0..3 {
        one_event(store, &t.devices[0], i + 1, T0).await;
    }
    let due = claim(store, T0).await;
    assert_eq!(due.len(), 3);
    let mut slow = attempt(&due[2], T0 + 2 * minute, Some(500), NextStep::Failed);
    slow.duration_ms = 400;
    record(
        store,
        vec![
            attempt(&due[0], T0, Some(200), NextStep::Succeeded),
            attempt(
                &due[1],
                T0 + minute + 1,
                Some(503),
                NextStep::RetryAt(T0 + 9 * minute),
            ),
            slow,
        ],
        WEEK_MS,
    )
    .await;
    let ep = EndpointId::from("ep");
    let all = store
        .endpoint_tally(t.account.clone(), ep.clone(), T0, T0 + 10 * minute)
        .await
        .unwrap();
    assert_eq!((all.succeeded, all.failed, all.attempts()), (1, 2, 3));
    // 5 ms twice (the first bucket), 400 ms once (250–500).
    assert_eq!(all.latency[0], 2);
    assert_eq!(all.latency[6], 1);
    // The one that failed for good is counted with what is failing; nothing is held.
    let backlog = store
        .endpoint_backlog(t.account.clone(), ep.clone())
        .await
        .unwrap();
    assert_eq!((backlog.held, backlog.failed), (0, 1));
    // A window counts the minutes it starts in and after, up to its end.
    let later = store
        .endpoint_tally(
            t.account.clone(),
            ep.clone(),
            T0 + minute + 30_000,
            T0 + 10 * minute,
        )
        .await
        .unwrap();
    assert_eq!(later.attempts(), 2);
    // Another account sees no such endpoint.
    let other = tree(store, "other", 0).await;
    assert_eq!(
        store
            .endpoint_tally(other.account, ep.clone(), T0, T0 + minute)
            .await,
        Err(merpati_domain::StoreError::NotFound("endpoint"))
    );
    // A day later the old minutes go as new ones come in.
    one_event(store, &t.devices[0], 9, T0).await;
    let due = claim(store, T0 + 2 * WEEK_MS).await;
    let fresh: Vec<_> = due
        .iter()
        .map(|d| attempt(d, T0 + 2 * 86_400_000, Some(200), NextStep::Succeeded))
        .collect();
    record(store, fresh, WEEK_MS).await;
    let old = store
        .endpoint_tally(t.account.clone(), ep, T0, T0 + 10 * minute)
        .await
        .unwrap();
    assert_eq!(old.attempts(), 0);
}
