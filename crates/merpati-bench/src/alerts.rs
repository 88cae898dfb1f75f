//! `merpati bench alerts`: an alert storm against a `merpati serve` child. 10,000 WhatsApp
//! devices (by default) across 100 businesses go down at once and come back: how many
//! messages a Slack-compatible notifier gets (one per business each way is right), how
//! soon after the last drop, and what the storm costs the server.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::load::{percentile, wait_until};
use crate::presence::Spread;
use crate::process::ServerProcess;
use crate::receivers::serve_on_loopback;
use crate::simulate::{self, Api};

#[derive(clap::Args)]
pub struct AlertArgs {
    #[arg(long, default_value_t = 10_000)]
    pub devices: usize,
    #[arg(long, default_value_t = 100)]
    pub businesses: usize,
    /// `alerts.group_wait` of the server (its default).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub group_wait: Duration,
    /// Status reports under way at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Live streams (`/v1/stream`, as dashboards hold) open through the storm.
    #[arg(long, default_value_t = 0)]
    pub streams: usize,
    #[arg(long)]
    pub json: bool,
}

/// What the notifier's receiver got, and when.
#[derive(Default)]
struct Inbox {
    messages: Mutex<Vec<(Instant, String)>>,
}

impl Inbox {
    fn count(&self, starting: &str) -> usize {
        self.messages
            .lock()
            .expect("inbox lock")
            .iter()
            .filter(|(_, text)| text.starts_with(starting))
            .count()
    }

    fn times(&self, starting: &str) -> Vec<Instant> {
        self.messages
            .lock()
            .expect("inbox lock")
            .iter()
            .filter(|(_, text)| text.starts_with(starting))
            .map(|(at, _)| *at)
            .collect()
    }
}

pub async fn alerts(args: AlertArgs) -> anyhow::Result<()> {
    let server = ServerProcess::start(&[
        ("MERPATI_DELIVERY_ALLOWED_NETWORKS", "127.0.0.0/8".into()),
        (
            "MERPATI_ALERTS_GROUP_WAIT",
            format!("{}ms", args.group_wait.as_millis()),
        ),
    ])
    .await?;
    let result = run(&server, &args).await;
    server.stop().await;
    result
}

/// Each device's token, and its business.
struct Fleet {
    tokens: Vec<String>,
}

async fn provision(
    api: &Api,
    admin: &str,
    args: &AlertArgs,
    slack: &str,
) -> anyhow::Result<(String, Fleet)> {
    let (_account, key) = simulate::new_account(api, admin, "storm").await?;
    api.post(
        "/v1/notifiers",
        &key,
        json!({"id": "team", "name": "Team", "kind": "slack", "url": slack}),
    )
    .await?;
    for b in 0..args.businesses {
        api.post(
            "/v1/businesses",
            &key,
            json!({"id": format!("b{b:03}"), "name": format!("Shop {b}")}),
        )
        .await?;
        api.post(
            "/v1/channels",
            &key,
            json!({"id": format!("c{b:03}"), "name": "WA", "engine": "wa", "business_id": format!("b{b:03}")}),
        )
        .await?;
    }
    let gate = Arc::new(Semaphore::new(args.concurrency));
    let mut made = JoinSet::new();
    for i in 0..args.devices {
        let (api, key, gate) = (api.clone(), key.clone(), gate.clone());
        let business = i % args.businesses.max(1);
        made.spawn(async move {
            let _permit = gate.acquire().await;
            let v = api
                .post(
                    "/v1/devices",
                    &key,
                    json!({"id": format!("d{i:05}"), "name": format!("Phone {i}"), "channel_id": format!("c{business:03}")}),
                )
                .await?;
            anyhow::Ok((i, v["token"].as_str().context("no token")?.to_string()))
        });
    }
    let mut tokens = vec![String::new(); args.devices];
    while let Some(done) = made.join_next().await {
        let (i, token) = done??;
        tokens[i] = token;
    }
    Ok((key, Fleet { tokens }))
}

