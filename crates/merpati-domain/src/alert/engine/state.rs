//! The engine's working state for one run: what it read of each account, and the incidents
//! it changed, written once at the end.

use std::collections::{HashMap, HashSet};

use super::super::rules::{effective, Effective};
use super::super::window::covering;
use super::super::{
    AlertRule, AlertTx, BackupChannel, Entry, Incident, IncidentState, Language, MaintenanceWindow,
    TimelineEntry, Tracker,
};
use super::{incident_payload, IncidentChange, Outcome, Settings};
use crate::device::DeviceContext;
use crate::ids::{AccountId, BusinessId, ChannelId, DeviceId, IncidentId, NotifierId, WindowId};
use crate::storage::StoreResult;
use merpati_webhooks::IncidentEventKind;

pub(super) struct AccountView {
    pub(super) language: Language,
    pub(super) rules: Vec<AlertRule>,
    pub(super) windows: Vec<MaintenanceWindow>,
    pub(super) notifiers: Vec<NotifierId>,
    pub(super) languages: HashMap<NotifierId, Option<Language>>,
}

/// A device as the engine keys what it read of it.
pub(super) type DeviceKey = (AccountId, DeviceId);

pub(super) struct Engine<'a> {
    pub(super) tx: &'a mut dyn AlertTx,
    pub(super) s: &'a Settings,
    pub(super) now: i64,
    pub(super) accounts: HashMap<AccountId, AccountView>,
    /// Incidents read or changed in this run; written once at the end.
    pub(super) incidents: HashMap<IncidentId, Incident>,
    pub(super) dirty: HashSet<IncidentId>,
    pub(super) backups: HashMap<ChannelId, Option<BackupChannel>>,
    /// Trackers read ahead for the run's devices (`None`: it has none), kept as the run
    /// writes them.
    trackers: HashMap<DeviceKey, Option<Tracker>>,
    /// Devices read ahead (`None`: deleted). The engine changes none.
    devices: HashMap<DeviceKey, Option<DeviceContext>>,
    pub(super) out: Outcome,
}

impl<'a> Engine<'a> {
    pub(super) fn new(tx: &'a mut dyn AlertTx, s: &'a Settings, now: i64) -> Self {
        Engine {
            tx,
            s,
            now,
            accounts: HashMap::new(),
            incidents: HashMap::new(),
            dirty: HashSet::new(),
            backups: HashMap::new(),
            trackers: HashMap::new(),
            devices: HashMap::new(),
            out: Outcome::default(),
        }
    }

    /// Reads the trackers of these devices not read yet, all in one call.
    pub(super) fn read_trackers(&mut self, keys: &[DeviceKey]) -> StoreResult<()> {
        let tx = &mut *self.tx;
        read_ahead(
            keys,
            &mut self.trackers,
            |missing| tx.trackers(missing),
            |t| (t.account_id.clone(), t.device_id.clone()),
        )
    }

    /// Reads these devices not read yet, all in one call.
    pub(super) fn read_devices(&mut self, keys: &[DeviceKey]) -> StoreResult<()> {
        let tx = &mut *self.tx;
        read_ahead(
            keys,
            &mut self.devices,
            |missing| tx.devices(missing),
            |d| (d.account_id.clone(), d.device_id.clone()),
        )
    }

    /// Takes a tracker the caller has just read as the run's (unless the run has it).
    pub(super) fn know_tracker(&mut self, t: Tracker) {
        self.trackers
            .entry((t.account_id.clone(), t.device_id.clone()))
            .or_insert(Some(t));
    }

    pub(super) fn tracker(
        &mut self,
        account: &AccountId,
        device: &DeviceId,
    ) -> StoreResult<Option<Tracker>> {
        let tx = &mut *self.tx;
        known_or_read(&mut self.trackers, account, device, || {
            tx.tracker(account, device)
        })
    }

