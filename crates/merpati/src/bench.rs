//! `merpati bench …`: measurements against a real `merpati serve` child process, so that
//! its memory and CPU are its own (read from /proc), with simulated devices and a loopback
//! receiver in this process.

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
        // Keep its log flowing so it never blocks on a full pipe.
        let log_drain =
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
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
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
            .map(|kb| kb / 1024.0)
            .unwrap_or(0.0)
    }

    /// CPU time used so far (user + system), in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        let ticks = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .ok()
            .and_then(|s| {
                // Fields after the command name, which may hold spaces: utime, stime are
                // the 14th and 15th fields of the whole line.
                let rest = s.rsplit_once(')')?.1;
                let f: Vec<&str> = rest.split_whitespace().collect();
                Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
            })
            .unwrap_or(0.0);
        ticks / clock_ticks_per_second()
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
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, task))
}

pub struct PresenceArgs {
    pub links: usize,
    pub heartbeat: Duration,
    pub drop: usize,
    pub grace: Duration,
    pub idle: Duration,
    pub json: bool,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
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
