//! One attempt: render the body for the endpoint, sign it, POST it, read a bounded part of
//! the answer. Nothing here touches the database.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use merpati_domain::delivery::DueDelivery;
use merpati_domain::endpoint::{BodyFormat, Target};
use merpati_domain::retry::{parse_retry_after, AttemptResult};
use merpati_webhooks::signing::{HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP};

use super::guard::{is_forbidden, Guard, GuardedResolver};
use super::prepared::Prepared;

/// How much of an answer is kept with the attempt.
pub const RESPONSE_SNIPPET_BYTES: usize = 4096;

const USER_AGENT_VALUE: &str = concat!("merpati/", env!("CARGO_PKG_VERSION"));

/// The delivery client (hyper's pooled client, HTTP/1.1 and HTTP/2 over TLS or not).
pub type Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<HttpConnector<GuardedResolver>>,
    Full<Bytes>,
>;

/// The delivery client: resolves names only through the guard, never follows redirects and
/// knows no proxy (a proxy would connect where the guard did not look). hyper's own client
/// rather than a higher-level one: reqwest, for one, turns every answer's URI back into a
/// parsed URL for its redirect handling, and took a third of the delivery side's CPU.
pub fn client(timeout: Duration, resolver: GuardedResolver) -> Client {
    let mut http = HttpConnector::new_with_resolver(resolver);
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(timeout.min(Duration::from_secs(10))));
    let tls = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .timer(TokioTimer::new())
        .build(tls)
}

/// The bytes to send and their content type: the stored JSON payload as it is, or with the
/// legacy `"secret"` added at top level, or the same fields form-encoded.
pub fn render_body(
    payload: &str,
    format: BodyFormat,
    secret_in_body: Option<&str>,
) -> (Vec<u8>, &'static str) {
    match (format, secret_in_body) {
        (BodyFormat::Json, None) => (payload.as_bytes().to_vec(), "application/json"),
        (format, secret) => {
            let mut value: serde_json::Value =
                serde_json::from_str(payload).expect("stored payloads are JSON");
            if let (Some(secret), Some(map)) = (secret, value.as_object_mut()) {
                map.insert("secret".into(), secret.into());
            }
            match format {
                BodyFormat::Json => (
                    serde_json::to_vec(&value).expect("JSON serializes"),
                    "application/json",
                ),
                BodyFormat::Form => (
                    merpati_webhooks::form::encode(&value).into_bytes(),
                    "application/x-www-form-urlencoded",
                ),
            }
        }
    }
}

/// What an attempt did, ready to be recorded.
#[derive(Debug, Clone)]
pub struct AttemptReport {
    pub result: AttemptResult,
    pub started_at: i64,
    pub duration_ms: i64,
    pub status_code: Option<u16>,
    pub error_kind: Option<&'static str>,
    pub error: Option<String>,
    pub response_body: Option<String>,
    pub retry_after: Option<Duration>,
}

impl AttemptReport {
    /// An attempt begun at `started_at` (ms) with nothing known of it yet.
    pub(crate) fn begun(started_at: i64) -> Self {
        AttemptReport {
            result: AttemptResult::NoAnswer,
            started_at,
            duration_ms: 0,
            status_code: None,
            error_kind: None,
            error: None,
            response_body: None,
            retry_after: None,
        }
    }
}

/// One attempt of `job`, with its endpoint's `prepared` URL and keys.
pub(crate) async fn attempt(
    client: &Client,
    guard: &Guard,
    job: &DueDelivery,
    prepared: &Prepared,
    timeout: Duration,
    started_at_ms: i64,
) -> AttemptReport {
    let clock = Instant::now();
    let mut report = AttemptReport::begun(started_at_ms);
    let target = &job.endpoint;
    // An address in the URL never meets the resolver: vet it here, on every attempt (the
    // guard is the worker's). The parsed URL is the one sent to.
    let prepared = prepared.get(target).and_then(|p| {
        guard
            .check_url_host(&p.url)
            .map(|()| p)
            .map_err(|e| ("forbidden_address", e.to_string()))
    });
    let (uri, webhook) = match prepared {
        Ok(p) => (p.uri.clone(), &p.webhook),
        Err((kind, why)) => {
            report.result = AttemptResult::Unsendable;
            report.error_kind = Some(kind);
            report.error = Some(why);
            return report;
        }
    };
    let (body, content_type) = render_body(
        &job.payload,
        target.format,
        target
            .secret_in_body
            .then(|| target.secrets.first().map(String::as_str))
            .flatten(),
    );
    let timestamp = started_at_ms.div_euclid(1000);
    let signature = webhook.sign(job.event_id.as_str(), timestamp, &body);
    let request = match build_request(uri, content_type, job, timestamp, signature, target, body) {
        Ok(request) => request,
        Err(e) => {
            report.result = AttemptResult::Unsendable;
            report.error_kind = Some("request");
            report.error = Some(e.to_string());
            return report;
        }
    };
    match exchange(client, request, timeout).await {
        Ok(Ok((status, retry_after, snippet))) => {
            report.result = AttemptResult::Status(status);
            report.status_code = Some(status);
            report.retry_after = retry_after;
            report.response_body = Some(snippet);
            if !(200..300).contains(&status) {
                report.error_kind = Some(if (300..400).contains(&status) {
                    "redirect"
                } else {
                    "http_status"
                });
                if (300..400).contains(&status) {
                    report.error = Some("redirects are not followed".into());
                }
            }
        }
        Ok(Err(e)) if is_forbidden(&e) => {
            // Not retried: the same name would meet the same refusal.
            report.result = AttemptResult::Unsendable;
            report.error_kind = Some("forbidden_address");
            report.error = Some(error_chain(&e));
        }
        Ok(Err(e)) => {
            report.error_kind = Some(classify(&e));
            report.error = Some(error_chain(&e));
        }
        Err(_) => {
            report.error_kind = Some("timeout");
            report.error = Some(format!("no complete answer within {timeout:?}"));
        }
    }
    report.duration_ms = clock.elapsed().as_millis() as i64;
    report
}