/// A live stream held open, counting the server-sent events it gets.
struct Stream {
    events: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

async fn open_streams(api: &Api, key: &str, n: usize) -> anyhow::Result<Vec<Stream>> {
    use futures_util::StreamExt;
    let mut streams = Vec::new();
    for _ in 0..n {
        let response = api
            .client
            .get(format!("{}/v1/stream", api.base))
            .bearer_auth(key)
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "stream: {}",
            response.status()
        );
        let events = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = events.clone();
        let task = tokio::spawn(async move {
            let mut body = response.bytes_stream();
            while let Some(Ok(chunk)) = body.next().await {
                let n = chunk.windows(7).filter(|w| *w == b"event: ").count();
                counted.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            }
        });
        streams.push(Stream { events, task });
    }
    Ok(streams)
}

/// Every device reports `status`, `concurrency` at a time; returns when the last answered.
async fn report_all(
    api: &Api,
    fleet: &Fleet,
    status: &str,
    concurrency: usize,
) -> anyhow::Result<()> {
    let gate = Arc::new(Semaphore::new(concurrency));
    let mut sent = JoinSet::new();
    for token in &fleet.tokens {
        let (api, token, gate) = (api.clone(), token.clone(), gate.clone());
        let status = status.to_string();
        sent.spawn(async move {
            let _permit = gate.acquire().await;
            api.post("/v1/device/status", &token, json!({"status": status}))
                .await
                .map(drop)
        });
    }
    while let Some(done) = sent.join_next().await {
        done??;
    }
    Ok(())
}

async fn run(server: &ServerProcess, args: &AlertArgs) -> anyhow::Result<()> {
    let inbox = Arc::new(Inbox::default());
    let kept = inbox.clone();
    let app = axum::Router::new().fallback(move |body: Bytes| {
        let inbox = kept.clone();
        async move {
            let text = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["text"].as_str().map(str::to_owned))
                .unwrap_or_default();
            inbox
                .messages
                .lock()
                .expect("inbox lock")
                .push((Instant::now(), text));
            "ok"
        }
    });
    let (addr, receiver) = serve_on_loopback(app).await?;
    let api = Api::new(&server.url);
    let (key, fleet) =
        provision(&api, &server.admin, args, &format!("http://{addr}/slack")).await?;
    report_all(&api, &fleet, "connected", args.concurrency).await?;
    let streams = open_streams(&api, &key, args.streams).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = server.rss_mib();

    // The storm: every device logged out at once.
    let cpu0 = server.cpu_seconds();
    let first_drop = Instant::now();
    report_all(&api, &fleet, "logged_out", args.concurrency).await?;
    let dropped_in = first_drop.elapsed();
    let last_drop = Instant::now();
    let b = args.businesses.min(args.devices);
    let limit = args.group_wait + Duration::from_secs(120);
    wait_until("an alert per business", limit, || inbox.count("🔴") >= b).await?;
    // Devices that dropped after their business's notice went out come as one update each.
    let alerted_in = first_drop.elapsed();
    // Anything more would come within a group_wait.
    tokio::time::sleep(args.group_wait + Duration::from_secs(1)).await;
    let storm_cpu = server.cpu_seconds() - cpu0;
    let alerts = inbox.count("🔴");
    let mut after_last: Vec<f64> = inbox
        .times("🔴")
        .iter()
        .map(|t| t.saturating_duration_since(last_drop).as_secs_f64())
        .collect();
    after_last.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    let incidents = api.get("/v1/incidents?state=open&limit=500", &key).await?;
    let open_incidents = incidents["data"].as_array().map_or(0, Vec::len);
    let rss_after = server.rss_mib();

    // And back.
    let cpu0 = server.cpu_seconds();
    let back_at = Instant::now();
    report_all(&api, &fleet, "connected", args.concurrency).await?;
    wait_until("a recovery per business", limit, || inbox.count("✅") >= b).await?;
    let recovered_in = back_at.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let recovery_cpu = server.cpu_seconds() - cpu0;
    let recoveries = inbox.count("✅");
    receiver.abort();
    let stream_events: Vec<u64> = streams
        .iter()
        .map(|s| s.events.load(std::sync::atomic::Ordering::Relaxed))
        .collect();
    for s in &streams {
        s.task.abort();
    }

    let figures = AlertFigures {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        devices: args.devices,
        businesses: b,
        group_wait_seconds: args.group_wait.as_secs_f64(),
        drops_reported_in_seconds: dropped_in.as_secs_f64(),
        drops_per_second: args.devices as f64 / dropped_in.as_secs_f64(),
        all_alerted_seconds_after_first_drop: alerted_in.as_secs_f64(),
        alert_after_last_drop_seconds: Spread {
            min: after_last.first().copied().unwrap_or(0.0),
            p50: percentile(&after_last, 0.5),
            p99: percentile(&after_last, 0.99),
            max: after_last.last().copied().unwrap_or(0.0),
        },
        alert_messages: alerts,
        open_incidents,
        storm_cpu_seconds: storm_cpu,
        recovery_messages: recoveries,
        all_recovered_seconds: recovered_in.as_secs_f64(),
        recovery_cpu_seconds: recovery_cpu,
        rss_mib_before: rss_before,
        rss_mib_after: rss_after,
        streams: args.streams,
        stream_events_each: stream_events.iter().copied().max().unwrap_or(0),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&figures)?);
    } else {
        figures.print();
    }
    Ok(())
}

