//! Alerts as stored: rules, notifiers and maintenance windows (a JSON body each, beside the
//! columns queries need), incidents with their timelines, notifications. The engine's own
//! transaction is `alert_tx`.

use merpati_domain::alert::engine::Outcome;
use merpati_domain::alert::{
    AlertJob, AlertRule, AlertStore, BackupChannel, Incident, IncidentFilter, MaintenanceWindow,
    Match, Notification, Notifier, TimelineEntry,
};
use merpati_domain::device::DeviceContext;
use merpati_domain::ids::{
    AccountId, AlertRuleId, ChannelId, DeviceId, IncidentId, NotifierId, WindowId,
};
use merpati_domain::limits::check_cap;
use merpati_domain::{Page, StoreError, StoreResult};
use rusqlite::{params, Connection, OptionalExtension};

use crate::alert_tx::{
    incident_row, notification_row, SqliteAlertTx, NOTIFICATION_COLUMNS, NOTIFIERS, RULES, WINDOWS,
};
use crate::devices::{context_row, CONTEXT_QUERY};
use crate::error::{is_unique_violation, DbError, DbResult};
use crate::rows::json_column;
use crate::table::{owned, table_of, Table};
use crate::SqliteStore;

/// Every id a match names is the account's (the domain's rule).
fn check_match(c: &Connection, account: &AccountId, m: &Match) -> DbResult<()> {
    merpati_domain::alert::check_match(m, |kind, id| owned(c, table_of(kind), account.as_str(), id))
}

/// Every notifier a rule names is the account's (the domain's rule).
fn check_notifiers(c: &Connection, account: &AccountId, rule: &AlertRule) -> DbResult<()> {
    merpati_domain::alert::check_notifiers(rule, |kind, id| {
        owned(c, table_of(kind), account.as_str(), id)
    })
}

/// A notifier's body (`?3`) as stored, beside its account (`?1`) and id (`?2`): sealed.
const SEALED_NOTIFIER_BODY: &str = "seal_secret('notifiers.body:' || ?1 || '/' || ?2, ?3)";

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("bodies serialize")
}

fn created(e: rusqlite::Error, what: &str) -> DbError {
    if is_unique_violation(&e) {
        StoreError::Conflict(format!("{what} with this id already exists")).into()
    } else {
        e.into()
    }
}

/// A body kept only at the revision it was read at; the row as then stored.
fn update_body<T>(
    c: &Connection,
    table: &Table<T>,
    account: &AccountId,
    id: &str,
    body: String,
    revision: i64,
) -> DbResult<T> {
    update_stored_body(c, table, "?3", account, id, body, revision)
}

/// As `update_body`, the body written as `stored` (an expression of `?3`) says.
fn update_stored_body<T>(
    c: &Connection,
    table: &Table<T>,
    stored: &str,
    account: &AccountId,
    id: &str,
    body: String,
    revision: i64,
) -> DbResult<T> {
    let n = c.execute(
        &format!(
            "UPDATE {} SET body = {stored}, revision = revision + 1
             WHERE account_id = ?1 AND id = ?2 AND revision = ?4",
            table.name
        ),
        params![account.as_str(), id, body, revision],
    )?;
    table.updated(c, n, account, id)
}

/// The alert engine looks again at an account whose rules or windows changed: a device
/// waiting for its alert is due now, to be weighed against what applies now.
fn recheck_waiting(c: &Connection, account: &AccountId, now: i64) -> DbResult<()> {
    c.execute(
        "UPDATE alert_trackers SET due_at = ?2
         WHERE account_id = ?1 AND phase IN ('waiting', 'held') AND down_since IS NOT NULL
           AND flapping = 0 AND due_at > ?2",
        params![account.as_str(), now],
    )?;
    Ok(())
}

#[async_trait::async_trait]
impl AlertStore for SqliteStore {
    async fn alert_write(&self, job: AlertJob<Outcome>) -> StoreResult<Outcome> {
        self.write(move |tx| {
            let mut alert_tx = SqliteAlertTx { tx };
            job(&mut alert_tx).map_err(DbError::from)
        })
        .await
    }

    async fn create_rule(
        &self,
        account: AccountId,
        rule: AlertRule,
        cap: u32,
    ) -> StoreResult<AlertRule> {
        self.write(move |c| {
            let count = crate::rows::count_of(c, "alert_rules", &account)?;
            check_cap(count, cap, "alert rules")?;
            check_match(c, &account, &rule.matches)?;
            check_notifiers(c, &account, &rule)?;
            c.execute(
                "INSERT INTO alert_rules (account_id, id, body, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![account.as_str(), rule.id.as_str(), json(&rule), rule.created_at],
            )
            .map_err(|e| created(e, "an alert rule"))?;
            Ok(rule)
        })
        .await
    }

