//! merpati on a PostgreSQL server that goes away: a private server of the test's own, stopped
//! as a crash would (immediate shutdown) while devices post, then started again.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use merpati_postgres::scratch::{ScratchOptions, ScratchServer};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

/// The device's item with rid `rid`: sent again, it is the same item, byte for byte.
fn item(rid: i64) -> serde_json::Value {
    json!({"type": "sms", "rid": rid, "phone": "+62811", "message": "m"})
}

/// A series of the node's `/metrics`; `None` while the scrape fails or shows no such series.
async fn sample(app: &TestApp, series: &str) -> Option<f64> {
    sample_of(&metrics_text(&app.url).await.ok()?, series)
}

/// A PostgreSQL server of the test's own (it is stopped, or set up server-wide), a node on
/// a migrated database of it, an account and a receiver subscribed to everything.
struct OnPrivateServer {
    server: Arc<ScratchServer>,
    app: TestApp,
    m: Merchant,
    receiver: Receiver,
}

/// A PostgreSQL server of the test's own, and the `database_url` of a migrated database
/// of it.
async fn private_server() -> (ScratchServer, String) {
    tokio::task::spawn_blocking(|| {
        let server = ScratchServer::start(ScratchOptions::default()).unwrap();
        let url = server
            .fresh_database(|url| {
                merpati_postgres::PostgresStore::migrate(url)
                    .map(drop)
                    .map_err(|e| e.to_string())
            })
            .unwrap();
        (server, url)
    })
    .await
    .unwrap()
}

impl OnPrivateServer {
    async fn start() -> OnPrivateServer {
        let (server, url) = private_server().await;
        let app = TestApp::spawn_with(&[("database_url", &url)]).await;
        let m = app.merchant("acct").await;
        let receiver = Receiver::start().await;
        app.endpoint(&m.key, &receiver, json!({})).await;
        OnPrivateServer {
            server: Arc::new(server),
            app,
            m,
            receiver,
        }
    }
}

/// Stops the server as a crash would (immediate shutdown).
async fn stop(server: &Arc<ScratchServer>) {
    let server = server.clone();
    tokio::task::spawn_blocking(move || server.stop(true))
        .await
        .unwrap();
}

/// Starts the stopped server again.
async fn start_again(server: &Arc<ScratchServer>) {
    let server = server.clone();
    tokio::task::spawn_blocking(move || server.run().unwrap())
        .await
        .unwrap();
}

