//! The OpenAPI 3.1 document. Each feature registers its handlers with `utoipa_axum`'s
//! `routes!`, which takes path and method from the handler's `#[utoipa::path]`: the router
//! and the document are made from the same declaration and cannot disagree.
//!
//! Errors every route can give are added here by rule, from what an operation has: a
//! token (401), a body (400, 413, 422), query parameters (422), a path id (404), and the
//! storage (503, 500). Route-specific errors (409, 412, 403, 429, …) are on the handlers.

use utoipa::openapi::header::Header;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{Content, OpenApi as Document, Ref, RefOr};
use utoipa::{Modify, OpenApi, ToSchema};

/// Names of the three bearer tokens, as the handlers' `security(...)` give them.
pub const ADMIN: &str = "admin_token";
pub const ACCOUNT: &str = "api_key";
pub const DEVICE: &str = "device_token";
const LINKS: &str = "acknowledgement links";
const NOT_MODIFIED: &str = "NotModified";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "merpati",
        description = "Self-hosted event hub for messaging-device gateways: devices post what \
                       they receive, merpati tracks their presence and delivers every event to \
                       its account's webhooks, signed and retried. Three bearer tokens: the \
                       admin token (accounts and API keys, metrics), an account's API key \
                       (everything of that account) and a device token (the device API).",
        license(name = "MIT OR Apache-2.0", identifier = "MIT OR Apache-2.0"),
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "accounts", description = "Accounts and their API keys (admin token)."),
        (name = "devices", description = "Businesses, channels and devices."),
        (name = "device API", description = "What a device calls, with its own token."),
        (name = "presence", description = "Live status, sessions, downtime, availability."),
        (name = "endpoints", description = "Webhook endpoints and their secrets."),
        (name = "events", description = "The event log, deliveries and attempts."),
        (name = "connectors", description = "Engines people run (WAHA, Evolution API, SMS Gateway for Android, textbee, Telegram, Slack) pointed at merpati."),
        (name = "jobs", description = "Long-running work: recovering an endpoint."),
        (name = "alerts", description = "Alert rules, notifiers, maintenance windows, incidents."),
        (name = "acknowledgement links", description = "The signed links in notifications, for people."),
        (name = "stream", description = "Committed changes as server-sent events."),
        (name = "server", description = "Health, readiness, metrics and this document."),
    )
)]
pub struct ApiDoc;

/// Completes the document once every route is in it: the token schemes, the errors every
/// route can give, unique operation ids.
pub fn finish(doc: &mut Document) {
    open_combined_bodies(doc);
    SecuritySchemes.modify(doc);
    CommonErrors.modify(doc);
    UniqueOperationIds.modify(doc);
}

/// A view that shows what a create takes (`#[serde(flatten)]` of the body) is an `allOf`
/// of the body's schema and its own fields; a body refuses unknown fields, and would refuse
/// the view's own. In the view, the body's part is inlined without that refusal.
fn open_combined_bodies(doc: &mut Document) {
    use utoipa::openapi::schema::Schema;
    let Some(components) = doc.components.as_mut() else {
        return;
    };
    let originals = components.schemas.clone();
    for schema in components.schemas.values_mut() {
        let RefOr::T(Schema::AllOf(all)) = schema else {
            continue;
        };
        for part in all.items.iter_mut() {
            let RefOr::Ref(r) = part else { continue };
            let name = r.ref_location.rsplit('/').next().unwrap_or_default();
            if let Some(RefOr::T(Schema::Object(o))) = originals.get(name) {
                if o.additional_properties.is_some() {
                    let mut open = o.clone();
                    open.additional_properties = None;
                    *part = RefOr::T(Schema::Object(open));
                }
            }
        }
    }
}

/// Every error answer: `{"error": {"code", "message"}}`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(ToSchema)]
#[allow(dead_code)]
struct ErrorDetail {
    /// What went wrong, for programs: `invalid_json`, `invalid_request`, `unauthorized`,
    /// `forbidden`, `forbidden_address`, `not_found`, `conflict`, `precondition_failed`,
    /// `payload_too_large`, `rate_limited`, `method_not_allowed`, `unavailable`, `internal`.
    code: String,
    /// What went wrong, for people.
    message: String,
}

