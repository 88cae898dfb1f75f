//! `/metrics`, read by the OpenMetrics parser of Prometheus' official Python client
//! (installed under `target/compat` by `scripts/compat-setup.sh`): the fixed names are
//! there, and the values move as events flow.

use serde_json::{json, Value};

use crate::helpers::*;

/// Every sample of a scrape, parsed by the official parser.
async fn scrape(app: &TestApp) -> Vec<Value> {
    let response = app
        .client
        .get(format!("{}/metrics", app.url))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = response.text().await.unwrap();
    let script =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/compat/parse_metrics.py");
    let out = compat_python(&[script.as_os_str()], text.as_bytes());
    assert!(
        out.status.success(),
        "the official parser refused /metrics (is scripts/compat-setup.sh run?):\n{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn value(samples: &[Value], name: &str, labels: Value) -> f64 {
    samples
        .iter()
        .filter(|s| s["name"] == name)
        .filter(|s| {
            labels
                .as_object()
                .unwrap()
                .iter()
                .all(|(k, v)| s["labels"][k] == *v)
        })
        .map(|s| s["value"].as_f64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_with_the_official_parser_and_move_as_events_flow() {
    let app = TestApp::spawn().await;
    let m = app.merchant_on("m1", "wa").await;
    let receiver = Receiver::start().await;
    app.endpoint(&m.key, &receiver, json!({"events": ["sms"]}))
        .await;
    let before = scrape(&app).await;
    assert_eq!(
        value(&before, "merpati_events_total", json!({"type": "sms"})),
        0.0
    );
    for name in [
        "merpati_deliveries_pending",
        "merpati_incidents_open",
        "merpati_links_open",
        "merpati_delivery_duration_seconds_count",
        "merpati_store_up",
    ] {
        assert!(
            before.iter().any(|s| s["name"] == name),
            "{name} is exposed"
        );
    }

    for rid in 1..=3 {
        app.sms(&m.device_token, rid).await;
    }
    app.sms(&m.device_token, 3).await;
    app.ok_post(
        "/v1/device/status",
        &m.device_token,
        json!({"status": "connected"}),
        202,
    )
    .await;
    for got in receiver.wait_for(3).await {
        app.settled_event(&m.key, got.header("webhook-id")).await;
    }
    let link = Link::open(&app, &m.device_token).await;
    let after = scrape(&app).await;
    assert_eq!(
        value(&after, "merpati_events_total", json!({"type": "sms"})),
        3.0
    );
    assert_eq!(
        value(
            &after,
            "merpati_ingest_items_total",
            json!({"type": "sms", "outcome": "duplicate"})
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "merpati_events_total",
            json!({"type": "device.connected"})
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "merpati_deliveries_total",
            json!({"outcome": "succeeded"})
        ),
        3.0
    );
    assert_eq!(
        value(&after, "merpati_delivery_duration_seconds_count", json!({})),
        3.0
    );
    assert_eq!(
        value(
            &after,
            "merpati_devices",
            json!({"status": "connected", "engine": "wa"})
        ),
        1.0
    );
    assert_eq!(value(&after, "merpati_links_open", json!({})), 1.0);
    assert_eq!(value(&after, "merpati_deliveries_pending", json!({})), 0.0);
    // Every write commits: the store's commit latency moved with them.
    let commits = value(&after, "merpati_commit_duration_seconds_count", json!({}));
    assert!(commits > value(&before, "merpati_commit_duration_seconds_count", json!({})));
    assert_eq!(
        value(
            &after,
            "merpati_commit_duration_seconds_bucket",
            json!({"le": "+Inf"})
        ),
        commits
    );
    link.close().await;

    // For the admin only.
    let (status, _) = app.get("/metrics", &m.key).await;
    assert_eq!(status, 401);
    let (status, _) = app.get("/metrics", "nope").await;
    assert_eq!(status, 401);
}
