//! `merpati bench delivery`: ingest to receipt against a `merpati serve` child (or, with
//! `--url`, a merpati already running on this machine): events accepted and delivered per
//! second, latency, memory and CPU, set against the two baselines measured in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::{json, Value};

use crate::baselines::{baseline, relay_baseline, CpuPerDelivery, RelayFigures};
use crate::failover::{Arrivals, FailoverFigures, Kill};
use crate::load::{load, load_client, percentile, wait_until, Shape};
use crate::process::{cpu_seconds_of, own_cpu_seconds, ServerProcess, Target};
use crate::receivers::{start_slow_receiver, start_timing_receiver, ReceiptLog};
use crate::simulate::{self, Api};

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
    /// one; several nodes of one database as a list separated by commas: the devices post
    /// through each in turn. It must let deliveries go to loopback
    /// (`delivery.allowed_networks`), where the receivers listen. The run provisions an
    /// account of its own there (through the first), which stays.
    #[arg(long)]
    pub url: Option<String>,
    /// With `--url`: the running merpati's admin token, to provision the run's account.
    #[arg(long, env = "MERPATI_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// With `--url`: the running merpati's process id (every node's, separated by commas),
    /// to read its CPU and memory (without it they are not reported).
    #[arg(long, requires = "url", value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// With several nodes' `--url` and `--server-pid`: kill the last node (SIGKILL) this far
    /// into the run (e.g. `20s`). Its devices post again through the next node; the run
    /// then says whether every accepted event reached every endpoint, which arrived twice,
    /// and how long each endpoint waited after the kill.
    #[arg(long, requires = "url", value_parser = humantime::parse_duration)]
    pub kill_after: Option<Duration>,
    /// How long each of the loopback HTTP and relay baselines runs.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub baseline_duration: Duration,
    #[arg(long)]
    pub json: bool,
}

/// The figures of a delivery run (the JSON of `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryFigures {
    pub cores: usize,
    /// The running merpati's URL, or that the run started one.
    pub server: String,
    /// The account the run provisioned.
    pub account: String,
    pub duration_seconds: f64,
    pub concurrency: usize,
    pub items_per_request: usize,
    pub rate: Option<f64>,
    pub endpoints: usize,
    pub slow_endpoint_seconds: Option<f64>,
    pub slow_after_seconds: Option<f64>,
    pub slow_endpoint_requests: Option<u64>,
    pub accepted: u64,
    pub refused_requests: u64,
    pub accepted_per_second: f64,
    pub expected: u64,
    pub delivered: u64,
    pub all_delivered: bool,
    pub delivered_per_second: f64,
    /// From sending an item to its delivery's arrival.
    pub latency_ms: Latency,
    /// From sending a request to its 202 (its events durable).
    pub answer_latency_ms: Latency,
    /// Not known without the server's process.
    pub server_cpu_percent_of_one_core: Option<f64>,
    pub cpu_us_per_delivery: Option<CpuPerDelivery>,
    pub server_rss_mib: Resident,
    pub idle: Option<Idle>,
    pub loopback_baseline_requests_per_second: f64,
    pub accepted_requests_vs_baseline: f64,
    pub relay_baseline: RelayFigures,
    pub delivered_vs_relay: f64,
    /// With `--kill-after`.
    pub failover: Option<FailoverFigures>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    /// Of latencies in µs, sorted; in ms.
    fn of(sorted_us: &[u64]) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            p50: ms(percentile(sorted_us, 0.5)),
            p99: ms(percentile(sorted_us, 0.99)),
            max: ms(sorted_us.last().copied().unwrap_or(0)),
        }
    }
}

impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            self.p50, self.p99, self.max
        )
    }
}

/// The server's resident memory before and after the load.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Resident {
    pub before: Option<f64>,
    pub after: Option<f64>,
}

/// The server at rest after the run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Idle {
    pub seconds: f64,
    pub cpu_percent_of_one_core: Option<f64>,
    pub rss_mib: Option<f64>,
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
    let account = &result.account;
    // The load's events and the first one.
    let events = result.accepted + 1;
    eprintln!(
        "the run's account {account} stays on {url} with its {events} events; \
         DELETE /v1/accounts/{account} removes them (in the background)"
    );
    Ok(())
}

/// What `bench delivery --url` measures of the merpati running there.
pub async fn measure_running(args: &DeliveryArgs) -> anyhow::Result<DeliveryFigures> {
    let url = args
        .url
        .as_deref()
        .context("--url: the merpati to measure")?;
    let target = running_target(url, args)?;
    measure_delivery(&target, args).await
}