/// An answer's status, its `Retry-After`, and the first part of its body.
type Answered = (u16, Option<Duration>, String);

/// Sends `request` and reads a bounded part of the answer, the whole exchange within
/// `timeout`, from connecting to the answer's last byte read (the client itself bounds
/// only the connect).
async fn exchange(
    client: &Client,
    request: http::Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<Result<Answered, hyper_util::client::legacy::Error>, tokio::time::error::Elapsed> {
    let exchange = async {
        let response = client.request(request).await?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
        let snippet = read_snippet(response.into_body()).await;
        Ok((status, retry_after, snippet))
    };
    tokio::time::timeout(timeout, exchange).await
}

/// The signed POST, with the endpoint's own headers after ours.
fn build_request(
    uri: http::Uri,
    content_type: &'static str,
    job: &DueDelivery,
    timestamp: i64,
    signature: String,
    target: &Target,
    body: Vec<u8>,
) -> Result<http::Request<Full<Bytes>>, http::Error> {
    let mut request = http::Request::post(uri)
        .header(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE))
        .header(CONTENT_TYPE, HeaderValue::from_static(content_type))
        .header(HeaderName::from_static(HEADER_ID), job.event_id.as_str())
        .header(HeaderName::from_static(HEADER_TIMESTAMP), timestamp)
        .header(HeaderName::from_static(HEADER_SIGNATURE), signature);
    for (name, value) in &target.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    request.body(Full::new(Bytes::from(body)))
}

/// Up to [`RESPONSE_SNIPPET_BYTES`] of the body; the rest is never read.
async fn read_snippet(mut body: hyper::body::Incoming) -> String {
    let mut buf = Vec::new();
    while buf.len() < RESPONSE_SNIPPET_BYTES {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    buf.extend_from_slice(data);
                }
            }
            _ => break,
        }
    }
    buf.truncate(RESPONSE_SNIPPET_BYTES);
    String::from_utf8_lossy(&buf).into_owned()
}

/// The attempt's error kind: `timeout`, `connect`, `invalid_response` (what came back was not
/// HTTP), `response` (the answer broke off), or `request`.
fn classify(e: &hyper_util::client::legacy::Error) -> &'static str {
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(h) = c.downcast_ref::<hyper::Error>() {
            if h.is_parse() {
                return "invalid_response";
            }
            if h.is_incomplete_message() {
                return "response";
            }
        }
        if c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return "timeout";
        }
        cause = c.source();
    }
    if e.is_connect() {
        "connect"
    } else {
        "request"
    }
}