/// A device's own id for an item (`rid`): an integer or a string of 1–128 bytes.
pub fn rid_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::Integer).format(Some(
            utoipa::openapi::schema::SchemaFormat::KnownFormat(
                utoipa::openapi::schema::KnownFormat::Int64,
            ),
        )))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(128)),
        )
        .description(Some(
            "The device's own id of the item: an integer or a string.",
        ))
        .into()
}

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            let mut http = Http::new(HttpAuthScheme::Bearer);
            http.description = Some(description.to_string());
            SecurityScheme::Http(http)
        };
        components.add_security_scheme(
            ADMIN,
            bearer("The admin token: accounts, API keys, metrics."),
        );
        components.add_security_scheme(
            ACCOUNT,
            bearer("An account's API key (`mpk_…`): everything of that account."),
        );
        components.add_security_scheme(
            DEVICE,
            bearer("A device's token (`mdt_…`): the device API, as that device."),
        );
    }
}

/// Handlers of different features share names (`list`, `read`, …); operation ids must
/// not. A shared name gets its resource: `list_endpoints`, `read_alert_rules`.
struct UniqueOperationIds;

impl Modify for UniqueOperationIds {
    fn modify(&self, doc: &mut Document) {
        let mut seen = std::collections::HashMap::<String, usize>::new();
        for_each_operation(doc, |_, _, op| {
            if let Some(id) = &op.operation_id {
                *seen.entry(id.clone()).or_default() += 1;
            }
        });
        for_each_operation(doc, |path, _, op| {
            let Some(id) = &op.operation_id else { return };
            if seen.get(id).copied().unwrap_or(0) > 1 {
                let resource = path
                    .split('/')
                    .find(|s| !s.is_empty() && *s != "v1" && !s.starts_with('{'))
                    .unwrap_or("api")
                    .replace('-', "_");
                op.operation_id = Some(format!("{id}_{resource}"));
            }
        });
    }
}

/// Every operation, with its path and method.
fn for_each_operation(doc: &mut Document, mut each: impl FnMut(&str, &str, &mut Operation)) {
    for (path, item) in doc.paths.paths.iter_mut() {
        for (method, op) in [
            ("get", &mut item.get),
            ("post", &mut item.post),
            ("put", &mut item.put),
            ("patch", &mut item.patch),
            ("delete", &mut item.delete),
        ] {
            if let Some(op) = op {
                each(path, method, op);
            }
        }
    }
}

struct CommonErrors;

/// The answers many routes share, each once under `components/responses`: (status, name,
/// description).
const COMMON_ERRORS: [(&str, &str, &str); 10] = [
    (
        "403",
        "ReadOnly",
        "The API key is read-only, and this route changes something (`forbidden`).",
    ),
    (
        "409",
        "KeepsChanging",
        "Changed by others again and again meanwhile; try again.",
    ),
    (
        "412",
        "PreconditionFailed",
        "Not at the version `If-Match` names (`precondition_failed`).",
    ),
    (
        "400",
        "InvalidJson",
        "The body is not JSON, or not the JSON expected (`invalid_json`).",
    ),
    (
        "413",
        "TooLarge",
        "The body is larger than 1 MiB (`payload_too_large`).",
    ),
    (
        "422",
        "Invalid",
        "Well-formed, but not valid (`invalid_request`); the message says why.",
    ),
    (
        "401",
        "Unauthorized",
        "No token, or not one of the kind this route takes (`unauthorized`).",
    ),
    (
        "404",
        "NotFound",
        "No such object in this account (`not_found`).",
    ),
    (
        "503",
        "Unavailable",
        "The database is unavailable (closed, busy, full disk): nothing was stored; or its connection was lost while the request's write committed, which may have been made (the message says so). Either way, send again after `Retry-After` seconds.",
    ),
    (
        "500",
        "Internal",
        "An internal error; the server log says more.",
    ),
];

