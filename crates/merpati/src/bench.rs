//! `merpati bench …`: measurements against a real `merpati serve` child process, so that
//! its memory and CPU are its own (read from /proc), with simulated devices and a loopback
//! receiver in this process. `bench delivery --url` measures a merpati already running on
//! this machine instead.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::body::Bytes;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::simulate::{self, Api, Behaviour, Mode};

/// A `merpati serve` child on a free loopback port with a fresh data dir.
pub struct ServerProcess {
    pub child: Child,
    pub url: String,
    pub admin: String,
    dir: PathBuf,
    log_drain: tokio::task::JoinHandle<()>,
}

impl ServerProcess {
    pub async fn start(settings: &[(&str, String)]) -> anyhow::Result<ServerProcess> {
        let dir = std::env::temp_dir().join(format!("merpati-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let admin = crate::ids::new_token("mat");
        let mut command = Command::new(std::env::current_exe()?);
        command
            .arg("serve")
            .env("MERPATI_LISTEN", "127.0.0.1:0")
            .env("MERPATI_DATA_DIR", &dir)
            .env("MERPATI_ADMIN_TOKEN", &admin)
            .env("MERPATI_LOG_FORMAT", "json")
            .env("MERPATI_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in settings {
            command.env(k, v);
        }
        let mut child = command.spawn().context("starting merpati serve")?;
        let mut lines = BufReader::new(child.stderr.take().context("stderr")?).lines();
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                let Ok(entry) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if entry["fields"]["message"] == "merpati is listening" {
                    return Ok(entry["fields"]["addr"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string());
                }
            }
            bail!("merpati serve exited before listening")
        })
        .await
        .context("merpati serve did not start in 30 s")??;
        // Keep its log flowing so it never blocks on a full pipe; warnings and errors are
        // kept in the data dir, to look at after a run that went wrong.
        let log_path = dir.join("server-warnings.log");
        let log_drain = tokio::spawn(async move {
            let mut kept = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                if !line.starts_with('{')
                    || line.contains("\"level\":\"WARN\"")
                    || line.contains("\"level\":\"ERROR\"")
                {
                    kept.extend_from_slice(line.as_bytes());
                    kept.push(b'\n');
                    let _ = std::fs::write(&log_path, &kept);
                }
            }
        });
        Ok(ServerProcess {
            child,
            url: format!("http://{addr}"),
            admin,
            dir,
            log_drain,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Resident memory, in MiB.
    pub fn rss_mib(&self) -> f64 {
        rss_mib_of(self.pid()).unwrap_or(0.0)
    }

    /// CPU time used so far (user + system), in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds_of(self.pid()).unwrap_or(0.0)
    }

    /// This server, as the target of a run.
    fn target(&self) -> Target {
        Target {
            url: self.url.clone(),
            admin: self.admin.clone(),
            pid: Some(self.pid()),
            shared: false,
        }
    }

    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
        let _ = self.child.kill().await;
        let _ = self.log_drain.await;
        // The data dir goes; what went wrong in the run is shown first.
        if let Ok(log) = std::fs::read_to_string(self.dir.join("server-warnings.log")) {
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "the server logged {} warning or error line(s):",
                lines.len()
            );
            for line in lines.iter().take(40) {
                eprintln!("  {line}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A process's resident memory, in MiB.
fn rss_mib_of(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse::<f64>()
        .ok()?;
    Some(kb / 1024.0)
}

/// A process's CPU time used so far (user + system), in seconds.
fn cpu_seconds_of(pid: u32) -> Option<f64> {
    cpu_seconds_in(&format!("/proc/{pid}/stat")).map(|(_, seconds)| seconds)
}

/// The merpati a delivery run measures: its API, and its process when the run can read it.
struct Target {
    url: String,
    admin: String,
    pid: Option<u32>,
    /// A merpati the run did not start: what the run provisions there stays after it.
    shared: bool,
}

impl Target {
    fn rss_mib(&self) -> Option<f64> {
        self.pid.and_then(rss_mib_of)
    }

    fn cpu_seconds(&self) -> Option<f64> {
        self.pid.and_then(cpu_seconds_of)
    }
}

/// The command name and CPU time used (user + system, in seconds) that a /proc `stat` file
/// shows, for a process or one of its threads.
fn cpu_seconds_in(stat_path: &str) -> Option<(String, f64)> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    let (name, ticks) = name_and_cpu_ticks(&stat)?;
    Some((name.to_string(), ticks / clock_ticks_per_second()))
}

/// The command name and the clock ticks of CPU (user + system) of a /proc `stat` line.
fn name_and_cpu_ticks(stat: &str) -> Option<(&str, f64)> {
    // The command name is in parentheses and may hold spaces and parentheses itself;
    // utime and stime are the 14th and 15th fields of the whole line.
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some((name, ticks))
}

/// CPU time used so far by this process, in seconds.
fn own_cpu_seconds() -> f64 {
    cpu_seconds_in("/proc/self/stat").map_or(0.0, |(_, seconds)| seconds)
}

/// CPU time used so far by this process's live threads named `name`, in seconds.
fn own_threads_cpu_seconds(name: &str) -> f64 {
    let Ok(threads) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    threads
        .flatten()
        .filter_map(|thread| cpu_seconds_in(&thread.path().join("stat").to_string_lossy()))
        .filter(|(comm, _)| comm == name)
        .map(|(_, seconds)| seconds)
        .sum()
}

/// The relay baseline's threads, told apart from the client's and the receivers'.
const RELAY_THREADS: &str = "bench-relay";

fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// A loopback receiver that notes when each device event arrived.
#[derive(Default)]
pub struct DeviceEventLog {
    /// (event, device id) → arrival times.
    pub arrivals: Mutex<HashMap<(String, String), Vec<Instant>>>,
}

impl DeviceEventLog {
    pub fn count(&self, event: &str) -> usize {
        self.arrivals
            .lock()
            .expect("log lock")
            .iter()
            .filter(|((e, _), _)| e == event)
            .count()
    }
}

pub async fn start_receiver(
    log: Arc<DeviceEventLog>,
) -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    let app = axum::Router::new().fallback(move |body: Bytes| {
        let log = log.clone();
        async move {
            let at = Instant::now();
            if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                if let (Some(e), Some(d)) = (v["event"].as_str(), v["device"]["id"].as_str()) {
                    log.arrivals
                        .lock()
                        .expect("log lock")
                        .entry((e.to_string(), d.to_string()))
                        .or_default()
                        .push(at);
                }
            }
            axum::http::StatusCode::NO_CONTENT
        }
    });
    let (addr, task) = serve_on_loopback(app).await?;
    Ok((format!("http://{addr}/hook"), task))
}

#[derive(clap::Args)]
pub struct PresenceArgs {
    #[arg(long, default_value_t = 10_000)]
    pub links: usize,
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,
    #[arg(long, default_value_t = 1000)]
    pub drop: usize,
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub grace: Duration,
    /// How long to measure idle CPU.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub idle: Duration,
    #[arg(long)]
    pub json: bool,
}

/// The value at fraction `p` of a sorted list (the default of an empty one).
fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn wait_until(
    what: &str,
    limit: Duration,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > limit {
            bail!("{what}: not done within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(start.elapsed())
}

/// 10,000 links (by default) with heartbeats, resident memory and idle CPU, then a mass
/// drop timed from the drop to each `device.disconnected` at the receiver.
pub async fn presence(args: PresenceArgs) -> anyhow::Result<()> {
    let server = ServerProcess::start(&[
        (
            "MERPATI_PRESENCE_GRACE",
            format!("{}ms", args.grace.as_millis()),
        ),
        (
            "MERPATI_PRESENCE_HEARTBEAT_TIMEOUT",
            format!("{}ms", (args.heartbeat * 3).as_millis()),
        ),
        ("MERPATI_DELIVERY_ALLOWED_NETWORKS", "127.0.0.0/8".into()),
    ])
    .await?;
    let result = presence_run(&server, &args).await;
    server.stop().await;
    result
}

async fn presence_run(server: &ServerProcess, args: &PresenceArgs) -> anyhow::Result<()> {
    let log = Arc::new(DeviceEventLog::default());
    let (receiver_url, receiver) = start_receiver(log.clone()).await?;
    let api = Api::new(&server.url);
    let rss_empty = server.rss_mib();

    let started = Instant::now();
    let fleet = simulate::provision(
        &api,
        &server.admin,
        args.links,
        "wa",
        Some((&receiver_url, json!(["device.*"]))),
    )
    .await?;
    let provisioned = started.elapsed();

    let started = Instant::now();
    let behaviour = Behaviour {
        mode: Mode::Link,
        heartbeat: args.heartbeat,
        rate: 0.0,
    };
    let running = simulate::Running::start(&api, &fleet, behaviour, 256).await;
    let stats = running.stats.clone();
    let n = args.links as u64;
    wait_until("links up", Duration::from_secs(300), || {
        stats.up.load(std::sync::atomic::Ordering::Relaxed) >= n
    })
    .await?;
    let links_up = started.elapsed();
    wait_until(
        "device.connected at the receiver",
        Duration::from_secs(300),
        || log.count("device.connected") >= args.links,
    )
    .await?;
    let connected_delivered = started.elapsed();

    // Idle: links open, heartbeats flowing, nothing else.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu0 = server.cpu_seconds();
    let t0 = Instant::now();
    tokio::time::sleep(args.idle).await;
    let idle_cpu_percent = (server.cpu_seconds() - cpu0) / t0.elapsed().as_secs_f64() * 100.0;
    let rss_links = server.rss_mib();

    // The mass drop: connections gone without a goodbye, and they stay away.
    let dropped: Vec<usize> = (0..args.drop.min(args.links)).collect();
    let drop_at = Instant::now();
    running.drop_devices(&dropped, Duration::from_secs(24 * 3600));
    let limit = args.grace + Duration::from_secs(60);
    let expected = dropped.len();
    wait_until("device.disconnected at the receiver", limit, || {
        log.count("device.disconnected") >= expected
    })
    .await?;
    let mut latencies: Vec<f64> = log
        .arrivals
        .lock()
        .expect("log lock")
        .iter()
        .filter(|((e, _), _)| e == "device.disconnected")
        .filter_map(|(_, times)| times.first())
        .map(|t| t.duration_since(drop_at).as_secs_f64())
        .collect();
    latencies.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    let grace = args.grace.as_secs_f64();
    let max = latencies.last().copied().unwrap_or(0.0);
    let extra_disconnects = log.count("device.disconnected") - expected;

    running.stop().await;
    receiver.abort();

    let result = json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "links": args.links,
        "heartbeat_seconds": args.heartbeat.as_secs_f64(),
        "provision_seconds": provisioned.as_secs_f64(),
        "links_up_seconds": links_up.as_secs_f64(),
        "connected_delivered_seconds": connected_delivered.as_secs_f64(),
        "rss_mib_empty": rss_empty,
        "rss_mib_with_links": rss_links,
        "idle_cpu_percent_of_one_core": idle_cpu_percent,
        "idle_seconds": args.idle.as_secs_f64(),
        "dropped": expected,
        "grace_seconds": grace,
        "disconnect_latency_seconds": {
            "min": latencies.first().copied().unwrap_or(0.0),
            "p50": percentile(&latencies, 0.5),
            "p99": percentile(&latencies, 0.99),
            "max": max,
        },
        "all_within_grace_plus_1s": max <= grace + 1.0,
        "false_disconnects": extra_disconnects,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        println!("merpati bench presence ({} cores)", result["cores"]);
        println!("  links                         {}", args.links);
        println!(
            "  provisioned in                {:.1} s",
            provisioned.as_secs_f64()
        );
        println!(
            "  all links up in               {:.1} s",
            links_up.as_secs_f64()
        );
        println!(
            "  all device.connected received {:.1} s",
            connected_delivered.as_secs_f64()
        );
        println!("  resident memory, empty        {rss_empty:.1} MiB");
        println!(
            "  resident memory, {} links  {rss_links:.1} MiB   (target <= 150)",
            args.links
        );
        println!(
            "  idle CPU ({:.0} s, {:.0} s heartbeats)  {idle_cpu_percent:.2} % of one core   (target < 5)",
            args.idle.as_secs_f64(),
            args.heartbeat.as_secs_f64()
        );
        println!(
            "  mass drop of {expected}: disconnected received after  min {:.3} s  p50 {:.3} s  p99 {:.3} s  max {:.3} s",
            result["disconnect_latency_seconds"]["min"].as_f64().unwrap_or(0.0),
            result["disconnect_latency_seconds"]["p50"].as_f64().unwrap_or(0.0),
            result["disconnect_latency_seconds"]["p99"].as_f64().unwrap_or(0.0),
            max
        );
        println!(
            "  all within grace ({grace:.1} s) + 1 s        {}",
            if max <= grace + 1.0 { "yes" } else { "NO" }
        );
        println!("  false disconnects             {extra_disconnects}");
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct DeliveryArgs {
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Requests under way at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 1)]
    pub items_per_request: usize,
    /// Events per second in all (default: as fast as they are accepted).
    #[arg(long)]
    pub rate: Option<f64>,
    #[arg(long, default_value_t = 1)]
    pub endpoints: usize,
    #[arg(long, default_value_t = 64)]
    pub devices: usize,
    /// Also subscribe an endpoint whose receiver takes this long to answer (e.g. `10s`):
    /// the isolation check. Delivered/s and latency stay those of the other endpoints.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub slow_endpoint: Option<Duration>,
    /// With `--slow-endpoint`: it answers at once for this long into the run (e.g. `10s`),
    /// and only then slowly: an endpoint known to be fast that starts hanging.
    #[arg(long, value_parser = humantime::parse_duration, requires = "slow_endpoint")]
    pub slow_after: Option<Duration>,
    /// Once everything is delivered, also measure the server idle for this long (e.g.
    /// `30s`): its CPU, and its resident memory at the end, with nothing queued.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub idle: Option<Duration>,
    /// Measure a merpati already running on this machine, at this URL, instead of starting
    /// one. It must let deliveries go to loopback (`delivery.allowed_networks`), where the
    /// receivers listen. The run provisions an account of its own there, which stays.
    #[arg(long)]
    pub url: Option<String>,
    /// With `--url`: the running merpati's admin token, to provision the run's account.
    #[arg(long, env = "MERPATI_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// With `--url`: the running merpati's process id, to read its CPU and memory (without
    /// it they are not reported).
    #[arg(long, requires = "url")]
    pub server_pid: Option<u32>,
    /// How long each of the loopback HTTP and relay baselines runs.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub baseline_duration: Duration,
    #[arg(long)]
    pub json: bool,
}

/// Serves `app` on a loopback port; the task ends when aborted.
async fn serve_on_loopback(
    app: axum::Router,
) -> anyhow::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, task))
}

