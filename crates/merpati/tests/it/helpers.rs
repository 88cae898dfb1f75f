//! The test harness: a merpati server on port 0 with a fresh database, and real HTTP
//! receivers on loopback whose answers each test scripts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use merpati::config::Config;
use merpati_domain::clock::{Clock, ManualClock, SystemClock};
use serde_json::{json, Value};

mod commit_cutter;
mod link;
mod receiver;

pub use commit_cutter::*;
pub use link::*;
pub use receiver::*;

pub const ADMIN: &str = "test-admin-token-0123456789";
/// The Standard Webhooks specification's example secret.
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// How long a test waits for something that should happen at once.
pub const PATIENCE: Duration = Duration::from_secs(15);

pub struct TestApp {
    pub url: String,
    pub client: reqwest::Client,
    pub data_dir: PathBuf,
    overrides: Vec<(String, String)>,
    clock: Arc<dyn Clock>,
    manual: Option<Arc<ManualClock>>,
    pub server: Option<merpati::Server>,
    _dir: Option<tempfile::TempDir>,
}

/// Settings every test server starts with: quick retries, a short timeout.
/// The tests' HTTP client: an idle connection is let go well before the server would close
/// it (`server.header_timeout`), so that no request races that close.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// The metrics text of the server at `base_url` (`/metrics`, with the admin token).
pub async fn metrics_text(base_url: &str) -> reqwest::Result<String> {
    client()
        .get(format!("{base_url}/metrics"))
        .bearer_auth(ADMIN)
        .send()
        .await?
        .text()
        .await
}

