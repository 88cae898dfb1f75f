//! Request extractors: the JSON body with our error shape, and the three kinds of bearer token.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;

use merpati_domain::account::KeyGrant;
use merpati_domain::device::DeviceContext;
use merpati_domain::ids::{token_hash, AccountId};

use super::{ApiError, AppState, MAX_BODY_BYTES};

/// A JSON body. Malformed JSON is a 400, well-formed JSON of the wrong shape a 422, a body
/// over the limit a 413; all in the API's error shape.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = read_body(req, state).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Past the limit a body is still read, up to this much, and thrown away: a client that is
/// answered while it is still sending sees its connection reset instead of the 413.
const DRAIN_BYTES: usize = 16 * MAX_BODY_BYTES;

/// The client's address: the listener's peer, or, behind a trusted proxy, the address its
/// `X-Forwarded-For` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress(pub std::net::IpAddr);

impl ClientAddress {
    /// From `peer` and the request's `X-Forwarded-For` headers: the last address, reading
    /// from the peer back, that is not a trusted proxy. A header from anyone else is not
    /// believed; an entry that is not an address ends the walk.
    pub fn of(
        peer: std::net::IpAddr,
        forwarded_for: &[&str],
        trusted: &[ipnet::IpNet],
    ) -> ClientAddress {
        let trusted_at = |ip: &std::net::IpAddr| trusted.iter().any(|n| n.contains(ip));
        let mut client = peer;
        let hops = forwarded_for
            .iter()
            .flat_map(|h| h.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        for hop in hops.iter().rev() {
            if !trusted_at(&client) {
                break;
            }
            match hop.parse() {
                Ok(ip) => client = ip,
                Err(_) => break,
            }
        }
        ClientAddress(client)
    }
}

/// How long the listener gives a request to send its body, once its headers are in
/// (`server.body_timeout`); a request made in process carries none.
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeout(pub std::time::Duration);

/// The raw body, at most [`MAX_BODY_BYTES`]; more is a 413 in the API's error shape, and a
/// body slower than its [`BodyTimeout`] a 408.
pub async fn read_body<S: Send + Sync>(req: Request, _state: &S) -> Result<Bytes, ApiError> {
    let (parts, body) = req.into_parts();
    read_request_body(&parts, body).await
}

/// As [`read_body`], for a request taken apart (its head stays with the caller).
pub async fn read_request_body(parts: &Parts, body: axum::body::Body) -> Result<Bytes, ApiError> {
    match parts.extensions.get::<BodyTimeout>().copied() {
        Some(BodyTimeout(limit)) => tokio::time::timeout(limit, read_body_untimed(parts, body))
            .await
            .unwrap_or_else(|_| Err(body_too_slow(limit))),
        None => read_body_untimed(parts, body).await,
    }
}

/// A body that did not arrive within its time.
fn body_too_slow(limit: std::time::Duration) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        format!("the body did not arrive within {} s", limit.as_secs_f64()),
    )
}

async fn read_body_untimed(parts: &Parts, mut body: axum::body::Body) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::too_large(format!("request body is over {MAX_BODY_BYTES} bytes"));
    let declared = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > DRAIN_BYTES) {
        return Err(too_large());
    }
    let mut kept = Vec::with_capacity(declared.unwrap_or(0).min(MAX_BODY_BYTES));
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::bad_request(format!("could not read the body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen += data.len();
        if seen <= MAX_BODY_BYTES {
            kept.extend_from_slice(&data);
        } else if seen > DRAIN_BYTES {
            break;
        }
    }
    if seen > MAX_BODY_BYTES {
        return Err(too_large());
    }
    Ok(Bytes::from(kept))
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::invalid(e.to_string()),
        _ => ApiError::bad_request(format!("body is not valid JSON: {e}")),
    })
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    bearer_token(&parts.headers)
}

/// The token of an `Authorization: Bearer` header.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer token"))?
        .to_str()
        .map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::unauthorized("expected Authorization: Bearer <token>"))?;
    Ok(token)
}

/// The admin token: accounts and their API keys.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let given = token_hash(bearer(parts)?);
        if bool::from(given.ct_eq(&state.admin_token_hash)) {
            Ok(Admin)
        } else {
            Err(ApiError::unauthorized("invalid admin token"))
        }
    }
}

/// An account API key: the management API, scoped to that account. A read-only key (or a
/// dashboard session opened with one) reads only: any other method is refused with 403.
pub struct Account(pub AccountId);

