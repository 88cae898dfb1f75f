//! A device's side: its announced changes, its tracker coming due, and joining its
//! business's incident.

use super::super::message::Kind;
use super::super::rules::{merge, Effective};
use super::super::{
    Affected, Entry, Incident, IncidentDevice, IncidentState, PendingNotice, Phase, PresenceChange,
    Tracker,
};
use super::state::Engine;
use crate::device::DeviceContext;
use crate::ids::IncidentId;
use crate::storage::StoreResult;
use merpati_webhooks::IncidentEventKind;

impl Engine<'_> {
    pub(super) fn on_change(&mut self, c: &PresenceChange) -> StoreResult<()> {
        let tracker = self.tracker(&c.account_id, &c.device_id)?;
        // Up with nothing waiting for it: the common case of a connect, nothing to do.
        if !c.down && tracker.is_none() {
            return Ok(());
        }
        let Some(d) = self.device(&c.account_id, &c.device_id)? else {
            if tracker.is_some() {
                self.delete_tracker(&c.account_id, &c.device_id)?;
            }
            return Ok(());
        };
        if c.down {
            self.on_down(&d, tracker, c.at, c.seq)
        } else {
            self.on_up(&d, tracker, c.at)
        }
    }

    pub(super) fn on_down(
        &mut self,
        d: &DeviceContext,
        before: Option<Tracker>,
        at: i64,
        seq: i64,
    ) -> StoreResult<()> {
        let eff = self.effective(d)?;
        let was_flapping = before.as_ref().is_some_and(|t| t.flapping);
        let mut t = Tracker {
            account_id: d.account_id.clone(),
            device_id: d.device_id.clone(),
            down_since: Some(at),
            phase: Phase::Waiting,
            due_at: None,
            incident_id: before.and_then(|t| t.incident_id),
            flapping: was_flapping,
        };
        let drops =
            self.tx
                .drops_since(&d.account_id, &d.device_id, at - self.s.flap_within_ms, seq)?;
        if !was_flapping && drops >= self.s.flap_drops.max(1) {
            t.flapping = true;
            let inc = self.join_incident(d, &eff, &mut t, true, at.min(self.now))?;
            self.append(
                &inc,
                Entry::Flapping {
                    device_id: d.device_id.clone(),
                    name: d.device_name.clone(),
                },
            )?;
            let inc = self.incidents.remove(&inc).expect("joined in this run");
            let listed = inc
                .devices
                .iter()
                .filter(|x| x.device_id == d.device_id)
                .cloned()
                .collect::<Vec<_>>();
            self.notify(&inc, Kind::Flapping, &listed, &inc.policy.notifiers.clone())?;
            self.put_back(inc);
        } else if was_flapping {
            self.mark_down_again(d, &t, at)?;
        }
        if t.flapping {
            // Silent while it flaps; should it stay down, it alerts after all.
            t.due_at = Some(at + eff.down_after_ms.value.max(self.s.flap_quiet_ms));
        } else if let Some((window, end)) = self.window_at(d, at)? {
            t.phase = Phase::Held(window);
            t.due_at = Some(end + eff.down_after_ms.value);
        } else {
            t.due_at = Some(at + eff.down_after_ms.value);
        }
        if t.due_at.is_some_and(|due| due <= self.now) {
            return self.on_due(t, Some(d.clone()));
        }
        self.put_tracker(&t)
    }

    /// A flapping device in an unresolved incident is down again: noted, not notified.
    pub(super) fn mark_down_again(
        &mut self,
        d: &DeviceContext,
        t: &Tracker,
        at: i64,
    ) -> StoreResult<()> {
        let Some(id) = &t.incident_id else {
            return Ok(());
        };
        let Some(mut inc) = self.take(&d.account_id, id)? else {
            return Ok(());
        };
        if inc.state == IncidentState::Resolved {
            self.put_back(inc);
            return Ok(());
        }
        if let Some(x) = inc.devices.iter_mut().find(|x| x.device_id == d.device_id) {
            x.up_at = None;
            x.down_at = at;
        }
        self.append(
            id,
            Entry::DeviceDown {
                device_id: d.device_id.clone(),
                name: d.device_name.clone(),
            },
        )?;
        self.store(inc);
        Ok(())
    }

    pub(super) fn on_up(
        &mut self,
        d: &DeviceContext,
        before: Option<Tracker>,
        at: i64,
    ) -> StoreResult<()> {
        let Some(mut t) = before else {
            return Ok(());
        };
        if let (Some(id), Some(down_since)) = (t.incident_id.clone(), t.down_since) {
            if let Some(mut inc) = self.take(&d.account_id, &id)? {
                let listed = inc
                    .devices
                    .iter_mut()
                    .find(|x| x.device_id == d.device_id && x.up_at.is_none());
                match listed {
                    Some(x) if inc.state != IncidentState::Resolved => {
                        x.up_at = Some(at);
                        self.append(
                            &id,
                            Entry::DeviceUp {
                                device_id: d.device_id.clone(),
                                name: d.device_name.clone(),
                                down_ms: at - down_since,
                            },
                        )?;
                        if inc.devices.iter().all(|x| x.up_at.is_some()) {
                            self.resolve(inc, None, "auto")?;
                        } else {
                            self.store(inc);
                        }
                    }
                    _ => self.put_back(inc),
                }
            }
        }
        if t.flapping {
            t.down_since = None;
            t.phase = Phase::Waiting;
            t.due_at = Some(at + self.s.flap_quiet_ms);
            self.put_tracker(&t)
        } else {
            self.delete_tracker(&t.account_id, &t.device_id)
        }
    }

    /// A tracker come due; `known`: its device, when the caller has just read it.
    pub(super) fn on_due(
        &mut self,
        mut t: Tracker,
        known: Option<DeviceContext>,
    ) -> StoreResult<()> {
        if t.down_since.is_none() {
            // Flapping, and up long enough since: stable again.
            return self.delete_tracker(&t.account_id, &t.device_id);
        }
        let found = match known {
            Some(d) => Some(d),
            None => self.device(&t.account_id, &t.device_id)?,
        };
        let Some(d) = found else {
            return self.delete_tracker(&t.account_id, &t.device_id);
        };
        let eff = self.effective(&d)?;
        let down_since = t.down_since.unwrap_or(self.now);
        // When it came due, however late this run takes it up (a restart, a storm).
        let fired_at = t.due_at.unwrap_or(self.now).max(down_since).min(self.now);
        // Brought forward by an edit of the rules: weighed again against what applies now.
        if t.phase == Phase::Waiting
            && !t.flapping
            && down_since + eff.down_after_ms.value > self.now
        {
            t.due_at = Some(down_since + eff.down_after_ms.value);
            return self.put_tracker(&t);
        }
        if let Some((window, end)) = self.window_at(&d, fired_at)? {
            t.phase = Phase::Held(window);
            t.due_at = Some(end + eff.down_after_ms.value);
            return self.put_tracker(&t);
        }
        let quieted = t.flapping;
        t.flapping = false;
        let id = self.join_incident(&d, &eff, &mut t, false, fired_at)?;
        if quieted {
            if let Some(x) = self
                .incidents
                .get_mut(&id)
                .and_then(|i| i.devices.iter_mut().find(|x| x.device_id == d.device_id))
            {
                x.flapping = false;
            }
        }
        t.phase = Phase::Firing;
        t.due_at = None;
        self.put_tracker(&t)
    }

    /// Puts the device in its business's incident: the unresolved one, or the one resolved
    /// moments ago (reopened), or a new one. Its notification goes `group_wait` after the
    /// alert fired (`now`), for every device that joins meanwhile.
    pub(super) fn join_incident(
        &mut self,
        d: &DeviceContext,
        eff: &Effective,
        t: &mut Tracker,
        flapping: bool,
        now: i64,
    ) -> StoreResult<IncidentId> {
        let down_at = t.down_since.unwrap_or(now);
        let entry = IncidentDevice {
            device_id: d.device_id.clone(),
            name: d.device_name.clone(),
            channel_id: d.channel_id.clone(),
            channel_name: d.channel_name.clone(),
            engine: d.engine.clone(),
            down_at,
            up_at: None,
            notified: false,
            flapping,
        };
        let open = self.take_unresolved(&d.account_id, &d.business_id)?;
        let (mut inc, event) = if let Some(mut inc) = open {
            if inc.notice.is_none() && !flapping {
                inc.notice = Some(PendingNotice {
                    at: now + self.s.group_wait_ms,
                    kind: Kind::Update,
                });
            }
            (inc, None)
        } else if let Some(mut inc) =
            self.take_resolved_since(&d.account_id, &d.business_id, now - self.s.reopen_within_ms)?
        {
            inc.state = IncidentState::Open;
            inc.resolved_at = None;
            inc.acknowledged_at = None;
            inc.acknowledged_by = None;
            inc.escalation_step = 0;
            inc.notice = (!flapping).then_some(PendingNotice {
                at: now + self.s.group_wait_ms,
                kind: Kind::Reopened,
            });
            self.append(&inc.id, Entry::Reopened)?;
            (inc, Some(IncidentEventKind::Opened))
        } else {
            let inc = Incident {
                id: IncidentId::generate(),
                account_id: d.account_id.clone(),
                business_id: d.business_id.clone(),
                business_name: d.business_name.clone(),
                state: IncidentState::Open,
                severity: eff.severity.value,
                opened_at: now,
                acknowledged_at: None,
                acknowledged_by: None,
                resolved_at: None,
                devices: Vec::new(),
                policy: eff.policy(),
                notice: (!flapping).then_some(PendingNotice {
                    at: now + self.s.group_wait_ms,
                    kind: Kind::Alert,
                }),
                repeat_at: None,
                escalate_at: None,
                escalation_step: 0,
                affected: Default::default(),
                backup_channel_id: None,
                revision: 0,
                updated_at: now,
            };
            // Stored at once, so that its timeline and notifications can name it; the
            // rest of this run's changes to it are written at the end.
            self.tx.put_incident(&inc)?;
            self.append(&inc.id, Entry::Opened)?;
            (inc, Some(IncidentEventKind::Opened))
        };
        inc.severity = inc.severity.max(eff.severity.value);
        inc.policy = merge(inc.policy.clone(), &eff.policy());
        match inc.devices.iter_mut().find(|x| x.device_id == d.device_id) {
            Some(x) => *x = entry,
            None => inc.devices.push(entry),
        }
        if inc.backup_channel_id.is_none() {
            inc.backup_channel_id = self.backup_of(&d.account_id, &d.channel_id)?.map(|b| b.id);
        }
        self.append(
            &inc.id,
            Entry::DeviceDown {
                device_id: d.device_id.clone(),
                name: d.device_name.clone(),
            },
        )?;
        t.incident_id = Some(inc.id.clone());
        let id = inc.id.clone();
        if let Some(event) = event {
            self.refresh_affected(&mut inc)?;
            self.emit(&inc, event)?;
        }
        self.store(inc);
        Ok(id)
    }

    pub(super) fn refresh_affected(&mut self, inc: &mut Incident) -> StoreResult<()> {
        let Some(first) = inc.devices.iter().map(|d| d.down_at).min() else {
            return Ok(());
        };
        let mut channels: Vec<_> = inc.devices.iter().map(|d| d.channel_id.clone()).collect();
        channels.sort();
        channels.dedup();
        let window = self.s.conversations_window_ms;
        let phones = self
            .tx
            .senders(&inc.account_id, &channels, first - window, first, 10_000)?;
        inc.affected = Affected {
            count: phones.len(),
            phones,
            window_ms: window,
        };
        Ok(())
    }
}