/// The value of one series of a metrics text, named with its labels as the text shows
/// them (`merpati_deliveries_taken_total{how="offered"}`); `None` if it has no such series.
pub fn sample_of(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

pub fn test_settings() -> BTreeMap<String, String> {
    [
        ("admin_token", ADMIN),
        ("delivery.retry_schedule", "100ms,100ms,100ms"),
        ("delivery.timeout", "3s"),
        ("database.synchronous", "normal"),
        ("presence.grace", "300ms"),
        // Tests of failing receivers count every attempt; the breaker's own tests lower this.
        ("delivery.breaker_failures", "1000"),
        // The receivers are on loopback, which the private-address guard refuses otherwise.
        ("delivery.allowed_networks", "127.0.0.0/8,::1/128"),
        // Tests post as fast as they can; the limits' own tests lower these.
        ("limits.events_per_second", "1000000"),
        ("limits.device_events_per_second", "1000000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// With `MERPATI_TEST_BACKEND=postgres`, servers keep their data in PostgreSQL: each in a
/// fresh database of one private server for the whole run (unless the test names its own
/// `database_url`).
pub fn on_postgres() -> bool {
    std::env::var("MERPATI_TEST_BACKEND").is_ok_and(|b| b == "postgres")
}

/// The run's private PostgreSQL server, started on first use.
pub async fn postgres_server() -> &'static merpati_postgres::scratch::ScratchServer {
    static SERVER: tokio::sync::OnceCell<merpati_postgres::scratch::ScratchServer> =
        tokio::sync::OnceCell::const_new();
    SERVER
        .get_or_init(|| async {
            tokio::task::spawn_blocking(|| {
                merpati_postgres::scratch::ScratchServer::start(Default::default())
                    .expect("a private PostgreSQL server")
            })
            .await
            .unwrap()
        })
        .await
}

/// A fresh, migrated database of the run's PostgreSQL server.
pub async fn fresh_postgres_database() -> String {
    let server = postgres_server().await;
    tokio::task::spawn_blocking(move || {
        server
            .fresh_database(|url| {
                merpati_postgres::PostgresStore::migrate(url)
                    .map(drop)
                    .map_err(|e| e.to_string())
            })
            .expect("a fresh database")
    })
    .await
    .unwrap()
}

async fn postgres_database(overrides: &[(String, String)]) -> Option<String> {
    if !on_postgres() || overrides.iter().any(|(k, _)| k == "database_url") {
        return None;
    }
    Some(fresh_postgres_database().await)
}

/// The database beside a test's server, for what a test must read or change behind the
/// server's back: the SQLite file (WAL lets a reader in) or the PostgreSQL database.
pub enum RawDatabase {
    Sqlite(rusqlite::Connection),
    /// The driver's blocking client runs on a thread of its own, never on a test's
    /// async thread.
    Postgres(String),
}

impl RawDatabase {
    pub fn of(app: &TestApp) -> RawDatabase {
        match app.database_url() {
            Some(url) if url.starts_with("postgres") => RawDatabase::Postgres(url),
            _ => {
                let db = rusqlite::Connection::open(app.data_dir.join("merpati.db")).unwrap();
                db.busy_timeout(Duration::from_secs(5)).unwrap();
                RawDatabase::Sqlite(db)
            }
        }
    }

    /// The first column of the first row of `sql`, an integer.
    pub fn scalar(&self, sql: &str) -> i64 {
        match self {
            RawDatabase::Sqlite(db) => db.query_row(sql, [], |r| r.get(0)).unwrap(),
            RawDatabase::Postgres(url) => {
                on_a_thread(url, |c| c.query_one(sql, &[]).unwrap().get(0))
            }
        }
    }

    /// The first column of the first row of `sql`, as text (empty when NULL).
    pub fn text(&self, sql: &str) -> String {
        match self {
            RawDatabase::Sqlite(db) => db
                .query_row(sql, [], |r| r.get::<_, Option<String>>(0))
                .unwrap()
                .unwrap_or_default(),
            RawDatabase::Postgres(url) => on_a_thread(url, |c| {
                c.query_one(sql, &[])
                    .unwrap()
                    .get::<_, Option<String>>(0)
                    .unwrap_or_default()
            }),
        }
    }

    /// Runs `sql`; rows changed.
    pub fn execute(&self, sql: &str) -> u64 {
        match self {
            RawDatabase::Sqlite(db) => db.execute(sql, []).unwrap() as u64,
            RawDatabase::Postgres(url) => on_a_thread(url, |c| c.execute(sql, &[]).unwrap()),
        }
    }
}

/// Holds the database's write lock (SQLite's, or on PostgreSQL the events table's) until
/// dropped, so that the server's writes wait and give up.
pub enum WriteBlock {
    Sqlite(rusqlite::Connection),
    Postgres(
        Option<std::sync::mpsc::Sender<()>>,
        Option<std::thread::JoinHandle<()>>,
    ),
}

impl RawDatabase {
    pub fn block_writes(self) -> WriteBlock {
        match self {
            RawDatabase::Sqlite(db) => {
                db.execute_batch("BEGIN EXCLUSIVE").unwrap();
                WriteBlock::Sqlite(db)
            }
            RawDatabase::Postgres(url) => {
                let (locked, is_locked) = std::sync::mpsc::channel();
                let (release, released) = std::sync::mpsc::channel::<()>();
                let holder = std::thread::spawn(move || {
                    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
                    client
                        .batch_execute("BEGIN; LOCK TABLE events IN EXCLUSIVE MODE")
                        .unwrap();
                    locked.send(()).unwrap();
                    let _ = released.recv();
                    client.batch_execute("ROLLBACK").unwrap();
                });
                is_locked.recv().unwrap();
                WriteBlock::Postgres(Some(release), Some(holder))
            }
        }
    }
}

impl Drop for WriteBlock {
    fn drop(&mut self) {
        match self {
            WriteBlock::Sqlite(db) => db.execute_batch("ROLLBACK").unwrap(),
            WriteBlock::Postgres(release, holder) => {
                drop(release.take());
                holder.take().unwrap().join().unwrap();
            }
        }
    }
}

fn on_a_thread<T: Send>(url: &str, f: impl FnOnce(&mut postgres::Client) -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
            f(&mut client)
        })
        .join()
        .unwrap()
    })
}

impl TestApp {
    /// The `database_url` the server was started with, if any.
    pub fn database_url(&self) -> Option<String> {
        self.overrides
            .iter()
            .rev()
            .find(|(k, _)| k == "database_url")
            .map(|(_, v)| v.clone())
    }

    pub async fn spawn() -> TestApp {
        Self::spawn_with(&[]).await
    }

    /// A server with `overrides` on top of [`test_settings`].
    pub async fn spawn_with(overrides: &[(&str, &str)]) -> TestApp {
        Self::spawn_on(overrides, Arc::new(SystemClock), None).await
    }

    /// A server whose time moves only with [`TestApp::advance`]. It starts at the real time,
    /// so that signatures stay within the receivers' tolerance.
    pub async fn spawn_manual(overrides: &[(&str, &str)]) -> TestApp {
        let clock = Arc::new(ManualClock::new(SystemClock.now_ms()));
        Self::spawn_on(overrides, clock.clone(), Some(clock)).await
    }

