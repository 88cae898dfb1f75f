//! What an endpoint may be: its URL (http or https, a host, no credentials, no address the
//! private-address guard refuses), its filters, headers, ordering and limits.

use axum::http::{HeaderName, HeaderValue, StatusCode};
use merpati_domain::endpoint::Endpoint;
use merpati_runtime::delivery::guard::Guard;
use merpati_webhooks::events::is_known_type_pattern;

use crate::api::validate::check_id;
use crate::api::{ApiError, ApiResult};

pub const MAX_URL_BYTES: usize = 2048;
const MAX_HEADERS: usize = 32;
const MAX_FILTER_ITEMS: usize = 256;
const MAX_CONCURRENCY: u32 = 1024;
const MAX_RATE_LIMIT: u32 = 100_000;
/// Headers merpati sets itself, which an endpoint may not override.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "connection",
    "transfer-encoding",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

/// An endpoint URL: http(s), a host, no credentials, and not an address the private-address
/// guard refuses.
pub fn check_url_allowed(raw: &str, guard: &Guard) -> ApiResult<()> {
    check_url(raw)?;
    let url =
        url::Url::parse(raw).map_err(|e| ApiError::invalid(format!("url is not valid: {e}")))?;
    guard.check_url_host(&url).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "forbidden_address",
            format!("url: {e}"),
        )
    })
}

/// An endpoint URL: http(s), a host, no credentials.
pub fn check_url(raw: &str) -> ApiResult<()> {
    if raw.len() > MAX_URL_BYTES {
        return Err(ApiError::invalid(format!(
            "url must be at most {MAX_URL_BYTES} bytes"
        )));
    }
    let url =
        url::Url::parse(raw).map_err(|e| ApiError::invalid(format!("url is not valid: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ApiError::invalid("url must be http or https"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ApiError::invalid(
            "url must not carry credentials; use headers or the signature instead",
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ApiError::invalid("url must have a host"));
    }
    Ok(())
}

/// What an endpoint may be; `mail` says whether the server can send e-mail (SMTP set up).
pub fn check_endpoint(e: &Endpoint, guard: &Guard, mail: bool) -> ApiResult<()> {
    match merpati_domain::endpoint::mail_recipients(&e.url) {
        Some(recipients) => {
            if e.url.len() > MAX_URL_BYTES {
                return Err(ApiError::invalid(format!(
                    "url must be at most {MAX_URL_BYTES} bytes"
                )));
            }
            recipients.map_err(|why| ApiError::invalid(format!("url: {why}")))?;
            if !mail {
                return Err(ApiError::invalid(
                    "e-mail endpoints need the server's SMTP settings (alerts.smtp_url, alerts.smtp_from)",
                ));
            }
            if e.format == merpati_domain::endpoint::BodyFormat::Form {
                return Err(ApiError::invalid(
                    "an e-mail endpoint attaches the JSON payload: format must be json",
                ));
            }
        }
        None => check_url_allowed(&e.url, guard)?,
    }
    if let Some(d) = &e.description {
        if d.chars().count() > 1024 {
            return Err(ApiError::invalid(
                "description must be at most 1024 characters",
            ));
        }
    }
    if let Some(events) = &e.events {
        if events.is_empty() {
            return Err(ApiError::invalid(
                "events must name at least one type; leave it out for every type",
            ));
        }
        if let Some(unknown) = events.iter().find(|p| !is_known_type_pattern(p)) {
            return Err(ApiError::invalid(format!(
                "events: unknown event type {unknown:?}; known are {}",
                merpati_webhooks::EVENT_TYPES.join(", ")
            )));
        }
    }
    let scopes: [(&str, Vec<&str>); 3] = [
        (
            "business_ids",
            e.business_ids.iter().map(|i| i.as_str()).collect(),
        ),
        (
            "channel_ids",
            e.channel_ids.iter().map(|i| i.as_str()).collect(),
        ),
        (
            "device_ids",
            e.device_ids.iter().map(|i| i.as_str()).collect(),
        ),
    ];
    for (field, list) in scopes {
        if list.len() > MAX_FILTER_ITEMS {
            return Err(ApiError::invalid(format!(
                "{field} may hold at most {MAX_FILTER_ITEMS} ids"
            )));
        }
        for id in list {
            check_id(field, id)?;
        }
    }
    if e.headers.len() > MAX_HEADERS {
        return Err(ApiError::invalid(format!("at most {MAX_HEADERS} headers")));
    }
    for (name, value) in &e.headers {
        let parsed = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ApiError::invalid(format!("headers: {name:?} is not a header name")))?;
        if RESERVED_HEADERS.contains(&parsed.as_str()) {
            return Err(ApiError::invalid(format!(
                "headers: {name:?} is set by merpati and cannot be overridden"
            )));
        }
        HeaderValue::from_str(value).map_err(|_| {
            ApiError::invalid(format!("headers: the value of {name:?} is not valid"))
        })?;
    }
    if e.max_concurrency
        .is_some_and(|n| !(1..=MAX_CONCURRENCY).contains(&n))
    {
        return Err(ApiError::invalid(format!(
            "max_concurrency must be from 1 to {MAX_CONCURRENCY}"
        )));
    }
    if e.rate_limit
        .is_some_and(|n| !(1..=MAX_RATE_LIMIT).contains(&n))
    {
        return Err(ApiError::invalid(format!(
            "rate_limit must be from 1 to {MAX_RATE_LIMIT} requests per second"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        assert!(check_url("https://example.com/hook").is_ok());
        assert!(check_url("http://127.0.0.1:9000/").is_ok());
        assert!(check_url("ftp://example.com/").is_err());
        assert!(check_url("https://user:pw@example.com/").is_err());
        assert!(check_url("https://user@example.com/").is_err());
        assert!(check_url("not a url").is_err());
        assert!(check_url(&format!("https://e.com/{}", "a".repeat(3000))).is_err());
    }
}
