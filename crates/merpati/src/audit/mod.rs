//! The audit trail: a middleware records every change made through the API (a method other
//! than GET that succeeded) with who made it, from where, the route, the object and the
//! names of the fields sent, never their values; `GET /v1/audit-log` lists an account's,
//! `GET /v1/accounts/{id}/audit-log` the admin's view of any account's.

use axum::body::Body;
use axum::extract::{MatchedPath, Path, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::Json;
use merpati_domain::audit::AuditEntry;
use merpati_domain::ids::{token_hash, AccountId};
use serde::Serialize;
use subtle::ConstantTimeEq;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::api::extract::{
    bearer_token, read_request_body, reads_only, Account, Admin, ClientAddress, Query, SignedIn,
};
use crate::api::paging::{list_response, Listed, PageQuery};
use crate::api::time::as_rfc3339;
use crate::api::{ApiError, ApiResult, AppState, MAX_BODY_BYTES};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(list_for_admin))
}

/// Routes whose requests are not changes people make: devices and engines posting what
/// they received, and the acknowledgement links (recorded on the incident itself).
fn audited(route: &str) -> bool {
    !(route.starts_with("/v1/device/") || route.ends_with("/inbound") || route.starts_with("/ack/"))
}

/// Who is asking: the actor's name and the account it acts in, if the request carries a
/// token (or a dashboard session) that is valid. An API key's grant is handed on to the
/// route's `Account` extractor, which then needs no second lookup.
async fn who(state: &AppState, request: &mut Request) -> Option<(String, Option<AccountId>)> {
    if let Some(signed_in) = request.extensions().get::<SignedIn>() {
        return Some((
            format!("dashboard:{}", signed_in.key_id),
            Some(signed_in.account.clone()),
        ));
    }
    let hash = token_hash(bearer_token(request.headers()).ok()?);
    if bool::from(hash.ct_eq(&state.admin_token_hash)) {
        return Some(("admin".into(), None));
    }
    let grant = state
        .store
        .api_key_grant(hash, state.clock.now_ms())
        .await
        .ok()??;
    let who = (
        format!("api_key:{}", grant.key_id),
        Some(grant.account_id.clone()),
    );
    request.extensions_mut().insert(grant);
    Some(who)
}

/// The path's parameters, as `route` names them.
fn path_params<'a>(route: &'a str, path: &'a str) -> Vec<(&'a str, &'a str)> {
    route
        .split('/')
        .zip(path.split('/'))
        .filter(|(template, _)| template.starts_with('{'))
        .collect()
}

/// The top-level field names of a JSON object body, sorted.
fn field_names(body: &[u8]) -> Vec<String> {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(map)) => {
            let mut names: Vec<String> = map.keys().cloned().collect();
            names.sort();
            names
        }
        _ => Vec::new(),
    }
}

/// Records the change a request made, once it succeeded.
pub async fn record_changes(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let Some(route) = route.filter(|r| !reads_only(request.method()) && audited(r)) else {
        return next.run(request).await;
    };
    let browser = request
        .extensions()
        .get::<SignedIn>()
        .and_then(|s| s.address);
    let Some((actor, mut account)) = who(&state, &mut request).await else {
        // Refused by the route itself: not a change.
        return next.run(request).await;
    };
    let address = request
        .extensions()
        .get::<ClientAddress>()
        .map(|c| c.0)
        .or(browser)
        .map(|ip| ip.to_string());
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    // The body's field names, when its length is known and one the API reads; any other
    // body goes on unread, for the route to refuse as it does.
    let declared = http_body::Body::size_hint(request.body())
        .upper()
        .and_then(|n| usize::try_from(n).ok());
    let (request, fields) = match declared {
        Some(n) if n <= MAX_BODY_BYTES => {
            let (parts, body) = request.into_parts();
            match read_request_body(&parts, body).await {
                Ok(bytes) => {
                    let fields = field_names(&bytes);
                    (Request::from_parts(parts, Body::from(bytes)), fields)
                }
                Err(e) => return axum::response::IntoResponse::into_response(e),
            }
        }
        _ => (request, Vec::new()),
    };
    let response = next.run(request).await;
    if !response.status().is_success() {
        return response;
    }
    let params = path_params(&route, &path);
    // The object is the path's last parameter (a key of an account, say), else the one made.
    let mut object_id = params.last().map(|(_, v)| v.to_string());
    let named_account = params
        .iter()
        .find(|(name, _)| *name == "{id}")
        .filter(|_| route.starts_with("/v1/accounts/"))
        .map(|(_, v)| AccountId::from(*v));
    let (parts, body) = response.into_parts();
    let body = if object_id.is_none() {
        // A creation: the object is the answer's.
        let bytes = axum::body::to_bytes(body, usize::MAX)
            .await
            .unwrap_or_default();
        object_id = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("id").and_then(|id| id.as_str()).map(str::to_owned));
        Body::from(bytes)
    } else {
        body
    };
    if account.is_none() && route.starts_with("/v1/accounts") {
        // The admin's change is about the account it names, or the one it made.
        account = named_account.or_else(|| object_id.clone().map(AccountId::from));
    }
    let entry = AuditEntry {
        id: 0,
        account_id: account,
        actor,
        address,
        method,
        route,
        object_id,
        fields,
        status: parts.status.as_u16(),
        at: state.clock.now_ms(),
    };
    if let Err(e) = state.store.record_audit(entry).await {
        tracing::error!(error = %e, "a change was made but not recorded in the audit trail");
    }
    Response::from_parts(parts, body)
}