    async fn spawn_on(
        overrides: &[(&str, &str)],
        clock: Arc<dyn Clock>,
        manual: Option<Arc<ManualClock>>,
    ) -> TestApp {
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = dir.path().to_path_buf();
        let mut overrides: Vec<(String, String)> = overrides
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if let Some(url) = postgres_database(&overrides).await {
            overrides.push(("database_url".into(), url));
        }
        let mut app = Self::start_in(data_dir, overrides, clock, manual).await;
        app._dir = Some(dir);
        app
    }

    /// Moves the manual clock and lets the presence hub act on what came due.
    pub async fn advance(&self, ms: i64) {
        self.manual
            .as_ref()
            .expect("a manual clock (spawn_manual)")
            .advance_ms(ms);
        self.tick().await;
    }

    /// Lets the presence hub, then the alert runner, act on what is due now.
    pub async fn tick(&self) {
        let server = self.server.as_ref().unwrap();
        server.presence().tick().await;
        server.alerts().tick().await;
    }

    /// The changes the server commits from now on.
    pub fn subscribe(&self) -> merpati_runtime::bus::Subscriber {
        self.server
            .as_ref()
            .expect("a server of this test")
            .subscribe()
    }

    /// The server's time, in ms.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// A client of a server started elsewhere (e.g. the binary in a child process).
    pub fn at(url: String) -> TestApp {
        TestApp {
            url,
            client: client(),
            data_dir: PathBuf::new(),
            overrides: Vec::new(),
            clock: Arc::new(SystemClock),
            manual: None,
            server: None,
            _dir: None,
        }
    }

    async fn start_in(
        data_dir: PathBuf,
        overrides: Vec<(String, String)>,
        clock: Arc<dyn Clock>,
        manual: Option<Arc<ManualClock>>,
    ) -> TestApp {
        let mut settings = test_settings();
        for (k, v) in &overrides {
            // An empty value removes the setting, to test its absence.
            if v.is_empty() {
                settings.remove(k);
            } else {
                settings.insert(k.clone(), v.clone());
            }
        }
        let mut config = Config::from_settings(&settings).expect("test settings are valid");
        config.data_dir = data_dir.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = merpati::start(config, listener, clock.clone())
            .await
            .expect("server starts");
        TestApp {
            url: format!("http://{}", server.addr),
            client: client(),
            data_dir,
            overrides,
            clock,
            manual,
            server: Some(server),
            _dir: None,
        }
    }

