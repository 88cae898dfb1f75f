//! The alert engine: announced presence in, incidents and notifications out. It runs inside
//! one write transaction of the store ([`super::AlertTx`]), so that every notification is
//! committed with the state change that caused it, and every timer is a stored due time.
//!
//! A disconnect makes a *tracker* due `down_after` later (or at the end of the maintenance
//! window it fell in, plus `down_after`); a device back before then alerts nobody. When a
//! tracker fires, the device joins its business's unresolved incident, or reopens the one
//! resolved moments ago, or opens one; the incident's notification goes `group_wait` later,
//! naming every device that joined meanwhile. Reminders and escalation steps are the
//! incident's own timers; acknowledgement stops both. When every device is back, the
//! incident resolves and whoever got the alert gets the recovery notice.

mod devices;
mod notices;
mod state;

use super::message::Kind;
use super::{
    AlertTx, Entry, Incident, IncidentState, Notification, NotificationStatus, TimelineEntry,
};
use crate::ids::{AccountId, IncidentId};
use crate::storage::{StoreError, StoreResult};
use merpati_webhooks::IncidentEventKind;
use state::{DeviceKey, Engine};

/// How much one run takes on of each kind of work; more waits for the next run.
pub const BATCH: usize = 500;

#[derive(Debug, Clone)]
pub struct Settings {
    pub group_wait_ms: i64,
    /// A drop this soon after an incident resolved reopens it.
    pub reopen_within_ms: i64,
    /// Drops within `flap_within_ms` that make a device flapping.
    pub flap_drops: usize,
    pub flap_within_ms: i64,
    /// How long a flapping device must stay up (or down) to be stable again.
    pub flap_quiet_ms: i64,
    /// How far before a drop its conversations are counted.
    pub conversations_window_ms: i64,
    /// The address people's browsers reach, for links in notifications.
    pub public_url: String,
    pub link_key: Vec<u8>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            group_wait_ms: 10_000,
            reopen_within_ms: 5 * 60_000,
            flap_drops: 4,
            flap_within_ms: 30 * 60_000,
            flap_quiet_ms: 30 * 60_000,
            conversations_window_ms: 24 * 3_600_000,
            public_url: "http://127.0.0.1:8080".into(),
            link_key: Vec::new(),
        }
    }
}

/// An incident's state changed: for the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncidentChange {
    pub account_id: AccountId,
    pub incident_id: IncidentId,
    pub state: IncidentState,
}

/// What one run did, and when the engine should look again.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub due_deliveries: usize,
    pub notifications: usize,
    pub incidents: Vec<IncidentChange>,
    /// Work was left for the next run.
    pub more: bool,
    pub next_due: Option<i64>,
}

/// How an attempt to send a notification went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendResult {
    Sent,
    Failed {
        error: String,
        /// Trying again cannot help (a 404, a refused address, a deleted notifier).
        permanent: bool,
        retry_after_ms: Option<i64>,
    },
}

