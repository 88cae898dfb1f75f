//! `merpati simulate`: devices speaking the real device protocol against a running merpati,
//! for demos, load and benchmarks. It provisions its own account, business, channel and
//! devices through the API (with the admin token), then runs each device as a task: a
//! WebSocket link or HTTP heartbeats, inbound items at a rate, drops and returns on a
//! schedule.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use rand::seq::IteratorRandom;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// A small client of the management API.
#[derive(Clone)]
pub struct Api {
    pub client: reqwest::Client,
    pub base: String,
}

impl Api {
    pub fn new(base: &str) -> Api {
        Api {
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(256)
                .build()
                .expect("client"),
            base: base.trim_end_matches('/').to_string(),
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> anyhow::Result<Value> {
        let request = self.client.get(format!("{}{path}", self.base));
        Self::send(request.bearer_auth(token), "GET", path).await
    }

    pub async fn delete(&self, path: &str, token: &str) -> anyhow::Result<Value> {
        let request = self.client.delete(format!("{}{path}", self.base));
        Self::send(request.bearer_auth(token), "DELETE", path).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> anyhow::Result<Value> {
        let request = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string());
        Self::send(request, "POST", path).await
    }

    /// The answer's JSON (null if it has none), or an error with its status and body.
    async fn send(
        request: reqwest::RequestBuilder,
        method: &str,
        path: &str,
    ) -> anyhow::Result<Value> {
        let resp = request
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        if !status.is_success() {
            bail!(
                "{method} {path}: {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }
}

#[derive(Debug, Clone)]
pub struct SimDevice {
    pub id: String,
    pub token: String,
}

/// What `provision` made.
#[derive(Debug, Clone)]
pub struct Fleet {
    pub account: String,
    pub key: String,
    pub devices: Vec<SimDevice>,
}

/// An account with `n` devices on one channel of `engine`; with `endpoint`, an endpoint
/// there too (for the given event filter).
/// A new account named `prefix_…`, and an API key of it.
pub async fn new_account(api: &Api, admin: &str, prefix: &str) -> anyhow::Result<(String, String)> {
    let account = format!("{prefix}_{}", rand::random::<u32>());
    api.post(
        "/v1/accounts",
        admin,
        // A benchmark's account takes whatever the machine can: no rate or cap of its own.
        json!({"id": account, "name": format!("{prefix} merchant"), "limits": {
            "events_per_second": 1_000_000_000, "device_events_per_second": 1_000_000_000,
            "max_devices": 1_000_000_000, "max_endpoints": 1_000_000_000,
            "max_alert_rules": 1_000_000_000}}),
    )
    .await?;
    let key = api
        .post(
            &format!("/v1/accounts/{account}/api-keys"),
            admin,
            json!({}),
        )
        .await?["key"]
        .as_str()
        .context("no key in the answer")?
        .to_string();
    Ok((account, key))
}

pub async fn provision(
    api: &Api,
    admin: &str,
    n: usize,
    engine: &str,
    endpoint: Option<(&str, Value)>,
) -> anyhow::Result<Fleet> {
    let (account, key) = new_account(api, admin, "sim").await?;
    api.post(
        "/v1/businesses",
        &key,
        json!({"id": "sim_biz", "name": "Simulated business"}),
    )
    .await?;
    api.post(
        "/v1/channels",
        &key,
        json!({"id": "sim_ch", "name": "Simulated channel", "engine": engine, "business_id": "sim_biz"}),
    )
    .await?;
    if let Some((url, events)) = endpoint {
        api.post("/v1/endpoints", &key, json!({"url": url, "events": events}))
            .await?;
    }
    // Devices in parallel: each create is its own commit, and the server groups them.
    let gate = Arc::new(Semaphore::new(64));
    let mut made = JoinSet::new();
    for i in 0..n {
        let (api, key, gate) = (api.clone(), key.clone(), gate.clone());
        made.spawn(async move {
            let _permit = gate.acquire().await;
            let id = format!("sim_dev_{i:05}");
            let v = api
                .post(
                    "/v1/devices",
                    &key,
                    json!({"id": id, "name": format!("Phone {i}"), "channel_id": "sim_ch", "phone": format!("+6281{i:07}")}),
                )
                .await?;
            let token = v["token"].as_str().context("no token")?.to_string();
            anyhow::Ok((i, SimDevice { id, token }))
        });
    }
    let mut devices = vec![None; n];
    while let Some(done) = made.join_next().await {
        let (i, d) = done??;
        devices[i] = Some(d);
    }
    Ok(Fleet {
        account,
        key,
        devices: devices
            .into_iter()
            .map(|d| d.expect("every device"))
            .collect(),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Link,
    Http,
}

#[derive(Debug, Clone)]
pub struct Behaviour {
    pub mode: Mode,
    pub heartbeat: Duration,
    /// Inbound SMS per second, per device (0 for none).
    pub rate: f64,
}

/// Counters every device adds to.
#[derive(Debug, Default)]
pub struct Stats {
    pub up: AtomicU64,
    pub connects: AtomicU64,
    pub items_sent: AtomicU64,
    pub items_acked: AtomicU64,
    pub errors: AtomicU64,
}

/// What a device is told from outside.
#[derive(Debug, Clone, Copy)]
pub enum Order {
    /// Vanish (the connection dropped, no goodbye) and come back after this long.
    Drop(Duration),
}

fn ws_url(base: &str) -> String {
    format!("{}/v1/device/link", base.replacen("http", "ws", 1))
}

/// Runs one simulated device until `stop`.
pub async fn run_device(
    api: Api,
    device: SimDevice,
    behaviour: Behaviour,
    stats: Arc<Stats>,
    mut orders: mpsc::Receiver<Order>,
    stop: CancellationToken,
) {
    let mut rid: u64 = 0;
    loop {
        let outcome = match behaviour.mode {
            Mode::Link => {
                link_session(
                    &api,
                    &device,
                    &behaviour,
                    &stats,
                    &mut orders,
                    &stop,
                    &mut rid,
                )
                .await
            }
            Mode::Http => {
                http_session(
                    &api,
                    &device,
                    &behaviour,
                    &stats,
                    &mut orders,
                    &stop,
                    &mut rid,
                )
                .await
            }
        };
        match outcome {
            Session::Stopped => return,
            Session::Dropped(away) => {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(away) => {}
                }
            }
            Session::Failed => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                let backoff = Duration::from_millis(500 + rand::random::<u64>() % 1500);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
            }
        }
    }
}

enum Session {
    Stopped,
    Dropped(Duration),
    Failed,
}

fn next_item(device: &SimDevice, rid: &mut u64) -> Value {
    *rid += 1;
    json!({"type": "sms", "rid": *rid, "phone": "+639760713666",
           "message": format!("simulated message {rid} from {}", device.id)})
}

fn item_interval(rate: f64) -> Option<Duration> {
    (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate))
}

async fn link_session(
    api: &Api,
    device: &SimDevice,
    b: &Behaviour,
    stats: &Stats,
    orders: &mut mpsc::Receiver<Order>,
    stop: &CancellationToken,
    rid: &mut u64,
) -> Session {
    let Ok(mut request) = ws_url(&api.base).into_client_request() else {
        return Session::Failed;
    };
    let Ok(auth) = format!("Bearer {}", device.token).parse() else {
        return Session::Failed;
    };
    request.headers_mut().insert("authorization", auth);
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let Ok((mut ws, _)) =
        tokio_tungstenite::connect_async_with_config(request, Some(config), false).await
    else {
        return Session::Failed;
    };
    // Up once the server said ready.
    match ws.next().await {
        Some(Ok(Message::Text(t))) if t.as_str().contains("\"ready\"") => {}
        _ => return Session::Failed,
    }
    stats.up.fetch_add(1, Ordering::Relaxed);
    stats.connects.fetch_add(1, Ordering::Relaxed);
    let mut heartbeat = tokio::time::interval_at(
        tokio::time::Instant::now() + b.heartbeat.mul_f64(rand::random::<f64>()),
        b.heartbeat,
    );
    let mut items = item_interval(b.rate).map(tokio::time::interval);
    let outcome = loop {
        tokio::select! {
            _ = stop.cancelled() => {
                let _ = ws.close(None).await;
                break Session::Stopped;
            }
            order = orders.recv() => match order {
                // Dropping the stream without a close frame is a connection lost.
                Some(Order::Drop(away)) => break Session::Dropped(away),
                None => break Session::Stopped,
            },
            _ = heartbeat.tick() => {
                if ws.send(Message::Text(r#"{"type":"heartbeat"}"#.into())).await.is_err() {
                    break Session::Failed;
                }
            }
            _ = async { items.as_mut().expect("guarded").tick().await }, if items.is_some() => {
                let frame = json!({"type": "messages", "items": [next_item(device, rid)]});
                if ws.send(Message::Text(frame.to_string().into())).await.is_err() {
                    break Session::Failed;
                }
                stats.items_sent.fetch_add(1, Ordering::Relaxed);
            }
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(t))) => {
                    if t.as_str().contains("\"ack\"") {
                        stats.items_acked.fetch_add(1, Ordering::Relaxed);
                    } else if t.as_str().contains("\"error\"") {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(Ok(_)) => {}
                _ => break Session::Failed,
            },
        }
    };
    stats.up.fetch_sub(1, Ordering::Relaxed);
    outcome
}

async fn http_session(
    api: &Api,
    device: &SimDevice,
    b: &Behaviour,
    stats: &Stats,
    orders: &mut mpsc::Receiver<Order>,
    stop: &CancellationToken,
    rid: &mut u64,
) -> Session {
    if api
        .post("/v1/device/heartbeat", &device.token, json!({}))
        .await
        .is_err()
    {
        return Session::Failed;
    }
    stats.up.fetch_add(1, Ordering::Relaxed);
    stats.connects.fetch_add(1, Ordering::Relaxed);
    let mut heartbeat =
        tokio::time::interval_at(tokio::time::Instant::now() + b.heartbeat, b.heartbeat);
    let mut items = item_interval(b.rate).map(tokio::time::interval);
    let outcome = loop {
        tokio::select! {
            _ = stop.cancelled() => break Session::Stopped,
            order = orders.recv() => match order {
                Some(Order::Drop(away)) => break Session::Dropped(away),
                None => break Session::Stopped,
            },
            _ = heartbeat.tick() => {
                if api.post("/v1/device/heartbeat", &device.token, json!({})).await.is_err() {
                    break Session::Failed;
                }
            }
            _ = async { items.as_mut().expect("guarded").tick().await }, if items.is_some() => {
                stats.items_sent.fetch_add(1, Ordering::Relaxed);
                match api.post("/v1/device/messages", &device.token, next_item(device, rid)).await {
                    Ok(_) => stats.items_acked.fetch_add(1, Ordering::Relaxed),
                    Err(_) => stats.errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        }
    };
    stats.up.fetch_sub(1, Ordering::Relaxed);
    outcome
}

/// A fleet of running devices and the means to order them about.
pub struct Running {
    pub stats: Arc<Stats>,
    orders: Vec<mpsc::Sender<Order>>,
    tasks: JoinSet<()>,
    stop: CancellationToken,
}

impl Running {
    /// Starts every device, `connect_concurrency` handshakes at a time.
    pub async fn start(
        api: &Api,
        fleet: &Fleet,
        behaviour: Behaviour,
        connect_concurrency: usize,
    ) -> Running {
        let stats = Arc::new(Stats::default());
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut orders = Vec::with_capacity(fleet.devices.len());
        for (i, device) in fleet.devices.iter().enumerate() {
            let (tx, rx) = mpsc::channel(4);
            orders.push(tx);
            tasks.spawn(run_device(
                api.clone(),
                device.clone(),
                behaviour.clone(),
                stats.clone(),
                rx,
                stop.clone(),
            ));
            // Pace the handshakes: wait while too many are under way.
            if (i + 1) % connect_concurrency == 0 {
                let target = (i + 1 - connect_concurrency / 2) as u64;
                while stats.connects.load(Ordering::Relaxed) < target
                    && stats.errors.load(Ordering::Relaxed) < 1000
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        Running {
            stats,
            orders,
            tasks,
            stop,
        }
    }

    /// Drops these devices (by index) at once; they return after `away`.
    pub fn drop_devices(&self, which: &[usize], away: Duration) {
        for i in which {
            let _ = self.orders[*i].try_send(Order::Drop(away));
        }
    }

    /// `fraction` of the fleet, chosen at random, drops for `away`.
    pub fn drop_random(&self, fraction: f64, away: Duration) -> usize {
        let n = ((self.orders.len() as f64) * fraction).round() as usize;
        let chosen: Vec<usize> = (0..self.orders.len()).choose_multiple(&mut rand::rng(), n);
        self.drop_devices(&chosen, away);
        chosen.len()
    }

    pub async fn stop(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

#[derive(clap::Args)]
pub struct SimulateArgs {
    /// The merpati to talk to.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// To create the simulated account, its devices and an endpoint.
    #[arg(long, env = "MERPATI_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,
    #[arg(long, default_value_t = 10)]
    pub devices: usize,
    /// `link` (a WebSocket each) or `http` (heartbeats by POST).
    #[arg(long, default_value = "link")]
    pub mode: String,
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub heartbeat: std::time::Duration,
    /// Inbound SMS per second, per device.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Every this long, `--drop-fraction` of the devices drop...
    #[arg(long, value_parser = humantime::parse_duration)]
    pub drop_every: Option<std::time::Duration>,
    #[arg(long, default_value_t = 0.1)]
    pub drop_fraction: f64,
    /// ...and come back after this long.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub down_for: std::time::Duration,
    /// Stop after this long (default: at Ctrl-C).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<std::time::Duration>,
    #[arg(long, default_value = "sms")]
    pub engine: String,
    /// Also register an endpoint with this URL for everything the fleet causes.
    #[arg(long)]
    pub endpoint: Option<String>,
}

/// `merpati simulate`: a fleet of devices against a running merpati, until Ctrl-C or
/// `--duration`, with a line of figures every 5 s.
pub async fn run(args: SimulateArgs) -> anyhow::Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    let mode = match args.mode.as_str() {
        "link" => Mode::Link,
        "http" => Mode::Http,
        other => anyhow::bail!("--mode must be link or http, not {other:?}"),
    };
    let api = Api::new(&args.url);
    let endpoint = args
        .endpoint
        .as_deref()
        .map(|url| (url, serde_json::json!(["*"])));
    let fleet = provision(
        &api,
        &args.admin_token,
        args.devices,
        &args.engine,
        endpoint,
    )
    .await?;
    eprintln!(
        "merpati simulate: account {} with {} devices ({:?}); API key {}",
        fleet.account,
        fleet.devices.len(),
        mode,
        fleet.key
    );
    let behaviour = Behaviour {
        mode,
        heartbeat: args.heartbeat,
        rate: args.rate,
    };
    let running = Running::start(&api, &fleet, behaviour, 256).await;
    let stats = running.stats.clone();
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let mut report = tokio::time::interval(std::time::Duration::from_secs(5));
    let mut drops = args
        .drop_every
        .map(|every| tokio::time::interval_at(tokio::time::Instant::now() + every, every));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => break,
            _ = async { drops.as_mut().expect("guarded").tick().await }, if drops.is_some() => {
                let n = running.drop_random(args.drop_fraction, args.down_for);
                eprintln!("dropped {n} devices for {:?}", args.down_for);
            }
            _ = report.tick() => eprintln!(
                "up {}  connects {}  items sent {}  acked {}  errors {}",
                stats.up.load(Relaxed),
                stats.connects.load(Relaxed),
                stats.items_sent.load(Relaxed),
                stats.items_acked.load(Relaxed),
                stats.errors.load(Relaxed),
            ),
        }
    }
    running.stop().await;
    println!(
        "connects {}  items sent {}  acked {}  errors {}",
        stats.connects.load(Relaxed),
        stats.items_sent.load(Relaxed),
        stats.items_acked.load(Relaxed),
        stats.errors.load(Relaxed),
    );
    Ok(())
}
