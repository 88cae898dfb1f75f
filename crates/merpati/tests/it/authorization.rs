//! Who may do what: every route of the OpenAPI document (so a new route without a rule
//! fails here) against every kind of caller, and no answer carrying another account's
//! data. Scoped keys: read-only ones, expiry, the last use.

use reqwest::Method;
use serde_json::{json, Value};

use crate::bad_input::snapshot;
use crate::helpers::*;
use crate::openapi::operations;

/// What a caller presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    Nobody,
    Malformed,
    Wrong,
    Device,
    OtherAccount,
    ReadOnly,
    Full,
    Admin,
}

const CALLERS: [Caller; 8] = [
    Caller::Nobody,
    Caller::Malformed,
    Caller::Wrong,
    Caller::Device,
    Caller::OtherAccount,
    Caller::ReadOnly,
    Caller::Full,
    Caller::Admin,
];

/// Whether a caller gets past authentication on a route of `scheme` (`None`: open), and
/// whether it is then refused as read-only.
fn expected(caller: Caller, scheme: Option<&str>, method: &Method) -> Result<(), u16> {
    let writes = ![Method::GET, Method::HEAD].contains(method);
    match (scheme, caller) {
        (None, _) => Ok(()),
        (Some("admin_token"), Caller::Admin) => Ok(()),
        (Some("device_token"), Caller::Device) => Ok(()),
        (Some("api_key"), Caller::Full | Caller::OtherAccount) => Ok(()),
        (Some("api_key"), Caller::ReadOnly) if writes => Err(403),
        (Some("api_key"), Caller::ReadOnly) => Ok(()),
        (Some(_), _) => Err(401),
    }
}

