//! Versions of what people edit: every single-resource read carries an `ETag`, `If-None-Match`
//! answers 304, a PATCH honours `If-Match` (412 on a version that is no longer current,
//! changing nothing), and concurrent PATCHes never silently overwrite each other.

use reqwest::header::HeaderValue;
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

fn tag(v: &str) -> HeaderValue {
    HeaderValue::from_str(v).unwrap()
}

/// The resource and its `ETag`.
async fn read(app: &TestApp, path: &str, token: &str) -> (Value, String) {
    let (status, headers, body) = app.send(Method::GET, path, token, None, &[]).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    let etag = headers["etag"].to_str().unwrap().to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    (body, etag)
}

async fn patch_if(
    app: &TestApp,
    path: &str,
    token: &str,
    if_match: &str,
    body: Value,
) -> (u16, Option<String>, Value) {
    let (status, headers, body) = app
        .send(
            Method::PATCH,
            path,
            token,
            Some(body),
            &[("if-match", tag(if_match))],
        )
        .await;
    let etag = headers.get("etag").map(|v| v.to_str().unwrap().to_string());
    (status.as_u16(), etag, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_resource_people_edit_is_read_with_its_version_and_updated_only_at_it() {
    let app = TestApp::spawn().await;
    let m = app.merchant("m").await;
    let receiver = Receiver::start().await;
    let ep = app.endpoint(&m.key, &receiver, json!({})).await;
    let resources = [
        ("/v1/accounts/m", ADMIN, json!({"name": "Renamed"})),
        (
            "/v1/businesses/biz",
            m.key.as_str(),
            json!({"name": "Renamed"}),
        ),
        (
            "/v1/channels/ch",
            m.key.as_str(),
            json!({"name": "Renamed"}),
        ),
        (
            "/v1/devices/dev",
            m.key.as_str(),
            json!({"name": "Renamed"}),
        ),
        (
            &format!("/v1/endpoints/{ep}"),
            m.key.as_str(),
            json!({"description": "Renamed"}),
        ),
    ];
    for (path, token, change) in resources {
        let (before, etag) = read(&app, path, token).await;
        // Unchanged: 304, with the same tag and no body.
        let (status, headers, body) = app
            .send(
                Method::GET,
                path,
                token,
                None,
                &[("if-none-match", tag(&etag))],
            )
            .await;
        assert_eq!((status.as_u16(), &body), (304, &Value::Null), "{path}");
        assert_eq!(headers["etag"].to_str().unwrap(), etag);

        // An update at the version read: applied, and answered with the new version.
        let (status, new_tag, after) = patch_if(&app, path, token, &etag, change.clone()).await;
        assert_eq!(status, 200, "{path}: {after}");
        let new_tag = new_tag.expect("the new version's tag");
        assert_ne!(new_tag, etag);
        let (reread, reread_tag) = read(&app, path, token).await;
        assert_eq!((&reread, &reread_tag), (&after, &new_tag), "{path}");
        assert_ne!(reread, before);

        // An update at the old version: 412, and nothing changed.
        let stale = json!({"name": "Lost"});
        let stale = if path.contains("endpoints") {
            json!({"description": "Lost"})
        } else {
            stale
        };
        let (status, _, err) = patch_if(&app, path, token, &etag, stale).await;
        assert_eq!(status, 412, "{path}: {err}");
        assert_eq!(err["error"]["code"], "precondition_failed");
        assert_eq!(
            read(&app, path, token).await,
            (reread, new_tag.clone()),
            "{path}"
        );

        // Any version will do with `*`; a weak tag never matches; one of a list does.
        let weak = format!("W/{new_tag}");
        let (status, _, _) = patch_if(&app, path, token, &weak, change.clone()).await;
        assert_eq!(status, 412, "{path}");
        let list = format!("\"old\", {new_tag}");
        let (status, _, _) = patch_if(&app, path, token, &list, change.clone()).await;
        assert_eq!(status, 200, "{path}");
        let (status, _, _) = patch_if(&app, path, token, "*", change).await;
        assert_eq!(status, 200, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_by_merpati_itself_is_a_new_version_too() {
    let app = TestApp::spawn().await;
    let m = app.merchant("m").await;
    let (_, heard) = read(&app, "/v1/devices/dev", &m.key).await;
    // The device comes up: its status is part of what a reader sees.
    let (status, _) = app
        .post("/v1/device/heartbeat", &m.device_token, json!({}))
        .await;
    assert_eq!(status, 200);
    let (now, current) = read(&app, "/v1/devices/dev", &m.key).await;
    assert_eq!(now["status"], "connected");
    assert_ne!(current, heard);
    let (status, _, _) = patch_if(
        &app,
        "/v1/devices/dev",
        &m.key,
        &heard,
        json!({"name": "x"}),
    )
    .await;
    assert_eq!(status, 412);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_patches_of_different_fields_all_land() {
    let app = TestApp::spawn().await;
    let m = app.merchant("m").await;
    let receiver = Receiver::start().await;
    let ep = app.endpoint(&m.key, &receiver, json!({})).await;
    let path = format!("/v1/endpoints/{ep}");
    for round in 0..5 {
        let patches = [
            json!({"description": format!("round {round}")}),
            json!({"headers": {"x-round": round.to_string()}}),
            json!({"rate_limit": 10 + round}),
            json!({"max_concurrency": 20 + round}),
            json!({"events": ["sms", format!("ussd")]}),
            json!({"format": if round % 2 == 0 { "form" } else { "json" }}),
            json!({"secret_in_body": round % 2 == 0}),
            json!({"url": format!("{}?round={round}", receiver.url)}),
        ];
        let results = futures_util::future::join_all(
            patches.iter().map(|p| app.patch(&path, &m.key, p.clone())),
        )
        .await;
        for (status, body) in &results {
            assert_eq!(*status, 200, "{body}");
        }
        let (_, e) = app.get(&path, &m.key).await;
        assert_eq!(e["description"], format!("round {round}"), "{e}");
        assert_eq!(e["headers"]["x-round"], round.to_string(), "{e}");
        assert_eq!(e["rate_limit"], 10 + round, "{e}");
        assert_eq!(e["max_concurrency"], 20 + round, "{e}");
        assert_eq!(e["events"], json!(["sms", "ussd"]), "{e}");
        assert_eq!(e["format"], if round % 2 == 0 { "form" } else { "json" });
        assert_eq!(e["secret_in_body"], round % 2 == 0);
        assert_eq!(e["url"], format!("{}?round={round}", receiver.url));
    }

    // And on a device, its name and its phone at once.
    for round in 0..5 {
        let (a, b) = tokio::join!(
            app.patch(
                "/v1/devices/dev",
                &m.key,
                json!({"name": format!("n{round}")})
            ),
            app.patch(
                "/v1/devices/dev",
                &m.key,
                json!({"phone": format!("+62{round}")})
            ),
        );
        assert_eq!((a.0.as_u16(), b.0.as_u16()), (200, 200));
        let (_, d) = app.get("/v1/devices/dev", &m.key).await;
        assert_eq!(
            (&d["name"], &d["phone"]),
            (&json!(format!("n{round}")), &json!(format!("+62{round}")))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_preconditions_are_refused_and_change_nothing() {
    let app = TestApp::spawn().await;
    let m = app.merchant("m").await;
    let (before, etag) = read(&app, "/v1/businesses/biz", &m.key).await;
    // Not text: a 400 in the API's shape.
    let garbage = HeaderValue::from_bytes(b"\"\xff\"").unwrap();
    let (status, _, body) = app
        .send(
            Method::PATCH,
            "/v1/businesses/biz",
            &m.key,
            Some(json!({"name": "x"})),
            &[("if-match", garbage)],
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].is_string());
    // A tag of nothing there: 412. A missing resource: 404 whatever the tag.
    let (status, _, _) = patch_if(
        &app,
        "/v1/businesses/biz",
        &m.key,
        "\"nope\"",
        json!({"name": "x"}),
    )
    .await;
    assert_eq!(status, 412);
    let (status, _, _) = patch_if(
        &app,
        "/v1/businesses/none",
        &m.key,
        &etag,
        json!({"name": "x"}),
    )
    .await;
    assert_eq!(status, 404);
    // A bad body with the right tag: 422, nothing changed.
    let (status, _, _) = patch_if(
        &app,
        "/v1/businesses/biz",
        &m.key,
        &etag,
        json!({"name": ""}),
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(
        read(&app, "/v1/businesses/biz", &m.key).await,
        (before, etag)
    );
}