impl Modify for CommonErrors {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.responses.insert(
            NOT_MODIFIED.to_string(),
            RefOr::T(
                ResponseBuilder::new()
                    .description("Unchanged since the version `If-None-Match` names.")
                    .build(),
            ),
        );
        for (status, name, description) in COMMON_ERRORS {
            let mut response = ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    Content::new(Some(RefOr::<utoipa::openapi::schema::Schema>::Ref(
                        Ref::from_schema_name(ErrorBody::name()),
                    ))),
                )
                .build();
            if status == "503" {
                let mut retry = Header::new(ObjectBuilder::new().schema_type(Type::Integer));
                retry.description = Some("Seconds to wait before sending again.".into());
                response.headers.insert("Retry-After".into(), retry);
            }
            components
                .responses
                .insert(name.to_string(), RefOr::T(response));
        }
        for_each_operation(doc, |path, method, op| {
            add_common_errors(op, path.contains('{'), method != "get")
        });
    }
}

fn add_common_errors(op: &mut Operation, has_id: bool, writes: bool) {
    // The acknowledgement links answer people, in HTML, and say their own errors.
    if op
        .tags
        .as_ref()
        .is_some_and(|t| t.iter().any(|t| t == LINKS))
    {
        return;
    }
    let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
    let by_api_key = op.security.as_ref().is_some_and(|s| {
        s.iter()
            .any(|r| serde_json::to_value(r).is_ok_and(|v| v.get(ACCOUNT).is_some()))
    });
    let has_body = op.request_body.is_some();
    let has_query = op.parameters.as_ref().is_some_and(|ps| {
        ps.iter()
            .any(|p| matches!(p.parameter_in, ParameterIn::Query))
    });
    let has_header = |name: &str| {
        op.parameters.as_ref().is_some_and(|ps| {
            ps.iter()
                .any(|p| p.name == name && matches!(p.parameter_in, ParameterIn::Header))
        })
    };
    // A versioned read or update: its answer carries the version.
    let (conditional_read, conditional_update) =
        (has_header("If-None-Match"), has_header("If-Match"));
    if conditional_read || conditional_update {
        if let Some(RefOr::T(ok)) = op.responses.responses.get_mut("200") {
            let mut etag = Header::new(ObjectBuilder::new().schema_type(Type::String));
            etag.description = Some("Its version, for `If-None-Match` and `If-Match`.".into());
            ok.headers.insert("ETag".into(), etag);
        }
    }
    if conditional_read {
        op.responses.responses.insert(
            "304".into(),
            RefOr::Ref(Ref::new(format!("#/components/responses/{NOT_MODIFIED}"))),
        );
    }
    let applies = |status: &str| match status {
        "409" | "412" => conditional_update,
        "400" | "413" => has_body,
        "422" => has_body || has_query,
        "401" => secured,
        "403" => by_api_key && writes,
        "404" => has_id,
        _ => true,
    };
    for (status, name, _) in COMMON_ERRORS {
        if applies(status) && !op.responses.responses.contains_key(status) {
            op.responses.responses.insert(
                status.to_string(),
                RefOr::Ref(Ref::new(format!("#/components/responses/{name}"))),
            );
        }
    }
}

/// `If-None-Match` on a read: 304 when it names the current version.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct IfNoneMatchHeader {
    /// Entity tags (from an earlier `ETag`): answered 304 when one is still current.
    #[param(rename = "If-None-Match")]
    if_none_match: Option<String>,
}

/// `If-Match` on a PATCH: 412 unless it names the current version.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct IfMatchHeader {
    /// Entity tags (from an earlier `ETag`, or `*`): the change is made only to that version.
    #[param(rename = "If-Match")]
    if_match: Option<String>,
}

/// A time as requests may give it: RFC 3339, or Unix seconds as a number or a string.
pub fn time_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime))),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[0-9]+$")),
        )
        .item(ObjectBuilder::new().schema_type(Type::Integer))
        .description(Some("RFC 3339, or Unix seconds."))
        .into()
}