    /// Stops the server gracefully and starts a new one on the same data dir and settings.
    pub async fn restart(mut self) -> TestApp {
        self.server.take().unwrap().stop().await.unwrap();
        let overrides = std::mem::take(&mut self.overrides);
        let mut app = Self::start_in(
            self.data_dir.clone(),
            overrides,
            self.clock.clone(),
            self.manual.clone(),
        )
        .await;
        app._dir = self._dir.take();
        app
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .client
            .request(method.clone(), format!("{}{}", self.url, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.expect("request sent");
        let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
        let bytes = resp.bytes().await.unwrap();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)))
        };
        crate::contract::check(method.as_str(), path, status.as_u16(), &value);
        (status, value)
    }

    /// A request with headers of its own; the answer with its headers.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
        headers: &[(&str, reqwest::header::HeaderValue)],
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut req = self
            .client
            .request(method.clone(), format!("{}{}", self.url, path))
            .bearer_auth(token);
        for (name, value) in headers {
            req = req.header(*name, value.clone());
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.expect("request sent");
        let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.unwrap();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON")
        };
        crate::contract::check(method.as_str(), path, status.as_u16(), &value);
        (status, headers, value)
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.request(reqwest::Method::GET, path, Some(token), None)
            .await
    }
    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.request(
            reqwest::Method::POST,
            path,
            Some(token),
            Some(body.to_string().into_bytes()),
        )
        .await
    }
    pub async fn post_raw(&self, path: &str, token: &str, body: &[u8]) -> (StatusCode, Value) {
        self.request(
            reqwest::Method::POST,
            path,
            Some(token),
            Some(body.to_vec()),
        )
        .await
    }
    pub async fn patch(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.request(
            reqwest::Method::PATCH,
            path,
            Some(token),
            Some(body.to_string().into_bytes()),
        )
        .await
    }
    pub async fn delete(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.request(reqwest::Method::DELETE, path, Some(token), None)
            .await
    }

    /// A POST that must succeed with `expected`; returns the body.
    pub async fn ok_post(&self, path: &str, token: &str, body: Value, expected: u16) -> Value {
        let (status, v) = self.post(path, token, body).await;
        assert_eq!(status.as_u16(), expected, "POST {path}: {v}");
        v
    }

    /// An account with an API key, a business, a channel on `engine` and one device.
    pub async fn merchant(&self, id: &str) -> Merchant {
        self.merchant_on(id, "sms").await
    }

    pub async fn merchant_on(&self, id: &str, engine: &str) -> Merchant {
        self.ok_post(
            "/v1/accounts",
            ADMIN,
            json!({"id": id, "name": format!("{id} name")}),
            201,
        )
        .await;
        let key = self
            .ok_post(
                &format!("/v1/accounts/{id}/api-keys"),
                ADMIN,
                json!({}),
                201,
            )
            .await["key"]
            .as_str()
            .unwrap()
            .to_string();
        self.ok_post(
            "/v1/businesses",
            &key,
            json!({"id": "biz", "name": "Biz"}),
            201,
        )
        .await;
        self.ok_post(
            "/v1/channels",
            &key,
            json!({"id": "ch", "name": "Channel", "engine": engine, "business_id": "biz"}),
            201,
        )
        .await;
        let device = self.device(&key, "dev", "ch").await;
        Merchant {
            key,
            device_token: device,
        }
    }

    /// Registers a device and returns its token.
    pub async fn device(&self, key: &str, id: &str, channel: &str) -> String {
        self.ok_post(
            "/v1/devices",
            key,
            json!({"id": id, "name": format!("{id} name"), "channel_id": channel, "phone": "+6281100"}),
            201,
        )
        .await["token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Creates an endpoint with the test secret; returns its id.
    pub async fn endpoint(&self, key: &str, receiver: &Receiver, extra: Value) -> String {
        let mut body = json!({"url": receiver.url, "secret": SECRET});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().cloned().unwrap_or_default());
        self.ok_post("/v1/endpoints", key, body, 201).await["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub async fn sms(&self, device_token: &str, rid: i64) -> Value {
        self.ok_post(
            "/v1/device/messages",
            device_token,
            json!({"type": "sms", "rid": rid, "phone": "+639760713666", "message": format!("message {rid}")}),
            202,
        )
        .await
    }

    /// Polls the event until every delivery reached a final status; returns the event.
    pub async fn settled_event(&self, key: &str, event_id: &str) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let (status, event) = self.get(&format!("/v1/events/{event_id}"), key).await;
            assert_eq!(status, StatusCode::OK, "{event}");
            let deliveries = event["deliveries"].as_array().unwrap();
            if deliveries
                .iter()
                .all(|d| d["status"] == "succeeded" || d["status"] == "failed")
            {
                return event;
            }
            assert!(
                Instant::now() < deadline,
                "deliveries did not settle: {event}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn event_count(&self, key: &str) -> usize {
        self.count_of(key, "").await
    }

    /// Events of one type (every type when empty).
    pub async fn count_of(&self, key: &str, event_type: &str) -> usize {
        let filter = if event_type.is_empty() {
            String::new()
        } else {
            format!("&type={event_type}")
        };
        let (status, v) = self
            .get(&format!("/v1/events?limit=500{filter}"), key)
            .await;
        assert_eq!(status, StatusCode::OK);
        v["data"].as_array().unwrap().len()
    }
}

pub struct Merchant {
    pub key: String,
    pub device_token: String,
}

impl TestApp {
    /// Waits until the device's live status is `status`.
    pub async fn wait_status(&self, key: &str, device: &str, status: &str) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let (_, v) = self
                .get(&format!("/v1/devices/{device}/presence"), key)
                .await;
            if v["status"] == status {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{device} never became {status}: {v}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Where `scripts/compat-setup.sh` put the official tools (Python and npm packages).
pub fn compat_dir() -> std::path::PathBuf {
    std::env::var_os("MERPATI_COMPAT_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/compat")
        })
}

/// Runs Python with the compat packages on its path, `input` on its standard input.
pub fn compat_python(args: &[&std::ffi::OsStr], input: &[u8]) -> std::process::Output {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("python3")
        .args(args)
        .env("PYTHONPATH", compat_dir().join("python"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// Polls `check` until it gives a value; fails after [`PATIENCE`].
pub async fn eventually<T, F, Fut>(check: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "not so within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
