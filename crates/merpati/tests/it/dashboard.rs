//! The dashboard over HTTP, as a browser without script sees it: signing in and out, the
//! CSRF checks, every page, and the actions (the browser tests drive the live parts).

use std::collections::BTreeMap;

use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

/// A cookie-keeping client that does not follow redirects, so each answer can be checked.
pub struct Browser {
    base: String,
    client: reqwest::Client,
    cookies: BTreeMap<String, String>,
    /// Every `Set-Cookie` seen, as sent.
    pub set_cookies: Vec<String>,
}

pub struct Page {
    pub status: StatusCode,
    pub location: Option<String>,
    pub body: String,
}

impl Browser {
    pub fn new(app: &TestApp) -> Browser {
        Browser {
            base: app.url.clone(),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: BTreeMap::new(),
            set_cookies: Vec::new(),
        }
    }

    async fn keep(&mut self, r: reqwest::Response) -> Page {
        for v in r.headers().get_all(SET_COOKIE) {
            let raw = v.to_str().unwrap().to_string();
            let pair = raw.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            let removal = raw.contains("Max-Age=0") || value.is_empty();
            if removal {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_string(), value.to_string());
            }
            self.set_cookies.push(raw);
        }
        Page {
            status: r.status(),
            location: r
                .headers()
                .get(LOCATION)
                .map(|l| l.to_str().unwrap().to_string()),
            body: r.text().await.unwrap(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub async fn get(&mut self, path: &str) -> Page {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .header(COOKIE, self.cookie_header())
            .send()
            .await
            .unwrap();
        self.keep(r).await
    }

    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let body: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .header(COOKIE, self.cookie_header())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        self.keep(r).await
    }

    pub fn has_session(&self) -> bool {
        self.cookies.contains_key("merpati_session")
    }

    pub fn forget_cookies(&mut self) -> BTreeMap<String, String> {
        std::mem::take(&mut self.cookies)
    }

    pub fn use_cookies(&mut self, cookies: BTreeMap<String, String>) {
        self.cookies = cookies;
    }

    /// Signs in with `key`; the page it lands on.
    pub async fn sign_in(&mut self, key: &str) -> Page {
        let form = self.get("/login?next=%2Fdevices").await;
        let csrf = csrf_of(&form.body);
        self.post(
            "/login",
            &[("_csrf", &csrf), ("api_key", key), ("next", "/devices")],
        )
        .await
    }
}

/// The CSRF token a page's forms carry.
pub fn csrf_of(html: &str) -> String {
    let at = html
        .find("name=\"_csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 20;
    html[at..at + html[at..].find('"').unwrap()].to_string()
}

#[tokio::test]
async fn signing_in_takes_a_live_key_and_the_form_s_own_token() {
    let app = TestApp::spawn().await;
    let m = app.merchant("acct").await;
    let mut b = Browser::new(&app);

    // Signed out, a page sends the browser to sign in, and back afterwards.
    let p = b.get("/devices?status=connected").await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    assert_eq!(
        p.location.as_deref(),
        Some("/login?next=%2Fdevices%3Fstatus%3Dconnected")
    );

    // A form posted without the token it was given is refused, and signs nobody in.
    let form = b.get("/login").await;
    assert_eq!(form.status, StatusCode::OK);
    let csrf = csrf_of(&form.body);
    let p = b
        .post("/login", &[("api_key", m.key.as_str()), ("next", "/")])
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    let p = b
        .post(
            "/login",
            &[("_csrf", "0".repeat(64).as_str()), ("api_key", &m.key)],
        )
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    assert!(!b.has_session());

    // A wrong key is told as such.
    let p = b
        .post("/login", &[("_csrf", &csrf), ("api_key", "mpk_wrong")])
        .await;
    assert_eq!(p.status, StatusCode::UNAUTHORIZED);
    assert!(p.body.contains("not valid"), "{}", p.body);
    assert!(!b.has_session());
    let p = b
        .post("/login", &[("_csrf", &csrf_of(&p.body)), ("api_key", " ")])
        .await;
    assert_eq!(p.status, StatusCode::UNPROCESSABLE_ENTITY);

    // The right key: a session cookie, HttpOnly and SameSite=Strict, never the key.
    let p = b.sign_in(&m.key).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    assert_eq!(p.location.as_deref(), Some("/devices"));
    let session = b
        .set_cookies
        .iter()
        .rev()
        .find(|c| c.starts_with("merpati_session="))
        .unwrap()
        .clone();
    assert!(session.contains("HttpOnly"), "{session}");
    assert!(session.contains("SameSite=Strict"), "{session}");
    assert!(!session.contains(&m.key));
    let devices = b.get("/devices").await;
    assert_eq!(devices.status, StatusCode::OK);
    assert!(devices.body.contains("dev name"));
    assert!(!devices.body.contains(&m.key), "the key is never in a page");

    // Only paths of this site are returned to after signing in.
    let mut other = Browser::new(&app);
    let form = other.get("/login").await;
    let p = other
        .post(
            "/login",
            &[
                ("_csrf", &csrf_of(&form.body)),
                ("api_key", &m.key),
                ("next", "//evil.example/x"),
            ],
        )
        .await;
    assert_eq!(p.location.as_deref(), Some("/"));

    // Signing out needs the page's token too, then ends the session in the store: the
    // cookie, replayed, opens nothing.
    let kept = b.forget_cookies();
    b.use_cookies(kept.clone());
    let p = b.post("/logout", &[]).await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    let p = b
        .post("/logout", &[("_csrf", &csrf_of(&devices.body))])
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    assert!(!b.has_session());
    b.use_cookies(kept);
    assert_eq!(b.get("/devices").await.status, StatusCode::SEE_OTHER);

    // Revoking the key signs its sessions out.
    assert_eq!(other.get("/devices").await.status, StatusCode::OK);
    let (_, keys) = app.get("/v1/accounts/acct/api-keys", ADMIN).await;
    let key_id = keys["data"][0]["id"].as_str().unwrap().to_string();
    let (status, _) = app
        .delete(&format!("/v1/accounts/acct/api-keys/{key_id}"), ADMIN)
        .await;
    assert_eq!(status, 204);
    assert_eq!(other.get("/devices").await.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn every_page_shows_what_the_api_shows_and_acts_through_it() {
    let app = TestApp::spawn().await;
    // WhatsApp: an incident opens as soon as a device is announced down.
    let m = app.merchant_on("acct", "wa").await;
    let slack = Receiver::start().await;
    app.ok_post(
        "/v1/notifiers",
        &m.key,
        json!({"id": "team-slack", "name": "Team Slack", "kind": "slack", "url": slack.url}),
        201,
    )
    .await;
    let receiver = Receiver::start().await;
    let endpoint = app.endpoint(&m.key, &receiver, json!({})).await;
    let link = Link::open(&app, &m.device_token).await;
    let sent = app.sms(&m.device_token, 1).await;
    let event_id = sent["items"][0]["event_id"].as_str().unwrap().to_string();
    receiver.wait_for(2).await;
    app.settled_event(&m.key, &event_id).await;

    let mut b = Browser::new(&app);
    b.sign_in(&m.key).await;
    let devices = b.get("/devices").await;
    assert_eq!(devices.status, StatusCode::OK);
    assert!(devices.body.contains("data-device=\"dev\""));
    assert!(devices.body.contains("status connected"), "the live state");
    assert!(devices.body.contains("class=\"seg up\""), "an uptime bar");
    // Filters go to the API: nothing is disconnected.
    let filtered = b.get("/devices?status=disconnected").await;
    assert!(!filtered.body.contains("data-device=\"dev\""));
    let bad = b.get("/devices?status=sideways").await;
    assert_eq!(
        bad.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "the API's answer"
    );

    let device = b.get("/devices/dev").await;
    assert_eq!(device.status, StatusCode::OK);
    assert!(device.body.contains("+6281100"));
    assert_eq!(b.get("/devices/nope").await.status, StatusCode::NOT_FOUND);

    let endpoints = b.get("/endpoints").await;
    assert!(endpoints.body.contains(&receiver.url));
    // The delivery and the device.connected notice before it both succeeded.
    assert!(endpoints.body.contains("100.0% · 2"), "{}", endpoints.body);
    let ep = b.get(&format!("/endpoints/{endpoint}")).await;
    assert!(ep.body.contains("status closed"), "the breaker");

    let events = b.get("/events?type=sms").await;
    assert!(events.body.contains(&event_id));
    assert!(!b
        .get("/events?type=sms&from=1h&to=30m")
        .await
        .body
        .contains(&event_id));
    let event = b.get(&format!("/events/{event_id}")).await;
    assert!(event.body.contains("message 1"), "the payload");
    assert!(event.body.contains("<td>200</td>"), "the attempt's status");

    // Replay: through the API, with the page's token; then the flash says so, once.
    let csrf = csrf_of(&event.body);
    let p = b.post(&format!("/events/{event_id}/replay"), &[]).await;
    assert_eq!(p.status, StatusCode::FORBIDDEN, "no token, no replay");
    let p = b
        .post(&format!("/events/{event_id}/replay"), &[("_csrf", &csrf)])
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    receiver.wait_for(3).await;
    let after = b.get(&format!("/events/{event_id}")).await;
    assert!(after.body.contains("flash ok"));
    assert!(!b
        .get(&format!("/events/{event_id}"))
        .await
        .body
        .contains("flash ok"));

    // Recover: a job, and its page.
    let p = b
        .post(
            &format!("/endpoints/{endpoint}/recover"),
            &[("_csrf", &csrf), ("since", "2h")],
        )
        .await;
    let job = p.location.expect("to the job");
    assert!(job.starts_with("/jobs/"), "{job}");
    let job_page = b.get(&job).await;
    assert!(job_page.body.contains("<progress"));
    let p = b
        .post(
            &format!("/endpoints/{endpoint}/recover"),
            &[("_csrf", &csrf), ("since", "someday")],
        )
        .await;
    assert_eq!(
        p.location.as_deref(),
        Some(format!("/endpoints/{endpoint}").as_str())
    );
    assert!(b
        .get(&format!("/endpoints/{endpoint}"))
        .await
        .body
        .contains("flash error"));

    // Disable, then enable.
    b.post(
        &format!("/endpoints/{endpoint}/disable"),
        &[("_csrf", &csrf)],
    )
    .await;
    let (_, e) = app.get(&format!("/v1/endpoints/{endpoint}"), &m.key).await;
    assert_eq!(e["disabled"], true);
    b.post(
        &format!("/endpoints/{endpoint}/enable"),
        &[("_csrf", &csrf)],
    )
    .await;
    let (_, e) = app.get(&format!("/v1/endpoints/{endpoint}"), &m.key).await;
    assert_eq!(e["disabled"], false);

    // Rotating shows the new secret this once.
    let p = b
        .post(
            &format!("/endpoints/{endpoint}/rotate"),
            &[("_csrf", &csrf)],
        )
        .await;
    assert_eq!(p.status, StatusCode::OK);
    assert!(p.body.contains("id=\"new-secret\">whsec_"));
    assert!(!b
        .get(&format!("/endpoints/{endpoint}"))
        .await
        .body
        .contains("new-secret"));

    // An incident: the device drops, the page links to it, and it is acknowledged there.
    link.close().await;
    let incident = wait_for_incident(&app, &m.key).await;
    let list = b.get("/incidents").await;
    assert!(list.body.contains(&incident));
    let page = b.get(&format!("/incidents/{incident}")).await;
    assert!(page.body.contains("device down"), "the timeline");
    let p = b
        .post(
            &format!("/incidents/{incident}/acknowledge"),
            &[("_csrf", &csrf), ("by", "Ani")],
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    let (_, i) = app.get(&format!("/v1/incidents/{incident}"), &m.key).await;
    assert_eq!(i["state"], "acknowledged");
    assert_eq!(i["acknowledged_by"], "Ani");
    b.post(
        &format!("/incidents/{incident}/notes"),
        &[
            ("_csrf", &csrf),
            ("by", "Ani"),
            ("note", "calling the shop"),
        ],
    )
    .await;
    assert!(b
        .get(&format!("/incidents/{incident}"))
        .await
        .body
        .contains("Ani: calling the shop"));

    // Alerting: a rule made from JSON, a malformed one refused with the reason.
    let p = b
        .post(
            "/alerting/rules",
            &[
                ("_csrf", &csrf),
                (
                    "json",
                    r#"{"match": {"engine": "sms"}, "down_after": "1m"}"#,
                ),
            ],
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    let alerting = b.get("/alerting").await;
    assert!(alerting.body.contains("flash ok"), "{}", alerting.body);
    let unescaped = alerting.body.replace("&#34;", "\"").replace("&quot;", "\"");
    assert!(unescaped.contains(r#""down_after": "1m""#), "{unescaped}");
    b.post(
        "/alerting/rules",
        &[("_csrf", &csrf), ("json", "{not json")],
    )
    .await;
    assert!(b.get("/alerting").await.body.contains("flash error"));
    // A notifier's test goes out at once.
    let before = slack.received().len();
    b.post("/alerting/notifiers/team-slack/test", &[("_csrf", &csrf)])
        .await;
    slack.wait_for(before + 1).await;
    assert!(b.get("/alerting").await.body.contains("Team Slack"));
}

async fn wait_for_incident(app: &TestApp, key: &str) -> String {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let (_, list) = app.get("/v1/incidents", key).await;
        if let Some(id) = list["data"][0]["id"].as_str() {
            return id.to_string();
        }
        assert!(std::time::Instant::now() < deadline, "no incident opened");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn language_and_theme_are_the_browser_s_choice() {
    let app = TestApp::spawn().await;
    let m = app.merchant("acct").await;
    let mut b = Browser::new(&app);
    b.sign_in(&m.key).await;
    let r = app
        .client
        .get(format!("{}/login", app.url))
        .header("accept-language", "id-ID,id;q=0.9,en;q=0.5")
        .send()
        .await
        .unwrap();
    assert!(r.text().await.unwrap().contains("Masuk"));
    assert!(b.get("/devices").await.body.contains(">Devices<"));
    let p = b.get("/prefs?lang=id&theme=dark").await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    let page = b.get("/devices").await;
    assert!(page.body.contains(">Perangkat<"));
    assert!(page.body.contains("data-theme=\"dark\""));
    b.get("/prefs?lang=en&theme=auto").await;
    let page = b.get("/devices").await;
    assert!(page.body.contains(">Devices<"));
    assert!(page.body.contains("data-theme=\"auto\""));
}

#[tokio::test]
async fn uptime_and_endpoint_stats_refuse_bad_input() {
    let app = TestApp::spawn().await;
    let m = app.merchant("acct").await;
    let (status, body) = app
        .get("/v1/uptime?device_ids=dev&spans=24h,30d", &m.key)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body["data"][0]["bars"]["24h"]["segments"]
            .as_array()
            .unwrap()
            .len(),
        48
    );
    assert_eq!(
        body["data"][0]["bars"]["30d"]["segments"]
            .as_array()
            .unwrap()
            .len(),
        30
    );
    for (query, why) in [
        ("/v1/uptime", "device_ids is required"),
        ("/v1/uptime?device_ids=", "no device"),
        ("/v1/uptime?device_ids=dev&spans=2h", "an unknown span"),
        ("/v1/uptime?device_ids=dev&size=3", "an unknown parameter"),
    ] {
        let (status, body) = app.get(query, &m.key).await;
        assert_eq!(status, 422, "{why}: {body}");
        assert!(body["error"]["message"].is_string());
    }
    let many: Vec<String> = (0..501).map(|i| format!("d{i}")).collect();
    let (status, _) = app
        .get(&format!("/v1/uptime?device_ids={}", many.join(",")), &m.key)
        .await;
    assert_eq!(status, 422);
    // Another account's or nobody's devices are simply not there.
    let other = app.merchant("other").await;
    let (_, body) = app.get("/v1/uptime?device_ids=dev,ghost", &other.key).await;
    assert_eq!(body["data"].as_array().unwrap().len(), 1);

    let (status, _) = app.get("/v1/endpoints/ep_nope/stats", &m.key).await;
    assert_eq!(status, 404);
    for query in [
        "/v1/events?from=yesterday",
        "/v1/events?from=1700000100&to=1700000000",
    ] {
        let (status, _) = app.get(query, &m.key).await;
        assert_eq!(status, 422, "{query}");
    }
}
