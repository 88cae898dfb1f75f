//! Device queues and holding: on an endpoint that orders by device, a device's deliveries
//! go one at a time in event order, and only an outcome lets the next go; a disabled
//! endpoint holds what comes for it, and enabling it releases each queue from its
//! earliest event. Recovering failed deliveries goes through the same queues.

use merpati_domain::delivery::DeliveryStatus;
use merpati_domain::endpoint::Ordering;
use merpati_domain::job::JobStatus;
use merpati_domain::retry::NextStep;
use merpati_domain::{SharedStore, StoreError};

use crate::support::*;

pub async fn a_device_queue_goes_one_at_a_time_in_order(store: &SharedStore) {
    let t = tree(store, "acct", 2).await;
    endpoint(store, &t.account, "ordered", |e| {
        e.ordering = Some(Ordering::Device)
    })
    .await;
    let (a, b) = (&t.devices[0], &t.devices[1]);
    let mut events = Vec::new();
    for rid in 0..3 {
        events.push(one_event(store, a, rid, T0).await);
    }
    one_event(store, b, 0, T0).await;
    // One at a time per device: the first of each.
    let due = claim(store, T0).await;
    assert_eq!(due.len(), 2);
    let first = due
        .iter()
        .find(|d| d.event_id == events[0])
        .expect("the device's first event goes first");
    // A retry keeps the queue waiting behind it.
    let recorded = record(
        store,
        vec![attempt(first, T0, Some(500), NextStep::RetryAt(T0 + 100))],
        WEEK_MS,
    )
    .await;
    assert_eq!(recorded.made_due, 0);
    assert!(claim(store, T0 + 50).await.is_empty());
    let retried = claim(store, T0 + 100).await;
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0].event_id, events[0]);
    // Its outcome lets the next go.
    let recorded = record(
        store,
        vec![attempt(
            &retried[0],
            T0 + 100,
            Some(200),
            NextStep::Succeeded,
        )],
        WEEK_MS,
    )
    .await;
    assert_eq!(recorded.made_due, 1);
    let next = claim(store, T0 + 200).await;
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].event_id, events[1]);
    // Failing for good lets the next go too.
    record(
        store,
        vec![attempt(&next[0], T0 + 200, Some(400), NextStep::Failed)],
        WEEK_MS,
    )
    .await;
    let last = claim(store, T0 + 300).await;
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].event_id, events[2]);
}

pub async fn enabling_releases_held_deliveries_and_each_queue_from_its_earliest(
    store: &SharedStore,
) {
    let t = tree(store, "acct", 1).await;
    endpoint(store, &t.account, "plain", |_| {}).await;
    endpoint(store, &t.account, "ordered", |e| {
        e.ordering = Some(Ordering::Device)
    })
    .await;
    let d = &t.devices[0];
    let first = one_event(store, d, 0, T0).await;
    for id in ["plain", "ordered"] {
        store
            .set_endpoint_enabled(t.account.clone(), id.into(), false, T0)
            .await
            .unwrap();
    }
    one_event(store, d, 1, T0).await;
    one_event(store, d, 2, T0).await;
    assert!(claim(store, T0).await.is_empty(), "everything is held");
    let e = event(store, &t.account, &first).await;
    assert!(e
        .deliveries
        .iter()
        .all(|d| d.status == DeliveryStatus::Held));
    let plain = store
        .set_endpoint_enabled(t.account.clone(), "plain".into(), true, T0 + 10)
        .await
        .unwrap();
    assert_eq!(plain, 3, "all of the unordered endpoint's");
    let ordered = store
        .set_endpoint_enabled(t.account.clone(), "ordered".into(), true, T0 + 10)
        .await
        .unwrap();
    assert_eq!(ordered, 1, "the queue's earliest");
    let due = claim(store, T0 + 10).await;
    assert_eq!(endpoints_of(&due), ["ordered", "plain", "plain", "plain"]);
    let queued = due.iter().find(|d| d.endpoint.id == "ordered").unwrap();
    assert_eq!(queued.event_id, first);
    let enabled = store
        .get_endpoint(t.account.clone(), "plain".into())
        .await
        .unwrap();
    assert_eq!(
        (
            enabled.disabled,
            enabled.disabled_reason,
            enabled.failing_since
        ),
        (false, None, None)
    );
}

pub async fn switching_ordering_off_lets_the_waiting_go(store: &SharedStore) {
    let t = tree(store, "acct", 1).await;
    let ordered = endpoint(store, &t.account, "ordered", |e| {
        e.ordering = Some(Ordering::Device)
    })
    .await;
    for rid in 0..3 {
        one_event(store, &t.devices[0], rid, T0).await;
    }
    assert_eq!(claim(store, T0).await.len(), 1);
    let mut unordered = ordered.clone();
    unordered.ordering = None;
    unordered.updated_at = T0 + 1;
    store
        .update_endpoint(t.account.clone(), unordered)
        .await
        .unwrap();
    assert_eq!(claim(store, T0 + 1).await.len(), 2, "the two that waited");
}