async fn read_only_key(app: &TestApp, account: &str, extra: Value) -> (String, Value) {
    let mut body = json!({"read_only": true});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().cloned().unwrap_or_default());
    let view = app
        .ok_post(
            &format!("/v1/accounts/{account}/api-keys"),
            ADMIN,
            body,
            201,
        )
        .await;
    (view["key"].as_str().unwrap().to_string(), view)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_every_caller_as_its_rule_says() {
    let app = TestApp::spawn().await;
    let m = app.merchant("acct").await;
    let other = app.merchant("other").await;
    let (read_only, _) = read_only_key(&app, "acct", json!({})).await;
    let receiver = Receiver::start().await;
    app.endpoint(&m.key, &receiver, json!({})).await;
    let before = snapshot(&app, &m).await;

    let doc: Value = serde_json::from_str(merpati::app::openapi_json()).unwrap();
    let ops = operations(&doc);
    assert!(ops.len() >= 80, "{} operations", ops.len());
    let client = reqwest::Client::new();
    let mut checked = 0;
    // First every refused caller (and the read-only key's reads): they change nothing;
    // then the callers that pass (whose empty bodies may make something).
    for passing in [false, true] {
        for (method, path, scheme) in &ops {
            let url = format!("{}{path}", app.url);
            for caller in CALLERS {
                let refused = expected(caller, scheme.as_deref(), method).is_err();
                let read_only_read = caller == Caller::ReadOnly && !refused;
                if passing == (refused || read_only_read) {
                    continue;
                }
                let mut req = client.request(method.clone(), &url);
                req = match caller {
                    Caller::Nobody => req,
                    Caller::Malformed => req.header("authorization", "Basic bWVycGF0aTpwYXNz"),
                    Caller::Wrong => req.bearer_auth("mpk_0000000000000000000000000000000000"),
                    Caller::Device => req.bearer_auth(&m.device_token),
                    Caller::OtherAccount => req.bearer_auth(&other.key),
                    Caller::ReadOnly => req.bearer_auth(&read_only),
                    Caller::Full => req.bearer_auth(&m.key),
                    Caller::Admin => req.bearer_auth(ADMIN),
                };
                if *method == Method::POST || *method == Method::PATCH {
                    req = req.json(&json!({}));
                }
                let answer = req.send().await.unwrap();
                let status = answer.status().as_u16();
                let what = format!("{method} {path} by {caller:?}");
                match expected(caller, scheme.as_deref(), method) {
                    Ok(()) => assert!(
                        status != 401 && status != 403,
                        "{what}: {status}, expected to pass"
                    ),
                    Err(refused) => {
                        assert_eq!(status, refused, "{what}");
                        let body: Value = answer.json().await.unwrap();
                        let code = if refused == 401 {
                            "unauthorized"
                        } else {
                            "forbidden"
                        };
                        assert_eq!(body["error"]["code"], code, "{what}");
                    }
                }
                checked += 1;
            }
        }
        if !passing {
            assert_eq!(
                snapshot(&app, &m).await,
                before,
                "a refused request changed something"
            );
        }
    }
    assert_eq!(checked, ops.len() * CALLERS.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_carries_another_account_s_data() {
    let app = TestApp::spawn().await;
    let m = app.merchant("acct").await;
    let other = app.merchant("other").await;
    let receiver = Receiver::start().await;
    const MARK: &str = "alpha-only-7c1e";
    app.ok_post(
        "/v1/devices",
        &m.key,
        json!({"id": "alpha-device", "name": MARK, "channel_id": "ch", "phone": "+6281100"}),
        201,
    )
    .await;
    let endpoint = app
        .endpoint(&m.key, &receiver, json!({"description": MARK}))
        .await;
    let v = app.sms(&m.device_token, 1).await;
    let event = v["items"][0]["event_id"].as_str().unwrap().to_string();
    receiver.wait_for(1).await;
    let connector = app
        .ok_post(
            "/v1/connectors",
            &m.key,
            json!({"engine": "waha", "channel_id": "ch", "bindings": {"default": "dev"}}),
            201,
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let notifier = app
        .ok_post(
            "/v1/notifiers",
            &m.key,
            json!({"name": MARK, "kind": "slack", "url": "https://hooks.example.com/x"}),
            201,
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut markers = vec![
        MARK.to_string(),
        endpoint.clone(),
        event.clone(),
        connector.clone(),
    ];
    markers.push(notifier.clone());

    let id_of = |path: &str| -> Option<String> {
        let resource = path.split('/').nth(2)?;
        Some(
            match resource {
                "devices" => "alpha-device",
                "endpoints" => &endpoint,
                "events" => &event,
                "connectors" => &connector,
                "notifiers" => &notifier,
                "businesses" => "biz",
                "channels" => "ch",
                _ => "x1",
            }
            .to_string(),
        )
    };
    let doc: Value = serde_json::from_str(merpati::app::openapi_json()).unwrap();
    let client = reqwest::Client::new();
    let mut read = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let Some(op) = item.get("get") else { continue };
        if op["security"][0].get("api_key").is_none() || path == "/v1/stream" {
            continue;
        }
        let concrete = match id_of(path) {
            Some(id) => path.replace("{id}", &id),
            None => path.clone(),
        };
        let answer = client
            .get(format!("{}{concrete}", app.url))
            .bearer_auth(&other.key)
            .send()
            .await
            .unwrap();
        let status = answer.status().as_u16();
        let body = answer.text().await.unwrap();
        assert!(
            [200, 404, 422].contains(&status),
            "GET {concrete} by another account: {status} {body}"
        );
        for marker in &markers {
            assert!(
                !body.contains(marker.as_str()),
                "GET {concrete} by another account shows {marker}: {body}"
            );
        }
        read += 1;
    }
    assert!(read >= 30, "{read} reads");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_can_read_only_expire_and_shows_its_last_use() {
    let app = TestApp::spawn_manual(&[]).await;
    let m = app.merchant("acct").await;
    let in_an_hour = (app.now_ms() / 1000 + 3600).to_string();
    let (ro, view) = read_only_key(&app, "acct", json!({"expires_at": in_an_hour})).await;
    assert_eq!(view["read_only"], true);
    assert!(view["expires_at"].is_string());
    assert!(view["last_used_at"].is_null());

    // It reads, and its use is shown (once a minute at most).
    let (status, _) = app.get("/v1/devices", &ro).await;
    assert_eq!(status, 200);
    let (_, keys) = app.get("/v1/accounts/acct/api-keys", ADMIN).await;
    let shown = keys["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == view["id"])
        .unwrap()
        .clone();
    assert!(shown["last_used_at"].is_string(), "{shown}");
    assert!(shown.get("key").is_none(), "the key is shown only once");

    // It changes nothing.
    let (status, body) = app
        .post("/v1/businesses", &ro, json!({"id": "b2", "name": "B2"}))
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("read-only"));
    let (status, _) = app.get("/v1/businesses/b2", &m.key).await;
    assert_eq!(status, 404);

    // An hour later it opens nothing.
    app.advance(3_600_000).await;
    let (status, body) = app.get("/v1/devices", &ro).await;
    assert_eq!(status, 401);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("expired"));
    let (status, _) = app.get("/v1/devices", &m.key).await;
    assert_eq!(status, 200, "a key without expiry lives on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_key_request_is_refused_and_makes_no_key() {
    let app = TestApp::spawn().await;
    app.merchant("acct").await;
    let (_, before) = app.get("/v1/accounts/acct/api-keys", ADMIN).await;
    for (body, status) in [
        (json!({"read_only": "yes"}), 422),
        (json!({"expires_at": "2001-01-01T00:00:00Z"}), 422),
        (json!({"expires_at": "next tuesday"}), 422),
        (json!({"expires_at": 12}), 422),
        (json!({"scopes": ["read"]}), 422),
        (json!([1, 2]), 422),
    ] {
        let (got, answer) = app
            .post("/v1/accounts/acct/api-keys", ADMIN, body.clone())
            .await;
        assert_eq!(got, status, "{body}: {answer}");
    }
    let (status, _) = app
        .post_raw("/v1/accounts/acct/api-keys", ADMIN, b"{\"read_only\":")
        .await;
    assert_eq!(status, 400);
    let (status, _) = app
        .post(
            "/v1/accounts/nobody/api-keys",
            ADMIN,
            json!({"read_only": true}),
        )
        .await;
    assert_eq!(status, 404);
    let (_, after) = app.get("/v1/accounts/acct/api-keys", ADMIN).await;
    assert_eq!(before, after);
}
