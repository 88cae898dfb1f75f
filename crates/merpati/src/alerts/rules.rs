//! `/v1/alert-rules`: what applies to which devices, and `…/effective`: what applies to one
//! device and which rule set each value.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use merpati_domain::alert::rules::{effective as resolve, EscalationStep, Resolved, MIN_REPEAT_MS};
use merpati_domain::alert::{AlertRule, Severity};
use merpati_domain::ids::{AlertRuleId, BusinessId, ChannelId, DeviceId, NotifierId};
use serde::{Deserialize, Serialize};

use super::{duration_ms, merged, patch_object, MatchBody};
use crate::api::extract::{parse_json, Account, Query};
use crate::api::openapi::{ErrorBody, IfMatchHeader, IfNoneMatchHeader};
use crate::api::paging::Listed;
use crate::api::revision::{self, IfMatch};
use crate::api::time::{as_rfc3339, duration};
use crate::api::validate::{check_id, id_or_new};
use crate::api::{ApiError, ApiResult, AppState};

const MAX_NOTIFIERS: usize = 20;
const MAX_STEPS: usize = 10;

/// A rule: what applies to the devices it matches. Fields left out are taken from broader
/// rules, then from the defaults (`GET /v1/alert-rules/effective` shows the result).
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RuleBody {
    /// Made when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(rename = "match", default)]
    matches: MatchBody,
    /// How long a device stays down before an incident opens, e.g. `"5m"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    down_after: Option<String>,
    /// `warning` or `critical`.
    #[serde(skip_serializing_if = "Option::is_none")]
    severity: Option<String>,
    /// Notifier ids told when an incident opens.
    #[serde(skip_serializing_if = "Option::is_none")]
    notifiers: Option<Vec<String>>,
    /// `"off"` or a duration of at least 5 minutes.
    #[serde(skip_serializing_if = "Option::is_none")]
    repeat_every: Option<String>,
    /// Who else is told while an incident stays unacknowledged.
    #[serde(skip_serializing_if = "Option::is_none")]
    escalation: Option<Vec<StepBody>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    notify_recovery: Option<bool>,
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct StepBody {
    /// After how long unacknowledged, e.g. `"15m"`.
    after: String,
    notifiers: Vec<String>,
}

/// A rule as the API shows it.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct RuleView {
    #[schema(value_type = String)]
    id: AlertRuleId,
    #[serde(flatten)]
    rule: RuleBody,
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    created_at: i64,
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    updated_at: i64,
}

/// A value that applies to a device, and the rule it comes from (`null`: the default).
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct Sourced<T> {
    value: T,
    #[schema(value_type = Option<String>)]
    rule: Option<AlertRuleId>,
}

impl<T> Sourced<T> {
    fn of<D>(r: &Resolved<D>, show: impl Fn(&D) -> T) -> Self {
        Sourced {
            value: show(&r.value),
            rule: r.rule.clone(),
        }
    }
}

/// What applies to one device, field by field.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct EffectiveView {
    #[schema(value_type = String)]
    device_id: DeviceId,
    engine: String,
    #[schema(value_type = String)]
    channel_id: ChannelId,
    #[schema(value_type = String)]
    business_id: BusinessId,
    down_after: Sourced<String>,
    severity: Sourced<String>,
    notifiers: Sourced<Vec<String>>,
    repeat_every: Sourced<String>,
    escalation: Sourced<Vec<StepBody>>,
    notify_recovery: Sourced<bool>,
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

fn ids_shown(ids: &[NotifierId]) -> Vec<String> {
    ids.iter().map(ToString::to_string).collect()
}

fn steps_shown(steps: &[EscalationStep]) -> Vec<StepBody> {
    steps
        .iter()
        .map(|s| StepBody {
            after: duration(s.after_ms),
            notifiers: ids_shown(&s.notifiers),
        })
        .collect()
}

/// The rule as a create takes it (what a merge patch applies to).
fn input(r: &AlertRule) -> RuleBody {
    RuleBody {
        id: None,
        matches: (&r.matches).into(),
        down_after: r.down_after_ms.map(duration),
        severity: r.severity.map(|s| s.as_str().to_string()),
        notifiers: r.notifiers.as_deref().map(ids_shown),
        repeat_every: r.repeat_every_ms.map(repeat),
        escalation: r.escalation.as_deref().map(steps_shown),
        notify_recovery: r.notify_recovery,
    }
}

