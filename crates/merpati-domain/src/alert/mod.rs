//! Alerts and incidents: what the device documents tell every merchant to build on top of
//! `device.disconnected`, as rules (`rules`: which thresholds and notifiers apply to a
//! device), maintenance windows (`window`), the engine that turns announced presence into
//! incidents and notifications (`engine`), what a notification says (`message`), the
//! signed acknowledgement links (`link`), and what the store keeps of it all.

use serde::{Deserialize, Serialize};

use crate::device::DeviceContext;
use crate::ids::{
    AccountId, AlertRuleId, BusinessId, ChannelId, DeviceId, IncidentId, NotificationId,
    NotifierId, WindowId,
};
use crate::storage::{Owned, Page, StoreError, StoreResult};

pub mod engine;
pub mod link;
pub mod message;
pub mod notifier;
pub mod rules;
pub mod window;

pub use message::{Language, Message};
pub use notifier::{Notifier, NotifierHealth, NotifierKind};
pub use rules::{AlertRule, EscalationStep, Severity};
pub use window::{MaintenanceWindow, Schedule};

/// Which devices a rule or a window applies to. Empty: every device of the account.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Match {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub business_id: Option<BusinessId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_id: Option<ChannelId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<DeviceId>,
}

impl Match {
    pub fn matches(&self, d: &DeviceContext) -> bool {
        self.engine.as_ref().is_none_or(|e| *e == d.engine)
            && self
                .business_id
                .as_ref()
                .is_none_or(|b| *b == d.business_id)
            && self.channel_id.as_ref().is_none_or(|c| *c == d.channel_id)
            && self.device_id.as_ref().is_none_or(|x| *x == d.device_id)
    }

    /// Device over channel over business over engine over the account's default.
    pub fn specificity(&self) -> u8 {
        if self.device_id.is_some() {
            4
        } else if self.channel_id.is_some() {
            3
        } else if self.business_id.is_some() {
            2
        } else if self.engine.is_some() {
            1
        } else {
            0
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IncidentState {
    Open,
    Acknowledged,
    Resolved,
}

impl IncidentState {
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentState::Open => "open",
            IncidentState::Acknowledged => "acknowledged",
            IncidentState::Resolved => "resolved",
        }
    }
    pub fn parse(s: &str) -> Option<IncidentState> {
        match s {
            "open" => Some(IncidentState::Open),
            "acknowledged" => Some(IncidentState::Acknowledged),
            "resolved" => Some(IncidentState::Resolved),
            _ => None,
        }
    }
}

/// One device hit by an incident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentDevice {
    pub device_id: DeviceId,
    pub name: String,
    pub channel_id: ChannelId,
    pub channel_name: String,
    pub engine: String,
    /// When its disconnect was announced.
    pub down_at: i64,
    pub up_at: Option<i64>,
    /// Named in a notification already.
    pub notified: bool,
    /// Dropping and returning too often: its changes notify nobody.
    #[serde(default)]
    pub flapping: bool,
}

/// Who is told, and how often, for one incident: the effective rules of its devices
/// together.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub notifiers: Vec<NotifierId>,
    /// 0: off.
    pub repeat_every_ms: i64,
    pub escalation: Vec<EscalationStep>,
    pub notify_recovery: bool,
}

/// The conversations a drop affects: distinct senders of inbound items on the channels hit
/// in the window before it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Affected {
    pub count: usize,
    pub phones: Vec<String>,
    pub window_ms: i64,
}

/// What the next notification of an incident will say, and when it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingNotice {
    pub at: i64,
    pub kind: message::Kind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    pub id: IncidentId,
    pub account_id: AccountId,
    pub business_id: BusinessId,
    pub business_name: String,
    pub state: IncidentState,
    pub severity: Severity,
    pub opened_at: i64,
    pub acknowledged_at: Option<i64>,
    pub acknowledged_by: Option<String>,
    pub resolved_at: Option<i64>,
    pub devices: Vec<IncidentDevice>,
    pub policy: Policy,
    /// The grouped notification still to go.
    pub notice: Option<PendingNotice>,
    pub repeat_at: Option<i64>,
    pub escalate_at: Option<i64>,
    /// Escalation steps taken.
    pub escalation_step: usize,
    pub affected: Affected,
    pub backup_channel_id: Option<ChannelId>,
    pub revision: i64,
    pub updated_at: i64,
}

