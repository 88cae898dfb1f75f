//! Alerts: rules, notifiers, maintenance windows and incidents as the API shows them, and
//! the signed acknowledgement links. What fires when, and who is told, is the alert engine's
//! (`merpati_domain::alert::engine`), run by the alert runner; these routes edit what it
//! reads and act on incidents through the same engine.
//!
//! Edits are JSON merge patches (RFC 7396) over what a create takes: the merged body is
//! checked exactly as a new one would be, so an edit can never store what a create would
//! refuse.

use merpati_domain::alert::Match;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::api::validate::check_id;
use crate::api::{ApiError, ApiResult, AppState};

mod incidents;
mod links;
mod notifiers;
mod rules;
mod windows;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(rules::list, rules::create))
        .routes(routes!(rules::effective))
        .routes(routes!(rules::read, rules::update, rules::remove))
        .routes(routes!(notifiers::list, notifiers::create))
        .routes(routes!(
            notifiers::read,
            notifiers::update,
            notifiers::remove
        ))
        .routes(routes!(notifiers::test))
        .routes(routes!(windows::list, windows::create))
        .routes(routes!(windows::read, windows::update, windows::remove))
        .routes(routes!(incidents::list))
        .routes(routes!(incidents::read))
        .routes(routes!(incidents::acknowledge))
        .routes(routes!(incidents::resolve))
        .routes(routes!(incidents::add_note))
        .routes(routes!(links::confirm, links::acknowledge))
}

pub use windows::maintenance_spans;

/// The longest any alert duration may be: a week.
const MAX_DURATION_MS: i64 = 7 * 24 * 3_600_000;

/// A duration as requests give it (`0s`, `5m`, `1h 30m`), within [0, a week].
fn duration_ms(field: &str, raw: &str) -> ApiResult<i64> {
    let d = humantime::parse_duration(raw.trim()).map_err(|e| {
        ApiError::invalid(format!(
            "{field} must be a duration like \"30s\", \"5m\" or \"1h\" ({e})"
        ))
    })?;
    let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    if ms > MAX_DURATION_MS {
        return Err(ApiError::invalid(format!("{field} must be at most 7 days")));
    }
    Ok(ms)
}

/// `match`: which devices it applies to; every field given must match, and an empty
/// `match` applies to every device of the account.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct MatchBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    engine: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    business_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    device_id: Option<String>,
}

impl From<&Match> for MatchBody {
    fn from(m: &Match) -> Self {
        MatchBody {
            engine: m.engine.clone(),
            business_id: m.business_id.as_ref().map(|id| id.to_string()),
            channel_id: m.channel_id.as_ref().map(|id| id.to_string()),
            device_id: m.device_id.as_ref().map(|id| id.to_string()),
        }
    }
}

impl MatchBody {
    fn into_match(self) -> ApiResult<Match> {
        if let Some(e) = &self.engine {
            if e.is_empty() || e.len() > 32 || !e.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ApiError::invalid(
                    "match.engine must be 1 to 32 printable characters, e.g. \"wa\"",
                ));
            }
        }
        for (field, id) in [
            ("match.business_id", &self.business_id),
            ("match.channel_id", &self.channel_id),
            ("match.device_id", &self.device_id),
        ] {
            if let Some(id) = id {
                check_id(field, id)?;
            }
        }
        Ok(Match {
            engine: self.engine,
            business_id: self.business_id.map(Into::into),
            channel_id: self.channel_id.map(Into::into),
            device_id: self.device_id.map(Into::into),
        })
    }
}

/// RFC 7396: `patch` over `target`; `null` removes a member.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(members) => {
            if !target.is_object() {
                *target = Value::Object(Default::default());
            }
            let object = target.as_object_mut().expect("made an object");
            for (key, value) in members {
                if value.is_null() {
                    object.remove(key);
                } else {
                    merge_patch(object.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// What a create would take after `patch` applies to `current` (the resource as a create
/// takes it): checked like a new one.
fn merged<B: Serialize + serde::de::DeserializeOwned>(
    current: &B,
    patch: &Value,
    what: &str,
) -> ApiResult<B> {
    let mut current = serde_json::to_value(current).expect("bodies serialize");
    merge_patch(&mut current, patch);
    serde_json::from_value(current)
        .map_err(|e| ApiError::invalid(format!("the patched {what}: {e}")))
}

/// A PATCH body: a JSON object.
fn patch_object(body: &axum::body::Bytes) -> ApiResult<Value> {
    let v: Value = crate::api::extract::parse_json(body)?;
    if !v.is_object() {
        return Err(ApiError::invalid(
            "a PATCH body is a JSON object (a merge patch)",
        ));
    }
    if v.get("id").is_some() {
        return Err(ApiError::invalid("id cannot be changed"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patches_replace_and_remove() {
        let mut target = json!({"a": 1, "b": {"c": 2, "d": 3}, "e": [1]});
        merge_patch(&mut target, &json!({"a": null, "b": {"c": 5}, "e": [2, 3]}));
        assert_eq!(target, json!({"b": {"c": 5, "d": 3}, "e": [2, 3]}));
    }

    #[test]
    fn durations_are_bounded() {
        assert_eq!(duration_ms("x", "0s").unwrap(), 0);
        assert_eq!(duration_ms("x", "5m").unwrap(), 300_000);
        assert!(duration_ms("x", "-5m").is_err());
        assert!(duration_ms("x", "8d").is_err());
        assert!(duration_ms("x", "soon").is_err());
    }
}