/// An endpoint "ep" of `acct` to which `failed` deliveries failed and `succeeded` succeeded,
/// and a job, run by [`NODE`], to recover the failed ones.
async fn recover_job_after(
    store: &SharedStore,
    failed: usize,
    succeeded: usize,
) -> (Tree, merpati_domain::job::Job) {
    let t = tree(store, "acct", 1).await;
    endpoint(store, &t.account, "ep", |_| {}).await;
    for rid in 0..failed + succeeded {
        one_event(store, &t.devices[0], rid as i64, T0).await;
    }
    let claimed = claim(store, T0).await;
    let (fail, succeed) = claimed.split_at(failed);
    let mut attempts: Vec<_> = fail
        .iter()
        .map(|d| attempt(d, T0, Some(500), NextStep::Failed))
        .collect();
    attempts.extend(
        succeed
            .iter()
            .map(|d| attempt(d, T0, Some(200), NextStep::Succeeded)),
    );
    record(store, attempts, WEEK_MS).await;
    let job = store
        .create_recover_job(
            t.account.clone(),
            "ep".into(),
            T0 - 1000,
            T0 + 10,
            NODE.into(),
        )
        .await
        .unwrap();
    (t, job)
}

pub async fn a_recover_job_sends_failed_deliveries_again_in_chunks(store: &SharedStore) {
    let (t, job) = recover_job_after(store, 3, 2).await;
    assert_eq!(
        (job.status, job.total, job.done),
        (JobStatus::Running, 3, 0)
    );
    assert!(
        store.take_up_jobs(NODE.into()).await.unwrap().is_empty(),
        "its node is live"
    );
    let chunk = store
        .run_job_chunk(job.id.clone(), NODE.into(), 2, T0 + 20)
        .await
        .unwrap();
    assert_eq!(chunk.made_due, 2);
    assert!(!chunk.finished());
    let chunk = store
        .run_job_chunk(job.id.clone(), NODE.into(), 2, T0 + 30)
        .await
        .unwrap();
    assert_eq!(chunk.made_due, 1);
    assert!(chunk.finished());
    let done = chunk.job.unwrap();
    assert_eq!(
        (done.status, done.done, done.finished_at),
        (JobStatus::Done, 3, Some(T0 + 30))
    );
    assert_eq!(claim(store, T0 + 30).await.len(), 3);
    // Recovered once: a second job finds nothing left to send.
    let again = store
        .create_recover_job(
            t.account.clone(),
            "ep".into(),
            T0 - 1000,
            T0 + 40,
            NODE.into(),
        )
        .await
        .unwrap();
    assert_eq!(again.total, 0);
    // Not for a disabled endpoint, nor for another account's.
    store
        .set_endpoint_enabled(t.account.clone(), "ep".into(), false, T0)
        .await
        .unwrap();
    let refused = store
        .create_recover_job(t.account.clone(), "ep".into(), T0, T0, NODE.into())
        .await;
    assert!(
        matches!(refused, Err(StoreError::Conflict(_))),
        "{refused:?}"
    );
    let other = tree(store, "other", 0).await;
    let walled = store
        .create_recover_job(other.account, "ep".into(), T0, T0, NODE.into())
        .await;
    assert_eq!(walled, Err(StoreError::NotFound("endpoint")));
}

/// A job whose node is gone (its lease ended) is taken up by another node, from where it
/// was; the first node's chunks change nothing after that.
pub async fn a_gone_nodes_job_is_taken_up_from_where_it_was(store: &SharedStore) {
    let (_, job) = recover_job_after(store, 3, 0).await;
    let chunk = store
        .run_job_chunk(job.id.clone(), NODE.into(), 1, T0 + 20)
        .await
        .unwrap();
    assert_eq!((chunk.made_due, chunk.runs_elsewhere), (1, false));
    assert!(
        store
            .take_up_jobs("node_new".into())
            .await
            .unwrap()
            .is_empty(),
        "its node is live"
    );

    store.leave_cluster(NODE).await.unwrap();
    store
        .join_cluster("node_new", "host", LONG)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store.take_up_jobs("node_new".into()).await.unwrap(),
        std::slice::from_ref(&job.id)
    );
    assert!(
        store
            .take_up_jobs("node_new".into())
            .await
            .unwrap()
            .is_empty(),
        "taken up once"
    );
    let left = store
        .run_job_chunk(job.id.clone(), NODE.into(), 10, T0 + 30)
        .await
        .unwrap();
    assert!(left.runs_elsewhere && left.finished(), "{left:?}");
    assert_eq!(left.made_due, 0);
    assert_eq!(left.job.as_ref().map(|j| j.done), Some(1));
    let rest = store
        .run_job_chunk(job.id.clone(), "node_new".into(), 10, T0 + 40)
        .await
        .unwrap();
    assert_eq!((rest.made_due, rest.runs_elsewhere), (2, false));
    let done = rest.job.unwrap();
    assert_eq!((done.status, done.done), (JobStatus::Done, 3));
}