/// A receiver that takes `delay` to answer each request, or answers at once until
/// `fast_until` once that is set; counts the requests it got.
async fn start_slow_receiver(
    delay: Duration,
    fast_until: Arc<std::sync::OnceLock<Instant>>,
    count: Arc<std::sync::atomic::AtomicU64>,
) -> anyhow::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let app = axum::Router::new().fallback(move |_body: Bytes| {
        let (count, fast_until) = (count.clone(), fast_until.clone());
        async move {
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if fast_until.get().is_none_or(|t| Instant::now() >= *t) {
                tokio::time::sleep(delay).await;
            }
            axum::http::StatusCode::NO_CONTENT
        }
    });
    serve_on_loopback(app).await
}

/// Notes every delivery's arrival and its latency from the moment the item was sent (the
/// item's message carries that moment).
#[derive(Default)]
struct ReceiptLog {
    count: std::sync::atomic::AtomicU64,
    latencies_us: Mutex<Vec<u64>>,
    last: Mutex<Option<Instant>>,
}

/// The moment an item was sent, from its message (`"bench <µs>"`). Only that field is read,
/// and borrowed: a receiver on the same cores as the server should cost what a receiver has to.
fn sent_at_us(body: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Payload<'a> {
        #[serde(borrow)]
        data: Data<'a>,
    }
    #[derive(serde::Deserialize)]
    struct Data<'a> {
        #[serde(borrow)]
        message: std::borrow::Cow<'a, str>,
    }
    let payload: Payload = serde_json::from_slice(body).ok()?;
    payload.data.message.strip_prefix("bench ")?.parse().ok()
}

