//! The official Standard Webhooks verifiers of PyPI and npm accept real merpati deliveries
//! (the crates.io one is checked in merpati-webhooks' own tests). They are installed under
//! `target/compat` by `scripts/compat-setup.sh`, which the test script runs first.

use std::path::PathBuf;
use std::process::Command;

use serde_json::{json, Value};

use crate::helpers::*;

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/compat")
        .join(name)
}

fn run(mut command: Command, what: &str) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} refused merpati's requests (is scripts/compat-setup.sh run?):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_and_node_verifiers_accept_real_deliveries() {
    let app = TestApp::spawn().await;
    let (json_receiver, form_receiver) = (Receiver::start().await, Receiver::start().await);
    let m = app.merchant("m1").await;
    let ep = app.endpoint(&m.key, &json_receiver, json!({})).await;
    app.endpoint(
        &m.key,
        &form_receiver,
        json!({"format": "form", "secret_in_body": true}),
    )
    .await;
    app.ok_post(
        "/v1/device/messages",
        &m.device_token,
        json!({"items": [
            {"type": "sms", "rid": 1, "phone": "+639760713666", "message": "Halo, apa kabar? ✓ 😀"},
            {"type": "notification", "rid": 2, "package": "p", "title": "a\"b", "content": "x&y=z"},
        ]}),
        202,
    )
    .await;
    app.ok_post(
        "/v1/device/status",
        &m.device_token,
        json!({"status": "connected"}),
        202,
    )
    .await;
    // During a rotation both signatures are sent; each secret alone must verify.
    let rotated = app
        .ok_post(
            &format!("/v1/endpoints/{ep}/secret/rotate"),
            &m.key,
            json!({}),
            200,
        )
        .await;
    let new_secret = rotated["secret"].as_str().unwrap().to_string();
    app.sms(&m.device_token, 3).await;

    let mut cases: Vec<Value> = Vec::new();
    // The SMS sent after the rotation carries both signatures, and each secret must verify
    // it. The three before may arrive after it, so it is picked by its content.
    for r in json_receiver.wait_for(4).await.iter() {
        let secrets = if r.json()["data"]["rid"] == json!(3) {
            vec![SECRET.to_string(), new_secret.clone()]
        } else {
            vec![SECRET.to_string()]
        };
        cases.push(case(r, secrets));
    }
    for r in form_receiver.wait_for(3).await.iter() {
        cases.push(case(r, vec![SECRET.to_string()]));
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_json::to_vec(&cases).unwrap()).unwrap();

    let dir = compat_dir();
    let mut python = Command::new("python3");
    python
        .arg(script("verify.py"))
        .arg(file.path())
        .env("PYTHONPATH", dir.join("python"));
    run(python, "the PyPI standardwebhooks verifier");
    let mut node = Command::new("node");
    node.arg(script("verify.cjs"))
        .arg(file.path())
        .env("NODE_PATH", dir.join("node/node_modules"));
    run(node, "the npm standardwebhooks verifier");
}

fn case(r: &Received, secrets: Vec<String>) -> Value {
    json!({
        "secrets": secrets,
        "body": r.body_str(),
        "headers": {
            "webhook-id": r.header("webhook-id"),
            "webhook-timestamp": r.header("webhook-timestamp"),
            "webhook-signature": r.header("webhook-signature"),
        },
    })
}