impl Incident {
    /// The earliest of its timers.
    pub fn due_at(&self) -> Option<i64> {
        if self.state == IncidentState::Resolved {
            return None;
        }
        let notice = self.notice.map(|n| n.at);
        let timers = crate::clock::earliest(self.repeat_at, self.escalate_at);
        crate::clock::earliest(notice, timers)
    }

    pub fn devices_down(&self) -> impl Iterator<Item = &IncidentDevice> {
        self.devices.iter().filter(|d| d.up_at.is_none())
    }
}

/// One entry of an incident's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Entry {
    Opened,
    Reopened,
    DeviceDown {
        device_id: DeviceId,
        name: String,
    },
    DeviceUp {
        device_id: DeviceId,
        name: String,
        down_ms: i64,
    },
    Flapping {
        device_id: DeviceId,
        name: String,
    },
    NotificationSent {
        notifier_id: NotifierId,
        notification_id: NotificationId,
        kind: message::Kind,
        attempt: i64,
    },
    NotificationFailed {
        notifier_id: NotifierId,
        notification_id: NotificationId,
        kind: message::Kind,
        attempt: i64,
        error: String,
        /// No attempt follows.
        gave_up: bool,
    },
    Escalated {
        step: usize,
        notifiers: Vec<NotifierId>,
    },
    Acknowledged {
        by: String,
        via: String,
    },
    Note {
        by: String,
        text: String,
    },
    MaintenanceStarted {
        window_id: WindowId,
        device_id: DeviceId,
    },
    MaintenanceEnded {
        window_id: WindowId,
        device_id: DeviceId,
    },
    Resolved {
        by: Option<String>,
        via: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub at: i64,
    #[serde(flatten)]
    pub entry: Entry,
}

/// A device's alert as it waits: down (announced) and not yet alerted, held by a
/// maintenance window, alerted, or remembered as flapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracker {
    pub account_id: AccountId,
    pub device_id: DeviceId,
    /// When its disconnect was announced; None while it is up (and remembered as flapping).
    pub down_since: Option<i64>,
    pub phase: Phase,
    /// When the engine looks at it next.
    pub due_at: Option<i64>,
    pub incident_id: Option<IncidentId>,
    pub flapping: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Down, its alert due at `due_at`.
    Waiting,
    /// Down inside this window: the alert waits for its end.
    Held(WindowId),
    /// Alerted: part of `incident_id`.
    Firing,
}

impl Phase {
    pub fn as_str(&self) -> &str {
        match self {
            Phase::Waiting => "waiting",
            Phase::Held(_) => "held",
            Phase::Firing => "firing",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotificationStatus {
    Pending,
    Sent,
    Failed,
    /// Replaced by a later message that says both (an alert still being retried when the
    /// recovery came).
    Superseded,
}

impl NotificationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationStatus::Pending => "pending",
            NotificationStatus::Sent => "sent",
            NotificationStatus::Failed => "failed",
            NotificationStatus::Superseded => "superseded",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(NotificationStatus::Pending),
            "sent" => Some(NotificationStatus::Sent),
            "failed" => Some(NotificationStatus::Failed),
            "superseded" => Some(NotificationStatus::Superseded),
            _ => None,
        }
    }
}

/// One message to one notifier, kept until it is sent or given up.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub id: NotificationId,
    pub account_id: AccountId,
    pub incident_id: Option<IncidentId>,
    pub notifier_id: NotifierId,
    pub message: Message,
    pub status: NotificationStatus,
    pub attempts: i64,
    pub next_attempt_at: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub sent_at: Option<i64>,
}

impl Notification {
    /// A new notification to `notifier`, due at once.
    pub fn new(
        account_id: AccountId,
        incident_id: Option<IncidentId>,
        notifier_id: NotifierId,
        message: Message,
        now: i64,
    ) -> Notification {
        Notification {
            id: NotificationId::generate(),
            account_id,
            incident_id,
            notifier_id,
            message,
            status: NotificationStatus::Pending,
            attempts: 0,
            next_attempt_at: Some(now),
            last_error: None,
            created_at: now,
            sent_at: None,
        }
    }
}

