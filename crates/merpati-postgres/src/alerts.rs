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

use crate::alert_tx::{
    incident_row, notification_row, notifier_context, PostgresAlertTx, NOTIFICATION_COLUMNS,
    NOTIFIERS, RULES, WINDOWS,
};
use crate::conn::Conn;
use crate::devices::{context_row, CONTEXT_QUERY};
use crate::error::{is_unique_violation, DbError, DbResult};
use crate::rows::json_column;
use crate::table::{owned, table_of, Table};
use crate::writer::Tx;
use crate::PostgresStore;

/// Every id a match names is the account's (the domain's rule).
fn check_match(c: &mut Conn, account: &AccountId, m: &Match) -> DbResult<()> {
    merpati_domain::alert::check_match(m, |kind, id| owned(c, table_of(kind), account.as_str(), id))
}

/// Every notifier a rule names is the account's (the domain's rule).
fn check_notifiers(c: &mut Conn, account: &AccountId, rule: &AlertRule) -> DbResult<()> {
    merpati_domain::alert::check_notifiers(rule, |kind, id| {
        owned(c, table_of(kind), account.as_str(), id)
    })
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("bodies serialize")
}

fn created(what: &'static str) -> impl FnOnce(DbError) -> DbError {
    move |e| {
        if is_unique_violation(&e) {
            StoreError::Conflict(format!("{what} with this id already exists")).into()
        } else {
            e
        }
    }
}

/// A body kept only at the revision it was read at; the row as then stored.
fn update_body<T>(
    tx: &mut Tx<'_>,
    table: &Table<T>,
    account: &AccountId,
    id: &str,
    stored: String,
    revision: i64,
) -> DbResult<T> {
    let n = tx.execute(
        &format!(
            "UPDATE {} SET body = $3, revision = revision + 1
             WHERE account_id = $1 AND id = $2 AND revision = $4",
            table.name
        ),
        &[&account.as_str(), &id, &stored, &revision],
    )?;
    table.updated(tx.conn(), n, account, id)
}

/// The alert engine looks again at an account whose rules or windows changed: a device
/// waiting for its alert is due now, to be weighed against what applies now.
fn recheck_waiting(tx: &mut Tx<'_>, account: &AccountId, now: i64) -> DbResult<()> {
    tx.execute(
        "UPDATE alert_trackers SET due_at = $2
         WHERE account_id = $1 AND phase IN ('waiting', 'held') AND down_since IS NOT NULL
           AND NOT flapping AND due_at > $2",
        &[&account.as_str(), &now],
    )?;
    Ok(())
}