fn view(r: &AlertRule) -> RuleView {
    RuleView {
        id: r.id.clone(),
        rule: input(r),
        created_at: r.created_at,
        updated_at: r.updated_at,
    }
}

#[utoipa::path(post, path = "/v1/alert-rules", tag = "alerts", security(("api_key" = [])),
    request_body = RuleBody,
    responses(
        (status = 201, description = "Created.", body = RuleView),
        (status = 409, description = "A rule with this id exists (`conflict`), or the account has as many rules as its limit (`limit_reached`).", body = ErrorBody),
    ))]
pub(super) async fn create(
    Account(account): Account,
    State(state): State<AppState>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<RuleView>)> {
    let body: RuleBody = parse_json(&body)?;
    let id = id_or_new(
        "id",
        body.id.clone(),
        AlertRuleId::generate,
        AlertRuleId::parse,
    )?;
    let rule = body.into_rule(id, state.clock.now_ms())?;
    let cap = state.limits_of(&account).await?.max_alert_rules;
    let rule = state.store.create_rule(account, rule, cap).await?;
    state.alerts.wake();
    Ok((StatusCode::CREATED, Json(view(&rule))))
}

#[utoipa::path(get, path = "/v1/alert-rules", tag = "alerts", security(("api_key" = [])),
    responses((status = 200, description = "Every rule of the account.", body = Listed<RuleView>)))]
pub(super) async fn list(
    Account(account): Account,
    State(state): State<AppState>,
) -> ApiResult<Json<Listed<RuleView>>> {
    let rules = state.store.list_rules(account).await?;
    Ok(Listed::all(rules.iter().map(view).collect()))
}

#[utoipa::path(get, path = "/v1/alert-rules/{id}", tag = "alerts", security(("api_key" = [])),
    params(("id" = String, Path, description = "The rule's id."), IfNoneMatchHeader),
    responses((status = 200, description = "The rule, with its `ETag`.", body = RuleView)))]
pub(super) async fn read(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let rule = state.store.get_rule(account, id.into()).await?;
    Ok(revision::read(&headers, view(&rule)))
}

#[utoipa::path(patch, path = "/v1/alert-rules/{id}", tag = "alerts", security(("api_key" = [])),
    params(("id" = String, Path, description = "The rule's id."), IfMatchHeader),
    request_body(content = Object, description = "A JSON merge patch (RFC 7396) over what a create takes; `null` removes a field. The result is checked as a create would be."),
    responses((status = 200, description = "Changed.", body = RuleView)))]
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
            let body: RuleBody = merged(&input(r), &patch, "rule")?;
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

#[utoipa::path(delete, path = "/v1/alert-rules/{id}", tag = "alerts", security(("api_key" = [])),
    params(("id" = String, Path, description = "The rule's id.")),
    responses((status = 204, description = "Deleted."),))]
pub(super) async fn remove(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.store.delete_rule(account, id.into()).await?;
    state.alerts.wake();
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct EffectiveQuery {
    device_id: Option<String>,
}

/// Each field's value for the device, and the rule that set it (`null`: the default).
#[utoipa::path(get, path = "/v1/alert-rules/effective", tag = "alerts", security(("api_key" = [])),
    params(EffectiveQuery),
    responses(
        (status = 200, description = "Each field's value for the device, and the rule that set it.", body = EffectiveView),
        (status = 404, description = "No such device in this account.", body = ErrorBody),
    ))]
pub(super) async fn effective(
    Account(account): Account,
    State(state): State<AppState>,
    Query(q): Query<EffectiveQuery>,
) -> ApiResult<Json<EffectiveView>> {
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
    Ok(Json(EffectiveView {
        device_id: ctx.device_id,
        engine: ctx.engine,
        channel_id: ctx.channel_id,
        business_id: ctx.business_id,
        down_after: Sourced::of(&e.down_after_ms, |ms| duration(*ms)),
        severity: Sourced::of(&e.severity, |s| s.as_str().to_string()),
        notifiers: Sourced::of(&e.notifiers, |n| ids_shown(n)),
        repeat_every: Sourced::of(&e.repeat_every_ms, |ms| repeat(*ms)),
        escalation: Sourced::of(&e.escalation, |steps| steps_shown(steps)),
        notify_recovery: Sourced::of(&e.notify_recovery, |b| *b),
    }))
}