/// A merpati already running at `url` (or its nodes, separated by commas), checked before
/// anything is provisioned there.
fn running_target(url: &str, args: &DeliveryArgs) -> anyhow::Result<Target> {
    let urls: Vec<String> = url
        .split(',')
        .map(|u| u.trim().trim_end_matches('/').to_string())
        .collect();
    for url in &urls {
        // The devices' client speaks plain HTTP, as a merpati on this machine does.
        let parsed = url
            .parse::<http::Uri>()
            .ok()
            .filter(|u| u.scheme_str() == Some("http"))
            .filter(|u| u.host().is_some());
        if parsed.is_none() {
            bail!(
                "--url must be the http URL of a running merpati, such as \
                 http://127.0.0.1:8080 (several nodes' separated by commas)"
            );
        }
    }
    let Some(admin) = args.admin_token.clone().filter(|t| !t.is_empty()) else {
        bail!(
            "--url needs the running merpati's admin token: --admin-token or MERPATI_ADMIN_TOKEN"
        );
    };
    if args.idle.is_some() && args.server_pid.is_empty() {
        bail!("--idle reads the server's CPU and memory: with --url, give its --server-pid");
    }
    for &pid in &args.server_pid {
        if cpu_seconds_of(pid).is_none() {
            bail!("--server-pid {pid}: no such process on this machine");
        }
    }
    Ok(Target {
        url: urls[0].clone(),
        ingest_urls: urls,
        admin,
        pids: args.server_pid.clone(),
        shared: true,
    })
}

/// How long the run waits for its first event to reach every endpoint.
const FIRST_DELIVERY_LIMIT: Duration = Duration::from_secs(30);