async fn start_timing_receiver(
    log: Arc<ReceiptLog>,
    epoch: Instant,
) -> anyhow::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let app = axum::Router::new().fallback(move |body: Bytes| {
        let log = log.clone();
        async move {
            let now = epoch.elapsed().as_micros() as u64;
            let sent = sent_at_us(&body);
            if let Some(sent) = sent {
                log.latencies_us
                    .lock()
                    .expect("log lock")
                    .push(now.saturating_sub(sent));
            }
            log.count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            *log.last.lock().expect("log lock") = Some(Instant::now());
            axum::http::StatusCode::NO_CONTENT
        }
    });
    serve_on_loopback(app).await
}

/// The benchmark's HTTP client (the devices', and the relay's): hyper's pooled client, as
/// merpati's deliveries use, so that the client's own cost is the least it can be.
type LoadClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<Bytes>,
>;

/// The simulated devices' client: kept-alive connections, as many as the load keeps under way.
fn load_client() -> anyhow::Result<LoadClient> {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_nodelay(true);
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(4096)
            .build(http),
    )
}

/// POSTs `body` as JSON (with a bearer token, if any); true when the answer is a success.
async fn post_json(
    client: &LoadClient,
    uri: &http::Uri,
    token: Option<&str>,
    body: impl Into<Bytes>,
) -> bool {
    let mut request = http::Request::post(uri.clone()).header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let Ok(request) = request.body(http_body_util::Full::new(body.into())) else {
        return false;
    };
    match client.request(request).await {
        Ok(response) => {
            let ok = response.status().is_success();
            // Read the answer to its end, so that the connection goes back to the pool.
            let _ = http_body_util::BodyExt::collect(response.into_body()).await;
            ok
        }
        Err(_) => false,
    }
}