#[async_trait::async_trait]
impl AlertStore for PostgresStore {
    async fn alert_write(&self, job: AlertJob<Outcome>) -> StoreResult<Outcome> {
        self.write_aside(move |tx| {
            let mut alert_tx = PostgresAlertTx { tx };
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
            let count = crate::rows::count_of(c.conn(), "alert_rules", &account)?;
            check_cap(count, cap, "alert rules")?;
            check_match(c.conn(), &account, &rule.matches)?;
            check_notifiers(c.conn(), &account, &rule)?;
            c.execute(
                "INSERT INTO alert_rules (account_id, id, body, created_at) VALUES ($1, $2, $3, $4)",
                &[&account.as_str(), &rule.id.as_str(), &json(&rule), &rule.created_at],
            )
            .map_err(created("an alert rule"))?;
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
            check_match(c.conn(), &account, &rule.matches)?;
            check_notifiers(c.conn(), &account, &rule)?;
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
        self.write(move |c| RULES.delete(c.conn(), &account, id.as_str()))
            .await
    }

    async fn create_notifier(&self, account: AccountId, n: Notifier) -> StoreResult<Notifier> {
        self.write(move |c| {
            let body = c.seal(
                &notifier_context(account.as_str(), n.id.as_str()),
                &json(&n),
            );
            c.execute(
                "INSERT INTO notifiers (account_id, id, body, created_at) VALUES ($1, $2, $3, $4)",
                &[&account.as_str(), &n.id.as_str(), &body, &n.created_at],
            )
            .map_err(created("a notifier"))?;
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
            let body = c.seal(
                &notifier_context(account.as_str(), n.id.as_str()),
                &json(&n),
            );
            update_body(c, &NOTIFIERS, &account, n.id.as_str(), body, n.revision)
        })
        .await
    }

    async fn delete_notifier(&self, account: AccountId, id: NotifierId) -> StoreResult<()> {
        self.write(move |c| {
            merpati_domain::alert::check_unnamed(&RULES.all(c.conn(), &account)?, &id)?;
            NOTIFIERS.delete(c.conn(), &account, id.as_str())
        })
        .await
    }

    async fn create_window(
        &self,
        account: AccountId,
        w: MaintenanceWindow,
    ) -> StoreResult<MaintenanceWindow> {
        self.write(move |c| {
            check_match(c.conn(), &account, &w.matches)?;
            c.execute(
                "INSERT INTO maintenance_windows (account_id, id, body, created_at)
                 VALUES ($1, $2, $3, $4)",
                &[&account.as_str(), &w.id.as_str(), &json(&w), &w.created_at],
            )
            .map_err(created("a maintenance window"))?;
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
            check_match(c.conn(), &account, &w.matches)?;
            let stored = update_body(c, &WINDOWS, &account, w.id.as_str(), json(&w), w.revision)?;
            recheck_waiting(c, &account, w.updated_at)?;
            Ok(stored)
        })
        .await
    }

    async fn delete_window(&self, account: AccountId, id: WindowId, now: i64) -> StoreResult<()> {
        self.write(move |c| {
            WINDOWS.delete(c.conn(), &account, id.as_str())?;
            // A device held by it may be due now.
            c.execute(
                "UPDATE alert_trackers SET due_at = $3
                 WHERE account_id = $1 AND window_id = $2",
                &[&account.as_str(), &id.as_str(), &now],
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
            c.query(
                "SELECT body, revision FROM incidents
                 WHERE account_id = $1 AND ($2::TEXT IS NULL OR id < $2)
                   AND ($3::TEXT IS NULL OR state = $3)
                 ORDER BY id DESC LIMIT $4",
                &[
                    &account.as_str(),
                    &page.after,
                    &filter.state.map(|s| s.as_str()),
                    &(page.limit as i64),
                ],
            )?
            .iter()
            .map(incident_row)
            .collect()
        })
        .await
    }

    async fn get_incident(&self, account: AccountId, id: IncidentId) -> StoreResult<Incident> {
        self.read(move |c| {
            let row = c
                .query_opt(
                    "SELECT body, revision FROM incidents WHERE account_id = $1 AND id = $2",
                    &[&account.as_str(), &id.as_str()],
                )?
                .ok_or(StoreError::NotFound("incident"))?;
            incident_row(&row)
        })
        .await
    }

    async fn find_incident(&self, id: IncidentId) -> StoreResult<Incident> {
        self.read(move |c| {
            let row = c
                .query_opt(
                    "SELECT body, revision FROM incidents WHERE id = $1",
                    &[&id.as_str()],
                )?
                .ok_or(StoreError::NotFound("incident"))?;
            incident_row(&row)
        })
        .await
    }

    async fn timeline(&self, incident: IncidentId) -> StoreResult<Vec<TimelineEntry>> {
        self.read(move |c| {
            c.query(
                "SELECT at, entry FROM incident_timeline WHERE incident_id = $1 ORDER BY id",
                &[&incident.as_str()],
            )?
            .iter()
            .map(|r| {
                Ok(TimelineEntry {
                    at: r.get(0),
                    entry: json_column(r.get(1))?,
                })
            })
            .collect()
        })
        .await
    }

    async fn incident_notifications(&self, incident: IncidentId) -> StoreResult<Vec<Notification>> {
        self.read(move |c| {
            c.query(
                &format!(
                    "SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE incident_id = $1
                     ORDER BY created_at, id"
                ),
                &[&incident.as_str()],
            )?
            .iter()
            .map(notification_row)
            .collect()
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
            let row = c
                .query_opt(
                    &format!("{CONTEXT_QUERY} WHERE d.account_id = $1 AND d.id = $2"),
                    &[&account.as_str(), &device.as_str()],
                )?
                .ok_or(StoreError::NotFound("device"))?;
            context_row(&row)
        })
        .await
    }

    async fn due_notifications(&self, now: i64, limit: usize) -> StoreResult<Vec<Notification>> {
        self.read(move |c| {
            c.query(
                &format!(
                    "SELECT {NOTIFICATION_COLUMNS} FROM notifications
                     WHERE status = 'pending' AND next_attempt_at <= $1
                       AND account_id NOT IN (SELECT id FROM accounts WHERE deleted_at IS NOT NULL)
                     ORDER BY next_attempt_at LIMIT $2"
                ),
                &[&now, &(limit as i64)],
            )?
            .iter()
            .map(notification_row)
            .collect()
        })
        .await
    }

    async fn prune_alerts(&self, before: i64, limit: usize) -> StoreResult<usize> {
        self.write_aside(move |c| {
            let incidents = c.execute(
                "DELETE FROM incidents WHERE id IN (
                     SELECT id FROM incidents
                     WHERE state = 'resolved' AND resolved_at < $1 LIMIT $2)",
                &[&before, &(limit as i64)],
            )?;
            let notices = c.execute(
                "DELETE FROM notifications WHERE id IN (
                     SELECT id FROM notifications
                     WHERE incident_id IS NULL AND status != 'pending' AND created_at < $1
                     LIMIT $2)",
                &[&before, &(limit as i64)],
            )?;
            Ok((incidents + notices) as usize)
        })
        .await
    }

    async fn link_key(&self) -> StoreResult<Vec<u8>> {
        self.write(|c| {
            let fresh = merpati_keyring::random_key_hex();
            let sealed = c.seal(LINK_KEY, &fresh);
            c.execute(
                "INSERT INTO alert_state (name, value) VALUES ('link_key', $1)
                 ON CONFLICT (name) DO NOTHING",
                &[&sealed],
            )?;
            let stored: String = c
                .query_one("SELECT value FROM alert_state WHERE name = 'link_key'", &[])?
                .get(0);
            let hex = c.open(LINK_KEY, &stored)?;
            crate::rows::unhex(&hex)
        })
        .await
    }
}

/// The acknowledgement links' key's context.
pub(crate) const LINK_KEY: &str = "alert_state.link_key";