/// The figures of an alert storm (the JSON of `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct AlertFigures {
    pub cores: usize,
    pub devices: usize,
    pub businesses: usize,
    pub group_wait_seconds: f64,
    pub drops_reported_in_seconds: f64,
    pub drops_per_second: f64,
    pub all_alerted_seconds_after_first_drop: f64,
    /// From the last drop answered to each alert at the notifier.
    pub alert_after_last_drop_seconds: Spread,
    /// One per business is right.
    pub alert_messages: usize,
    pub open_incidents: usize,
    pub storm_cpu_seconds: f64,
    pub recovery_messages: usize,
    pub all_recovered_seconds: f64,
    pub recovery_cpu_seconds: f64,
    pub rss_mib_before: f64,
    pub rss_mib_after: f64,
    /// Live streams open through the storm, and the most server-sent events one got.
    pub streams: usize,
    pub stream_events_each: u64,
}

impl AlertFigures {
    fn print(&self) {
        println!("merpati bench alerts ({} cores)", self.cores);
        println!(
            "  {} devices in {} businesses, group_wait {:.1} s",
            self.devices, self.businesses, self.group_wait_seconds
        );
        println!(
            "  drops reported in             {:.2} s   ({:.0} reports/s)",
            self.drops_reported_in_seconds, self.drops_per_second
        );
        println!(
            "  alert messages                {}   (one per business: {})",
            self.alert_messages, self.businesses
        );
        println!("  open incidents                {}", self.open_incidents);
        let a = self.alert_after_last_drop_seconds;
        println!(
            "  alerts after the last drop    min {:.3} s  p50 {:.3} s  p99 {:.3} s  max {:.3} s",
            a.min, a.p50, a.p99, a.max
        );
        println!(
            "  all alerted, from first drop  {:.2} s",
            self.all_alerted_seconds_after_first_drop
        );
        println!(
            "  server CPU for the storm      {:.2} s",
            self.storm_cpu_seconds
        );
        println!(
            "  recovery messages             {}   in {:.2} s, {:.2} s of CPU",
            self.recovery_messages, self.all_recovered_seconds, self.recovery_cpu_seconds
        );
        println!(
            "  resident memory               {:.1} MiB before, {:.1} MiB after the storm",
            self.rss_mib_before, self.rss_mib_after
        );
        if self.streams > 0 {
            println!(
                "  live streams                  {} open, each told {} events (device states coalesced)",
                self.streams, self.stream_events_each
            );
        }
    }
}