/// What the devices' client saw.
struct LoadOutcome {
    accepted: u64,
    failed_requests: u64,
    /// From sending each accepted request to its answer (the event durable), sorted.
    answer_latencies_us: Vec<u64>,
}

/// Posts items as fast as allowed until `until`.
#[allow(clippy::too_many_arguments)]
async fn load(
    client: LoadClient,
    url: String,
    tokens: Vec<String>,
    items_per_request: usize,
    concurrency: usize,
    rate: Option<f64>,
    until: Instant,
    epoch: Instant,
) -> LoadOutcome {
    let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    let Ok(uri) = url.parse::<http::Uri>() else {
        return LoadOutcome {
            accepted: 0,
            failed_requests: 0,
            answer_latencies_us: Vec::new(),
        };
    };
    // A fixed rate is shared out among the workers as a per-worker interval.
    let per_worker =
        rate.map(|r| Duration::from_secs_f64(concurrency as f64 * items_per_request as f64 / r));
    for w in 0..concurrency {
        let (client, uri, accepted, failed) = (
            client.clone(),
            uri.clone(),
            accepted.clone(),
            failed.clone(),
        );
        let token = tokens[w % tokens.len()].clone();
        workers.spawn(async move {
            let mut rid: u64 = (w as u64) << 40;
            let mut answers_us = Vec::new();
            let mut tick = per_worker.map(|p| {
                let mut i = tokio::time::interval_at(
                    tokio::time::Instant::now() + p.mul_f64(w as f64 / concurrency as f64),
                    p,
                );
                i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                i
            });
            while Instant::now() < until {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                let items: Vec<Value> = (0..items_per_request)
                    .map(|_| {
                        rid += 1;
                        json!({"type": "sms", "rid": rid, "phone": "+639760713666",
                               "message": format!("bench {}", epoch.elapsed().as_micros())})
                    })
                    .collect();
                let body = if items_per_request == 1 {
                    items.into_iter().next().expect("one item")
                } else {
                    json!({ "items": items })
                };
                let sent = Instant::now();
                let ok = post_json(&client, &uri, Some(&token), body.to_string()).await;
                if ok {
                    answers_us.push(sent.elapsed().as_micros() as u64);
                    accepted.fetch_add(
                        items_per_request as u64,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                } else {
                    failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            answers_us
        });
    }
    let mut answer_latencies_us = Vec::new();
    while let Some(answers) = workers.join_next().await {
        answer_latencies_us.extend(answers.unwrap_or_default());
    }
    answer_latencies_us.sort_unstable();
    LoadOutcome {
        accepted: accepted.load(std::sync::atomic::Ordering::Relaxed),
        failed_requests: failed.load(std::sync::atomic::Ordering::Relaxed),
        answer_latencies_us,
    }
}

/// The same client loop against a server that only answers 202: what this machine's
/// loopback HTTP costs, to set merpati's figure against.
async fn baseline(args: &DeliveryArgs, duration: Duration) -> anyhow::Result<f64> {
    let app =
        axum::Router::new().fallback(|_body: Bytes| async { axum::http::StatusCode::ACCEPTED });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1/device/messages", listener.local_addr()?);
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let client = load_client()?;
    let epoch = Instant::now();
    let done = load(
        client,
        url,
        vec!["x".into()],
        args.items_per_request,
        args.concurrency,
        None,
        Instant::now() + duration,
        epoch,
    )
    .await
    .accepted;
    server.abort();
    // `load` counts items; the baseline is in requests.
    Ok(done as f64 / args.items_per_request as f64 / duration.as_secs_f64())
}

/// What a relay with no storage delivers under the run's load.
struct RelayFigures {
    deliveries_per_second: f64,
    p99_ms: f64,
    /// CPU spent a delivery, in microseconds.
    cpu: CpuPerDelivery,
}

/// Where a run's CPU went, in microseconds a delivery: the server (merpati, or the relay)
/// and this process's client and receivers.
#[derive(Clone, Copy)]
struct CpuPerDelivery {
    server_us: f64,
    client_and_receivers_us: f64,
}

impl CpuPerDelivery {
    fn new(server_seconds: f64, client_seconds: f64, deliveries: u64) -> CpuPerDelivery {
        let per = |seconds: f64| seconds * 1e6 / deliveries.max(1) as f64;
        CpuPerDelivery {
            server_us: per(server_seconds),
            client_and_receivers_us: per(client_seconds),
        }
    }

    fn json(&self) -> Value {
        json!({
            "server": self.server_us,
            "client_and_receivers": self.client_and_receivers_us,
        })
    }
}

/// The same client loop, items and receivers through a relay that keeps nothing: each item
/// forwarded at once as one unsigned POST to every endpoint's URL, the request answered
/// 202 once all of them answered. It runs on a runtime and threads of its own, as the server
/// has, under the run's load (its rate, or full speed). Nothing durable, nothing queued,
/// nothing signed: the most that load's HTTP traffic reaches on this machine, and the least
/// latency, so the ceiling any server with storage sits under.
async fn relay_baseline(args: &DeliveryArgs, duration: Duration) -> anyhow::Result<RelayFigures> {
    let epoch = Instant::now();
    let log = Arc::new(ReceiptLog::default());
    let (receiver, receiver_task) = start_timing_receiver(log.clone(), epoch).await?;
    let targets: Arc<Vec<http::Uri>> = Arc::new(
        (0..args.endpoints)
            .map(|i| format!("http://{receiver}/hook/{i}").parse())
            .collect::<Result<_, _>>()?,
    );
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let relay = std::thread::Builder::new()
        .name(RELAY_THREADS.into())
        .spawn(move || -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name(RELAY_THREADS)
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let client = load_client()?;
                let app = axum::Router::new().fallback(move |body: Bytes| {
                    let (client, targets) = (client.clone(), targets.clone());
                    async move { relay_request(&client, &targets, &body).await }
                });
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                let _ = addr_tx.send(listener.local_addr()?);
                tokio::select! {
                    _ = axum::serve(listener, app) => {}
                    _ = stop_rx => {}
                }
                anyhow::Ok(())
            })
        })?;
    let addr = addr_rx.await.context("the relay did not start")?;
    let client = load_client()?;
    let (process_cpu0, relay_cpu0) = (own_cpu_seconds(), own_threads_cpu_seconds(RELAY_THREADS));
    let started = Instant::now();
    let accepted = load(
        client,
        format!("http://{addr}/v1/device/messages"),
        vec!["x".into()],
        args.items_per_request,
        args.concurrency,
        args.rate,
        started + duration,
        epoch,
    )
    .await
    .accepted;
    let seconds = started.elapsed().as_secs_f64();
    // Read before the relay's threads end and take their figures with them.
    let relay_cpu = own_threads_cpu_seconds(RELAY_THREADS) - relay_cpu0;
    let process_cpu = own_cpu_seconds() - process_cpu0;
    let deliveries = accepted * args.endpoints as u64;
    let _ = stop_tx.send(());
    let _ = tokio::task::spawn_blocking(move || relay.join()).await;
    receiver_task.abort();
    let mut lat = std::mem::take(&mut *log.latencies_us.lock().expect("log lock"));
    lat.sort_unstable();
    let p99 = percentile(&lat, 0.99);
    Ok(RelayFigures {
        deliveries_per_second: deliveries as f64 / seconds,
        p99_ms: p99 as f64 / 1000.0,
        cpu: CpuPerDelivery::new(relay_cpu, process_cpu - relay_cpu, deliveries),
    })
}

