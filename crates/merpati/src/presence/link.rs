//! The device link: `GET /v1/device/link`, a WebSocket that holds a device's presence lease
//! while it is open, and carries its heartbeats and inbound items.
//!
//! Protocol (JSON text frames; see `docs/device-protocol.md`):
//! - server → device, on open: `{"type":"ready","device_id","heartbeat_interval_seconds",
//!   "heartbeat_timeout_seconds"}`.
//! - device → server: `{"type":"heartbeat", "battery"?, "charging"?, "signal"?, "network"?}`
//!   and `{"type":"messages","ref"?,"items":[…]}` (the items of `POST /v1/device/messages`).
//! - server → device: `{"type":"ack","ref","accepted","items"}` once the items are durable,
//!   `{"type":"error","ref"?,"status","code","message"}` for a frame that is refused (the
//!   link stays up).
//! - WebSocket pings from the server; a link silent for the heartbeat timeout is closed.
//! - Close codes: 4000 silent past the heartbeat timeout, 4001 token rotated or device
//!   deleted, 4002 replaced by a newer link, 1008 heartbeat flood, 1009 frame over 1 MiB,
//!   1001 server shutting down.

use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use merpati_domain::device::DeviceContext;
use merpati_domain::ids::token_hash;
use merpati_domain::ingest::PreparedItem;
use merpati_domain::presence::machine::Reason;
use merpati_runtime::presence::{LinkClose, Telemetry};

use crate::api::extract::Query;
use crate::api::{ApiError, AppState, MAX_BODY_BYTES};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LinkQuery {
    /// For clients that cannot set headers on a WebSocket handshake.
    token: Option<String>,
}

/// Refused handshakes are plain HTTP errors in the API's shape (401 for a bad token).
#[utoipa::path(get, path = "/v1/device/link", tag = "device API",
    security(("device_token" = [])),
    params(LinkQuery),
    responses(
        (status = 101, description = "A WebSocket: its presence lease while open, heartbeats and items over JSON frames (see docs/device-protocol.md)."),
        (status = 400, description = "Not a WebSocket handshake (`invalid_json`).", body = crate::api::openapi::ErrorBody),
    ))]
pub async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<LinkQuery>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .map(str::to_owned)
        .or(query.token);
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return ApiError::unauthorized("missing device token (Authorization: Bearer, or ?token=)")
            .into_response();
    };
    let device = match state.store.device_for_token(token_hash(&token)).await {
        Ok(Some(d)) => d,
        Ok(None) => {
            return ApiError::unauthorized("invalid or rotated device token").into_response()
        }
        Err(e) => return ApiError::from(e).into_response(),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            return ApiError::bad_request(format!("not a WebSocket handshake: {rejection}"))
                .into_response()
        }
    };
    // The server's shutdown waits for every link, as for any other task.
    let guard = state.tasks.token();
    // Small buffers: 10,000 idle links must fit in little memory, and frames are small.
    ws.read_buffer_size(2048)
        .write_buffer_size(0)
        .max_message_size(MAX_BODY_BYTES)
        .max_frame_size(MAX_BODY_BYTES)
        .on_upgrade(move |socket| async move {
            run(socket, state, device).await;
            drop(guard);
        })
}

const CLOSE_SILENT: LinkClose = LinkClose {
    code: 4000,
    reason: "no frame within the heartbeat timeout",
};
const CLOSE_FLOOD: LinkClose = LinkClose {
    code: 1008,
    reason: "heartbeats far faster than allowed",
};
const CLOSE_TOO_BIG: LinkClose = LinkClose {
    code: 1009,
    reason: "frame over 1 MiB",
};
const CLOSE_SHUTDOWN: LinkClose = LinkClose {
    code: 1001,
    reason: "server shutting down",
};
/// Heartbeats refused in a row before the link is closed for flooding.
const FLOOD_LIMIT: u32 = 20;

async fn send_json(socket: &mut WebSocket, v: Value) -> bool {
    socket
        .send(Message::Text(v.to_string().into()))
        .await
        .is_ok()
}

