//! An incident's side: its grouped notice, reminders and escalation, its resolution with
//! the recovery notice, and the messages themselves.

use super::super::message::{Kind, Message, MessageDevice, MAX_LISTED};
use super::super::{
    link, Entry, Incident, IncidentDevice, IncidentState, Notification, NotificationStatus,
    NotifierHealth,
};
use super::state::{DeviceKey, Engine};
use crate::ids::{AccountId, IncidentId, NotifierId};
use crate::storage::StoreResult;
use merpati_webhooks::IncidentEventKind;

impl Engine<'_> {
    pub(super) fn on_incident_due(
        &mut self,
        account: &AccountId,
        id: &IncidentId,
    ) -> StoreResult<()> {
        let Some(mut inc) = self.take(account, id)? else {
            return Ok(());
        };
        if inc.state == IncidentState::Resolved {
            self.put_back(inc);
            return Ok(());
        }
        let now = self.now;
        if let Some(notice) = inc.notice.filter(|n| n.at <= now) {
            inc.notice = None;
            let listed: Vec<IncidentDevice> = match notice.kind {
                Kind::Update => inc
                    .devices_down()
                    .filter(|d| !d.notified)
                    .cloned()
                    .collect(),
                _ => inc.devices_down().cloned().collect(),
            };
            if !listed.is_empty() {
                self.refresh_affected(&mut inc)?;
                let notifiers = inc.policy.notifiers.clone();
                self.notify(&inc, notice.kind, &listed, &notifiers)?;
                for d in inc.devices.iter_mut() {
                    if d.up_at.is_none() {
                        d.notified = true;
                    }
                }
                if notice.kind != Kind::Update && inc.state == IncidentState::Open {
                    if inc.policy.repeat_every_ms > 0 {
                        inc.repeat_at = Some(now + inc.policy.repeat_every_ms);
                    }
                    inc.escalation_step = 0;
                    inc.escalate_at = inc.policy.escalation.first().map(|s| now + s.after_ms);
                }
            }
        }
        if inc.state == IncidentState::Open {
            if let Some(at) = inc.escalate_at.filter(|at| *at <= now) {
                if let Some(end) = self.held_until(&inc)? {
                    inc.escalate_at = Some(end);
                } else if let Some(step) = inc.policy.escalation.get(inc.escalation_step).cloned() {
                    let listed: Vec<IncidentDevice> = inc.devices_down().cloned().collect();
                    self.notify(&inc, Kind::Escalation, &listed, &step.notifiers)?;
                    self.append(
                        &inc.id,
                        Entry::Escalated {
                            step: inc.escalation_step + 1,
                            notifiers: step.notifiers.clone(),
                        },
                    )?;
                    let base = at - step.after_ms;
                    inc.escalation_step += 1;
                    inc.escalate_at = inc
                        .policy
                        .escalation
                        .get(inc.escalation_step)
                        .map(|next| (base + next.after_ms).max(now));
                } else {
                    inc.escalate_at = None;
                }
            }
            if inc.repeat_at.is_some_and(|at| at <= now) {
                if let Some(end) = self.held_until(&inc)? {
                    inc.repeat_at = Some(end);
                } else {
                    let listed: Vec<IncidentDevice> = inc.devices_down().cloned().collect();
                    let notifiers = inc.policy.notifiers.clone();
                    self.notify(&inc, Kind::Reminder, &listed, &notifiers)?;
                    inc.repeat_at = (inc.policy.repeat_every_ms > 0)
                        .then_some(now + inc.policy.repeat_every_ms);
                }
            }
        }
        self.store(inc);
        Ok(())
    }

    /// When every device still down in the incident is inside a maintenance window: the
    /// end of the first of those windows to end (nothing escalates inside one).
    pub(super) fn held_until(&mut self, inc: &Incident) -> StoreResult<Option<i64>> {
        let down: Vec<IncidentDevice> = inc.devices_down().cloned().collect();
        if down.is_empty() {
            return Ok(None);
        }
        let keys: Vec<DeviceKey> = down
            .iter()
            .map(|x| (inc.account_id.clone(), x.device_id.clone()))
            .collect();
        self.read_devices(&keys)?;
        let mut until: Option<i64> = None;
        for x in &down {
            let Some(d) = self.device(&inc.account_id, &x.device_id)? else {
                return Ok(None);
            };
            match self.window_at(&d, self.now)? {
                Some((window, end)) => {
                    self.append(
                        &inc.id,
                        Entry::MaintenanceStarted {
                            window_id: window,
                            device_id: x.device_id.clone(),
                        },
                    )?;
                    until = Some(until.map_or(end, |u: i64| u.min(end)));
                }
                None => return Ok(None),
            }
        }
        Ok(until)
    }

    pub(super) fn resolve(
        &mut self,
        mut inc: Incident,
        by: Option<String>,
        via: &str,
    ) -> StoreResult<()> {
        let now = self.now;
        let unsent_notice = inc.notice.take();
        inc.state = IncidentState::Resolved;
        inc.resolved_at = Some(now);
        inc.repeat_at = None;
        inc.escalate_at = None;
        self.append(
            &inc.id,
            Entry::Resolved {
                by: by.clone(),
                via: via.into(),
            },
        )?;
        let automatic = by.is_none();
        let flapping = inc.devices.iter().any(|d| d.flapping);
        let alerted = self.tx.alerted_notifiers(&inc.id)?;
        if automatic && inc.policy.notify_recovery && !flapping && !alerted.is_empty() {
            let pending = self.tx.pending_notifications(&inc.id)?;
            let first_down = inc.devices.iter().map(|d| d.down_at).min().unwrap_or(now);
            let last_up = inc
                .devices
                .iter()
                .filter_map(|d| d.up_at)
                .max()
                .unwrap_or(now);
            let listed: Vec<IncidentDevice> = inc.devices.clone();
            for notifier in alerted {
                let mut unsent = false;
                for mut p in pending
                    .iter()
                    .filter(|p| p.notifier_id == notifier && p.message.kind.is_alert())
                    .cloned()
                {
                    p.status = NotificationStatus::Superseded;
                    p.next_attempt_at = None;
                    self.tx.set_notification(&p)?;
                    unsent = true;
                }
                let mut message = self.message(&inc, Kind::Recovery, &listed, &notifier)?;
                message.down_ms = Some(last_up - first_down);
                message.alert_unsent = unsent;
                self.enqueue(&inc, &notifier, message)?;
            }
        }
        let _ = unsent_notice;
        self.emit(&inc, IncidentEventKind::Resolved)?;
        self.store(inc);
        Ok(())
    }

    pub(super) fn message(
        &mut self,
        inc: &Incident,
        kind: Kind,
        devices: &[IncidentDevice],
        notifier: &NotifierId,
    ) -> StoreResult<Message> {
        let language = self.language_for(&inc.account_id, notifier)?;
        let backup = match &inc.backup_channel_id {
            Some(_) => {
                let first = inc.devices.first().map(|d| d.channel_id.clone());
                match first {
                    Some(ch) => self.backup_of(&inc.account_id, &ch)?,
                    None => None,
                }
            }
            None => None,
        };
        let base = self.s.public_url.trim_end_matches('/');
        let token = link::sign(&self.s.link_key, &inc.id, self.now + link::LINK_TTL_MS);
        Ok(Message {
            kind,
            language,
            incident_id: Some(inc.id.clone()),
            severity: Some(inc.severity),
            business: Some(inc.business_name.clone()),
            devices: devices
                .iter()
                .take(MAX_LISTED)
                .map(|d| MessageDevice {
                    id: d.device_id.to_string(),
                    name: d.name.clone(),
                    channel: d.channel_name.clone(),
                    engine: d.engine.clone(),
                    down_since: d.down_at,
                    up_at: d.up_at,
                })
                .collect(),
            more: devices.len().saturating_sub(MAX_LISTED),
            down_ms: None,
            alert_unsent: false,
            affected_conversations: Some(inc.affected.count),
            backup_channel: backup,
            incident_url: Some(format!("{base}/incidents/{}", inc.id)),
            ack_url: Some(format!("{base}/ack/{token}")),
            detail: None,
            at: self.now,
        })
    }

    pub(super) fn notify(
        &mut self,
        inc: &Incident,
        kind: Kind,
        devices: &[IncidentDevice],
        notifiers: &[NotifierId],
    ) -> StoreResult<()> {
        for n in notifiers {
            let mut message = self.message(inc, kind, devices, n)?;
            if kind == Kind::Escalation {
                message.detail = Some(format!("escalation step {}", inc.escalation_step + 1));
            }
            self.enqueue(inc, n, message)?;
        }
        Ok(())
    }

    pub(super) fn enqueue(
        &mut self,
        inc: &Incident,
        notifier: &NotifierId,
        message: Message,
    ) -> StoreResult<()> {
        let n = Notification::new(
            inc.account_id.clone(),
            Some(inc.id.clone()),
            notifier.clone(),
            message,
            self.now,
        );
        self.tx.enqueue(&n)?;
        self.out.notifications += 1;
        Ok(())
    }

    /// Tells the account's other notifiers that `failed`'s notifier gave up a message.
    pub(super) fn report_failing(
        &mut self,
        failed: &Notification,
        health: &NotifierHealth,
    ) -> StoreResult<()> {
        let account = failed.account_id.clone();
        let others: Vec<NotifierId> = self
            .account(&account)?
            .notifiers
            .iter()
            .filter(|n| **n != failed.notifier_id)
            .cloned()
            .collect();
        let name = self
            .tx
            .notifier(&account, &failed.notifier_id)?
            .map(|n| n.name)
            .unwrap_or_else(|| failed.notifier_id.to_string());
        for other in others {
            let language = self.language_for(&account, &other)?;
            let mut message = Message::new(Kind::NotifierFailing, language, self.now);
            message.incident_id = failed.incident_id.clone();
            message.business = failed.message.business.clone();
            message.incident_url = failed.message.incident_url.clone();
            message.detail = Some(format!(
                "{name} ({}): {}",
                failed.notifier_id,
                health.last_error.clone().unwrap_or_default()
            ));
            let n = Notification::new(
                account.clone(),
                failed.incident_id.clone(),
                other,
                message,
                self.now,
            );
            self.tx.enqueue(&n)?;
            self.out.notifications += 1;
        }
        Ok(())
    }
}