    async fn list_rules(&self, account: AccountId) -> StoreResult<Vec<AlertRule>> {
        self.read(move |c| RULES.all(c, &account)).await
    }

    async fn get_rule(&self, account: AccountId, id: AlertRuleId) -> StoreResult<AlertRule> {
        self.read(move |c| RULES.get(c, &account, id.as_str()))
            .await
    }

    async fn update_rule(&self, account: AccountId, rule: AlertRule) -> StoreResult<AlertRule> {
        self.write(move |c| {
            check_match(c, &account, &rule.matches)?;
            check_notifiers(c, &account, &rule)?;
            let stored = update_body(
                c,
                &RULES,
                &account,
                rule.id.as_str(),
                json(&rule),
                rule.revision,
            )?;
            recheck_waiting(c, &account, rule.updated_at)?;
            Ok(stored)
        })
        .await
    }

    async fn delete_rule(&self, account: AccountId, id: AlertRuleId) -> StoreResult<()> {
        self.write(move |c| RULES.delete(c, &account, id.as_str()))
            .await
    }

    async fn create_notifier(&self, account: AccountId, n: Notifier) -> StoreResult<Notifier> {
        self.write(move |c| {
            c.execute(
                &format!(
                    "INSERT INTO notifiers (account_id, id, body, created_at)
                     VALUES (?1, ?2, {SEALED_NOTIFIER_BODY}, ?4)"
                ),
                params![account.as_str(), n.id.as_str(), json(&n), n.created_at],
            )
            .map_err(|e| created(e, "a notifier"))?;
            Ok(n)
        })
        .await
    }

    async fn list_notifiers(&self, account: AccountId) -> StoreResult<Vec<Notifier>> {
        self.read(move |c| NOTIFIERS.all(c, &account)).await
    }

    async fn get_notifier(&self, account: AccountId, id: NotifierId) -> StoreResult<Notifier> {
        self.read(move |c| NOTIFIERS.get(c, &account, id.as_str()))
            .await
    }

    async fn update_notifier(&self, account: AccountId, n: Notifier) -> StoreResult<Notifier> {
        self.write(move |c| {
            update_stored_body(
                c,
                &NOTIFIERS,
                SEALED_NOTIFIER_BODY,
                &account,
                n.id.as_str(),
                json(&n),
                n.revision,
            )
        })
        .await
    }

    async fn delete_notifier(&self, account: AccountId, id: NotifierId) -> StoreResult<()> {
        self.write(move |c| {
            merpati_domain::alert::check_unnamed(&RULES.all(c, &account)?, &id)?;
            NOTIFIERS.delete(c, &account, id.as_str())
        })
        .await
    }

    async fn create_window(
        &self,
        account: AccountId,
        w: MaintenanceWindow,
    ) -> StoreResult<MaintenanceWindow> {
        self.write(move |c| {
            check_match(c, &account, &w.matches)?;
            c.execute(
                "INSERT INTO maintenance_windows (account_id, id, body, created_at)
                 VALUES (?1, ?2, ?3, ?4)",
                params![account.as_str(), w.id.as_str(), json(&w), w.created_at],
            )
            .map_err(|e| created(e, "a maintenance window"))?;
            recheck_waiting(c, &account, w.created_at)?;
            Ok(w)
        })
        .await
    }

    async fn list_windows(&self, account: AccountId) -> StoreResult<Vec<MaintenanceWindow>> {
        self.read(move |c| WINDOWS.all(c, &account)).await
    }

    async fn get_window(&self, account: AccountId, id: WindowId) -> StoreResult<MaintenanceWindow> {
        self.read(move |c| WINDOWS.get(c, &account, id.as_str()))
            .await
    }

    async fn update_window(
        &self,
        account: AccountId,
        w: MaintenanceWindow,
    ) -> StoreResult<MaintenanceWindow> {
        self.write(move |c| {
            check_match(c, &account, &w.matches)?;
            let stored = update_body(c, &WINDOWS, &account, w.id.as_str(), json(&w), w.revision)?;
            recheck_waiting(c, &account, w.updated_at)?;
            Ok(stored)
        })
        .await
    }

    async fn delete_window(&self, account: AccountId, id: WindowId, now: i64) -> StoreResult<()> {
        self.write(move |c| {
            WINDOWS.delete(c, &account, id.as_str())?;
            // A device held by it may be due now.
            c.execute(
                "UPDATE alert_trackers SET due_at = ?3
                 WHERE account_id = ?1 AND window_id = ?2",
                params![account.as_str(), id.as_str(), now],
            )?;
            Ok(())
        })
        .await
    }

