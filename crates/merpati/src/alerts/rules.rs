//! `/v1/alert-rules`: what applies to which devices, and `…/effective`: what applies to one
//! device and which rule set each value.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use merpati_domain::alert::rules::{effective as resolve, EscalationStep, MIN_REPEAT_MS};
use merpati_domain::alert::{AlertRule, Severity};
use merpati_domain::ids::{AlertRuleId, DeviceId, NotifierId};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{all, duration_ms, match_json, merged, patch_object, MatchBody};
use crate::api::extract::{parse_json, Account, Query};
use crate::api::revision::{self, IfMatch};
use crate::api::time::{duration, rfc3339};
use crate::api::validate::{check_id, id_or_new};
use crate::api::{ApiError, ApiResult, AppState};

const MAX_NOTIFIERS: usize = 20;
const MAX_STEPS: usize = 10;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleBody {
    id: Option<String>,
    #[serde(rename = "match", default)]
    matches: MatchBody,
    down_after: Option<String>,
    severity: Option<String>,
    notifiers: Option<Vec<String>>,
    /// `"off"` or a duration of at least 5 minutes.
    repeat_every: Option<String>,
    escalation: Option<Vec<StepBody>>,
    notify_recovery: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepBody {
    after: String,
    notifiers: Vec<String>,
}

fn notifier_ids(field: &str, raw: Vec<String>) -> ApiResult<Vec<NotifierId>> {
    if raw.len() > MAX_NOTIFIERS {
        return Err(ApiError::invalid(format!(
            "{field} may name at most {MAX_NOTIFIERS} notifiers"
        )));
    }
    let mut out: Vec<NotifierId> = Vec::new();
    for id in raw {
        check_id(field, &id)?;
        let id = NotifierId::from(id);
        if !out.contains(&id) {
            out.push(id);
        }
    }
    Ok(out)
}

impl RuleBody {
    fn into_rule(self, id: AlertRuleId, now: i64) -> ApiResult<AlertRule> {
        let repeat_every_ms = match self.repeat_every.as_deref().map(str::trim) {
            None => None,
            Some("off") => Some(0),
            Some(raw) => {
                let ms = duration_ms("repeat_every", raw)?;
                if ms < MIN_REPEAT_MS {
                    return Err(ApiError::invalid(
                        "repeat_every must be \"off\" or at least 5m",
                    ));
                }
                Some(ms)
            }
        };
        let escalation = match self.escalation {
            None => None,
            Some(steps) => {
                if steps.len() > MAX_STEPS {
                    return Err(ApiError::invalid(format!(
                        "escalation may have at most {MAX_STEPS} steps"
                    )));
                }
                let mut out: Vec<EscalationStep> = Vec::new();
                for (i, step) in steps.into_iter().enumerate() {
                    let field = format!("escalation[{i}]");
                    let after_ms = duration_ms(&format!("{field}.after"), &step.after)?;
                    if after_ms < 60_000 {
                        return Err(ApiError::invalid(format!(
                            "{field}.after must be at least 1m"
                        )));
                    }
                    if out.last().is_some_and(|prev| prev.after_ms >= after_ms) {
                        return Err(ApiError::invalid(format!(
                            "{field}.after must come after the step before it"
                        )));
                    }
                    let notifiers = notifier_ids(&format!("{field}.notifiers"), step.notifiers)?;
                    if notifiers.is_empty() {
                        return Err(ApiError::invalid(format!(
                            "{field}.notifiers must name at least one notifier"
                        )));
                    }
                    out.push(EscalationStep {
                        after_ms,
                        notifiers,
                    });
                }
                Some(out)
            }
        };
        Ok(AlertRule {
            id,
            matches: self.matches.into_match()?,
            down_after_ms: self
                .down_after
                .map(|raw| duration_ms("down_after", &raw))
                .transpose()?,
            severity: self
                .severity
                .map(|s| match s.as_str() {
                    "warning" => Ok(Severity::Warning),
                    "critical" => Ok(Severity::Critical),
                    _ => Err(ApiError::invalid(
                        "severity must be \"warning\" or \"critical\"",
                    )),
                })
                .transpose()?,
            notifiers: self
                .notifiers
                .map(|n| notifier_ids("notifiers", n))
                .transpose()?,
            repeat_every_ms,
            escalation,
            notify_recovery: self.notify_recovery,
            created_at: now,
            updated_at: now,
            revision: 0,
        })
    }
}

fn repeat(ms: i64) -> String {
    if ms == 0 {
        "off".into()
    } else {
        duration(ms)
    }
}

fn steps_json(steps: &[EscalationStep]) -> Value {
    steps
        .iter()
        .map(|s| json!({"after": duration(s.after_ms), "notifiers": s.notifiers}))
        .collect()
}

/// The rule as a create takes it (what a merge patch applies to).
fn input(r: &AlertRule) -> Value {
    let mut v = json!({"match": match_json(&r.matches)});
    let o = v.as_object_mut().expect("an object");
    if let Some(ms) = r.down_after_ms {
        o.insert("down_after".into(), json!(duration(ms)));
    }
    if let Some(s) = r.severity {
        o.insert("severity".into(), json!(s));
    }
    if let Some(n) = &r.notifiers {
        o.insert("notifiers".into(), json!(n));
    }
    if let Some(ms) = r.repeat_every_ms {
        o.insert("repeat_every".into(), json!(repeat(ms)));
    }
    if let Some(steps) = &r.escalation {
        o.insert("escalation".into(), steps_json(steps));
    }
    if let Some(b) = r.notify_recovery {
        o.insert("notify_recovery".into(), json!(b));
    }
    v
}

fn view(r: &AlertRule) -> Value {
    let mut v = json!({"id": r.id});
    let o = v.as_object_mut().expect("an object");
    if let Value::Object(fields) = input(r) {
        o.extend(fields);
    }
    o.insert("created_at".into(), json!(rfc3339(r.created_at)));
    o.insert("updated_at".into(), json!(rfc3339(r.updated_at)));
    v
}

pub(super) async fn create(
    Account(account): Account,
    State(state): State<AppState>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let body: RuleBody = parse_json(&body)?;
    let id = id_or_new(
        "id",
        body.id.clone(),
        AlertRuleId::generate,
        AlertRuleId::parse,
    )?;
    let rule = body.into_rule(id, state.clock.now_ms())?;
    let rule = state.store.create_rule(account, rule).await?;
    state.alerts.wake();
    Ok((StatusCode::CREATED, Json(view(&rule))))
}

pub(super) async fn list(
    Account(account): Account,
    State(state): State<AppState>,
) -> ApiResult<Json<Value>> {
    let rules = state.store.list_rules(account).await?;
    Ok(all(rules.iter().map(view).collect()))
}

pub(super) async fn read(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let rule = state.store.get_rule(account, id.into()).await?;
    Ok(revision::read(&headers, view(&rule)))
}

pub(super) async fn update(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
    if_match: IfMatch,
    body: Bytes,
) -> ApiResult<Response> {
    let patch = patch_object(&body)?;
    let id = AlertRuleId::from(id);
    let store = state.store.clone();
    let now = state.clock.now_ms();
    let response = revision::patch(
        &if_match,
        "alert rule",
        || store.get_rule(account.clone(), id.clone()),
        view,
        |r: &mut AlertRule| {
            let body: RuleBody = merged(input(r), &patch, "rule")?;
            let mut changed = body.into_rule(r.id.clone(), now)?;
            changed.created_at = r.created_at;
            changed.revision = r.revision;
            *r = changed;
            Ok(())
        },
        |changed: AlertRule, _: AlertRule| {
            let store = store.clone();
            let account = account.clone();
            async move { revision::saved(store.update_rule(account, changed).await) }
        },
    )
    .await?;
    state.alerts.wake();
    Ok(response)
}

pub(super) async fn remove(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.store.delete_rule(account, id.into()).await?;
    state.alerts.wake();
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EffectiveQuery {
    device_id: Option<String>,
}

/// Each field's value for the device, and the rule that set it (`null`: the default).
pub(super) async fn effective(
    Account(account): Account,
    State(state): State<AppState>,
    Query(q): Query<EffectiveQuery>,
) -> ApiResult<Json<Value>> {
    let device = q
        .device_id
        .ok_or_else(|| ApiError::invalid("device_id is required"))?;
    check_id("device_id", &device)?;
    let ctx = state
        .store
        .device_context(account.clone(), DeviceId::from(device))
        .await?;
    let rules = state.store.list_rules(account.clone()).await?;
    let notifiers: Vec<NotifierId> = state
        .store
        .list_notifiers(account)
        .await?
        .into_iter()
        .map(|n| n.id)
        .collect();
    let e = resolve(&rules, &ctx, &notifiers);
    Ok(Json(json!({
        "device_id": ctx.device_id,
        "engine": ctx.engine,
        "channel_id": ctx.channel_id,
        "business_id": ctx.business_id,
        "down_after": {"value": duration(e.down_after_ms.value), "rule": e.down_after_ms.rule},
        "severity": {"value": e.severity.value, "rule": e.severity.rule},
        "notifiers": {"value": e.notifiers.value, "rule": e.notifiers.rule},
        "repeat_every": {"value": repeat(e.repeat_every_ms.value), "rule": e.repeat_every_ms.rule},
        "escalation": {"value": steps_json(&e.escalation.value), "rule": e.escalation.rule},
        "notify_recovery": {"value": e.notify_recovery.value, "rule": e.notify_recovery.rule},
    })))
}