/// One announced change of a device's presence, in the order announced: the engine's input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceChange {
    /// Its place in the order of announcements.
    pub seq: i64,
    pub account_id: AccountId,
    pub device_id: DeviceId,
    pub down: bool,
    /// When it was announced.
    pub at: i64,
}

/// The storage calls the alert engine makes inside one transaction. A backend implements
/// each as its statements; the engine (`engine`) decides what to call.
pub trait AlertTx {
    /// Announced changes after `seq`, oldest first.
    fn changes_after(&mut self, seq: i64, limit: usize) -> StoreResult<Vec<PresenceChange>>;
    /// The last change the engine has taken in.
    fn cursor(&mut self) -> StoreResult<i64>;
    fn set_cursor(&mut self, seq: i64) -> StoreResult<()>;
    fn device(
        &mut self,
        account: &AccountId,
        device: &DeviceId,
    ) -> StoreResult<Option<DeviceContext>>;
    fn rules(&mut self, account: &AccountId) -> StoreResult<Vec<AlertRule>>;
    fn windows(&mut self, account: &AccountId) -> StoreResult<Vec<MaintenanceWindow>>;
    fn notifier_ids(&mut self, account: &AccountId) -> StoreResult<Vec<NotifierId>>;
    fn notifier(&mut self, account: &AccountId, id: &NotifierId) -> StoreResult<Option<Notifier>>;
    fn account(&mut self, account: &AccountId) -> StoreResult<Option<(String, Language)>>;
    /// How many disconnects of the device were announced at or after `since`, up to the
    /// announcement numbered `seq` (later ones, read in the same run, do not count yet).
    fn drops_since(
        &mut self,
        account: &AccountId,
        device: &DeviceId,
        since: i64,
        seq: i64,
    ) -> StoreResult<usize>;
    fn tracker(&mut self, account: &AccountId, device: &DeviceId) -> StoreResult<Option<Tracker>>;
    /// The trackers of these devices, those that have one, in any order. A backend whose
    /// every call is a round trip reads them in one.
    fn trackers(&mut self, devices: &[(AccountId, DeviceId)]) -> StoreResult<Vec<Tracker>> {
        let mut found = Vec::new();
        for (account, device) in devices {
            found.extend(self.tracker(account, device)?);
        }
        Ok(found)
    }
    /// These devices' contexts, those that still exist, in any order (one round trip, as
    /// `trackers`).
    fn devices(&mut self, devices: &[(AccountId, DeviceId)]) -> StoreResult<Vec<DeviceContext>> {
        let mut found = Vec::new();
        for (account, device) in devices {
            found.extend(self.device(account, device)?);
        }
        Ok(found)
    }
    fn put_tracker(&mut self, t: &Tracker) -> StoreResult<()>;
    fn delete_tracker(&mut self, account: &AccountId, device: &DeviceId) -> StoreResult<()>;
    fn due_trackers(&mut self, now: i64, limit: usize) -> StoreResult<Vec<Tracker>>;
    fn incident(&mut self, account: &AccountId, id: &IncidentId) -> StoreResult<Option<Incident>>;
    /// The business's incident that is not resolved, if any.
    fn unresolved_incident(
        &mut self,
        account: &AccountId,
        business: &BusinessId,
    ) -> StoreResult<Option<Incident>>;
    /// The business's incident resolved last, if at or after `since`.
    fn resolved_since(
        &mut self,
        account: &AccountId,
        business: &BusinessId,
        since: i64,
    ) -> StoreResult<Option<Incident>>;
    /// Inserts or updates it; an update is kept only at the revision it was read at
    /// (`Stale` otherwise), and bumps it.
    fn put_incident(&mut self, i: &Incident) -> StoreResult<()>;
    fn due_incidents(&mut self, now: i64, limit: usize) -> StoreResult<Vec<Incident>>;
    fn append(&mut self, incident: &IncidentId, entry: &TimelineEntry) -> StoreResult<()>;
    fn enqueue(&mut self, n: &Notification) -> StoreResult<()>;
    /// The incident's notifications not yet sent nor given up.
    fn pending_notifications(&mut self, incident: &IncidentId) -> StoreResult<Vec<Notification>>;
    fn set_notification(&mut self, n: &Notification) -> StoreResult<()>;
    /// Notifiers that were sent (or are being sent) one of the incident's alerts.
    fn alerted_notifiers(&mut self, incident: &IncidentId) -> StoreResult<Vec<NotifierId>>;
    fn put_notifier_health(&mut self, id: &NotifierId, h: &NotifierHealth) -> StoreResult<()>;
    /// Stores an operational event of the account (`incident.opened`, …) and fans it out;
    /// returns how many deliveries are due.
    fn emit(
        &mut self,
        account: &AccountId,
        business: &BusinessId,
        event_type: &'static str,
        payload: String,
        now: i64,
    ) -> StoreResult<usize>;
    /// Distinct senders of inbound items on the channels in [from, to), at most `limit`.
    fn senders(
        &mut self,
        account: &AccountId,
        channels: &[ChannelId],
        from: i64,
        to: i64,
        limit: usize,
    ) -> StoreResult<Vec<String>>;
    /// The channel's backup channel: its id, name, devices up and devices in all.
    fn backup_channel(
        &mut self,
        account: &AccountId,
        channel: &ChannelId,
    ) -> StoreResult<Option<BackupChannel>>;
    /// The earliest time a tracker, an incident or a notification is due.
    fn next_due(&mut self) -> StoreResult<Option<i64>>;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupChannel {
    pub id: ChannelId,
    pub name: String,
    pub devices_up: usize,
    pub devices: usize,
}

/// A piece of alert work for the backend to run inside one write transaction.
pub type AlertJob<R> = Box<dyn FnOnce(&mut dyn AlertTx) -> StoreResult<R> + Send>;

/// Filters of the incident list.
#[derive(Debug, Clone, Default)]
pub struct IncidentFilter {
    pub state: Option<IncidentState>,
}

/// What the store keeps of alerts: rules, notifiers and windows as an account edits them,
/// incidents and their timelines as the engine writes them, and notifications until sent.
#[async_trait::async_trait]
pub trait AlertStore: Send + Sync {
    /// Runs alert work in one write transaction: all of it is kept, or none.
    async fn alert_write(&self, job: AlertJob<engine::Outcome>) -> StoreResult<engine::Outcome>;

