//! The alert engine's calls inside one write transaction ([`AlertTx`]): each one statement
//! or two. What to call, and when, is the engine's (`merpati_domain::alert::engine`).

use merpati_domain::alert::{
    AlertRule, AlertTx, BackupChannel, Incident, Language, MaintenanceWindow, Notification,
    NotificationStatus, Notifier, NotifierHealth, Phase, PresenceChange, TimelineEntry, Tracker,
};
use merpati_domain::device::{DeviceContext, Scope};
use merpati_domain::ids::{
    AccountId, BusinessId, ChannelId, DeviceId, EventId, IncidentId, NotificationId, NotifierId,
    WindowId,
};
use merpati_domain::{StoreError, StoreResult};
use postgres::Row;

use crate::conn::Conn;
use crate::devices::{context_row, CONTEXTS_BY_KEYS, CONTEXT_QUERY};
use crate::error::DbResult;
use crate::fanout::{fan_out, insert_event, NewEvent};
use crate::rows::{json_column, word};
use crate::table::Table;
use crate::writer::Tx;

pub(crate) struct PostgresAlertTx<'t, 'c> {
    pub(crate) tx: &'t mut Tx<'c>,
}

fn db<T>(r: DbResult<T>) -> StoreResult<T> {
    r.map_err(StoreError::from)
}

pub(crate) const TRACKER_COLUMNS: &str =
    "account_id, device_id, down_since, phase, window_id, due_at, incident_id, flapping";

pub(crate) fn tracker_row(r: &Row) -> Tracker {
    let phase: &str = r.get(3);
    let window = r.get::<_, Option<String>>(4).map(WindowId::from);
    Tracker {
        account_id: AccountId::from(r.get::<_, String>(0)),
        device_id: DeviceId::from(r.get::<_, String>(1)),
        down_since: r.get(2),
        phase: match (phase, window) {
            ("held", Some(w)) => Phase::Held(w),
            ("firing", _) => Phase::Firing,
            _ => Phase::Waiting,
        },
        due_at: r.get(5),
        incident_id: r.get::<_, Option<String>>(6).map(IncidentId::from),
        flapping: r.get(7),
    }
}

/// Device keys as the two arrays the statements take.
fn key_columns(devices: &[(AccountId, DeviceId)]) -> (Vec<&str>, Vec<&str>) {
    devices
        .iter()
        .map(|(account, device)| (account.as_str(), device.as_str()))
        .unzip()
}

pub(crate) fn incident_row(r: &Row) -> DbResult<Incident> {
    let mut inc: Incident = json_column(r.get(0))?;
    inc.revision = r.get(1);
    Ok(inc)
}

pub(crate) fn notification_row(r: &Row) -> DbResult<Notification> {
    Ok(Notification {
        id: NotificationId::from(r.get::<_, String>(0)),
        account_id: AccountId::from(r.get::<_, String>(1)),
        incident_id: r.get::<_, Option<String>>(2).map(IncidentId::from),
        notifier_id: NotifierId::from(r.get::<_, String>(3)),
        message: json_column(r.get(4))?,
        status: word(r.get(5), NotificationStatus::parse)?,
        attempts: r.get(6),
        next_attempt_at: r.get(7),
        last_error: r.get(8),
        created_at: r.get(9),
        sent_at: r.get(10),
    })
}

pub(crate) const NOTIFICATION_COLUMNS: &str = "id, account_id, incident_id, notifier_id, message,
     status, attempts, next_attempt_at, last_error, created_at, sent_at";

/// A notifier's body holds its credentials (a bot token, a signing secret, a chat
/// webhook's URL): it is stored sealed, for its account and id.
pub(crate) const NOTIFIER_COLUMNS: &str =
    "body, failures_in_row, last_success_at, last_failure_at, last_error, revision, account_id, id";

pub(crate) fn notifier_context(account: &str, id: &str) -> String {
    format!("notifiers.body:{account}/{id}")
}

pub(crate) fn notifier_row(c: &Conn, r: &Row) -> DbResult<Notifier> {
    let body = c.open(&notifier_context(r.get(6), r.get(7)), r.get(0))?;
    let mut n: Notifier = json_column(&body)?;
    n.health = NotifierHealth {
        failures_in_row: r.get(1),
        last_success_at: r.get(2),
        last_failure_at: r.get(3),
        last_error: r.get(4),
    };
    n.revision = r.get(5);
    Ok(n)
}