/// The error with its causes, which say what actually went wrong (refused, reset, …).
fn error_chain(e: &hyper_util::client::legacy::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// DNS rebinding: a name that answers a permitted address and then, on the next lookup,
    /// a private one. Every connection looks the name up again through the guard, so the
    /// second attempt is refused rather than sent.
    #[tokio::test]
    async fn a_name_that_turns_private_on_the_next_lookup_is_refused_then() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        // Closes every connection, so that each attempt connects (and resolves) anew.
        let app = axum::Router::new().fallback(move || {
            counted.fetch_add(1, SeqCst);
            async { ([(axum::http::header::CONNECTION, "close")], "ok") }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });

        let lookups = Arc::new(AtomicUsize::new(0));
        let counted = lookups.clone();
        let guard = Guard::new(vec!["127.0.0.1/32".parse().unwrap()]);
        let resolver =
            GuardedResolver::scripted(guard.clone(), move |_| match counted.fetch_add(1, SeqCst) {
                0 => vec!["127.0.0.1".parse().unwrap()],
                _ => vec!["169.254.169.254".parse().unwrap()],
            });
        let timeout = Duration::from_secs(5);
        let client = client(timeout, resolver);
        let job = DueDelivery {
            delivery_id: merpati_domain::ids::DeliveryId(1),
            attempt: 1,
            event_id: "evt_1".into(),
            payload: SMS.into(),
            endpoint: Arc::new(Target {
                id: "ep_1".into(),
                account_id: "a".into(),
                url: format!("http://rebind.test:{port}/hook"),
                format: BodyFormat::Json,
                secret_in_body: false,
                headers: Default::default(),
                secrets: vec!["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()],
                max_concurrency: None,
                ordered: false,
                breaker: None,
                rate_limit: None,
            }),
        };
        let prepared = Prepared::default();

        let first = attempt(&client, &guard, &job, &prepared, timeout, 0).await;
        assert_eq!(first.status_code, Some(200), "{first:?}");
        let second = attempt(&client, &guard, &job, &prepared, timeout, 0).await;
        assert_eq!(second.error_kind, Some("forbidden_address"), "{second:?}");
        assert!(matches!(second.result, AttemptResult::Unsendable));
        assert!(second.error.unwrap().contains("169.254.169.254"));
        assert_eq!(lookups.load(SeqCst), 2);
        assert_eq!(
            requests.load(SeqCst),
            1,
            "nothing reached the second address"
        );
        server.abort();
    }

    const SMS: &str = r#"{"type":"sms","data":{"id":2,"phone":"+63"}}"#;

    #[test]
    fn json_body_is_the_stored_payload() {
        let (body, ct) = render_body(SMS, BodyFormat::Json, None);
        assert_eq!(body, SMS.as_bytes());
        assert_eq!(ct, "application/json");
    }

    #[test]
    fn legacy_secret_goes_last_at_top_level() {
        let (body, _) = render_body(SMS, BodyFormat::Json, Some("whsec_x"));
        assert_eq!(
            String::from_utf8(body).unwrap(),
            r#"{"type":"sms","data":{"id":2,"phone":"+63"},"secret":"whsec_x"}"#
        );
    }

    #[test]
    fn form_body_is_php_style() {
        let (body, ct) = render_body(SMS, BodyFormat::Form, Some("s"));
        assert_eq!(ct, "application/x-www-form-urlencoded");
        assert_eq!(
            String::from_utf8(body).unwrap(),
            "type=sms&data%5Bid%5D=2&data%5Bphone%5D=%2B63&secret=s"
        );
    }
}

/// What a plain POST (a notifier's) came to.
#[derive(Debug)]
pub struct Posted {
    pub status: Option<u16>,
    pub retry_after: Option<Duration>,
    pub body: String,
    /// Why there is no status: the error's kind and text.
    pub error: Option<(&'static str, String)>,
}

impl Posted {
    fn failed(kind: &'static str, why: String) -> Posted {
        Posted {
            status: None,
            retry_after: None,
            body: String::new(),
            error: Some((kind, why)),
        }
    }
}

/// POSTs `body` to `url` through the delivery client and its guard, within `timeout`,
/// and reads a bounded part of the answer: the delivery machinery, for what is not an
/// event (notifications).
pub async fn post(
    client: &Client,
    guard: &Guard,
    url: &str,
    headers: &[(&'static str, String)],
    body: Vec<u8>,
    timeout: Duration,
) -> Posted {
    fetch(
        client,
        guard,
        http::Method::POST,
        url,
        headers,
        body,
        timeout,
    )
    .await
}

/// GETs `url` as [`post`] posts (an engine's status API).
pub async fn get(
    client: &Client,
    guard: &Guard,
    url: &str,
    headers: &[(&'static str, String)],
    timeout: Duration,
) -> Posted {
    fetch(
        client,
        guard,
        http::Method::GET,
        url,
        headers,
        Vec::new(),
        timeout,
    )
    .await
}

async fn fetch(
    client: &Client,
    guard: &Guard,
    method: http::Method,
    url: &str,
    headers: &[(&'static str, String)],
    body: Vec<u8>,
    timeout: Duration,
) -> Posted {
    let parsed = match url::Url::parse(url) {
        Ok(u) => u,
        Err(e) => return Posted::failed("request", format!("invalid URL: {e}")),
    };
    if let Err(e) = guard.check_url_host(&parsed) {
        return Posted::failed("forbidden_address", e.to_string());
    }
    let uri: http::Uri = match parsed.as_str().parse() {
        Ok(u) => u,
        Err(e) => return Posted::failed("request", format!("invalid URL: {e}")),
    };
    let mut request = http::Request::builder()
        .method(method)
        .uri(uri)
        .header(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE))
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    let request = match request.body(Full::new(Bytes::from(body))) {
        Ok(r) => r,
        Err(e) => return Posted::failed("request", e.to_string()),
    };
    match exchange(client, request, timeout).await {
        Ok(Ok((status, retry_after, body))) => Posted {
            status: Some(status),
            retry_after,
            body,
            error: None,
        },
        Ok(Err(e)) if is_forbidden(&e) => Posted::failed("forbidden_address", error_chain(&e)),
        Ok(Err(e)) => Posted::failed(classify(&e), error_chain(&e)),
        Err(_) => Posted::failed("timeout", format!("no complete answer within {timeout:?}")),
    }
}