/// One request through the relay: every item to every target, then the answer.
async fn relay_request(
    client: &LoadClient,
    targets: &[http::Uri],
    body: &[u8],
) -> axum::http::StatusCode {
    let Ok(body) = serde_json::from_slice::<Value>(body) else {
        return axum::http::StatusCode::BAD_REQUEST;
    };
    let items = match body.get("items").and_then(Value::as_array) {
        Some(items) => items.clone(),
        None => vec![body],
    };
    let posts = items.iter().flat_map(|item| {
        let payload =
            Bytes::from(json!({"type": "sms", "data": {"message": item["message"]}}).to_string());
        targets
            .iter()
            .map(move |target| post_json(client, target, None, payload.clone()))
    });
    let answers = futures_util::future::join_all(posts).await;
    if answers.iter().all(|ok| *ok) {
        axum::http::StatusCode::ACCEPTED
    } else {
        axum::http::StatusCode::BAD_GATEWAY
    }
}

/// Ingest to receipt: events accepted and delivered per second, latency, memory and CPU.
pub async fn delivery(args: DeliveryArgs) -> anyhow::Result<()> {
    let Some(url) = &args.url else {
        let server = ServerProcess::start(&[(
            "MERPATI_DELIVERY_ALLOWED_NETWORKS",
            "127.0.0.0/8".to_string(),
        )])
        .await?;
        let result = measure_delivery(&server.target(), &args).await;
        if let Ok(result) = &result {
            report_delivery(result, &args)?;
        }
        // After the figures: what the server logged that went wrong.
        server.stop().await;
        return result.map(drop);
    };
    let result = measure_running(&args).await?;
    report_delivery(&result, &args)?;
    let account = result["account"].as_str().unwrap_or_default();
    // The load's events and the first one.
    let events = result["accepted"].as_u64().unwrap_or(0) + 1;
    eprintln!(
        "the run's account {account} stays on {url} with its {events} events; \
         DELETE /v1/accounts/{account} removes them (in the background)"
    );
    Ok(())
}