pub(crate) fn backup_channel(
    c: &mut Conn,
    account: &AccountId,
    channel: &ChannelId,
) -> DbResult<Option<BackupChannel>> {
    Ok(c.query_opt(
        "SELECT b.id, b.name,
                    (SELECT COUNT(*) FROM devices d
                     WHERE d.account_id = b.account_id AND d.channel_id = b.id
                       AND d.presence = 'up'),
                    (SELECT COUNT(*) FROM devices d
                     WHERE d.account_id = b.account_id AND d.channel_id = b.id)
             FROM channels c JOIN channels b
               ON b.account_id = c.account_id AND b.id = c.backup_channel_id
             WHERE c.account_id = $1 AND c.id = $2",
        &[&account.as_str(), &channel.as_str()],
    )?
    .map(|r| BackupChannel {
        id: ChannelId::from(r.get::<_, String>(0)),
        name: r.get(1),
        devices_up: r.get::<_, i64>(2) as usize,
        devices: r.get::<_, i64>(3) as usize,
    }))
}

fn rule_row(_: &Conn, r: &Row) -> DbResult<AlertRule> {
    let mut rule: AlertRule = json_column(r.get(0))?;
    rule.revision = r.get(1);
    Ok(rule)
}

fn window_row(_: &Conn, r: &Row) -> DbResult<MaintenanceWindow> {
    let mut w: MaintenanceWindow = json_column(r.get(0))?;
    w.revision = r.get(1);
    Ok(w)
}

/// What an account edits and the store keeps as a JSON body beside its revision.
pub(crate) const RULES: Table<AlertRule> = Table {
    name: "alert_rules",
    columns: "body, revision",
    what: "alert rule",
    row: rule_row,
};
pub(crate) const WINDOWS: Table<MaintenanceWindow> = Table {
    name: "maintenance_windows",
    columns: "body, revision",
    what: "maintenance window",
    row: window_row,
};
pub(crate) const NOTIFIERS: Table<Notifier> = Table {
    name: "notifiers",
    columns: NOTIFIER_COLUMNS,
    what: "notifier",
    row: notifier_row,
};

