//! Hostile receivers: an answer of 1 GiB, an answer a byte at a time, bytes that are not
//! HTTP, a redirect to the cloud metadata address, a receiver that never answers. Each
//! attempt is bounded, recorded with its error kind, and costs a healthy endpoint beside
//! them nothing. (A name that turns private on its second lookup is tested where a name
//! server can be scripted: `delivery::send`'s unit tests.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

/// A loopback TCP server that reads each request's head and then does `act` on the
/// connection. Aborted when dropped.
struct RawReceiver {
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawReceiver {
    async fn start<F, Fut>(act: F) -> RawReceiver
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let act = Arc::new(act);
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                let act = act.clone();
                connections.spawn(async move {
                    if read_head(&mut stream).await {
                        act(stream).await;
                    }
                });
            }
        });
        RawReceiver {
            url: format!("http://{addr}/hook"),
            task,
        }
    }
}

/// Reads until the end of a request's headers (the body is small and left unread).
async fn read_head(stream: &mut TcpStream) -> bool {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    true
}

async fn raw_endpoint(app: &TestApp, key: &str, url: &str) -> String {
    app.ok_post("/v1/endpoints", key, json!({"url": url}), 201)
        .await["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The first attempt of the event's delivery to `endpoint`, once it is recorded.
async fn first_attempt(app: &TestApp, key: &str, event_id: &str, endpoint: &str) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, event) = app.get(&format!("/v1/events/{event_id}"), key).await;
        assert_eq!(status, 200, "{event}");
        let delivery = event["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["endpoint_id"] == endpoint)
            .cloned()
            .unwrap_or_else(|| panic!("no delivery to {endpoint}: {event}"));
        if let Some(first) = delivery["attempts"].get(0) {
            return first.clone();
        }
        assert!(Instant::now() < deadline, "no attempt recorded: {event}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_receivers_are_bounded_recorded_and_harmless_to_a_healthy_one() {
    let app = TestApp::spawn_with(&[("delivery.timeout", "1s")]).await;
    let m = app.merchant("m1").await;

    // 1 GiB announced and streamed for as long as anyone reads.
    let streamed = Arc::new(AtomicU64::new(0));
    let huge = {
        let streamed = streamed.clone();
        RawReceiver::start(move |mut s| {
            let streamed = streamed.clone();
            async move {
                let head = "HTTP/1.1 200 OK\r\ncontent-length: 1073741824\r\n\r\n";
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b'x'; 64 * 1024];
                while s.write_all(&chunk).await.is_ok() {
                    streamed.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
            }
        })
        .await
    };
    // A complete, valid answer, one byte every 100 ms.
    let trickle = RawReceiver::start(|mut s| async move {
        for byte in b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok" {
            if s.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    // Not HTTP at all.
    let garbage = RawReceiver::start(|mut s| async move {
        let _ = s
            .write_all(b"SSH-2.0-OpenSSH_9.6\r\n\r\n\x00\xff\xfe")
            .await;
    })
    .await;
    // A redirect to the cloud metadata address.
    let metadata = RawReceiver::start(|mut s| async move {
        let _ = s
            .write_all(
                b"HTTP/1.1 302 Found\r\nlocation: http://169.254.169.254/latest/meta-data/\r\n\
                  content-length: 0\r\n\r\n",
            )
            .await;
    })
    .await;
    // Half a status line, then the connection closes.
    let broken = RawReceiver::start(|mut s| async move {
        let _ = s.write_all(b"HTTP/1.1 200").await;
    })
    .await;
    // Reads the request and never answers.
    let silent = RawReceiver::start(|s| async move {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(s);
    })
    .await;
    let healthy = Receiver::start().await;

    let huge_ep = raw_endpoint(&app, &m.key, &huge.url).await;
    let trickle_ep = raw_endpoint(&app, &m.key, &trickle.url).await;
    let garbage_ep = raw_endpoint(&app, &m.key, &garbage.url).await;
    let metadata_ep = raw_endpoint(&app, &m.key, &metadata.url).await;
    let silent_ep = raw_endpoint(&app, &m.key, &silent.url).await;
    let broken_ep = raw_endpoint(&app, &m.key, &broken.url).await;
    app.endpoint(&m.key, &healthy, json!({})).await;

    let started = Instant::now();
    let mut ids = Vec::new();
    for rid in 1..=20 {
        let v = app.sms(&m.device_token, rid).await;
        ids.push(v["items"][0]["event_id"].as_str().unwrap().to_string());
    }
    // The healthy endpoint gets everything, none of it waiting on the hostile ones'
    // one-second timeouts.
    let got = healthy.wait_for(20).await;
    assert_eq!(got.len(), 20);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the healthy endpoint took {:?}",
        started.elapsed()
    );

    let event = &ids[0];
    // 1 GiB: a success, 4 KiB of it kept, the rest never read (only what the sockets'
    // buffers took was sent).
    let a = first_attempt(&app, &m.key, event, &huge_ep).await;
    assert_eq!(a["status_code"], 200, "{a}");
    assert_eq!(a["response_body"].as_str().unwrap().len(), 4096, "{a}");
    assert!(a["duration_ms"].as_i64().unwrap() < 1500, "{a}");
    assert!(
        streamed.load(Ordering::Relaxed) < 256 * 1024 * 1024,
        "{} bytes streamed",
        streamed.load(Ordering::Relaxed)
    );

    // A byte at a time: cut off at the timeout, whatever arrived by then.
    let a = first_attempt(&app, &m.key, event, &trickle_ep).await;
    assert_eq!(a["error_kind"], "timeout", "{a}");
    assert!(a["status_code"].is_null(), "{a}");
    let took = a["duration_ms"].as_i64().unwrap();
    assert!((900..3000).contains(&took), "{a}");

    // Not HTTP: an attempt with an error, no status.
    let a = first_attempt(&app, &m.key, event, &garbage_ep).await;
    assert_eq!(a["error_kind"], "invalid_response", "{a}");
    assert!(a["status_code"].is_null(), "{a}");

    // The redirect is recorded, not followed, and final.
    let a = first_attempt(&app, &m.key, event, &metadata_ep).await;
    assert_eq!(a["status_code"], 302, "{a}");
    assert_eq!(a["error_kind"], "redirect", "{a}");

    // An answer that breaks off: an error of its own, no status.
    let a = first_attempt(&app, &m.key, event, &broken_ep).await;
    assert_eq!(a["error_kind"], "response", "{a}");
    assert!(a["status_code"].is_null(), "{a}");

    // Silence: the timeout.
    let a = first_attempt(&app, &m.key, event, &silent_ep).await;
    assert_eq!(a["error_kind"], "timeout", "{a}");
    let took = a["duration_ms"].as_i64().unwrap();
    assert!((900..3000).contains(&took), "{a}");
}