/// Takes in announced changes, fires what is due, sends what incidents owe.
pub fn run(tx: &mut dyn AlertTx, settings: &Settings, now: i64) -> StoreResult<Outcome> {
    let mut e = Engine::new(tx, settings, now);
    let cursor = e.tx.cursor()?;
    let changes = e.tx.changes_after(cursor, BATCH)?;
    e.out.more |= changes.len() == BATCH;
    // What the changes need, read ahead: every one's tracker, and the device of those that
    // went down or have a tracker (a connect with neither is skipped unread).
    let keys: Vec<DeviceKey> = changes
        .iter()
        .map(|c| (c.account_id.clone(), c.device_id.clone()))
        .collect();
    e.read_trackers(&keys)?;
    let mut needed = Vec::new();
    for (c, key) in changes.iter().zip(keys) {
        if c.down || e.tracker(&key.0, &key.1)?.is_some() {
            needed.push(key);
        }
    }
    e.read_devices(&needed)?;
    for c in &changes {
        e.on_change(c)?;
    }
    if let Some(last) = changes.last() {
        e.tx.set_cursor(last.seq)?;
    }
    let trackers = e.tx.due_trackers(now, BATCH)?;
    e.out.more |= trackers.len() == BATCH;
    let keys: Vec<DeviceKey> = trackers
        .iter()
        .map(|t| (t.account_id.clone(), t.device_id.clone()))
        .collect();
    e.read_devices(&keys)?;
    for t in trackers {
        // As a change above left it, if it did (read after them, it is that already).
        e.know_tracker(t.clone());
        if let Some(t) = e.tracker(&t.account_id, &t.device_id)? {
            if t.due_at.is_some_and(|at| at <= now) {
                e.on_due(t, None)?;
            }
        }
    }
    let mut due: Vec<(AccountId, IncidentId)> =
        e.tx.due_incidents(now, BATCH)?
            .into_iter()
            .map(|i| (i.account_id, i.id))
            .collect();
    e.out.more |= due.len() == BATCH;
    // Made due by this run (reopened, say), and not written yet.
    for i in e.incidents.values() {
        if i.due_at().is_some_and(|at| at <= now) && !due.iter().any(|(_, id)| *id == i.id) {
            due.push((i.account_id.clone(), i.id.clone()));
        }
    }
    for (account, id) in due {
        e.on_incident_due(&account, &id)?;
    }
    e.flush()?;
    let mut out = e.out;
    out.next_due = tx.next_due()?;
    Ok(out)
}

/// Acknowledges an incident (by a person, through `via`: `api`, `link`, `dashboard`).
/// Stops its escalation and reminders. Acknowledging it again changes nothing.
pub fn acknowledge(
    tx: &mut dyn AlertTx,
    settings: &Settings,
    account: &AccountId,
    id: &IncidentId,
    by: &str,
    via: &str,
    now: i64,
) -> StoreResult<(Incident, Outcome)> {
    let mut e = Engine::new(tx, settings, now);
    let mut inc = e
        .take(account, id)?
        .ok_or(StoreError::NotFound("incident"))?;
    match inc.state {
        IncidentState::Acknowledged => return Ok((inc, e.out)),
        IncidentState::Resolved => {
            return Err(StoreError::Conflict("the incident is resolved".into()))
        }
        IncidentState::Open => {}
    }
    inc.state = IncidentState::Acknowledged;
    inc.acknowledged_at = Some(now);
    inc.acknowledged_by = Some(by.to_string());
    inc.escalate_at = None;
    inc.repeat_at = None;
    e.append(
        &inc.id,
        Entry::Acknowledged {
            by: by.into(),
            via: via.into(),
        },
    )?;
    e.emit(&inc, IncidentEventKind::Acknowledged)?;
    e.store(inc.clone());
    e.flush()?;
    Ok((e.incidents.remove(id).unwrap_or(inc), e.out))
}

/// Resolves an incident by hand. Its devices still down alert again only after they come
/// back and drop anew.
pub fn resolve(
    tx: &mut dyn AlertTx,
    settings: &Settings,
    account: &AccountId,
    id: &IncidentId,
    by: &str,
    now: i64,
) -> StoreResult<(Incident, Outcome)> {
    let mut e = Engine::new(tx, settings, now);
    let inc = e
        .take(account, id)?
        .ok_or(StoreError::NotFound("incident"))?;
    if inc.state == IncidentState::Resolved {
        return Ok((inc, e.out));
    }
    e.resolve(inc, Some(by.to_string()), "api")?;
    e.flush()?;
    let inc =
        e.tx.incident(account, id)?
            .ok_or(StoreError::NotFound("incident"))?;
    Ok((inc, e.out))
}

/// Adds a note to an incident's timeline.
pub fn note(
    tx: &mut dyn AlertTx,
    account: &AccountId,
    id: &IncidentId,
    by: &str,
    text: &str,
    now: i64,
) -> StoreResult<()> {
    tx.incident(account, id)?
        .ok_or(StoreError::NotFound("incident"))?;
    tx.append(
        id,
        &TimelineEntry {
            at: now,
            entry: Entry::Note {
                by: by.into(),
                text: text.into(),
            },
        },
    )
}