/// What `bench delivery --url` measures of the merpati running there: the figures of
/// `--json`.
pub async fn measure_running(args: &DeliveryArgs) -> anyhow::Result<Value> {
    let url = args
        .url
        .as_deref()
        .context("--url: the merpati to measure")?;
    let target = running_target(url, args)?;
    measure_delivery(&target, args).await
}

/// A merpati already running at `url`, checked before anything is provisioned there.
fn running_target(url: &str, args: &DeliveryArgs) -> anyhow::Result<Target> {
    // The devices' client speaks plain HTTP, as a merpati on this machine does.
    let parsed = url
        .parse::<http::Uri>()
        .ok()
        .filter(|u| u.scheme_str() == Some("http"))
        .filter(|u| u.host().is_some());
    if parsed.is_none() {
        bail!("--url must be the http URL of a running merpati, such as http://127.0.0.1:8080");
    }
    let Some(admin) = args.admin_token.clone().filter(|t| !t.is_empty()) else {
        bail!(
            "--url needs the running merpati's admin token: --admin-token or MERPATI_ADMIN_TOKEN"
        );
    };
    if args.idle.is_some() && args.server_pid.is_none() {
        bail!("--idle reads the server's CPU and memory: with --url, give its --server-pid");
    }
    if let Some(pid) = args.server_pid {
        if cpu_seconds_of(pid).is_none() {
            bail!("--server-pid {pid}: no such process on this machine");
        }
    }
    Ok(Target {
        url: url.trim_end_matches('/').to_string(),
        admin,
        pid: args.server_pid,
        shared: true,
    })
}

/// How long the run waits for its first event to reach every endpoint.
const FIRST_DELIVERY_LIMIT: Duration = Duration::from_secs(30);

/// Provisions an account with `args.devices` devices and the endpoints on `target`, drives
/// the load, waits for every delivery, runs the baselines; returns the figures (the JSON of
/// `--json`).
async fn measure_delivery(target: &Target, args: &DeliveryArgs) -> anyhow::Result<Value> {
    let epoch = Instant::now();
    let log = Arc::new(ReceiptLog::default());
    let (receiver, receiver_task) = start_timing_receiver(log.clone(), epoch).await?;
    let api = Api::new(&target.url);
    let fleet = simulate::provision(&api, &target.admin, args.devices, "sms", None).await?;
    let slow_count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let slow_fast_until = Arc::new(std::sync::OnceLock::new());
    let subscribe = |url: String| {
        let (api, key) = (&api, &fleet.key);
        async move {
            let endpoint = json!({"url": url, "events": ["sms"]});
            api.post("/v1/endpoints", key, endpoint)
                .await
                .context(LOOPBACK_REFUSED)
        }
    };
    let setup = async {
        for i in 0..args.endpoints {
            subscribe(format!("http://{receiver}/hook/{i}")).await?;
        }
        let slow_task = match args.slow_endpoint {
            Some(delay) => {
                let (addr, task) =
                    start_slow_receiver(delay, slow_fast_until.clone(), slow_count.clone()).await?;
                subscribe(format!("http://{addr}/slow")).await?;
                Some(task)
            }
            None => None,
        };
        first_delivery(&api, &fleet, &log, args.endpoints as u64).await?;
        anyhow::Ok(slow_task)
    };
    let slow_task = match setup.await {
        Ok(task) => task,
        Err(e) => {
            receiver_task.abort();
            // A run that never started leaves nothing behind on a running merpati.
            if target.shared {
                let account = format!("/v1/accounts/{}", fleet.account);
                if let Err(also) = api.delete(&account, &target.admin).await {
                    eprintln!("could not delete the run's account: {also:#}");
                }
            }
            return Err(e);
        }
    };
    let tokens: Vec<String> = fleet.devices.iter().map(|d| d.token.clone()).collect();
    let client = load_client()?;
    let rss_before = target.rss_mib();
    let (cpu0, client_cpu0) = (target.cpu_seconds(), own_cpu_seconds());
    let started = Instant::now();
    if let Some(after) = args.slow_after {
        let _ = slow_fast_until.set(started + after);
    }
    // The first delivery was the slow receiver's first request too.
    slow_count.store(0, std::sync::atomic::Ordering::Relaxed);
    let outcome = load(
        client,
        format!("{}/v1/device/messages", target.url),
        tokens,
        args.items_per_request,
        args.concurrency,
        args.rate,
        started + args.duration,
        epoch,
    )
    .await;
    let (accepted, failed) = (outcome.accepted, outcome.failed_requests);
    let answers = &outcome.answer_latencies_us;
    let ingest_seconds = started.elapsed().as_secs_f64();
    let expected = accepted * args.endpoints as u64;
    let drain_limit = Duration::from_secs(600);
    let drained = wait_until("deliveries", drain_limit, || {
        log.count.load(std::sync::atomic::Ordering::Relaxed) >= expected
    })
    .await
    .is_ok();
    let delivered = log.count.load(std::sync::atomic::Ordering::Relaxed);
    let last = log
        .last
        .lock()
        .expect("log lock")
        .unwrap_or_else(Instant::now);
    let delivery_seconds = last.duration_since(started).as_secs_f64().max(0.001);
    let client_cpu = own_cpu_seconds() - client_cpu0;
    let cpu = target.cpu_seconds().zip(cpu0).map(|(now, then)| now - then);
    let rss_after = target.rss_mib();
    let idle = match args.idle {
        Some(idle) => {
            let cpu0 = target.cpu_seconds();
            tokio::time::sleep(idle).await;
            let cpu = target.cpu_seconds().zip(cpu0).map(|(now, then)| now - then);
            Some(json!({
                "seconds": idle.as_secs_f64(),
                "cpu_percent_of_one_core": cpu.map(|c| c / idle.as_secs_f64() * 100.0),
                "rss_mib": target.rss_mib(),
            }))
        }
        None => None,
    };
    receiver_task.abort();
    let slow_requests = slow_count.load(std::sync::atomic::Ordering::Relaxed);
    if let Some(task) = slow_task {
        task.abort();
    }

    let mut lat = std::mem::take(&mut *log.latencies_us.lock().expect("log lock"));
    lat.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    let latency_ms = |sorted: &[u64]| {
        json!({
            "p50": ms(percentile(sorted, 0.5)),
            "p99": ms(percentile(sorted, 0.99)),
            "max": ms(sorted.last().copied().unwrap_or(0)),
        })
    };
    let base = baseline(args, args.baseline_duration).await?;
    let relay = relay_baseline(args, args.baseline_duration).await?;
    let accepted_per_s = accepted as f64 / ingest_seconds;
    let delivered_per_s = delivered as f64 / delivery_seconds;
    // Without the server's process its CPU is not known, nor how a delivery's CPU divides.
    let cpu_per_delivery = cpu.map(|cpu| CpuPerDelivery::new(cpu, client_cpu, delivered));

    Ok(json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "server": if target.shared { target.url.as_str() } else { "started for the run" },
        "account": fleet.account,
        "duration_seconds": ingest_seconds,
        "concurrency": args.concurrency,
        "items_per_request": args.items_per_request,
        "rate": args.rate,
        "endpoints": args.endpoints,
        "slow_endpoint_seconds": args.slow_endpoint.map(|d| d.as_secs_f64()),
        "slow_after_seconds": args.slow_after.map(|d| d.as_secs_f64()),
        "slow_endpoint_requests": args.slow_endpoint.map(|_| slow_requests),
        "accepted": accepted,
        "refused_requests": failed,
        "accepted_per_second": accepted_per_s,
        "expected": expected,
        "delivered": delivered,
        "all_delivered": drained,
        "delivered_per_second": delivered_per_s,
        "latency_ms": latency_ms(&lat),
        "answer_latency_ms": latency_ms(answers),
        "server_cpu_percent_of_one_core": cpu.map(|cpu| cpu / delivery_seconds * 100.0),
        "cpu_us_per_delivery": cpu_per_delivery.map(|c| c.json()),
        "server_rss_mib": {"before": rss_before, "after": rss_after},
        "idle": idle,
        "loopback_baseline_requests_per_second": base,
        "accepted_requests_vs_baseline": accepted_per_s / args.items_per_request as f64 / base,
        "relay_baseline": {
            "deliveries_per_second": relay.deliveries_per_second,
            "latency_p99_ms": relay.p99_ms,
            "cpu_us_per_delivery": relay.cpu.json(),
        },
        "delivered_vs_relay": delivered_per_s / relay.deliveries_per_second,
    }))
}