    async fn list_incidents(
        &self,
        account: AccountId,
        filter: IncidentFilter,
        page: Page,
    ) -> StoreResult<Vec<Incident>> {
        self.read(move |c| {
            let mut s = c.prepare_cached(
                "SELECT body, revision FROM incidents
                 WHERE account_id = ?1 AND (?2 IS NULL OR id < ?2) AND (?3 IS NULL OR state = ?3)
                 ORDER BY id DESC LIMIT ?4",
            )?;
            let rows = s.query_map(
                params![
                    account.as_str(),
                    page.after,
                    filter.state.map(|s| s.as_str()),
                    page.limit as i64
                ],
                incident_row,
            )?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn get_incident(&self, account: AccountId, id: IncidentId) -> StoreResult<Incident> {
        self.read(move |c| {
            c.prepare_cached(
                "SELECT body, revision FROM incidents WHERE account_id = ?1 AND id = ?2",
            )?
            .query_row(params![account.as_str(), id.as_str()], incident_row)
            .optional()?
            .ok_or_else(|| StoreError::NotFound("incident").into())
        })
        .await
    }

    async fn find_incident(&self, id: IncidentId) -> StoreResult<Incident> {
        self.read(move |c| {
            c.prepare_cached("SELECT body, revision FROM incidents WHERE id = ?1")?
                .query_row([id.as_str()], incident_row)
                .optional()?
                .ok_or_else(|| StoreError::NotFound("incident").into())
        })
        .await
    }

    async fn timeline(&self, incident: IncidentId) -> StoreResult<Vec<TimelineEntry>> {
        self.read(move |c| {
            let mut s = c.prepare_cached(
                "SELECT at, entry FROM incident_timeline WHERE incident_id = ?1 ORDER BY id",
            )?;
            let rows = s.query_map([incident.as_str()], |r| {
                let entry: String = r.get(1)?;
                Ok(TimelineEntry {
                    at: r.get(0)?,
                    entry: json_column(&entry)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn incident_notifications(&self, incident: IncidentId) -> StoreResult<Vec<Notification>> {
        self.read(move |c| {
            let mut s = c.prepare_cached(&format!(
                "SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE incident_id = ?1
                 ORDER BY created_at, id"
            ))?;
            let rows = s.query_map([incident.as_str()], notification_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn backup_status(
        &self,
        account: AccountId,
        channel: ChannelId,
    ) -> StoreResult<Option<BackupChannel>> {
        self.read(move |c| crate::alert_tx::backup_channel(c, &account, &channel))
            .await
    }

    async fn device_context(
        &self,
        account: AccountId,
        device: DeviceId,
    ) -> StoreResult<DeviceContext> {
        self.read(move |c| {
            c.prepare_cached(&format!(
                "{CONTEXT_QUERY} WHERE d.account_id = ?1 AND d.id = ?2"
            ))?
            .query_row(params![account.as_str(), device.as_str()], context_row)
            .optional()?
            .ok_or_else(|| StoreError::NotFound("device").into())
        })
        .await
    }

    async fn due_notifications(&self, now: i64, limit: usize) -> StoreResult<Vec<Notification>> {
        self.read(move |c| {
            let mut s = c.prepare_cached(&format!(
                "SELECT {NOTIFICATION_COLUMNS} FROM notifications
                 WHERE status = 'pending' AND next_attempt_at <= ?1
                   AND account_id NOT IN (SELECT id FROM accounts WHERE deleted_at IS NOT NULL)
                 ORDER BY next_attempt_at LIMIT ?2"
            ))?;
            let rows = s.query_map(params![now, limit as i64], notification_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn prune_alerts(&self, before: i64, limit: usize) -> StoreResult<usize> {
        self.write(move |c| {
            let incidents = c.execute(
                "DELETE FROM incidents WHERE id IN (
                     SELECT id FROM incidents
                     WHERE state = 'resolved' AND resolved_at < ?1 LIMIT ?2)",
                params![before, limit as i64],
            )?;
            let notices = c.execute(
                "DELETE FROM notifications WHERE id IN (
                     SELECT id FROM notifications
                     WHERE incident_id IS NULL AND status != 'pending' AND created_at < ?1
                     LIMIT ?2)",
                params![before, limit as i64],
            )?;
            Ok(incidents + notices)
        })
        .await
    }

    async fn link_key(&self) -> StoreResult<Vec<u8>> {
        self.write(|c| {
            c.execute(
                "INSERT OR IGNORE INTO alert_state (name, value)
                 VALUES ('link_key', seal_secret('alert_state.link_key', hex(randomblob(32))))",
                [],
            )?;
            Ok(c.query_row(
                "SELECT unhex(open_secret('alert_state.link_key', value))
                 FROM alert_state WHERE name = 'link_key'",
                [],
                |r| r.get(0),
            )?)
        })
        .await
    }
}
