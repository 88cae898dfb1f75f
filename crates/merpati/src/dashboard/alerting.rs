//! The alerting page: rules and maintenance windows (listed, created, edited and deleted as
//! the JSON the API takes, so nothing the API can say is out of reach) and notifiers with
//! their health and a test button.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use axum::Extension;
use serde_json::{json, Value};

use super::client::{enc, Api, List, Refused};
use super::page::{after_action, show, Frame, Prefs};
use super::session::{Action, Session};
use super::Shown;
use crate::api::AppState;

/// A rule or window: its id, a one-line summary, and the JSON to edit.
pub struct Editable {
    pub id: String,
    pub summary: String,
    pub json: String,
    pub active: bool,
}

pub struct NotifierRow {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub target: String,
    pub health: String,
}

#[derive(Template)]
#[template(path = "dashboard/alerting.html")]
pub struct AlertingPage {
    pub f: Frame,
    pub rules: Vec<Editable>,
    pub windows: Vec<Editable>,
    pub notifiers: Vec<NotifierRow>,
}

fn editable(mut v: Value) -> Editable {
    let o = v.as_object_mut().expect("API objects");
    let id = o
        .remove("id")
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default();
    let active = o.get("active").is_some_and(|a| !a.is_null());
    for shown_only in ["created_at", "updated_at", "active", "next"] {
        o.remove(shown_only);
    }
    let summary = o
        .get("name")
        .and_then(Value::as_str)
        .map(String::from)
        .unwrap_or_else(|| o.get("match").map(|m| m.to_string()).unwrap_or_default());
    Editable {
        id,
        summary,
        json: serde_json::to_string_pretty(&v).unwrap_or_default(),
        active,
    }
}

fn notifier(v: &Value) -> NotifierRow {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let target = ["url", "to", "chat_id"]
        .iter()
        .find_map(|k| v.get(*k).filter(|x| !x.is_null()))
        .map(|x| match x {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .unwrap_or_default();
    NotifierRow {
        id: s("id"),
        name: s("name"),
        kind: s("kind"),
        target,
        health: v
            .pointer("/health/status")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
    }
}

pub async fn page(
    State(state): State<AppState>,
    Extension(api): Extension<Api>,
    session: Session,
    headers: HeaderMap,
) -> Result<Response, Shown> {
    let prefs = Prefs::of(&headers);
    let a = &session.account;
    let (rules, windows, notifiers) = tokio::join!(
        api.get::<List<Value>>(a, "/v1/alert-rules"),
        api.get::<List<Value>>(a, "/v1/maintenance-windows"),
        api.get::<List<Value>>(a, "/v1/notifiers"),
    );
    let shown = |r: Refused| Shown::refused(&prefs, r);
    let f = Frame::new(&state, &session, &headers, "alerting").await;
    let page = AlertingPage {
        f,
        rules: rules
            .map_err(shown)?
            .data
            .into_iter()
            .map(editable)
            .collect(),
        windows: windows
            .map_err(shown)?
            .data
            .into_iter()
            .map(editable)
            .collect(),
        notifiers: notifiers
            .map_err(shown)?
            .data
            .iter()
            .map(notifier)
            .collect(),
    };
    Ok(show(&state, &page.f, &page))
}

fn collection(kind: &str) -> Option<&'static str> {
    match kind {
        "rules" => Some("/v1/alert-rules"),
        "windows" => Some("/v1/maintenance-windows"),
        "notifiers" => Some("/v1/notifiers"),
        _ => None,
    }
}

fn body(action: &Action) -> Result<Value, Refused> {
    let raw = action.fields.get("json").unwrap_or("{}");
    serde_json::from_str(raw).map_err(|e| Refused {
        status: axum::http::StatusCode::BAD_REQUEST,
        message: format!("JSON: {e}"),
    })
}

/// `POST /alerting/{rules|windows}`: creates one from the JSON given.
pub async fn create(
    State(state): State<AppState>,
    Extension(api): Extension<Api>,
    Path(kind): Path<String>,
    action: Action,
) -> Response {
    let t = action.prefs.words();
    let result = match (collection(&kind), body(&action)) {
        (Some(uri), Ok(v)) if kind != "notifiers" => {
            api.post(&action.session.account, uri, &v).await
        }
        (_, Err(r)) => Err(r),
        _ => return after_action(&state, "/alerting", false, t.not_found),
    };
    match result {
        Ok(_) => after_action(&state, "/alerting", true, t.saved),
        Err(r) => after_action(&state, "/alerting", false, &r.message),
    }
}

/// `POST /alerting/{kind}/{id}/{save|delete|test}`.
pub async fn act(
    State(state): State<AppState>,
    Extension(api): Extension<Api>,
    Path((kind, id, verb)): Path<(String, String, String)>,
    action: Action,
) -> Response {
    let t = action.prefs.words();
    let Some(base) = collection(&kind) else {
        return after_action(&state, "/alerting", false, t.not_found);
    };
    let uri = format!("{base}/{}", enc(&id));
    let account = &action.session.account;
    let (result, said) = match (kind.as_str(), verb.as_str()) {
        ("rules" | "windows", "save") => match body(&action) {
            Ok(v) => (
                api.call(account, Method::PATCH, &uri, Some(&v)).await,
                t.saved,
            ),
            Err(r) => (Err(r), t.failed),
        },
        ("rules" | "windows", "delete") => (
            api.call(account, Method::DELETE, &uri, None).await,
            t.deleted,
        ),
        ("notifiers", "test") => (
            api.post(account, &format!("{uri}/test"), &json!({})).await,
            t.tested,
        ),
        _ => return after_action(&state, "/alerting", false, t.not_found),
    };
    match result {
        Ok(_) => after_action(&state, "/alerting", true, said),
        Err(r) => after_action(&state, "/alerting", false, &r.message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_editable_holds_what_the_api_takes() {
        let e = editable(json!({
            "id": "rule_1", "match": {"engine": "wa"}, "down_after": "0s",
            "created_at": "x", "updated_at": "y"
        }));
        assert_eq!(e.id, "rule_1");
        let back: Value = serde_json::from_str(&e.json).unwrap();
        assert_eq!(back, json!({"match": {"engine": "wa"}, "down_after": "0s"}));
        assert!(!e.active);
    }
}
