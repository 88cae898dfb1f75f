//! The dashboard's way to the API: requests made in process to the API's own router, as the
//! signed-in account ([`SignedIn`]), so that every page shows what the API answers and every
//! action is checked by the API's own rules.

use axum::body::Body;
use axum::http::header::CONTENT_TYPE;
use axum::http::{Method, Request, StatusCode};
use axum::response::Response;
use axum::Router;
use http_body_util::BodyExt;

use serde::de::DeserializeOwned;
use serde_json::Value;
use tower::ServiceExt;

use crate::api::extract::SignedIn;

#[derive(Clone)]
pub struct Api {
    router: Router,
}

/// What the API refused or failed with: its status and its message.
#[derive(Debug, Clone)]
pub struct Refused {
    pub status: StatusCode,
    pub message: String,
}

impl Api {
    pub fn new(router: Router) -> Api {
        Api { router }
    }

    /// The API's response as it is (a stream stays a stream).
    pub async fn respond(
        &self,
        account: &SignedIn,
        method: Method,
        uri: &str,
        body: Option<&Value>,
    ) -> Response {
        let mut request = Request::builder().method(method).uri(uri);
        if body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let body = match body {
            Some(v) => Body::from(v.to_string()),
            None => Body::empty(),
        };
        let mut request = request.body(body).expect("a request to a valid uri");
        request.extensions_mut().insert(account.clone());
        match self.router.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }

    /// The JSON the API answers, or what it refused.
    pub async fn call(
        &self,
        account: &SignedIn,
        method: Method,
        uri: &str,
        body: Option<&Value>,
    ) -> Result<Value, Refused> {
        let response = self.respond(account, method, uri, body).await;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(|e| Refused {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: e.to_string(),
            })?;
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        if status.is_success() {
            Ok(value)
        } else {
            let message = value
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or_else(|| status.canonical_reason().unwrap_or("failed"))
                .to_string();
            Err(Refused { status, message })
        }
    }

    pub async fn get<T: DeserializeOwned>(
        &self,
        account: &SignedIn,
        uri: &str,
    ) -> Result<T, Refused> {
        let value = self.call(account, Method::GET, uri, None).await?;
        serde_json::from_value(value).map_err(|e| Refused {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("unexpected answer from {uri}: {e}"),
        })
    }

    pub async fn post(
        &self,
        account: &SignedIn,
        uri: &str,
        body: &Value,
    ) -> Result<Value, Refused> {
        self.call(account, Method::POST, uri, Some(body)).await
    }
}

/// A list route's answer: a page of items and where the next one starts.
#[derive(serde::Deserialize)]
pub struct List<T> {
    pub data: Vec<T>,
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// A time as a form takes it: a duration back from now (`2h`) becomes that time; anything
/// else goes to the API as given, which takes RFC 3339 or Unix seconds and refuses the rest
/// with its reason. None when blank.
pub fn ago_or_time(raw: &str, now_ms: i64) -> Option<String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return None;
    }
    match humantime::parse_duration(raw) {
        Ok(d) => Some(crate::api::time::rfc3339(now_ms - d.as_millis() as i64)),
        Err(_) => Some(raw.to_string()),
    }
}

/// A piece of a path or query, percent-encoded.
pub fn enc(raw: &str) -> String {
    url::form_urlencoded::byte_serialize(raw.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_is_a_duration_back_or_given_as_is() {
        let now = 1_700_000_000_000;
        assert_eq!(
            ago_or_time("2h", now),
            Some(crate::api::time::rfc3339(now - 7_200_000))
        );
        assert_eq!(
            ago_or_time("2026-12-01T10:00:00Z", now).as_deref(),
            Some("2026-12-01T10:00:00Z")
        );
        assert_eq!(
            ago_or_time("1700000000", now).as_deref(),
            Some("1700000000")
        );
        // Left for the API to refuse, with its own words.
        assert_eq!(ago_or_time("someday", now).as_deref(), Some("someday"));
        assert_eq!(ago_or_time(" ", now), None);
    }
}
