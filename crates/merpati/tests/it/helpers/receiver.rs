//! Real HTTP receivers on loopback: each records what it gets and answers as its test
//! scripts.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::HeaderMap;
use serde_json::Value;
use tokio::sync::Notify;

use super::{PATIENCE, SECRET};

/// One request a receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    pub fn body_str(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    /// Verifies the signature with the test secret and parses the body.
    pub fn event(&self) -> merpati_webhooks::Event {
        let webhook = merpati_webhooks::Webhook::new(SECRET).unwrap();
        merpati_webhooks::receive(&webhook, &self.headers, &self.body)
            .unwrap_or_else(|e| panic!("request not accepted ({e}): {}", self.body_str()))
    }
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }
}

/// How a receiver answers one request.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub delay: Duration,
    pub body: String,
}

impl Answer {
    pub fn status(status: u16) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            delay: Duration::ZERO,
            body: String::new(),
        }
    }
    pub fn header(mut self, name: &'static str, value: &str) -> Answer {
        self.headers.push((name, value.to_string()));
        self
    }
    pub fn delay(mut self, d: Duration) -> Answer {
        self.delay = d;
        self
    }
    pub fn body(mut self, b: &str) -> Answer {
        self.body = b.to_string();
        self
    }
}

#[derive(Default)]
struct ReceiverState {
    received: Mutex<Vec<Received>>,
    script: Mutex<VecDeque<Answer>>,
    default: Mutex<Option<Answer>>,
    arrived: Notify,
    /// Requests wait while this is false (see [`Receiver::pause`]).
    open: Option<tokio::sync::watch::Sender<bool>>,
    under_way: std::sync::atomic::AtomicUsize,
    most_at_once: std::sync::atomic::AtomicUsize,
    /// Connections accepted, and closed.
    opened: std::sync::atomic::AtomicUsize,
    closed: std::sync::atomic::AtomicUsize,
}

/// The receiver's listener: counts the connections it accepts and sees closed.
struct CountingListener {
    inner: tokio::net::TcpListener,
    state: Arc<ReceiverState>,
}

impl axum::serve::Listener for CountingListener {
    type Io = CountedConnection;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            if let Ok((io, addr)) = self.inner.accept().await {
                self.state
                    .opened
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let state = self.state.clone();
                return (CountedConnection { io, state }, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

struct CountedConnection {
    io: tokio::net::TcpStream,
    state: Arc<ReceiverState>,
}

impl Drop for CountedConnection {
    fn drop(&mut self) {
        self.state
            .closed
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.state.arrived.notify_waiters();
    }
}

impl tokio::io::AsyncRead for CountedConnection {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for CountedConnection {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

struct UnderWay(Arc<ReceiverState>);

impl Drop for UnderWay {
    fn drop(&mut self) {
        self.0
            .under_way
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A webhook receiver on loopback: records every request; answers from its script, then
/// with its default (200 unless set).
pub struct Receiver {
    pub url: String,
    state: Arc<ReceiverState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    pub async fn start() -> Receiver {
        let state = Arc::new(ReceiverState {
            open: Some(tokio::sync::watch::channel(true).0),
            ..ReceiverState::default()
        });
        let handler_state = state.clone();
        let app = axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
                let state = handler_state.clone();
                async move {
                    // Counted in before it shows as received, so that a test that saw it arrive
                    // also sees it under way.
                    use std::sync::atomic::Ordering::SeqCst;
                    let now = state.under_way.fetch_add(1, SeqCst) + 1;
                    state.most_at_once.fetch_max(now, SeqCst);
                    // Counted out however the request ends, even when the client gives up.
                    let _under_way = UnderWay(state.clone());
                    state.received.lock().unwrap().push(Received {
                        path: uri.path().to_string(),
                        headers,
                        body,
                        at: Instant::now(),
                    });
                    state.arrived.notify_waiters();
                    let mut open = state.open.as_ref().unwrap().subscribe();
                    let _ = open.wait_for(|open| *open).await;
                    let answer = state
                        .script
                        .lock()
                        .unwrap()
                        .pop_front()
                        .or_else(|| state.default.lock().unwrap().clone())
                        .unwrap_or_else(|| Answer::status(200));
                    tokio::time::sleep(answer.delay).await;
                    let mut resp = axum::response::Response::builder().status(answer.status);
                    for (k, v) in &answer.headers {
                        resp = resp.header(*k, v);
                    }
                    resp.body(axum::body::Body::from(answer.body)).unwrap()
                }
            },
        );
        let listener = CountingListener {
            inner: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            state: state.clone(),
        };
        let addr = axum::serve::Listener::local_addr(&listener).unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver {
            url: format!("http://{addr}/hook"),
            state,
            task,
        }
    }

    /// Answers the next requests with these, in order.
    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.state.script.lock().unwrap().extend(answers);
    }

    /// Answers every request past the script with this.
    pub fn always(&self, answer: Answer) {
        *self.state.default.lock().unwrap() = Some(answer);
    }

    /// Requests arriving from now on wait (recorded, unanswered) until [`Receiver::resume`].
    pub fn pause(&self) {
        self.state.open.as_ref().unwrap().send_replace(false);
    }

    pub fn resume(&self) {
        self.state.open.as_ref().unwrap().send_replace(true);
    }

    /// The most requests it had under way at once.
    pub fn most_at_once(&self) -> usize {
        self.state
            .most_at_once
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections_opened(&self) -> usize {
        self.state.opened.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until `n` connections have closed.
    pub async fn wait_closed(&self, n: usize) {
        self.wait_until(|s| {
            let closed = s.closed.load(std::sync::atomic::Ordering::SeqCst);
            (closed >= n)
                .then_some(())
                .ok_or(format!("only {closed} of {n} connections closed"))
        })
        .await
    }

    /// Waits until `ready` gives a value (woken by each arrival and closed connection);
    /// fails with its last complaint after [`PATIENCE`].
    async fn wait_until<T>(&self, ready: impl Fn(&ReceiverState) -> Result<T, String>) -> T {
        self.wait_until_within(PATIENCE, ready).await
    }

    /// Waits until `ready`, given what arrived so far, gives a value; fails with its last
    /// complaint after `patience`.
    pub async fn wait_for_arrivals<T>(
        &self,
        patience: Duration,
        ready: impl Fn(&[Received]) -> Result<T, String>,
    ) -> T {
        self.wait_until_within(patience, |s| ready(&s.received.lock().unwrap()))
            .await
    }

    async fn wait_until_within<T>(
        &self,
        patience: Duration,
        ready: impl Fn(&ReceiverState) -> Result<T, String>,
    ) -> T {
        let deadline = Instant::now() + patience;
        loop {
            let changed = self.state.arrived.notified();
            let why = match ready(&self.state) {
                Ok(value) => return value,
                Err(why) => why,
            };
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "{why}");
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), changed).await;
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived; returns them all.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        self.wait_until(|s| {
            let got = s.received.lock().unwrap().clone();
            if got.len() >= n {
                Ok(got)
            } else {
                Err(format!("only {} of {n} requests arrived", got.len()))
            }
        })
        .await
    }
}