    pub(super) fn device(
        &mut self,
        account: &AccountId,
        device: &DeviceId,
    ) -> StoreResult<Option<DeviceContext>> {
        let tx = &mut *self.tx;
        known_or_read(&mut self.devices, account, device, || {
            tx.device(account, device)
        })
    }

    pub(super) fn put_tracker(&mut self, t: &Tracker) -> StoreResult<()> {
        self.tx.put_tracker(t)?;
        let key = (t.account_id.clone(), t.device_id.clone());
        self.trackers.insert(key, Some(t.clone()));
        Ok(())
    }

    pub(super) fn delete_tracker(
        &mut self,
        account: &AccountId,
        device: &DeviceId,
    ) -> StoreResult<()> {
        self.tx.delete_tracker(account, device)?;
        self.trackers
            .insert((account.clone(), device.clone()), None);
        Ok(())
    }

    pub(super) fn account(&mut self, id: &AccountId) -> StoreResult<&AccountView> {
        if !self.accounts.contains_key(id) {
            let (_, language) = self.tx.account(id)?.unwrap_or_default();
            let view = AccountView {
                language,
                rules: self.tx.rules(id)?,
                windows: self.tx.windows(id)?,
                notifiers: self.tx.notifier_ids(id)?,
                languages: HashMap::new(),
            };
            self.accounts.insert(id.clone(), view);
        }
        Ok(&self.accounts[id])
    }

    pub(super) fn effective(&mut self, d: &DeviceContext) -> StoreResult<Effective> {
        let a = self.account(&d.account_id)?;
        Ok(effective(&a.rules, d, &a.notifiers))
    }

    pub(super) fn window_at(
        &mut self,
        d: &DeviceContext,
        at: i64,
    ) -> StoreResult<Option<(WindowId, i64)>> {
        let a = self.account(&d.account_id)?;
        Ok(covering(&a.windows, d, at))
    }

    pub(super) fn language_for(
        &mut self,
        account: &AccountId,
        notifier: &NotifierId,
    ) -> StoreResult<Language> {
        let base = self.account(account)?.language;
        let known = self.accounts[account].languages.get(notifier).copied();
        let own = match known {
            Some(l) => l,
            None => {
                let l = self
                    .tx
                    .notifier(account, notifier)?
                    .and_then(|n| n.language);
                self.accounts
                    .get_mut(account)
                    .expect("loaded above")
                    .languages
                    .insert(notifier.clone(), l);
                l
            }
        };
        Ok(own.unwrap_or(base))
    }

    /// Takes an incident to work on: this run's copy, else the stored one. It goes back
    /// with [`Engine::store`] (changed) or [`Engine::put_back`]; taking rather than
    /// copying keeps a storm's big incidents from being copied for every device.
    pub(super) fn take(
        &mut self,
        account: &AccountId,
        id: &IncidentId,
    ) -> StoreResult<Option<Incident>> {
        if let Some(i) = self.incidents.remove(id) {
            return Ok(Some(i));
        }
        self.tx.incident(account, id)
    }

    /// The business's unresolved incident, as this run has it.
    pub(super) fn take_unresolved(
        &mut self,
        account: &AccountId,
        business: &BusinessId,
    ) -> StoreResult<Option<Incident>> {
        let of_business = |i: &Incident| i.account_id == *account && i.business_id == *business;
        let cached = self
            .incidents
            .values()
            .find(|i| of_business(i) && i.state != IncidentState::Resolved)
            .map(|i| i.id.clone());
        if let Some(id) = cached {
            return Ok(self.incidents.remove(&id));
        }
        match self.tx.unresolved_incident(account, business)? {
            // Resolved by this run, not yet written.
            Some(stored) if self.incidents.contains_key(&stored.id) => Ok(None),
            found => Ok(found),
        }
    }

