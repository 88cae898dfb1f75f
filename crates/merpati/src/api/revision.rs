//! Versions of what people edit. Every read of one resource carries an `ETag`, a digest of
//! what it shows, and is answered 304 when `If-None-Match` already names it. [`patch`] is the
//! one way a PATCH is applied: it honours `If-Match` (412 when the resource is no longer the
//! version named), and however it is called it never silently overwrites a concurrent
//! change, because the store keeps the update only if the row is still at the revision it
//! was read at; otherwise the resource is read again and the patch applied to what is there
//! now.

use std::future::Future;

use axum::extract::FromRequestParts;
use axum::http::header::{ETAG, IF_MATCH, IF_NONE_MATCH};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use merpati_domain::{StoreError, StoreResult};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{ApiError, ApiResult};

/// The entity tag of a view: a digest of its JSON, so that it changes whenever what a
/// reader sees changes, whoever changed it.
pub fn etag<T: Serialize>(view: &T) -> String {
    let json = serde_json::to_vec(view).expect("views serialize");
    let digest = Sha256::digest(&json);
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

/// Whether a header's list of entity tags (`"a", "b"`, or `*`) holds `tag`. Weak tags
/// (`W/"…"`) never match: an update needs the exact version.
fn listed(header: &str, tag: &str) -> bool {
    header
        .split(',')
        .map(str::trim)
        .any(|t| t == "*" || t == tag)
}

/// A view with its `ETag`, or 304 when the request's `If-None-Match` already names it.
pub fn read<T: Serialize>(headers: &HeaderMap, view: T) -> Response {
    let tag = etag(&view);
    let header = HeaderValue::from_str(&tag).expect("tags are ASCII");
    let unchanged = headers
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| listed(v, &tag));
    if unchanged {
        return (StatusCode::NOT_MODIFIED, [(ETAG, header)]).into_response();
    }
    ([(ETAG, header)], Json(view)).into_response()
}

/// A request's `If-Match`, if it gave one.
pub struct IfMatch(Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        match parts.headers.get(IF_MATCH) {
            None => Ok(IfMatch(None)),
            Some(v) => v
                .to_str()
                .map(|v| IfMatch(Some(v.to_owned())))
                .map_err(|_| ApiError::bad_request("If-Match is not a list of entity tags")),
        }
    }
}

impl IfMatch {
    fn allows(&self, tag: &str) -> bool {
        self.0.as_deref().is_none_or(|header| listed(header, tag))
    }
}

/// Reads of a resource changed by others between the read and the update, before a PATCH
/// gives up.
const TRIES: usize = 8;

/// Applies a PATCH: `load` reads the resource, `apply` changes it (and checks the result),
/// `save` stores it if it is still at the revision it was read at (the store answers Stale
/// otherwise) and returns it as stored; `view` is what readers see of it. Answers the
/// stored view with its new `ETag`.
pub async fn patch<R, V, Load, Loaded, Save, Saved>(
    if_match: &IfMatch,
    what: &'static str,
    load: Load,
    view: impl Fn(&R) -> V,
    apply: impl Fn(&mut R) -> ApiResult<()>,
    save: Save,
) -> ApiResult<Response>
where
    R: Clone,
    V: Serialize,
    Load: Fn() -> Loaded,
    Loaded: Future<Output = StoreResult<R>>,
    Save: Fn(R, R) -> Saved,
    Saved: Future<Output = ApiResult<R>>,
{
    for _ in 0..TRIES {
        let current = load().await?;
        if !if_match.allows(&etag(&view(&current))) {
            return Err(ApiError::precondition_failed(format!(
                "the {what} was changed since the version If-Match names; read it again"
            )));
        }
        let mut changed = current.clone();
        apply(&mut changed)?;
        match save(changed, current).await {
            Ok(stored) => {
                let shown = view(&stored);
                let tag = HeaderValue::from_str(&etag(&shown)).expect("tags are ASCII");
                return Ok(([(ETAG, tag)], Json(shown)).into_response());
            }
            // Changed by someone else since it was read: read it again.
            Err(e) if e.status == StatusCode::CONFLICT && e.code == STALE => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::conflict(format!(
        "the {what} keeps changing; try again"
    )))
}

/// The code a save's Stale answer carries, for [`patch`] to read again.
const STALE: &str = "stale";

/// A store's answer to a save: Stale (the row changed since it was read) for [`patch`] to
/// read again, anything else as ever.
pub fn saved<R>(result: StoreResult<R>) -> ApiResult<R> {
    result.map_err(|e| match e {
        StoreError::Stale(what) => ApiError::new(
            StatusCode::CONFLICT,
            STALE,
            format!("the {what} was changed since it was read"),
        ),
        other => other.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_quoted_digests_that_follow_the_content() {
        let a = etag(&serde_json::json!({"name": "a"}));
        assert!(
            a.starts_with('"') && a.ends_with('"') && a.len() == 26,
            "{a}"
        );
        assert_eq!(a, etag(&serde_json::json!({"name": "a"})));
        assert_ne!(a, etag(&serde_json::json!({"name": "b"})));
    }

    #[test]
    fn if_match_takes_lists_and_any_and_never_weak_tags() {
        assert!(listed("\"x\", \"y\"", "\"y\""));
        assert!(listed("*", "\"y\""));
        assert!(!listed("W/\"y\"", "\"y\""));
        assert!(!listed("\"x\"", "\"y\""));
        assert!(IfMatch(None).allows("\"y\""));
    }
}