/// A change as the audit trail shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditEntryView {
    pub id: String,
    #[schema(value_type = Option<String>)]
    pub account_id: Option<AccountId>,
    /// `admin`, `api_key:<key id>` or `dashboard:<key id>`.
    pub actor: String,
    /// The client's address, as the listener saw it.
    pub address: Option<String>,
    pub method: String,
    /// The route as this document names it.
    pub route: String,
    pub object_id: Option<String>,
    /// The names of the fields sent; never their values.
    pub fields: Vec<String>,
    pub status: u16,
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: i64,
}

impl From<&AuditEntry> for AuditEntryView {
    fn from(e: &AuditEntry) -> Self {
        AuditEntryView {
            id: e.id.to_string(),
            account_id: e.account_id.clone(),
            actor: e.actor.clone(),
            address: e.address.clone(),
            method: e.method.clone(),
            route: e.route.clone(),
            object_id: e.object_id.clone(),
            fields: e.fields.clone(),
            status: e.status,
            at: e.at,
        }
    }
}

async fn page_of(
    state: &AppState,
    account: AccountId,
    q: &PageQuery,
) -> ApiResult<Json<Listed<AuditEntryView>>> {
    let page = q.page()?;
    let before = page
        .after
        .as_deref()
        .map(|c| {
            c.parse::<i64>()
                .map_err(|_| ApiError::invalid("cursor is not valid"))
        })
        .transpose()?;
    let entries: Vec<AuditEntryView> = state
        .store
        .list_audit(account, before, page.limit)
        .await?
        .iter()
        .map(AuditEntryView::from)
        .collect();
    Ok(list_response(entries, &page, |e| e.id.clone()))
}

#[utoipa::path(get, path = "/v1/audit-log", tag = "audit", security(("api_key" = [])),
    params(PageQuery),
    responses((status = 200, description = "The account's changes, newest first.", body = Listed<AuditEntryView>)))]
async fn list(
    Account(account): Account,
    State(state): State<AppState>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<Listed<AuditEntryView>>> {
    page_of(&state, account, &q).await
}

#[utoipa::path(get, path = "/v1/accounts/{id}/audit-log", tag = "audit", security(("admin_token" = [])),
    params(("id" = String, Path, description = "The account's id."), PageQuery),
    responses((status = 200, description = "The account's changes, newest first, the admin's among them.", body = Listed<AuditEntryView>)))]
async fn list_for_admin(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<Listed<AuditEntryView>>> {
    page_of(&state, AccountId::from(id), &q).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_s_parameters_are_read_by_its_route() {
        assert_eq!(
            path_params(
                "/v1/endpoints/{id}/secret/rotate",
                "/v1/endpoints/ep_1/secret/rotate"
            ),
            [("{id}", "ep_1")]
        );
        assert_eq!(
            path_params(
                "/v1/accounts/{id}/api-keys/{key_id}",
                "/v1/accounts/a/api-keys/key_9"
            ),
            [("{id}", "a"), ("{key_id}", "key_9")]
        );
        assert!(path_params("/v1/endpoints", "/v1/endpoints").is_empty());
    }

    #[test]
    fn only_field_names_are_kept() {
        assert_eq!(
            field_names(br#"{"url":"https://x","secret":"whsec_abc"}"#),
            ["secret", "url"]
        );
        assert!(field_names(b"not json").is_empty());
        assert!(field_names(b"[1]").is_empty());
    }
}
