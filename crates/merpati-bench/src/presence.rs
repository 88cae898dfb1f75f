//! `merpati bench presence`: 10,000 device links (by default) with heartbeats against a
//! `merpati serve` child, its memory and idle CPU, then a mass drop timed to each
//! `device.disconnected`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use crate::load::{percentile, wait_until};
use crate::process::ServerProcess;
use crate::receivers::{start_receiver, DeviceEventLog};
use crate::simulate::{self, Api, Behaviour, Mode};

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

    let figures = PresenceFigures {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        links: args.links,
        heartbeat_seconds: args.heartbeat.as_secs_f64(),
        provision_seconds: provisioned.as_secs_f64(),
        links_up_seconds: links_up.as_secs_f64(),
        connected_delivered_seconds: connected_delivered.as_secs_f64(),
        rss_mib_empty: rss_empty,
        rss_mib_with_links: rss_links,
        idle_cpu_percent_of_one_core: idle_cpu_percent,
        idle_seconds: args.idle.as_secs_f64(),
        dropped: expected,
        grace_seconds: grace,
        disconnect_latency_seconds: Spread {
            min: latencies.first().copied().unwrap_or(0.0),
            p50: percentile(&latencies, 0.5),
            p99: percentile(&latencies, 0.99),
            max,
        },
        all_within_grace_plus_1s: max <= grace + 1.0,
        false_disconnects: extra_disconnects,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&figures)?);
    } else {
        figures.print();
    }
    Ok(())
}

/// The figures of a presence run (the JSON of `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct PresenceFigures {
    pub cores: usize,
    pub links: usize,
    pub heartbeat_seconds: f64,
    pub provision_seconds: f64,
    pub links_up_seconds: f64,
    pub connected_delivered_seconds: f64,
    pub rss_mib_empty: f64,
    pub rss_mib_with_links: f64,
    pub idle_cpu_percent_of_one_core: f64,
    pub idle_seconds: f64,
    pub dropped: usize,
    pub grace_seconds: f64,
    /// From the mass drop to each `device.disconnected` at the receiver.
    pub disconnect_latency_seconds: Spread,
    pub all_within_grace_plus_1s: bool,
    /// `device.disconnected` of devices that were not dropped.
    pub false_disconnects: usize,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    pub min: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl PresenceFigures {
    fn print(&self) {
        println!("merpati bench presence ({} cores)", self.cores);
        println!("  links                         {}", self.links);
        println!(
            "  provisioned in                {:.1} s",
            self.provision_seconds
        );
        println!(
            "  all links up in               {:.1} s",
            self.links_up_seconds
        );
        println!(
            "  all device.connected received {:.1} s",
            self.connected_delivered_seconds
        );
        println!(
            "  resident memory, empty        {:.1} MiB",
            self.rss_mib_empty
        );
        println!(
            "  resident memory, {} links  {:.1} MiB   (target <= 150)",
            self.links, self.rss_mib_with_links
        );
        println!(
            "  idle CPU ({:.0} s, {:.0} s heartbeats)  {:.2} % of one core   (target < 5)",
            self.idle_seconds, self.heartbeat_seconds, self.idle_cpu_percent_of_one_core
        );
        let d = self.disconnect_latency_seconds;
        println!(
            "  mass drop of {}: disconnected received after  min {:.3} s  p50 {:.3} s  p99 {:.3} s  max {:.3} s",
            self.dropped, d.min, d.p50, d.p99, d.max
        );
        println!(
            "  all within grace ({:.1} s) + 1 s        {}",
            self.grace_seconds,
            if self.all_within_grace_plus_1s {
                "yes"
            } else {
                "NO"
            }
        );
        println!("  false disconnects             {}", self.false_disconnects);
    }
}