/// Provisions an account with `args.devices` devices and the endpoints on `target`, drives
/// the load, waits for every delivery, runs the baselines; returns the figures.
async fn measure_delivery(target: &Target, args: &DeliveryArgs) -> anyhow::Result<DeliveryFigures> {
    let epoch = Instant::now();
    let kill = args
        .kill_after
        .map(|after| Kill::plan(after, target.ingest_urls.len(), &target.pids))
        .transpose()?;
    let log = Arc::new(ReceiptLog {
        arrivals: kill.map(|_| Arrivals::default()),
        ..ReceiptLog::default()
    });
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
    let devices = load(
        client,
        target
            .ingest_urls
            .iter()
            .map(|url| format!("{url}/v1/device/messages"))
            .collect(),
        tokens,
        args.items_per_request,
        args.concurrency,
        args.rate,
        started + args.duration,
        epoch,
        kill.is_some(),
    );
    let (outcome, killed_at) = match kill {
        Some(kill) => {
            let (outcome, killed_at) = tokio::join!(devices, kill.run(started));
            (outcome, Some(killed_at?))
        }
        None => (devices.await, None),
    };
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
    let failover = match (kill, killed_at, &log.arrivals) {
        (Some(kill), Some(killed_at), Some(arrivals)) => {
            let endpoints = args.endpoints as u32;
            let figures = || {
                let arrivals = arrivals.0.lock().expect("log lock");
                FailoverFigures::of(
                    kill,
                    killed_at,
                    started,
                    &outcome.accepted_rids,
                    endpoints,
                    &arrivals,
                )
            };
            // Duplicates count towards the total: wait on until none is missing.
            let deadline = Instant::now() + Duration::from_secs(60);
            while figures().missing > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Some(figures())
        }
        _ => None,
    };
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
            Some(Idle {
                seconds: idle.as_secs_f64(),
                cpu_percent_of_one_core: cpu.map(|c| c / idle.as_secs_f64() * 100.0),
                rss_mib: target.rss_mib(),
            })
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
    let shape = Shape {
        items_per_request: args.items_per_request,
        concurrency: args.concurrency,
        rate: args.rate,
        endpoints: args.endpoints,
    };
    let base = baseline(&shape, args.baseline_duration).await?;
    let relay = relay_baseline(&shape, args.baseline_duration).await?;
    let accepted_per_second = accepted as f64 / ingest_seconds;
    let delivered_per_second = delivered as f64 / delivery_seconds;
    let server = if target.shared {
        target.url.clone()
    } else {
        "started for the run".into()
    };
    Ok(DeliveryFigures {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        server,
        account: fleet.account.clone(),
        duration_seconds: ingest_seconds,
        concurrency: args.concurrency,
        items_per_request: args.items_per_request,
        rate: args.rate,
        endpoints: args.endpoints,
        slow_endpoint_seconds: args.slow_endpoint.map(|d| d.as_secs_f64()),
        slow_after_seconds: args.slow_after.map(|d| d.as_secs_f64()),
        slow_endpoint_requests: args.slow_endpoint.map(|_| slow_requests),
        accepted,
        refused_requests: failed,
        accepted_per_second,
        expected,
        delivered,
        all_delivered: drained,
        delivered_per_second,
        latency_ms: Latency::of(&lat),
        answer_latency_ms: Latency::of(answers),
        server_cpu_percent_of_one_core: cpu.map(|cpu| cpu / delivery_seconds * 100.0),
        // Without the server's process its CPU is not known, nor how a delivery's divides.
        cpu_us_per_delivery: cpu.map(|cpu| CpuPerDelivery::new(cpu, client_cpu, delivered)),
        server_rss_mib: Resident {
            before: rss_before,
            after: rss_after,
        },
        idle,
        loopback_baseline_requests_per_second: base,
        accepted_requests_vs_baseline: accepted_per_second / args.items_per_request as f64 / base,
        delivered_vs_relay: delivered_per_second / relay.deliveries_per_second,
        relay_baseline: relay,
        failover,
    })
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
fn report_delivery(result: &DeliveryFigures, args: &DeliveryArgs) -> anyhow::Result<()> {
    if args.json {
        println!("{}", serde_json::to_string_pretty(result)?);
        return Ok(());
    }
    let (delivered_per_s, cores) = (result.delivered_per_second, result.cores);
    println!("merpati bench delivery ({cores} cores)");
    if let Some(url) = &args.url {
        println!("  server          running at {url}");
    }
    println!(
        "  load            {:.0} s, {} concurrent, {} item(s) a request, {}, {} endpoint(s)",
        result.duration_seconds,
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
            result.slow_endpoint_requests.unwrap_or(0)
        );
    }
    println!(
        "  accepted        {} events, {:.0}/s ({} requests refused)",
        result.accepted, result.accepted_per_second, result.refused_requests
    );
    println!(
        "  delivered       {} of {}, {delivered_per_s:.0}/s{}",
        result.delivered,
        result.expected,
        if result.all_delivered {
            ""
        } else {
            "   NOT ALL: the rest did not arrive within 10 minutes"
        }
    );
    println!("  ingest-to-receipt latency  {}", result.latency_ms);
    println!(
        "  answer latency  {}   (request sent to its 202: the events durable)",
        result.answer_latency_ms
    );
    if let Some(failover) = &result.failover {
        failover.print();
    }
    let rss = result.server_rss_mib;
    match result.server_cpu_percent_of_one_core {
        Some(cpu) => println!(
            "  server          {cpu:.0}% of one core, {:.1} → {:.1} MiB resident",
            rss.before.unwrap_or(0.0),
            rss.after.unwrap_or(0.0)
        ),
        None => println!("  server          CPU and memory not read (--server-pid)"),
    }
    if let Some(idle) = result.idle {
        println!(
            "  then idle {:.0} s  {:.2}% of one core, {:.1} MiB resident   (targets < 1%, < 50 MiB)",
            idle.seconds,
            idle.cpu_percent_of_one_core.unwrap_or(0.0),
            idle.rss_mib.unwrap_or(0.0)
        );
    }
    println!(
        "  loopback HTTP baseline  {:.0} requests/s; merpati's accepted requests are {:.2} of it",
        result.loopback_baseline_requests_per_second, result.accepted_requests_vs_baseline
    );
    let relay = &result.relay_baseline;
    let relay_per_s = relay.deliveries_per_second;
    println!(
        "  relay baseline  {relay_per_s:.0} deliveries/s, p99 {:.2} ms, the same load with no storage; merpati delivered {:.2} of it",
        relay.latency_p99_ms, result.delivered_vs_relay
    );
    let relay_cpu = relay.cpu_us_per_delivery;
    if let Some(cpu) = result.cpu_us_per_delivery {
        println!(
            "  CPU a delivery  merpati {:.0} µs + client and receivers {:.0} µs ({:.2} of {cores} cores busy); relay {:.0} µs + {:.0} µs ({:.2} busy)",
            cpu.server_us,
            cpu.client_and_receivers_us,
            cpu.cores_busy(delivered_per_s),
            relay_cpu.server_us,
            relay_cpu.client_and_receivers_us,
            relay_cpu.cores_busy(relay_per_s),
        );
    }
    Ok(())
}
