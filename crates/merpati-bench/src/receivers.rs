//! The run's receivers on loopback: one that times each delivery from the moment its item
//! was sent, one that answers slowly, and one that notes when each device event arrived.

use crate::failover::{arrival_of, Arrival, Arrivals};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use serde_json::Value;

/// Serves `app` on a loopback port; the task ends when aborted.
pub(crate) async fn serve_on_loopback(
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
pub(crate) async fn start_slow_receiver(
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
pub(crate) struct ReceiptLog {
    pub(crate) count: std::sync::atomic::AtomicU64,
    pub(crate) latencies_us: Mutex<Vec<u64>>,
    pub(crate) last: Mutex<Option<Instant>>,
    /// Every arrival, noted in a run with a kill only.
    pub(crate) arrivals: Option<Arrivals>,
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

pub(crate) async fn start_timing_receiver(
    log: Arc<ReceiptLog>,
    epoch: Instant,
) -> anyhow::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri, body: Bytes| {
        let log = log.clone();
        async move {
            let now = epoch.elapsed().as_micros() as u64;
            if let Some(arrivals) = &log.arrivals {
                if let Some((endpoint, rid)) = arrival_of(uri.path(), &body) {
                    let at = Instant::now();
                    let arrival = Arrival { endpoint, rid, at };
                    arrivals.0.lock().expect("log lock").push(arrival);
                }
            }
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
}
