//! Secrets at rest: sealed in the database under a key kept apart from it, so a copy of
//! the database alone yields none; the key rotated beside a running server, losing nothing.

use std::path::Path;

use serde_json::{json, Value};

use crate::connectors::{connector, fixture, waha};
use crate::helpers::*;
use crate::restart::{spawn_binary_logged, stop_gracefully};

const HEADER_TOKEN: &str = "Bearer hdr-0f3c9a1e77d2b5a4";
const ENGINE_KEY: &str = "waha-api-key-5be1d0c4a2";
const BOT_TOKEN: &str = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw_";

/// Every file of `dir` but the key file, concatenated.
fn stored_bytes(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() != "secret.key" && path.is_file() {
            all.extend(std::fs::read(&path).unwrap());
        }
    }
    all
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// An account with an endpoint (a secret and a credential in a header), a connector with
/// an engine's API key, and a Telegram notifier. The secrets it made.
async fn secrets_of_every_kind(app: &TestApp, receiver: &Receiver) -> (Merchant, Vec<String>) {
    let m = app.merchant("m1").await;
    app.endpoint(
        &m.key,
        receiver,
        json!({"headers": {"Authorization": HEADER_TOKEN}}),
    )
    .await;
    let c = connector(
        app,
        &m.key,
        json!({"engine": "waha", "channel_id": "ch", "bindings": {"default": "dev"},
               "api": {"base_url": "http://127.0.0.1:1", "key": ENGINE_KEY}}),
    )
    .await;
    app.ok_post(
        "/v1/notifiers",
        &m.key,
        json!({"name": "Ops chat", "kind": "telegram", "bot_token": BOT_TOKEN, "chat_id": "42"}),
        201,
    )
    .await;
    let secrets = [SECRET, HEADER_TOKEN, ENGINE_KEY, BOT_TOKEN, &c.secret]
        .map(String::from)
        .to_vec();
    (m, secrets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_copied_without_its_key_yields_no_secret() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let receiver = Receiver::start().await;
    let (mut child, url, logs) = spawn_binary_logged(&data, &[]).await;
    let app = TestApp::at(url);
    let (m, secrets) = secrets_of_every_kind(&app, &receiver).await;
    app.sms(&m.device_token, 1).await;
    let got = receiver.wait_for(1).await;
    got[0].event();
    assert_eq!(got[0].header("authorization"), HEADER_TOKEN);

    let key_file = data.join("secret.key");
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the key file");
    // Neither the database, nor its log, nor what the server wrote, holds one in clear:
    // while it runs, and after it stopped.
    let stored = stored_bytes(&data);
    for secret in &secrets {
        assert!(!contains(&stored, secret), "{secret} is stored in clear");
    }
    stop_gracefully(&mut child).await;
    let stored = stored_bytes(&data);
    for secret in &secrets {
        assert!(!contains(&stored, secret), "{secret} is stored in clear");
    }
    let logged = logs.lock().unwrap().join("\n");
    for secret in &secrets {
        assert!(!logged.contains(secret.as_str()), "{secret} is in the log");
    }
    let key_id = logs
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["fields"]["message"] == "secrets at rest are sealed")
        .map(|l| l["fields"]["key"].as_str().unwrap().to_string())
        .expect("the log names the sealing key");
    assert!(!std::fs::read_to_string(&key_file)
        .unwrap()
        .contains(&key_id));

    // The database alone, elsewhere: merpati refuses it, naming the key it lacks.
    let copy = dir.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    for file in ["merpati.db", "merpati.db-wal"] {
        if data.join(file).exists() {
            std::fs::copy(data.join(file), copy.join(file)).unwrap();
        }
    }
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_merpati"))
        .arg("serve")
        .env("MERPATI_LISTEN", "127.0.0.1:0")
        .env("MERPATI_DATA_DIR", &copy)
        .env("MERPATI_ADMIN_TOKEN", ADMIN)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains(&key_id) && said.contains("does not hold"),
        "{said}"
    );

    // With its key it opens again, and signs as before.
    let (mut child, url, _) = spawn_binary_logged(&data, &[]).await;
    let app = TestApp::at(url);
    app.sms(&m.device_token, 2).await;
    receiver.wait_for(2).await[1].event();
    stop_gracefully(&mut child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_rotates_beside_a_running_server_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let receiver = Receiver::start().await;
    let (mut child, url, _) = spawn_binary_logged(&data, &[]).await;
    let app = TestApp::at(url);
    let (m, _) = secrets_of_every_kind(&app, &receiver).await;
    let c = connector(
        &app,
        &m.key,
        json!({"engine": "waha", "channel_id": "ch", "bindings": {"default": "dev"}}),
    )
    .await;
    let before = std::fs::read_to_string(data.join("secret.key")).unwrap();

    // Events keep coming while the key rotates.
    let posting = {
        let app = TestApp::at(app.url.clone());
        let token = m.device_token.clone();
        tokio::spawn(async move {
            for rid in 0..60 {
                app.sms(&token, rid).await;
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
    };
    let rotated = tokio::process::Command::new(env!("CARGO_BIN_EXE_merpati"))
        .arg("rotate-key")
        .env("MERPATI_DATA_DIR", &data)
        .env("MERPATI_ADMIN_TOKEN", ADMIN)
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&rotated.stdout);
    assert!(
        rotated.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    assert!(said.contains("sealed with the new key"), "{said}");
    posting.await.unwrap();
    for got in receiver.wait_for(60).await {
        got.event();
    }
    let after = std::fs::read_to_string(data.join("secret.key")).unwrap();
    let keys = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(String::from)
            .collect()
    };
    assert_eq!(keys(&after).len(), 1);
    assert!(!keys(&before).contains(&keys(&after)[0]), "a new key");

    // The running server opens what the rotation sealed, and seals with the new key.
    let (status, _) = waha(&app, &c, &fixture("waha-message-received.json")).await;
    assert_eq!(status, 200);
    let second = Receiver::start().await;
    app.ok_post(
        "/v1/endpoints",
        &m.key,
        json!({"url": second.url, "secret": SECRET}),
        201,
    )
    .await;
    app.sms(&m.device_token, 100).await;
    second.wait_for(1).await[0].event();
    stop_gracefully(&mut child).await;

    // And after a restart, with only the new key, everything opens.
    let (mut child, url, _) = spawn_binary_logged(&data, &[]).await;
    let app = TestApp::at(url);
    app.sms(&m.device_token, 101).await;
    second.wait_for(2).await[1].event();
    let (status, _) = waha(&app, &c, &fixture("waha-message-received.json")).await;
    assert_eq!(status, 200);
    stop_gracefully(&mut child).await;
}