const LOOPBACK_REFUSED: &str = "creating the run's endpoints on loopback, where its receivers \
    listen (a running merpati must allow them: delivery.allowed_networks = 127.0.0.0/8)";

/// Sends one event before the run and waits for it at every endpoint: the run starts with
/// deliveries known to arrive, or stops at once with what the attempts said.
async fn first_delivery(
    api: &Api,
    fleet: &simulate::Fleet,
    log: &ReceiptLog,
    endpoints: u64,
) -> anyhow::Result<()> {
    let device = fleet.devices.first().context("the run has no devices")?;
    let answer = api
        .post(
            "/v1/device/messages",
            &device.token,
            // A rid the load never uses, and a message the receiver takes no latency from.
            json!({"type": "sms", "rid": 1u64 << 62, "phone": "+639760713666", "message": "first"}),
        )
        .await?;
    let arrived = wait_until("the first delivery", FIRST_DELIVERY_LIMIT, || {
        log.count.load(std::sync::atomic::Ordering::Relaxed) >= endpoints
    })
    .await;
    if arrived.is_err() {
        let event_id = answer["items"][0]["event_id"].as_str().unwrap_or_default();
        let event = api
            .get(&format!("/v1/events/{event_id}"), &fleet.key)
            .await
            .unwrap_or(Value::Null);
        bail!(
            "the run's first event did not reach its receivers within {FIRST_DELIVERY_LIMIT:?}; \
             its deliveries: {}",
            event["deliveries"]
        );
    }
    log.count.store(0, std::sync::atomic::Ordering::Relaxed);
    *log.last.lock().expect("log lock") = None;
    Ok(())
}

