//! The dashboard in a real headless Chromium, driven over WebDriver (Debian's `chromium` and
//! `chromium-driver`, which `.ci/run` installs): signing in, a device going down and back
//! without a reload, an event's attempts, a recovery's progress, an acknowledgement, a
//! wrong key and a form without its CSRF token refused.
//!
//! With `MERPATI_SCREENSHOTS=<dir>` it also saves every page, light and dark, there
//! (`scripts/screenshots.sh` does that for `docs/screenshots`).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::helpers::*;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// A chromedriver on a free port and a headless Chromium session on it; both end on drop.
struct Chrome {
    client: Client,
    driver: tokio::process::Child,
    _profile: tempfile::TempDir,
}

impl Chrome {
    async fn start() -> Chrome {
        assert!(
            std::path::Path::new(CHROMEDRIVER).exists(),
            "{CHROMEDRIVER} is missing: apt-get install chromium chromium-driver (as .ci/run does)"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                // Its password manager would fill the sign-in form behind the test's back.
                "prefs": {
                    "credentials_enable_service": false,
                    "profile.password_manager_enabled": false
                },
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                    "--lang=en-US",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }
        });
        let caps = caps.as_object().unwrap().clone();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + PATIENCE;
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("no WebDriver session: {e}"),
            }
        };
        Chrome {
            client,
            driver,
            _profile: profile,
        }
    }

    async fn stop(mut self) {
        let _ = self.client.close().await;
        let _ = self.driver.kill().await;
    }

    async fn goto(&self, app: &TestApp, path: &str) {
        self.client
            .goto(&format!("{}{path}", app.url))
            .await
            .unwrap();
    }

    /// The element's text; found again if the live script swapped the page's content
    /// between finding and reading.
    async fn text(&self, css: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let found = self.client.find(Locator::Css(css)).await;
            match found {
                Ok(e) => match e.text().await {
                    Ok(t) => return t,
                    Err(err) if Instant::now() >= deadline => panic!("{css}: {err}"),
                    Err(_) => {}
                },
                Err(err) if Instant::now() >= deadline => panic!("{css}: {err}"),
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the element's text is `expected` (the page is not reloaded meanwhile).
    async fn wait_text(&self, css: &str, expected: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let now = match self.client.find(Locator::Css(css)).await {
                Ok(e) => e.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if now == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{css} still says {now:?}, not {expected:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn fill(&self, css: &str, value: &str) {
        let e = self.client.find(Locator::Css(css)).await.unwrap();
        e.clear().await.unwrap();
        e.send_keys(value).await.unwrap();
        assert_eq!(e.prop("value").await.unwrap().as_deref(), Some(value));
    }

    /// Clicks a link or a form's button and waits for the page it leads to: a click returns
    /// as soon as the browser has it, and the new document may still be on its way.
    async fn click_through(&self, css: &str) {
        self.client
            .execute("window.__merpati_before_click = true;", vec![])
            .await
            .unwrap();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let clicked = match self.client.find(Locator::Css(css)).await {
                Ok(e) => e.click().await.map(|_| ()),
                Err(err) => Err(err),
            };
            match clicked {
                Ok(()) => break,
                Err(err) if Instant::now() >= deadline => panic!("{css}: {err}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let arrived = "return window.__merpati_before_click !== true \
                       && document.readyState === 'complete';";
        loop {
            // Asked mid-navigation, the browser may answer with an error: not there yet.
            let now = self.client.execute(arrived, vec![]).await;
            if matches!(now, Ok(serde_json::Value::Bool(true))) {
                return;
            }
            assert!(Instant::now() < deadline, "{css} led nowhere");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn body(&self) -> String {
        self.text("body").await
    }

    async fn path(&self) -> String {
        self.client.current_url().await.unwrap().path().to_string()
    }

    async fn sign_in(&self, app: &TestApp, key: &str) {
        self.goto(app, "/login").await;
        self.fill("#api_key", key).await;
        self.click_through("#login button[type=submit]").await;
    }

    /// With `MERPATI_SCREENSHOTS` set: the page as it is now, as `<name>-<theme>.png`.
    async fn shoot(&self, app: &TestApp, path: &str, name: &str) {
        let Some(dir) = std::env::var_os("MERPATI_SCREENSHOTS").map(PathBuf::from) else {
            return;
        };
        std::fs::create_dir_all(&dir).unwrap();
        for theme in ["light", "dark"] {
            self.goto(app, &format!("/prefs?theme={theme}")).await;
            self.goto(app, path).await;
            // Local times are written by the script once the page has loaded.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let png = self.client.screenshot().await.unwrap();
            std::fs::write(dir.join(format!("{name}-{theme}.png")), png).unwrap();
        }
        self.goto(app, "/prefs?theme=auto").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_real_browser() {
    let app = TestApp::spawn().await;
    let m = app.merchant_on("acct", "wa").await;
    let slack = Receiver::start().await;
    app.ok_post(
        "/v1/notifiers",
        &m.key,
        json!({"id": "team-slack", "name": "Team Slack", "kind": "slack", "url": slack.url}),
        201,
    )
    .await;
    let second = app.device(&m.key, "dev2", "ch").await;
    let receiver = Receiver::start().await;
    let endpoint = app.endpoint(&m.key, &receiver, json!({})).await;
    let link = Link::open(&app, &m.device_token).await;
    let _second_link = Link::open(&app, &second).await;
    let sent = app.sms(&m.device_token, 1).await;
    let event_id = sent["items"][0]["event_id"].as_str().unwrap().to_string();
    app.settled_event(&m.key, &event_id).await;

    let chrome = Chrome::start().await;

    // A wrong key is refused, and nothing opens.
    chrome.sign_in(&app, "mpk_not_a_key").await;
    assert!(chrome.body().await.contains("not valid"));
    chrome.goto(&app, "/devices").await;
    assert_eq!(chrome.path().await, "/login");

    // Signed in, back where the browser was going.
    chrome.goto(&app, "/devices").await;
    chrome.fill("#api_key", &m.key).await;
    chrome.click_through("#login button[type=submit]").await;
    assert_eq!(chrome.path().await, "/devices");
    let pill = "tr[data-device='dev'] [data-status]";
    assert_eq!(chrome.text(pill).await, "Connected");
    chrome.wait_text("#live-state.on", "●").await;
    chrome.shoot(&app, "/devices", "devices").await;
    chrome.goto(&app, "/devices").await;
    chrome.wait_text("#live-state.on", "●").await;

    // The device goes down and comes back: the page follows, never reloaded.
    chrome
        .client
        .execute("window.__same_page = true;", vec![])
        .await
        .unwrap();
    link.close().await;
    chrome.wait_text(pill, "Disconnected").await;
    let back = Link::open(&app, &m.device_token).await;
    chrome.wait_text(pill, "Connected").await;
    let same = chrome
        .client
        .execute("return window.__same_page === true;", vec![])
        .await
        .unwrap();
    assert_eq!(same, json!(true), "updated in place, not reloaded");

    // An event, its deliveries and each attempt.
    chrome.goto(&app, "/events").await;
    chrome
        .click_through(&format!("a[href='/events/{event_id}']"))
        .await;
    chrome
        .wait_text("table.attempts tbody tr td:nth-child(3)", "200")
        .await;
    chrome.shoot(&app, "/events", "events").await;
    chrome
        .shoot(&app, &format!("/events/{event_id}"), "event")
        .await;

    // Recover an endpoint since 2 h ago, and watch the job to its end.
    chrome.goto(&app, &format!("/endpoints/{endpoint}")).await;
    chrome.click_through("#recover button[type=submit]").await;
    assert!(chrome.path().await.starts_with("/jobs/"));
    let deadline = Instant::now() + PATIENCE;
    while chrome
        .client
        .find(Locator::Css("[data-job][data-finished='true']"))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the job never finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(chrome.text("[data-job-text]").await.contains("Finished"));
    chrome.shoot(&app, "/endpoints", "endpoints").await;
    chrome
        .shoot(&app, &format!("/endpoints/{endpoint}"), "endpoint")
        .await;

    // A form posted without its CSRF token is refused.
    chrome.goto(&app, &format!("/endpoints/{endpoint}")).await;
    chrome
        .client
        .execute(
            "document.querySelector('#recover input[name=_csrf]').remove();",
            vec![],
        )
        .await
        .unwrap();
    chrome.click_through("#recover button[type=submit]").await;
    assert!(chrome.body().await.contains("This form has expired"));

    // An incident: the device drops, and it is acknowledged from its page.
    back.close().await;
    let incident = loop {
        let (_, list) = app.get("/v1/incidents?state=open", &m.key).await;
        if let Some(id) = list["data"][0]["id"].as_str() {
            break id.to_string();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    chrome.goto(&app, &format!("/incidents/{incident}")).await;
    assert_eq!(chrome.text("#incident-state").await, "Opened");
    chrome.fill("#acknowledge input[name=by]", "Ani").await;
    chrome
        .click_through("#acknowledge button[type=submit]")
        .await;
    chrome.wait_text("#incident-state", "Acknowledged").await;
    chrome.shoot(&app, "/incidents", "incidents").await;
    chrome
        .shoot(&app, &format!("/incidents/{incident}"), "incident")
        .await;
    chrome.shoot(&app, "/devices/dev", "device").await;
    chrome.shoot(&app, "/alerting", "alerting").await;

    // In Indonesian, on a phone-sized window.
    chrome.goto(&app, "/prefs?lang=id").await;
    chrome.goto(&app, "/devices").await;
    assert!(chrome.body().await.contains("Perangkat"));
    chrome.client.set_window_size(390, 844).await.unwrap();
    chrome.shoot(&app, "/devices", "devices-phone-id").await;
    chrome.goto(&app, "/prefs?lang=en").await;

    // Signing out ends it.
    chrome.click_through("header form button").await;
    assert_eq!(chrome.path().await, "/login");
    chrome.goto(&app, "/devices").await;
    assert_eq!(chrome.path().await, "/login");
    chrome.stop().await;
}