/// While the server is down, every request is answered 503 with `Retry-After` and
/// `/readyz` is not ready; once it is back, the same node takes requests again without a
/// restart, every item that was answered 202 (before or after) reaches the receiver, and so
/// does every refused one the device sends again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_goes_away_under_load_loses_no_accepted_event() {
    let OnPrivateServer {
        server,
        app,
        m,
        receiver,
    } = OnPrivateServer::start().await;

    let accepted = Arc::new(Mutex::new(BTreeSet::new()));
    let refused = Arc::new(Mutex::new(Vec::new()));
    let posting = {
        let (app_url, token) = (app.url.clone(), m.device_token.clone());
        let (accepted, refused) = (accepted.clone(), refused.clone());
        let client = client();
        async move {
            for rid in 0..400i64 {
                let answer = client
                    .post(format!("{app_url}/v1/device/messages"))
                    .bearer_auth(&token)
                    .json(&item(rid))
                    .send()
                    .await
                    .unwrap();
                match answer.status() {
                    StatusCode::ACCEPTED => {
                        accepted.lock().unwrap().insert(rid);
                    }
                    status => {
                        let retry = answer.headers().contains_key("retry-after");
                        refused.lock().unwrap().push((rid, status.as_u16(), retry));
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    let outage = {
        let (server, app_url) = (server.clone(), app.url.clone());
        let accepted = accepted.clone();
        async move {
            while accepted.lock().unwrap().len() < 50 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            stop(&server).await;
            tokio::time::sleep(Duration::from_millis(700)).await;
            let ready = client()
                .get(format!("{app_url}/readyz"))
                .send()
                .await
                .unwrap()
                .status();
            start_again(&server).await;
            ready
        }
    };
    let ((), ready_while_down) = tokio::join!(posting, outage);
    assert_eq!(ready_while_down, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _) = app.get("/readyz", "").await;
    assert_eq!(status, StatusCode::OK, "ready again without a restart");

    let refused = refused.lock().unwrap().clone();
    assert!(!refused.is_empty(), "the outage refused nothing");
    for (rid, status, retry) in &refused {
        assert_eq!((*status, *retry), (503, true), "rid {rid}");
    }
    let accepted = accepted.lock().unwrap().clone();
    let last = *accepted.last().unwrap();
    assert!(
        refused.iter().all(|(rid, ..)| *rid < last),
        "requests were accepted again after the outage"
    );
    // The device sends the refused items again, as devices do: each is taken now (or was
    // stored after all, when the server died between its commit and the answer).
    for (rid, ..) in &refused {
        let again = app
            .ok_post("/v1/device/messages", &m.device_token, item(*rid), 202)
            .await;
        assert_eq!(again["items"][0]["rid"], *rid);
    }
    // Every item answered 202 arrives, and so does every item sent again.
    receiver.wait_for(400).await;
    let rids: BTreeSet<i64> = receiver
        .received()
        .iter()
        .map(|r| r.json()["data"]["rid"].as_i64().unwrap())
        .collect();
    assert!(accepted.is_subset(&rids), "an accepted item was lost");
    assert_eq!(rids.len(), 400);
}

/// An attempt that ends while the database is down is recorded once it is back, rather
/// than made again when its lease runs out: the node sends the record again while the
/// lease lasts. Meanwhile `/metrics` still answers, and says the store is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_that_ends_while_the_database_is_down_is_recorded_once_it_is_back() {
    let OnPrivateServer {
        server,
        app,
        m,
        receiver,
    } = OnPrivateServer::start().await;
    receiver.pause();
    let posted = app
        .ok_post("/v1/device/messages", &m.device_token, item(0), 202)
        .await;
    let event_id = posted["items"][0]["event_id"].as_str().unwrap().to_owned();
    receiver.wait_for(1).await;

    stop(&server).await;
    receiver.resume();
    let sent_again = r#"merpati_attempt_records_refused_total{then="sent_again"}"#;
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let store_up = sample(&app, "merpati_store_up").await;
        let refused = sample(&app, sent_again).await;
        if store_up == Some(0.0) && refused.is_some_and(|n| n >= 1.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the record was not refused while the database was down \
             (store up: {store_up:?}, records sent again: {refused:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start_again(&server).await;

    let event = app.settled_event(&m.key, &event_id).await;
    let delivery = &event["deliveries"][0];
    assert_eq!(delivery["status"], "succeeded", "{delivery}");
    assert_eq!(delivery["attempt_count"], 1, "{delivery}");
    assert_eq!(receiver.received().len(), 1);
    assert_eq!(sample(&app, "merpati_store_up").await, Some(1.0));
    let given_up = r#"merpati_attempt_records_refused_total{then="given_up"}"#;
    assert_eq!(sample(&app, given_up).await, None);
}

/// A request whose commit the server made but never answered (its connection was lost
/// while the commit waited: here for a synchronous standby that never comes) is answered
/// 503; the device sends it again, it is found stored, and its delivery, leased to the
/// worker by the write that was never answered, still goes out at once, not when its
/// lease runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_commit_went_unanswered_is_delivered_without_waiting_out_its_lease() {
    let OnPrivateServer {
        server,
        app,
        m,
        receiver,
    } = OnPrivateServer::start().await;
    app.ok_post("/v1/device/messages", &m.device_token, item(0), 202)
        .await;
    receiver.wait_for(1).await;

    let db = RawDatabase::of(&app);
    db.execute("ALTER SYSTEM SET synchronous_standby_names = 'nobody'");
    db.execute("SELECT pg_reload_conf()");
    // Until the setting reaches the server's processes, commits are answered as before:
    // the device posts its next item until one is answered as unanswered. Every commit
    // that waits for the standby is ended, whatever wrote it: the node's other writes (an
    // attempt's record, a group of several writes ending in `COMMIT`) wait too, and hold
    // their locks while they wait, so the item's commit may come only after them.
    let mut rid = 0;
    let deadline = std::time::Instant::now() + PATIENCE;
    let unanswered = loop {
        rid += 1;
        let post = {
            let (url, token) = (app.url.clone(), m.device_token.clone());
            tokio::spawn(async move {
                let answer = client()
                    .post(format!("{url}/v1/device/messages"))
                    .bearer_auth(token)
                    .json(&item(rid))
                    .send()
                    .await
                    .unwrap();
                let status = answer.status();
                (status, answer.json::<serde_json::Value>().await.unwrap())
            })
        };
        while !post.is_finished() {
            assert!(
                std::time::Instant::now() < deadline,
                "item {rid} was neither answered nor held by the standby; the server's \
                 sessions: {}",
                db.text(
                    "SELECT string_agg(format('%s %s/%s: %s', pid, wait_event_type, \
                     wait_event, left(query, 60)), '; ') FROM pg_stat_activity \
                     WHERE backend_type = 'client backend'"
                )
            );
            db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE wait_event = 'SyncRep'",
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (status, body) = post.await.unwrap();
        if status == StatusCode::ACCEPTED {
            continue;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["error"]["code"], "unavailable");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("may have been made"), "{message}");
        break rid;
    };
    db.execute("ALTER SYSTEM RESET synchronous_standby_names");
    db.execute("SELECT pg_reload_conf()");
    assert_eq!(
        db.scalar(&format!(
            "SELECT COUNT(*) FROM event_rids WHERE rid = 'i:{unanswered}'"
        )),
        1,
        "the commit was made"
    );
    let again = app
        .ok_post(
            "/v1/device/messages",
            &m.device_token,
            item(unanswered),
            202,
        )
        .await;
    assert_eq!(again["items"][0]["rid"], unanswered);
    let received = receiver.wait_for(unanswered as usize + 1).await;
    let rids: BTreeSet<i64> = received
        .iter()
        .map(|r| r.json()["data"]["rid"].as_i64().unwrap())
        .collect();
    assert_eq!(rids, (0..=unanswered).collect());
    drop(server);
}

/// A claim the server made but whose answer never came (its connection cut just before:
/// a network drop, a failover) is read back by when it was made, and the retry goes out
/// at once, not when the claim's lease runs out (`delivery.timeout` + 30 s, 33 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_commit_went_unanswered_is_attempted_without_waiting_out_its_lease() {
    let (server, url) = private_server().await;
    let database = url.rsplit('/').next().unwrap().to_owned();
    // The claim's statement (`DeliveryStore::claim_due`).
    let cutter = CommitCutter::start(
        server.socket_dir(),
        "SET claimed_at = $1, next_attempt_at = $3",
    )
    .await;
    let app = TestApp::spawn_with(&[
        ("database_url", &cutter.url(&database)),
        // Time to arm the cutter between the first attempt and its retry's claim.
        ("delivery.retry_schedule", "2s"),
    ])
    .await;
    let m = app.merchant("acct").await;
    let receiver = Receiver::start().await;
    receiver.script([Answer::status(500)]);
    app.endpoint(&m.key, &receiver, json!({})).await;
    app.ok_post("/v1/device/messages", &m.device_token, item(1), 202)
        .await;
    // The first attempt fails; its retry, two seconds later, is claimed.
    receiver.wait_for(1).await;
    cutter.arm();
    let armed_at = std::time::Instant::now();
    let received = receiver.wait_for(2).await;
    let waited = armed_at.elapsed();
    assert_eq!(
        cutter.cuts(),
        1,
        "the retry's claim was made, its answer cut"
    );
    assert!(
        waited < Duration::from_secs(10),
        "the retry came {waited:?} after the claim; its lease is 33 s"
    );
    assert_eq!(
        received[0].header("webhook-id"),
        received[1].header("webhook-id")
    );
    // Recorded once, as the second attempt.
    let db = RawDatabase::Postgres(url);
    let deadline = std::time::Instant::now() + PATIENCE;
    while db.text("SELECT status || ' ' || attempts FROM deliveries") != "succeeded 2" {
        assert!(std::time::Instant::now() < deadline, "never recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(db.scalar("SELECT COUNT(*) FROM attempts"), 2);
    assert_eq!(receiver.received().len(), 2);
    drop(app);
    drop(server);
}