    /// The business's incident resolved at or after `since`, as this run has it.
    pub(super) fn take_resolved_since(
        &mut self,
        account: &AccountId,
        business: &BusinessId,
        since: i64,
    ) -> StoreResult<Option<Incident>> {
        let cached = self
            .incidents
            .values()
            .filter(|i| i.account_id == *account && i.business_id == *business)
            .filter(|i| i.resolved_at.is_some_and(|at| at >= since))
            .max_by_key(|i| i.resolved_at)
            .map(|i| i.id.clone());
        if let Some(id) = cached {
            return Ok(self.incidents.remove(&id));
        }
        match self.tx.resolved_since(account, business, since)? {
            Some(stored) if self.incidents.contains_key(&stored.id) => Ok(None),
            found => Ok(found),
        }
    }

    pub(super) fn store(&mut self, inc: Incident) {
        self.dirty.insert(inc.id.clone());
        self.incidents.insert(inc.id.clone(), inc);
    }

    /// Gives back an incident taken and not changed.
    pub(super) fn put_back(&mut self, inc: Incident) {
        self.incidents.insert(inc.id.clone(), inc);
    }

    /// A channel's backup channel, looked up once a run.
    pub(super) fn backup_of(
        &mut self,
        account: &AccountId,
        channel: &ChannelId,
    ) -> StoreResult<Option<BackupChannel>> {
        if let Some(known) = self.backups.get(channel) {
            return Ok(known.clone());
        }
        let found = self.tx.backup_channel(account, channel)?;
        self.backups.insert(channel.clone(), found.clone());
        Ok(found)
    }

    pub(super) fn flush(&mut self) -> StoreResult<()> {
        for id in std::mem::take(&mut self.dirty) {
            if let Some(inc) = self.incidents.get_mut(&id) {
                inc.updated_at = self.now;
                self.tx.put_incident(inc)?;
                inc.revision += 1;
            }
        }
        Ok(())
    }

    pub(super) fn append(&mut self, incident: &IncidentId, entry: Entry) -> StoreResult<()> {
        self.tx.append(
            incident,
            &TimelineEntry {
                at: self.now,
                entry,
            },
        )
    }

    pub(super) fn emit(&mut self, inc: &Incident, event: IncidentEventKind) -> StoreResult<()> {
        let payload = incident_payload(inc, event, self.now);
        self.out.due_deliveries += self.tx.emit(
            &inc.account_id,
            &inc.business_id,
            event.as_str(),
            payload,
            self.now,
        )?;
        self.out.incidents.push(IncidentChange {
            account_id: inc.account_id.clone(),
            incident_id: inc.id.clone(),
            state: inc.state,
        });
        Ok(())
    }
}

/// The device's entry in `known`, or what `read` finds, kept.
fn known_or_read<T: Clone>(
    known: &mut HashMap<DeviceKey, Option<T>>,
    account: &AccountId,
    device: &DeviceId,
    read: impl FnOnce() -> StoreResult<Option<T>>,
) -> StoreResult<Option<T>> {
    let key = (account.clone(), device.clone());
    if let Some(x) = known.get(&key) {
        return Ok(x.clone());
    }
    let x = read()?;
    known.insert(key, x.clone());
    Ok(x)
}

/// Reads the keys not in `known` (each once) in one call of `read`, and keeps what it
/// found, and that the others were not found.
fn read_ahead<T>(
    keys: &[DeviceKey],
    known: &mut HashMap<DeviceKey, Option<T>>,
    read: impl FnOnce(&[DeviceKey]) -> StoreResult<Vec<T>>,
    key_of: impl Fn(&T) -> DeviceKey,
) -> StoreResult<()> {
    let mut seen = HashSet::new();
    let missing: Vec<DeviceKey> = keys
        .iter()
        .filter(|k| !known.contains_key(*k) && seen.insert(*k))
        .cloned()
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let found = read(&missing)?;
    for key in missing {
        known.insert(key, None);
    }
    for x in found {
        known.insert(key_of(&x), Some(x));
    }
    Ok(())
}
