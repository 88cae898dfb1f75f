//! The devices' load: many requests under way on kept-alive connections, at full speed or
//! at a rate, through hyper's pooled client (the one merpati delivers with).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use axum::body::Bytes;
use serde_json::{json, Value};

/// The shape of a run's load, which its baselines repeat.
pub(crate) struct Shape {
    pub(crate) items_per_request: usize,
    /// Requests under way at once.
    pub(crate) concurrency: usize,
    /// Events per second in all; full speed when absent.
    pub(crate) rate: Option<f64>,
    pub(crate) endpoints: usize,
}

/// The benchmark's HTTP client (the devices', and the relay's): hyper's pooled client, as
/// merpati's deliveries use, so that the client's own cost is the least it can be.
pub(crate) type LoadClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<Bytes>,
>;

/// The simulated devices' client: kept-alive connections, as many as the load keeps under way.
pub(crate) fn load_client() -> anyhow::Result<LoadClient> {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_nodelay(true);
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(4096)
            .build(http),
    )
}

/// POSTs `body` as JSON (with a bearer token, if any); true when the answer is a success.
pub(crate) async fn post_json(
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
pub(crate) struct LoadOutcome {
    pub(crate) accepted: u64,
    pub(crate) failed_requests: u64,
    /// From sending each accepted request to its answer (the event durable), sorted.
    pub(crate) answer_latencies_us: Vec<u64>,
    /// The rids of every accepted item, with `failover` only.
    pub(crate) accepted_rids: Vec<u64>,
}

/// Posts items as fast as allowed until `until`, each worker to one of `urls` in turn.
/// With `failover`, a worker whose request fails posts the same items again through the
/// next of `urls` (a device whose node is gone), and the accepted items' rids are kept.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn load(
    client: LoadClient,
    urls: Vec<String>,
    tokens: Vec<String>,
    items_per_request: usize,
    concurrency: usize,
    rate: Option<f64>,
    until: Instant,
    epoch: Instant,
    failover: bool,
) -> LoadOutcome {
    let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    let Ok(uris) = urls
        .iter()
        .map(|url| url.parse::<http::Uri>())
        .collect::<Result<Vec<_>, _>>()
    else {
        return LoadOutcome {
            accepted: 0,
            failed_requests: 0,
            answer_latencies_us: Vec::new(),
            accepted_rids: Vec::new(),
        };
    };
    if uris.is_empty() {
        return LoadOutcome {
            accepted: 0,
            failed_requests: 0,
            answer_latencies_us: Vec::new(),
            accepted_rids: Vec::new(),
        };
    }
    // A fixed rate is shared out among the workers as a per-worker interval.
    let per_worker =
        rate.map(|r| Duration::from_secs_f64(concurrency as f64 * items_per_request as f64 / r));
    for w in 0..concurrency {
        let (client, uris, accepted, failed) = (
            client.clone(),
            uris.clone(),
            accepted.clone(),
            failed.clone(),
        );
        let mut node = w % uris.len();
        let token = tokens[w % tokens.len()].clone();
        workers.spawn(async move {
            let mut rid: u64 = (w as u64) << 40;
            let (mut answers_us, mut rids) = (Vec::new(), Vec::new());
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
                let (sent, body) = (Instant::now(), body.to_string());
                loop {
                    let ok = post_json(&client, &uris[node], Some(&token), body.clone()).await;
                    if ok {
                        answers_us.push(sent.elapsed().as_micros() as u64);
                        accepted.fetch_add(
                            items_per_request as u64,
                            std::sync::atomic::Ordering::Relaxed,
                        );
                        if failover {
                            rids.extend(rid + 1 - items_per_request as u64..=rid);
                        }
                        break;
                    }
                    failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if !failover || Instant::now() >= until {
                        break;
                    }
                    node = (node + 1) % uris.len();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            (answers_us, rids)
        });
    }
    let (mut answer_latencies_us, mut accepted_rids) = (Vec::new(), Vec::new());
    while let Some(done) = workers.join_next().await {
        let (answers, rids) = done.unwrap_or_default();
        answer_latencies_us.extend(answers);
        accepted_rids.extend(rids);
    }
    answer_latencies_us.sort_unstable();
    LoadOutcome {
        accepted: accepted.load(std::sync::atomic::Ordering::Relaxed),
        failed_requests: failed.load(std::sync::atomic::Ordering::Relaxed),
        answer_latencies_us,
        accepted_rids,
    }
}

/// The value at fraction `p` of a sorted list (the default of an empty one).
pub(crate) fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub(crate) async fn wait_until(
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