    /// LimitReached when the account has `cap` rules.
    async fn create_rule(
        &self,
        account: AccountId,
        rule: AlertRule,
        cap: u32,
    ) -> StoreResult<AlertRule>;
    async fn list_rules(&self, account: AccountId) -> StoreResult<Vec<AlertRule>>;
    async fn get_rule(&self, account: AccountId, id: AlertRuleId) -> StoreResult<AlertRule>;
    /// Kept only at `rule.revision` (`Stale` otherwise).
    async fn update_rule(&self, account: AccountId, rule: AlertRule) -> StoreResult<AlertRule>;
    async fn delete_rule(&self, account: AccountId, id: AlertRuleId) -> StoreResult<()>;

    async fn create_notifier(&self, account: AccountId, n: Notifier) -> StoreResult<Notifier>;
    async fn list_notifiers(&self, account: AccountId) -> StoreResult<Vec<Notifier>>;
    async fn get_notifier(&self, account: AccountId, id: NotifierId) -> StoreResult<Notifier>;
    async fn update_notifier(&self, account: AccountId, n: Notifier) -> StoreResult<Notifier>;
    /// Conflict while a rule names it.
    async fn delete_notifier(&self, account: AccountId, id: NotifierId) -> StoreResult<()>;

    async fn create_window(
        &self,
        account: AccountId,
        w: MaintenanceWindow,
    ) -> StoreResult<MaintenanceWindow>;
    async fn list_windows(&self, account: AccountId) -> StoreResult<Vec<MaintenanceWindow>>;
    async fn get_window(&self, account: AccountId, id: WindowId) -> StoreResult<MaintenanceWindow>;
    async fn update_window(
        &self,
        account: AccountId,
        w: MaintenanceWindow,
    ) -> StoreResult<MaintenanceWindow>;
    /// The devices it held are weighed again at `now`.
    async fn delete_window(&self, account: AccountId, id: WindowId, now: i64) -> StoreResult<()>;

