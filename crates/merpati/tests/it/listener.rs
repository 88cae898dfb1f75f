//! The listener against clients that hold it: slow-loris clients sending half a request
//! line, or headers and then a body that never comes, are closed after
//! `server.header_timeout` and `server.body_timeout` while others are served; past
//! `server.max_connections` a connection is closed at once.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

/// Waits until the server closes `stream` (what it sent before is returned), or panics
/// after `within`.
async fn closed_by_server(mut stream: TcpStream, within: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the server closes the connection in time");
    got
}

fn addr(app: &TestApp) -> String {
    app.url.trim_start_matches("http://").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_closed_and_the_others_served() {
    let app = TestApp::spawn_with(&[
        ("server.header_timeout", "1s"),
        ("server.body_timeout", "1s"),
    ])
    .await;
    let m = app.merchant("m1").await;
    let start = Instant::now();
    let mut half_lines = Vec::new();
    for _ in 0..300 {
        let mut s = TcpStream::connect(addr(&app)).await.unwrap();
        s.write_all(b"GET /healthz HT").await.unwrap();
        half_lines.push(s);
    }
    let mut slow_bodies = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(addr(&app)).await.unwrap();
        let head = format!(
            "POST /v1/device/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{{\"type\":",
            m.device_token
        );
        s.write_all(head.as_bytes()).await.unwrap();
        slow_bodies.push(s);
    }
    // Others are served meanwhile.
    let (status, _) = app.get("/healthz", "").await;
    assert_eq!(status, 200);
    app.sms(&m.device_token, 1).await;

    let patience = Duration::from_secs(10);
    let closing = half_lines
        .into_iter()
        .map(|s| closed_by_server(s, patience));
    for got in futures_util::future::join_all(closing).await {
        assert!(
            got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
            "{got:?}"
        );
    }
    for s in slow_bodies {
        let got = closed_by_server(s, patience).await;
        let answer = String::from_utf8_lossy(&got);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("request_timeout"), "{answer}");
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(1),
        "closed before the timeout: {took:?}"
    );
    // Nothing the slow bodies began was stored (asked on a new connection: the server
    // closes idle ones after its 1 s here).
    assert_eq!(TestApp::at(app.url.clone()).event_count(&m.key).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_past_the_cap_is_closed_at_once() {
    let app = TestApp::spawn_with(&[("server.max_connections", "20")]).await;
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(addr(&app)).await.unwrap();
        // A whole request on a kept-alive connection: it stays open, and counts.
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(s);
    }
    let mut extra = TcpStream::connect(addr(&app)).await.unwrap();
    let _ = extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let got = closed_by_server(extra, Duration::from_secs(5)).await;
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));

    // One let go, one more is served.
    drop(held.pop());
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut s = TcpStream::connect(addr(&app)).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let got = closed_by_server(s, Duration::from_secs(5)).await;
        if got.starts_with(b"HTTP/1.1 200") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no connection served after one was let go"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(held);
    // Once the server has let the held ones go (it may still count one a moment).
    let deadline = Instant::now() + PATIENCE;
    let metrics = loop {
        if let Ok(text) = metrics_text(&app.url).await {
            break text;
        }
        assert!(Instant::now() < deadline, "no answer from /metrics");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let refused =
        sample_of(&metrics, "merpati_connections_refused_total").expect("the refusals are counted");
    assert!(refused > 0.0, "{refused}");
}