impl PostgresAlertTx<'_, '_> {
    fn rows<T>(
        &mut self,
        sql: &str,
        params: &[crate::conn::Param<'_>],
        row: impl Fn(&Row) -> DbResult<T>,
    ) -> StoreResult<Vec<T>> {
        db(self
            .tx
            .query(sql, params)
            .and_then(|rows| rows.iter().map(row).collect()))
    }

    fn row<T>(
        &mut self,
        sql: &str,
        params: &[crate::conn::Param<'_>],
        row: impl Fn(&Row) -> DbResult<T>,
    ) -> StoreResult<Option<T>> {
        db(self
            .tx
            .query_opt(sql, params)
            .and_then(|r| r.as_ref().map(row).transpose()))
    }

    fn run(&mut self, sql: &str, params: &[crate::conn::Param<'_>]) -> StoreResult<u64> {
        db(self.tx.execute(sql, params))
    }
}

impl AlertTx for PostgresAlertTx<'_, '_> {
    fn changes_after(&mut self, seq: i64, limit: usize) -> StoreResult<Vec<PresenceChange>> {
        self.rows(
            "SELECT id, account_id, device_id, state, announced_at FROM presence_periods
             WHERE id > $1 ORDER BY id LIMIT $2",
            &[&seq, &(limit as i64)],
            |r| {
                Ok(PresenceChange {
                    seq: r.get(0),
                    account_id: AccountId::from(r.get::<_, String>(1)),
                    device_id: DeviceId::from(r.get::<_, String>(2)),
                    down: r.get::<_, &str>(3) == "down",
                    at: r.get(4),
                })
            },
        )
    }

    fn cursor(&mut self) -> StoreResult<i64> {
        Ok(self
            .row(
                "SELECT seq FROM alert_state WHERE name = 'cursor'",
                &[],
                |r| Ok(r.get::<_, Option<i64>>(0)),
            )?
            .flatten()
            .unwrap_or(0))
    }

    fn set_cursor(&mut self, seq: i64) -> StoreResult<()> {
        self.run(
            "INSERT INTO alert_state (name, seq) VALUES ('cursor', $1)
             ON CONFLICT (name) DO UPDATE SET seq = excluded.seq",
            &[&seq],
        )
        .map(drop)
    }

    fn device(
        &mut self,
        account: &AccountId,
        device: &DeviceId,
    ) -> StoreResult<Option<DeviceContext>> {
        self.row(
            &format!("{CONTEXT_QUERY} WHERE d.account_id = $1 AND d.id = $2"),
            &[&account.as_str(), &device.as_str()],
            context_row,
        )
    }

    fn rules(&mut self, account: &AccountId) -> StoreResult<Vec<AlertRule>> {
        db(RULES.all(self.tx.conn(), account))
    }

    fn windows(&mut self, account: &AccountId) -> StoreResult<Vec<MaintenanceWindow>> {
        db(WINDOWS.all(self.tx.conn(), account))
    }

    fn notifier_ids(&mut self, account: &AccountId) -> StoreResult<Vec<NotifierId>> {
        self.rows(
            "SELECT id FROM notifiers WHERE account_id = $1 ORDER BY created_at, id",
            &[&account.as_str()],
            |r| Ok(NotifierId::from(r.get::<_, String>(0))),
        )
    }

    fn notifier(&mut self, account: &AccountId, n: &NotifierId) -> StoreResult<Option<Notifier>> {
        let c = self.tx.conn();
        db(c.query_opt(
            &format!("SELECT {NOTIFIER_COLUMNS} FROM notifiers WHERE account_id = $1 AND id = $2"),
            &[&account.as_str(), &n.as_str()],
        )
        .and_then(|r| r.as_ref().map(|r| notifier_row(c, r)).transpose()))
    }

    fn account(&mut self, account: &AccountId) -> StoreResult<Option<(String, Language)>> {
        self.row(
            "SELECT name, language FROM accounts WHERE id = $1",
            &[&account.as_str()],
            |r| Ok((r.get(0), Language::parse(r.get(1)).unwrap_or_default())),
        )
    }

    fn drops_since(
        &mut self,
        account: &AccountId,
        device: &DeviceId,
        since: i64,
        seq: i64,
    ) -> StoreResult<usize> {
        // A period is announced within its grace of starting: a week bounds the scan.
        let n = self.row(
            "SELECT COUNT(*) FROM presence_periods
             WHERE account_id = $1 AND device_id = $2 AND started_at >= $3::BIGINT - 604800000
               AND state = 'down' AND announced_at >= $3 AND id <= $4",
            &[&account.as_str(), &device.as_str(), &since, &seq],
            |r| Ok(r.get::<_, i64>(0)),
        )?;
        Ok(n.unwrap_or(0) as usize)
    }

    fn tracker(&mut self, account: &AccountId, device: &DeviceId) -> StoreResult<Option<Tracker>> {
        self.row(
            &format!(
                "SELECT {TRACKER_COLUMNS} FROM alert_trackers
                 WHERE account_id = $1 AND device_id = $2"
            ),
            &[&account.as_str(), &device.as_str()],
            |r| Ok(tracker_row(r)),
        )
    }

    fn trackers(&mut self, devices: &[(AccountId, DeviceId)]) -> StoreResult<Vec<Tracker>> {
        let (accounts, ids) = key_columns(devices);
        // One probe of the key each, whatever the plan kept thinks of the table's size.
        self.rows(
            &format!(
                "SELECT t.* FROM UNNEST($1::TEXT[], $2::TEXT[]) AS k(account_id, device_id)
                 CROSS JOIN LATERAL (
                     SELECT {TRACKER_COLUMNS} FROM alert_trackers t
                     WHERE t.account_id = k.account_id AND t.device_id = k.device_id
                     LIMIT 1
                 ) t"
            ),
            &[&accounts, &ids],
            |r| Ok(tracker_row(r)),
        )
    }

    fn devices(&mut self, devices: &[(AccountId, DeviceId)]) -> StoreResult<Vec<DeviceContext>> {
        let (accounts, ids) = key_columns(devices);
        self.rows(&CONTEXTS_BY_KEYS, &[&accounts, &ids], context_row)
    }

    fn put_tracker(&mut self, t: &Tracker) -> StoreResult<()> {
        let window = match &t.phase {
            Phase::Held(w) => Some(w.as_str()),
            _ => None,
        };
        self.run(
            &format!(
                "INSERT INTO alert_trackers ({TRACKER_COLUMNS})
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (account_id, device_id) DO UPDATE SET
                     down_since = excluded.down_since, phase = excluded.phase,
                     window_id = excluded.window_id, due_at = excluded.due_at,
                     incident_id = excluded.incident_id, flapping = excluded.flapping"
            ),
            &[
                &t.account_id.as_str(),
                &t.device_id.as_str(),
                &t.down_since,
                &t.phase.as_str(),
                &window,
                &t.due_at,
                &t.incident_id.as_ref().map(|i| i.as_str()),
                &t.flapping,
            ],
        )
        .map(drop)
    }

    fn delete_tracker(&mut self, account: &AccountId, device: &DeviceId) -> StoreResult<()> {
        self.run(
            "DELETE FROM alert_trackers WHERE account_id = $1 AND device_id = $2",
            &[&account.as_str(), &device.as_str()],
        )
        .map(drop)
    }

    fn due_trackers(&mut self, now: i64, limit: usize) -> StoreResult<Vec<Tracker>> {
        self.rows(
            &format!(
                "SELECT {TRACKER_COLUMNS} FROM alert_trackers
                 WHERE due_at IS NOT NULL AND due_at <= $1 ORDER BY due_at LIMIT $2"
            ),
            &[&now, &(limit as i64)],
            |r| Ok(tracker_row(r)),
        )
    }

    fn incident(&mut self, account: &AccountId, i: &IncidentId) -> StoreResult<Option<Incident>> {
        self.row(
            "SELECT body, revision FROM incidents WHERE account_id = $1 AND id = $2",
            &[&account.as_str(), &i.as_str()],
            incident_row,
        )
    }

    fn unresolved_incident(
        &mut self,
        account: &AccountId,
        business: &BusinessId,
    ) -> StoreResult<Option<Incident>> {
        self.row(
            "SELECT body, revision FROM incidents
             WHERE account_id = $1 AND business_id = $2 AND state IN ('open', 'acknowledged')
             ORDER BY id DESC LIMIT 1",
            &[&account.as_str(), &business.as_str()],
            incident_row,
        )
    }

    fn resolved_since(
        &mut self,
        account: &AccountId,
        business: &BusinessId,
        since: i64,
    ) -> StoreResult<Option<Incident>> {
        self.row(
            "SELECT body, revision FROM incidents
             WHERE account_id = $1 AND business_id = $2 AND state = 'resolved'
               AND resolved_at >= $3
             ORDER BY resolved_at DESC LIMIT 1",
            &[&account.as_str(), &business.as_str(), &since],
            incident_row,
        )
    }

    fn put_incident(&mut self, inc: &Incident) -> StoreResult<()> {
        let body = serde_json::to_string(inc).expect("incidents serialize");
        let changed = self.run(
            "INSERT INTO incidents
                 (id, account_id, business_id, state, resolved_at, due_at, body, revision)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 0)
             ON CONFLICT (id) DO UPDATE SET
                 state = excluded.state, resolved_at = excluded.resolved_at,
                 due_at = excluded.due_at, body = excluded.body,
                 revision = incidents.revision + 1
             WHERE incidents.revision = $8",
            &[
                &inc.id.as_str(),
                &inc.account_id.as_str(),
                &inc.business_id.as_str(),
                &inc.state.as_str(),
                &inc.resolved_at,
                &inc.due_at(),
                &body,
                &inc.revision,
            ],
        )?;
        if changed == 0 {
            return Err(StoreError::Stale("incident"));
        }
        Ok(())
    }

    fn due_incidents(&mut self, now: i64, limit: usize) -> StoreResult<Vec<Incident>> {
        self.rows(
            "SELECT body, revision FROM incidents
             WHERE due_at IS NOT NULL AND due_at <= $1
               AND account_id NOT IN (SELECT id FROM accounts WHERE deleted_at IS NOT NULL)
             ORDER BY due_at LIMIT $2",
            &[&now, &(limit as i64)],
            incident_row,
        )
    }

    fn append(&mut self, incident: &IncidentId, entry: &TimelineEntry) -> StoreResult<()> {
        let json = serde_json::to_string(&entry.entry).expect("entries serialize");
        self.run(
            "INSERT INTO incident_timeline (incident_id, at, entry) VALUES ($1, $2, $3)",
            &[&incident.as_str(), &entry.at, &json],
        )
        .map(drop)
    }

    fn enqueue(&mut self, n: &Notification) -> StoreResult<()> {
        let message = serde_json::to_string(&n.message).expect("messages serialize");
        self.run(
            &format!(
                "INSERT INTO notifications ({NOTIFICATION_COLUMNS}, kind)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
            ),
            &[
                &n.id.as_str(),
                &n.account_id.as_str(),
                &n.incident_id.as_ref().map(|i| i.as_str()),
                &n.notifier_id.as_str(),
                &message,
                &n.status.as_str(),
                &n.attempts,
                &n.next_attempt_at,
                &n.last_error,
                &n.created_at,
                &n.sent_at,
                &n.message.kind.as_str(),
            ],
        )
        .map(drop)
    }

    fn pending_notifications(&mut self, incident: &IncidentId) -> StoreResult<Vec<Notification>> {
        self.rows(
            &format!(
                "SELECT {NOTIFICATION_COLUMNS} FROM notifications
                 WHERE incident_id = $1 AND status = 'pending' ORDER BY created_at, id"
            ),
            &[&incident.as_str()],
            notification_row,
        )
    }

    fn set_notification(&mut self, n: &Notification) -> StoreResult<()> {
        self.run(
            "UPDATE notifications SET status = $2, attempts = $3, next_attempt_at = $4,
                 last_error = $5, sent_at = $6
             WHERE id = $1",
            &[
                &n.id.as_str(),
                &n.status.as_str(),
                &n.attempts,
                &n.next_attempt_at,
                &n.last_error,
                &n.sent_at,
            ],
        )
        .map(drop)
    }

    fn alerted_notifiers(&mut self, incident: &IncidentId) -> StoreResult<Vec<NotifierId>> {
        self.rows(
            "SELECT DISTINCT notifier_id FROM notifications
             WHERE incident_id = $1 AND status IN ('pending', 'sent')
               AND kind IN ('alert', 'update', 'reopened', 'reminder', 'escalation')
             ORDER BY notifier_id",
            &[&incident.as_str()],
            |r| Ok(NotifierId::from(r.get::<_, String>(0))),
        )
    }

    fn put_notifier_health(&mut self, n: &NotifierId, h: &NotifierHealth) -> StoreResult<()> {
        self.run(
            "UPDATE notifiers SET failures_in_row = $2, last_success_at = $3,
                 last_failure_at = $4, last_error = $5
             WHERE id = $1",
            &[
                &n.as_str(),
                &h.failures_in_row,
                &h.last_success_at,
                &h.last_failure_at,
                &h.last_error,
            ],
        )
        .map(drop)
    }

    fn emit(
        &mut self,
        account: &AccountId,
        business: &BusinessId,
        event_type: &'static str,
        payload: String,
        now: i64,
    ) -> StoreResult<usize> {
        let event_id = EventId::generate();
        let scope = Scope {
            business_id: Some(business),
            channel_id: None,
            device_id: None,
        };
        let new = NewEvent {
            id: &event_id,
            account_id: account,
            event_type,
            scope,
            created_at: now,
            inbound: None,
        };
        let run = |tx: &mut Tx<'_>| -> DbResult<usize> {
            let (seq, _) = insert_event(tx, &new, |_| payload)?;
            let subs = tx.subscriptions(account)?;
            fan_out(tx, &subs, seq, event_type, scope, now, None)
        };
        db(run(self.tx))
    }

    fn senders(
        &mut self,
        account: &AccountId,
        channels: &[ChannelId],
        from: i64,
        to: i64,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        let first = db(crate::events::first_young_seq(self.tx.conn(), from))?;
        let Some(first) = first else {
            return Ok(Vec::new());
        };
        let mut phones = std::collections::BTreeSet::new();
        for channel in channels {
            let devices = self.rows(
                "SELECT id FROM devices WHERE account_id = $1 AND channel_id = $2",
                &[&account.as_str(), &channel.as_str()],
                |r| Ok(r.get::<_, String>(0)),
            )?;
            for device in devices {
                let found = self.rows(
                    "SELECT DISTINCT payload::json -> 'data' ->> 'phone' FROM events
                     WHERE account_id = $1 AND device_id = $2 AND seq >= $3
                       AND type IN ('sms', 'whatsapp') AND created_at >= $4 AND created_at < $5",
                    &[&account.as_str(), &device, &first, &from, &to],
                    |r| Ok(r.get::<_, Option<String>>(0)),
                )?;
                for phone in found.into_iter().flatten() {
                    phones.insert(phone);
                    if phones.len() >= limit {
                        return Ok(phones.into_iter().collect());
                    }
                }
            }
        }
        Ok(phones.into_iter().collect())
    }

    fn backup_channel(
        &mut self,
        account: &AccountId,
        channel: &ChannelId,
    ) -> StoreResult<Option<BackupChannel>> {
        db(backup_channel(self.tx.conn(), account, channel))
    }

    fn next_due(&mut self) -> StoreResult<Option<i64>> {
        Ok(self
            .row(
                "SELECT MIN(t) FROM (
                     SELECT MIN(due_at) AS t FROM alert_trackers WHERE due_at IS NOT NULL
                     UNION ALL SELECT MIN(due_at) FROM incidents WHERE due_at IS NOT NULL
                       AND account_id NOT IN (SELECT id FROM accounts WHERE deleted_at IS NOT NULL)
                     UNION ALL SELECT MIN(next_attempt_at) FROM notifications
                     WHERE status = 'pending'
                       AND account_id NOT IN
                           (SELECT id FROM accounts WHERE deleted_at IS NOT NULL)) due",
                &[],
                |r| Ok(r.get::<_, Option<i64>>(0)),
            )?
            .flatten())
    }
}
