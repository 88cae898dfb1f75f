//! The baselines every delivery run is set against, measured in the same run: a server
//! that only answers (what loopback HTTP costs), and a relay that stores nothing (the most
//! the run's HTTP traffic reaches on this machine).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use serde::Serialize;
use serde_json::{json, Value};

use crate::load::{load, load_client, percentile, post_json, LoadClient, Shape};
use crate::process::{own_cpu_seconds, own_threads_cpu_seconds, RELAY_THREADS};
use crate::receivers::{start_timing_receiver, ReceiptLog};

/// The same client loop against a server that only answers 202: what this machine's
/// loopback HTTP costs, to set merpati's figure against.
pub(crate) async fn baseline(args: &Shape, duration: Duration) -> anyhow::Result<f64> {
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
        vec![url],
        vec!["x".into()],
        args.items_per_request,
        args.concurrency,
        None,
        Instant::now() + duration,
        epoch,
        false,
    )
    .await
    .accepted;
    server.abort();
    // `load` counts items; the baseline is in requests.
    Ok(done as f64 / args.items_per_request as f64 / duration.as_secs_f64())
}

/// What a relay with no storage delivers under the run's load.
#[derive(Debug, Clone, Serialize)]
pub struct RelayFigures {
    pub deliveries_per_second: f64,
    pub latency_p99_ms: f64,
    /// CPU spent a delivery, in microseconds.
    pub cpu_us_per_delivery: CpuPerDelivery,
}

/// Where a run's CPU went, in microseconds a delivery: the server (merpati, or the relay)
/// and this process's client and receivers.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CpuPerDelivery {
    #[serde(rename = "server")]
    pub server_us: f64,
    #[serde(rename = "client_and_receivers")]
    pub client_and_receivers_us: f64,
}

impl CpuPerDelivery {
    pub(crate) fn new(server_seconds: f64, client_seconds: f64, deliveries: u64) -> CpuPerDelivery {
        let per = |seconds: f64| seconds * 1e6 / deliveries.max(1) as f64;
        CpuPerDelivery {
            server_us: per(server_seconds),
            client_and_receivers_us: per(client_seconds),
        }
    }

    /// How many cores a run at `per_second` deliveries keeps busy.
    pub(crate) fn cores_busy(&self, per_second: f64) -> f64 {
        (self.server_us + self.client_and_receivers_us) * per_second / 1e6
    }
}

/// The same client loop, items and receivers through a relay that keeps nothing: each item
/// forwarded at once as one unsigned POST to every endpoint's URL, the request answered
/// 202 once all of them answered. It runs on a runtime and threads of its own, as the server
/// has, under the run's load (its rate, or full speed). Nothing durable, nothing queued,
/// nothing signed: the most that load's HTTP traffic reaches on this machine, and the least
/// latency, so the ceiling any server with storage sits under.
pub(crate) async fn relay_baseline(
    args: &Shape,
    duration: Duration,
) -> anyhow::Result<RelayFigures> {
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
        vec![format!("http://{addr}/v1/device/messages")],
        vec!["x".into()],
        args.items_per_request,
        args.concurrency,
        args.rate,
        started + duration,
        epoch,
        false,
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
        latency_p99_ms: p99 as f64 / 1000.0,
        cpu_us_per_delivery: CpuPerDelivery::new(relay_cpu, process_cpu - relay_cpu, deliveries),
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