/// The account a dashboard session signed in to, and whether its key reads only, set by
/// the dashboard on the requests it makes to the API in process. Only the server puts
/// extensions on a request: one from outside never carries it.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub account: AccountId,
    pub key_id: merpati_domain::ids::ApiKeyId,
    pub read_only: bool,
    /// The browser's address, for the audit trail.
    pub address: Option<std::net::IpAddr>,
}

impl FromRequestParts<AppState> for Account {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let (account, read_only) = match parts.extensions.get::<SignedIn>() {
            Some(signed_in) => (signed_in.account.clone(), signed_in.read_only),
            None => {
                let now = state.clock.now_ms();
                // Resolved already by the audit trail's middleware, for a change.
                let resolved = parts.extensions.get::<KeyGrant>().cloned();
                let grant = match resolved {
                    Some(grant) => grant,
                    None => state
                        .store
                        .api_key_grant(token_hash(bearer(parts)?), now)
                        .await?
                        .ok_or_else(|| {
                            ApiError::unauthorized("invalid, expired or revoked API key")
                        })?,
                };
                if grant.use_to_record(now) {
                    state
                        .store
                        .record_api_key_use(grant.key_id.clone(), now)
                        .await?;
                }
                (grant.account_id, grant.read_only)
            }
        };
        if read_only && !reads_only(&parts.method) {
            return Err(ApiError::forbidden(
                "this API key is read-only: it can read, not change anything",
            ));
        }
        Ok(Account(account))
    }
}

/// Methods that change nothing.
pub fn reads_only(method: &axum::http::Method) -> bool {
    use axum::http::Method;
    [Method::GET, Method::HEAD, Method::OPTIONS].contains(method)
}

/// A device token: the device API, as that one device.
pub struct Device(pub std::sync::Arc<DeviceContext>);

impl FromRequestParts<AppState> for Device {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let hash = token_hash(bearer(parts)?);
        if let Some(ctx) = state.device_tokens.get(&hash) {
            return Ok(Device(ctx));
        }
        match state.store.device_for_token(hash.clone()).await? {
            Some(ctx) => {
                let ctx = std::sync::Arc::new(ctx);
                state.device_tokens.put(hash, ctx.clone());
                Ok(Device(ctx))
            }
            None => Err(ApiError::unauthorized("invalid or rotated device token")),
        }
    }
}

/// Query parameters, with a bad value answered in the API's error shape (422).
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| Query(q.0))
            .map_err(|rejection| ApiError::invalid(rejection.body_text()))
    }
}

/// A JSON body that may be left out entirely (an empty body reads as the default).
pub struct OptionalJsonBody<T>(pub T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = read_body(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJsonBody(T::default()));
        }
        parse_json(&bytes).map(OptionalJsonBody)
    }
}

#[cfg(test)]
mod client_address_tests {
    use super::ClientAddress;

    fn of(peer: &str, forwarded: &[&str], trusted: &[&str]) -> String {
        let trusted: Vec<ipnet::IpNet> = trusted.iter().map(|t| t.parse().unwrap()).collect();
        ClientAddress::of(peer.parse().unwrap(), forwarded, &trusted)
            .0
            .to_string()
    }

    #[test]
    fn only_a_trusted_proxy_is_believed() {
        // No proxy trusted: the header is anyone's to forge.
        assert_eq!(of("198.51.100.7", &["203.0.113.9"], &[]), "198.51.100.7");
        // From a trusted proxy: the address it names.
        assert_eq!(
            of("10.0.0.2", &["203.0.113.9"], &["10.0.0.0/8"]),
            "203.0.113.9"
        );
        // Read from the peer back, past every trusted hop, and no further: what the client
        // itself put first is not believed.
        assert_eq!(
            of(
                "10.0.0.2",
                &["6.6.6.6, 203.0.113.9, 10.0.0.5"],
                &["10.0.0.0/8"]
            ),
            "203.0.113.9"
        );
        assert_eq!(
            of("10.0.0.2", &["6.6.6.6", "203.0.113.9"], &["10.0.0.0/8"]),
            "203.0.113.9"
        );
        // Garbage ends the walk at the last address known.
        assert_eq!(of("10.0.0.2", &["nonsense"], &["10.0.0.0/8"]), "10.0.0.2");
        // Every hop trusted: the first one.
        assert_eq!(of("10.0.0.2", &["10.0.0.9"], &["10.0.0.0/8"]), "10.0.0.9");
    }
}