/// Records an attempt at a notification: sent, to be tried again, or given up. A notifier
/// that gives one up is failing, and the account's other notifiers are told so, once per
/// failing streak.
pub fn record_attempt(
    tx: &mut dyn AlertTx,
    settings: &Settings,
    mut n: Notification,
    result: SendResult,
    now: i64,
) -> StoreResult<Outcome> {
    let mut e = Engine::new(tx, settings, now);
    n.attempts += 1;
    let mut health =
        e.tx.notifier(&n.account_id, &n.notifier_id)?
            .map(|x| x.health)
            .unwrap_or_default();
    let kind = n.message.kind;
    match &result {
        SendResult::Sent => {
            n.status = NotificationStatus::Sent;
            n.sent_at = Some(now);
            n.next_attempt_at = None;
            n.last_error = None;
            health.last_success_at = Some(now);
            health.failures_in_row = 0;
        }
        SendResult::Failed {
            error,
            permanent,
            retry_after_ms,
        } => {
            n.last_error = Some(error.clone());
            n.next_attempt_at = if *permanent {
                None
            } else {
                super::notifier::next_try(n.attempts, now, *retry_after_ms)
            };
            health.last_failure_at = Some(now);
            health.last_error = Some(error.clone());
            if n.next_attempt_at.is_none() {
                n.status = NotificationStatus::Failed;
                health.failures_in_row += 1;
            }
        }
    }
    e.tx.set_notification(&n)?;
    e.tx.put_notifier_health(&n.notifier_id, &health)?;
    if let Some(incident) = &n.incident_id {
        let entry = match &result {
            SendResult::Sent => Entry::NotificationSent {
                notifier_id: n.notifier_id.clone(),
                notification_id: n.id.clone(),
                kind,
                attempt: n.attempts,
            },
            SendResult::Failed { error, .. } => Entry::NotificationFailed {
                notifier_id: n.notifier_id.clone(),
                notification_id: n.id.clone(),
                kind,
                attempt: n.attempts,
                error: error.clone(),
                gave_up: n.status == NotificationStatus::Failed,
            },
        };
        e.append(incident, entry)?;
    }
    let gave_up_first = n.status == NotificationStatus::Failed && health.failures_in_row == 1;
    if gave_up_first && kind != Kind::NotifierFailing && kind != Kind::Test {
        e.report_failing(&n, &health)?;
    }
    e.flush()?;
    Ok(e.out)
}

/// The incident as `incident.*` events carry it, in the device events' style.
pub fn incident_payload(inc: &Incident, event: IncidentEventKind, now: i64) -> String {
    use merpati_webhooks::{
        ChannelRef, Event, IncidentDevice, IncidentEvent, IncidentRef, NamedRef,
    };
    let secs = |ms: i64| ms.div_euclid(1000);
    let body = Event::Incident(IncidentEvent {
        event,
        timestamp: secs(now),
        incident: IncidentRef {
            id: inc.id.to_string(),
            state: inc.state.as_str().into(),
            severity: inc.severity.as_str().into(),
            bisnis: NamedRef {
                id: inc.business_id.to_string(),
                name: inc.business_name.clone(),
            },
            devices: inc
                .devices
                .iter()
                .map(|d| IncidentDevice {
                    id: d.device_id.to_string(),
                    name: d.name.clone(),
                    channel: ChannelRef {
                        id: d.channel_id.to_string(),
                        name: d.channel_name.clone(),
                        engine: d.engine.clone(),
                    },
                    down_at: secs(d.down_at),
                    up_at: d.up_at.map(secs),
                })
                .collect(),
            opened_at: secs(inc.opened_at),
            acknowledged_at: inc.acknowledged_at.map(secs),
            acknowledged_by: inc.acknowledged_by.clone(),
            resolved_at: inc.resolved_at.map(secs),
            affected_conversations: inc.affected.count,
            backup_channel_id: inc.backup_channel_id.as_ref().map(|c| c.to_string()),
        },
    });
    String::from_utf8(body.to_json()).expect("JSON is UTF-8")
}