    async fn list_incidents(
        &self,
        account: AccountId,
        filter: IncidentFilter,
        page: Page,
    ) -> StoreResult<Vec<Incident>>;
    async fn get_incident(&self, account: AccountId, id: IncidentId) -> StoreResult<Incident>;
    /// Any account's incident: a signed link names the incident alone.
    async fn find_incident(&self, id: IncidentId) -> StoreResult<Incident>;
    async fn timeline(&self, incident: IncidentId) -> StoreResult<Vec<TimelineEntry>>;
    async fn incident_notifications(&self, incident: IncidentId) -> StoreResult<Vec<Notification>>;
    async fn backup_status(
        &self,
        account: AccountId,
        channel: ChannelId,
    ) -> StoreResult<Option<BackupChannel>>;

    /// One device as rules see it (its channel, business, engine), for the effective rules.
    async fn device_context(
        &self,
        account: AccountId,
        device: DeviceId,
    ) -> StoreResult<DeviceContext>;

    /// Notifications due by `now`, earliest first.
    async fn due_notifications(&self, now: i64, limit: usize) -> StoreResult<Vec<Notification>>;
    /// Retention: up to `limit` incidents resolved before `before` (with their timelines and
    /// notifications), and notifications of no incident finished before it. Open
    /// incidents stay, however old.
    async fn prune_alerts(&self, before: i64, limit: usize) -> StoreResult<usize>;
    /// The key that signs acknowledgement links, made on first use.
    async fn link_key(&self) -> StoreResult<Vec<u8>>;
}

/// A device of `engine` for the rules' unit tests.
#[cfg(test)]
pub(crate) fn test_device(engine: &str) -> DeviceContext {
    DeviceContext {
        account_id: AccountId::from("acct"),
        account_name: "A".into(),
        business_id: BusinessId::from("biz"),
        business_name: "B".into(),
        channel_id: ChannelId::from("ch"),
        channel_name: "C".into(),
        engine: engine.into(),
        device_id: DeviceId::from("dev"),
        device_name: "D".into(),
        phone: None,
        presence: crate::device::Presence::Unknown,
        presence_since: None,
        engine_state: None,
        channel_heartbeat_ms: None,
        channel_grace_ms: None,
        account_limits: Default::default(),
    }
}

/// Every id a match names is the account's own (`owned` answers).
pub fn check_match<E: From<StoreError>>(
    m: &Match,
    mut owned: impl FnMut(Owned, &str) -> Result<bool, E>,
) -> Result<(), E> {
    let named = [
        (
            Owned::Business,
            "business",
            m.business_id.as_ref().map(|b| b.as_str()),
        ),
        (
            Owned::Channel,
            "channel",
            m.channel_id.as_ref().map(|c| c.as_str()),
        ),
        (
            Owned::Device,
            "device",
            m.device_id.as_ref().map(|d| d.as_str()),
        ),
    ];
    for (kind, what, id) in named {
        if let Some(id) = id {
            if !owned(kind, id)? {
                return Err(StoreError::Invalid(format!("match: no {what} \"{id}\"")).into());
            }
        }
    }
    Ok(())
}

/// Every notifier a rule names is the account's own (`owned` answers).
pub fn check_notifiers<E: From<StoreError>>(
    rule: &AlertRule,
    mut owned: impl FnMut(Owned, &str) -> Result<bool, E>,
) -> Result<(), E> {
    let named = rule
        .notifiers
        .iter()
        .flatten()
        .chain(rule.escalation.iter().flatten().flat_map(|s| &s.notifiers));
    for n in named {
        if !owned(Owned::Notifier, n.as_str())? {
            return Err(StoreError::Invalid(format!("no notifier \"{n}\"")).into());
        }
    }
    Ok(())
}

/// A notifier may go only when no rule names it: the refusal names the rules.
pub fn check_unnamed(rules: &[AlertRule], notifier: &NotifierId) -> StoreResult<()> {
    let naming: Vec<&str> = rules
        .iter()
        .filter(|r| {
            r.notifiers.iter().flatten().any(|n| n == notifier)
                || r.escalation
                    .iter()
                    .flatten()
                    .any(|s| s.notifiers.contains(notifier))
        })
        .map(|r| r.id.as_str())
        .collect();
    if naming.is_empty() {
        Ok(())
    } else {
        Err(StoreError::Conflict(format!(
            "alert rules name this notifier: {}",
            naming.join(", ")
        )))
    }
}