/// The figures of a run, as a table or as JSON (`--json`).
fn report_delivery(result: &Value, args: &DeliveryArgs) -> anyhow::Result<()> {
    if args.json {
        println!("{}", serde_json::to_string_pretty(result)?);
        return Ok(());
    }
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    let latency = |v: &Value| {
        format!(
            "p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            f(&v["p50"]),
            f(&v["p99"]),
            f(&v["max"])
        )
    };
    let (delivered_per_s, cores) = (f(&result["delivered_per_second"]), &result["cores"]);
    println!("merpati bench delivery ({cores} cores)");
    if let Some(url) = &args.url {
        println!("  server          running at {url}");
    }
    println!(
        "  load            {:.0} s, {} concurrent, {} item(s) a request, {}, {} endpoint(s)",
        f(&result["duration_seconds"]),
        args.concurrency,
        args.items_per_request,
        args.rate
            .map(|r| format!("{r:.0} events/s"))
            .unwrap_or("full speed".into()),
        args.endpoints
    );
    if let Some(delay) = args.slow_endpoint {
        let after = args
            .slow_after
            .map(|a| format!("at once for the first {a:?}, then "))
            .unwrap_or_default();
        println!(
            "  slow endpoint   answers {after}in {delay:?}; got {} requests meanwhile",
            result["slow_endpoint_requests"]
        );
    }
    println!(
        "  accepted        {} events, {:.0}/s ({} requests refused)",
        result["accepted"],
        f(&result["accepted_per_second"]),
        result["refused_requests"]
    );
    println!(
        "  delivered       {} of {}, {delivered_per_s:.0}/s{}",
        result["delivered"],
        result["expected"],
        if result["all_delivered"] == true {
            ""
        } else {
            "   NOT ALL: the rest did not arrive within 10 minutes"
        }
    );
    println!(
        "  ingest-to-receipt latency  {}",
        latency(&result["latency_ms"])
    );
    println!(
        "  answer latency  {}   (request sent to its 202: the events durable)",
        latency(&result["answer_latency_ms"])
    );
    let rss = &result["server_rss_mib"];
    match result["server_cpu_percent_of_one_core"].as_f64() {
        Some(cpu) => println!(
            "  server          {cpu:.0}% of one core, {:.1} → {:.1} MiB resident",
            f(&rss["before"]),
            f(&rss["after"])
        ),
        None => println!("  server          CPU and memory not read (--server-pid)"),
    }
    if let Some(idle) = result["idle"].as_object() {
        println!(
            "  then idle {:.0} s  {:.2}% of one core, {:.1} MiB resident   (targets < 1%, < 50 MiB)",
            f(&idle["seconds"]),
            f(&idle["cpu_percent_of_one_core"]),
            f(&idle["rss_mib"])
        );
    }
    println!(
        "  loopback HTTP baseline  {:.0} requests/s; merpati's accepted requests are {:.2} of it",
        f(&result["loopback_baseline_requests_per_second"]),
        f(&result["accepted_requests_vs_baseline"])
    );
    let relay = &result["relay_baseline"];
    let relay_per_s = f(&relay["deliveries_per_second"]);
    println!(
        "  relay baseline  {relay_per_s:.0} deliveries/s, p99 {:.2} ms, the same load with no storage; merpati delivered {:.2} of it",
        f(&relay["latency_p99_ms"]),
        f(&result["delivered_vs_relay"])
    );
    let cores_busy =
        |cpu: &Value, rate: f64| (f(&cpu["server"]) + f(&cpu["client_and_receivers"])) * rate / 1e6;
    let relay_cpu = &relay["cpu_us_per_delivery"];
    let cpu = &result["cpu_us_per_delivery"];
    if cpu.is_object() {
        println!(
            "  CPU a delivery  merpati {:.0} µs + client and receivers {:.0} µs ({:.2} of {cores} cores busy); relay {:.0} µs + {:.0} µs ({:.2} busy)",
            f(&cpu["server"]),
            f(&cpu["client_and_receivers"]),
            cores_busy(cpu, delivered_per_s),
            f(&relay_cpu["server"]),
            f(&relay_cpu["client_and_receivers"]),
            cores_busy(relay_cpu, relay_per_s),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_receiver_reads_the_moment_an_item_was_sent() {
        let payload = br#"{"type":"sms","data":{"id":1,"rid":"7","phone":"+63","message":"bench 1234","sim":1},"secret":"s"}"#;
        assert_eq!(sent_at_us(payload), Some(1234));
        // An escaped message is decoded, not borrowed.
        assert_eq!(
            sent_at_us(br#"{"data":{"message":"bench\u00201"}}"#),
            Some(1)
        );
        assert_eq!(sent_at_us(br#"{"data":{"message":"hello"}}"#), None);
        assert_eq!(sent_at_us(br#"{"data":{}}"#), None);
        assert_eq!(sent_at_us(b"not json"), None);
    }

    #[test]
    fn stat_lines_give_the_thread_name_and_its_cpu() {
        let line =
            "4242 (bench relay) S 1 4242 4242 0 -1 4194368 597 0 0 0 150 25 0 0 20 0 3 0 99 0 0";
        assert_eq!(name_and_cpu_ticks(line), Some(("bench relay", 175.0)));
        let odd = "7 (a) b)) R 1 7 7 0 -1 0 0 0 0 0 3 4 0 0 20 0 1 0 5 0 0";
        assert_eq!(name_and_cpu_ticks(odd), Some(("a) b)", 7.0)));
        assert_eq!(name_and_cpu_ticks("7 (short) R 1"), None);
    }

    #[test]
    fn a_named_thread_s_cpu_is_told_apart() {
        let (busy_tx, busy_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let probe = std::thread::Builder::new()
            .name("cpu-probe".into())
            .spawn(move || {
                // Spins until the kernel has counted 30 ms of its CPU.
                while cpu_seconds_in("/proc/thread-self/stat").map_or(0.0, |(_, s)| s) < 0.03 {
                    std::hint::black_box(0u64.wrapping_add(1));
                }
                busy_tx.send(()).unwrap();
                release_rx.recv().unwrap();
            })
            .unwrap();
        busy_rx.recv().unwrap();
        let probe_cpu = own_threads_cpu_seconds("cpu-probe");
        assert!(probe_cpu >= 0.03, "{probe_cpu}");
        assert!(own_cpu_seconds() >= probe_cpu);
        assert_eq!(own_threads_cpu_seconds("no-such-thread"), 0.0);
        release_tx.send(()).unwrap();
        probe.join().unwrap();
    }
}