/// Sends a close frame and waits (briefly) for the device's answer, so that the device
/// reads the reason instead of a reset connection.
async fn close(socket: &mut WebSocket, c: LinkClose) {
    let frame = CloseFrame {
        code: c.code,
        reason: c.reason.into(),
    };
    if socket.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_HANDSHAKE, async {
        while let Some(Ok(m)) = socket.recv().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

const CLOSE_HANDSHAKE: Duration = Duration::from_secs(2);

async fn run(mut socket: WebSocket, state: AppState, device: DeviceContext) {
    // Shared with every ingest of the link rather than copied into each.
    let device = std::sync::Arc::new(device);
    let timeouts = state.lease.for_device(&device);
    let (link, mut replaced, _) = match state.presence.link_opened(&device).await {
        Ok(opened) => opened,
        Err(_) => {
            close(&mut socket, CLOSE_SHUTDOWN).await;
            return;
        }
    };
    let _counted = OpenLink::counted(state.metrics.clone());
    let silence_limit = Duration::from_millis(timeouts.heartbeat_ms as u64);
    let ping_every = (silence_limit / 3).max(Duration::from_millis(100));
    send_json(
        &mut socket,
        json!({
            "type": "ready",
            "device_id": device.device_id,
            "heartbeat_interval_seconds": (ping_every.as_secs()).max(1),
            "heartbeat_timeout_seconds": silence_limit.as_secs(),
        }),
    )
    .await;

    let mut ping = tokio::time::interval(ping_every);
    ping.tick().await;
    let mut last_heard = Instant::now();
    let mut limiter = HeartbeatLimiter::new(state.config.presence.min_heartbeat_interval);
    let reason = loop {
        tokio::select! {
            biased;
            _ = state.shutdown.cancelled() => {
                close(&mut socket, CLOSE_SHUTDOWN).await;
                // Not a drop of the device: after the restart it gets its lease back.
                return;
            }
            why = &mut replaced => {
                if let Ok(c) = why {
                    close(&mut socket, c).await;
                }
                break Reason::LinkClosed;
            }
            _ = ping.tick() => {
                if last_heard.elapsed() >= silence_limit {
                    close(&mut socket, CLOSE_SILENT).await;
                    break Reason::HeartbeatTimeout;
                }
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    break Reason::LinkClosed;
                }
            }
            frame = socket.recv() => {
                let message = match frame {
                    None | Some(Ok(Message::Close(_))) => break Reason::LinkClosed,
                    Some(Err(e)) => {
                        if e.to_string().contains("too long") {
                            close(&mut socket, CLOSE_TOO_BIG).await;
                        }
                        break Reason::LinkClosed;
                    }
                    Some(Ok(m)) => m,
                };
                last_heard = Instant::now();
                let answer = match message {
                    // Boxed: an idle link's task then holds no room for this future.
                    Message::Text(text) => {
                        Box::pin(handle_text(&state, &device, &mut limiter, text.as_str())).await
                    }
                    Message::Binary(_) => Some(error_frame(
                        None,
                        &ApiError::bad_request("binary frames are not part of the protocol; send JSON text"),
                    )),
                    _ => None,
                };
                if limiter.refused_in_a_row >= FLOOD_LIMIT {
                    close(&mut socket, CLOSE_FLOOD).await;
                    break Reason::LinkClosed;
                }
                if let Some(a) = answer {
                    if !send_json(&mut socket, a).await {
                        break Reason::LinkClosed;
                    }
                }
            }
        }
    };
    state.presence.link_closed(&device, link, reason).await;
}

/// An open link, counted in the metrics for as long as it lives, however it ends.
struct OpenLink(std::sync::Arc<merpati_runtime::metrics::Metrics>);

impl OpenLink {
    fn counted(metrics: std::sync::Arc<merpati_runtime::metrics::Metrics>) -> OpenLink {
        metrics.link_opened();
        OpenLink(metrics)
    }
}

impl Drop for OpenLink {
    fn drop(&mut self) {
        self.0.link_closed();
    }
}

/// The same allowance as HTTP heartbeats: a burst, then one per interval.
struct HeartbeatLimiter {
    every: Duration,
    allowance: f64,
    at: Instant,
    refused_in_a_row: u32,
}

impl HeartbeatLimiter {
    fn new(every: Duration) -> Self {
        HeartbeatLimiter {
            every,
            allowance: 10.0,
            at: Instant::now(),
            refused_in_a_row: 0,
        }
    }

    fn allow(&mut self) -> bool {
        let refill = self.at.elapsed().as_secs_f64() / self.every.as_secs_f64().max(0.001);
        self.allowance = (self.allowance + refill).min(10.0);
        self.at = Instant::now();
        if self.allowance >= 1.0 {
            self.allowance -= 1.0;
            self.refused_in_a_row = 0;
            true
        } else {
            self.refused_in_a_row += 1;
            false
        }
    }
}

fn error_frame(reference: Option<&Value>, e: &ApiError) -> Value {
    json!({
        "type": "error",
        "ref": reference,
        "status": e.status.as_u16(),
        "code": e.code,
        "message": e.message,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeartbeatFrame {
    battery: Option<u8>,
    charging: Option<bool>,
    signal: Option<i32>,
    network: Option<String>,
}

/// What a text frame asks, once read and checked.
#[derive(Debug)]
pub enum Frame {
    Heartbeat(Telemetry),
    Messages(Vec<PreparedItem>),
}

/// A text frame read and checked, without acting on it: what it asks and its `ref`, or the
/// error frame to answer.
pub fn read_frame(
    text: &str,
    device: &DeviceContext,
    now_secs: i64,
) -> Result<(Frame, Option<Value>), Value> {
    let mut frame: Value = match serde_json::from_str(text) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => {
            return Err(error_frame(
                None,
                &ApiError::invalid("a frame is a JSON object with a \"type\""),
            ))
        }
        Err(e) => {
            return Err(error_frame(
                None,
                &ApiError::bad_request(format!("frame is not valid JSON: {e}")),
            ))
        }
    };
    let map = frame.as_object_mut().expect("checked above");
    let reference = map.remove("ref");
    if reference
        .as_ref()
        .is_some_and(|r| !(r.is_string() || r.is_number()) || r.to_string().len() > 130)
    {
        return Err(error_frame(
            None,
            &ApiError::invalid("ref must be a string or a number of up to 128 characters"),
        ));
    }
    let kind = map.remove("type");
    let read = match kind.as_ref().and_then(Value::as_str) {
        Some("heartbeat") => serde_json::from_value::<HeartbeatFrame>(frame)
            .map(|hb| {
                Frame::Heartbeat(Telemetry {
                    battery: hb.battery.filter(|b| *b <= 100),
                    charging: hb.charging,
                    signal: hb.signal,
                    network: hb.network.filter(|n| !n.is_empty() && n.len() <= 32),
                })
            })
            .map_err(|e| ApiError::invalid(e.to_string())),
        Some("messages") => {
            if frame.get("items").is_some_and(Value::is_array) {
                crate::ingest::prepare_body(frame, device, now_secs).map(Frame::Messages)
            } else {
                Err(ApiError::invalid(
                    "a messages frame carries \"items\": [...]",
                ))
            }
        }
        Some(other) => Err(ApiError::invalid(format!(
            "unknown frame type {other:?}; expected \"heartbeat\" or \"messages\""
        ))),
        None => Err(ApiError::invalid("a frame needs a \"type\"")),
    };
    match read {
        Ok(frame) => Ok((frame, reference)),
        Err(e) => Err(error_frame(reference.as_ref(), &e)),
    }
}

async fn handle_text(
    state: &AppState,
    device: &std::sync::Arc<DeviceContext>,
    limiter: &mut HeartbeatLimiter,
    text: &str,
) -> Option<Value> {
    let now = state.clock.now_ms();
    let (frame, reference) = match read_frame(text, device, now.div_euclid(1000)) {
        Ok(read) => read,
        Err(error) => return Some(error),
    };
    match frame {
        Frame::Heartbeat(telemetry) => {
            if !limiter.allow() {
                return Some(error_frame(
                    reference.as_ref(),
                    &ApiError::new(
                        axum::http::StatusCode::TOO_MANY_REQUESTS,
                        "rate_limited",
                        "heartbeats are coming faster than allowed; slow down",
                    ),
                ));
            }
            state.presence.seen(device, telemetry);
            None
        }
        Frame::Messages(items) => {
            match crate::ingest::store(state, device.clone(), items, now).await {
                Ok(accepted) => Some(json!({
                    "type": "ack",
                    "ref": reference,
                    "accepted": accepted.len(),
                    "items": accepted,
                })),
                Err(e) => Some(error_frame(reference.as_ref(), &e)),
            }
        }
    }
}
