use rusqlite::types::Value as SqlValue;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, ParamsFromIter, Row};

use super::{is_unique_violation, SqliteStore};
use crate::devices::{
    Business, Channel, Device, DeviceContext, DeviceFilter, DeviceStore, Presence,
};
use crate::presence::machine::EngineReport;
use crate::store::{Page, StoreError, StoreResult};

const BUSINESS_COLUMNS: &str = "id, name, created_at, updated_at";
const CHANNEL_COLUMNS: &str = "id, name, engine, business_id, backup_channel_id, created_at,
    updated_at, heartbeat_timeout_ms, grace_ms";
const DEVICE_COLUMNS: &str =
    "id, name, channel_id, phone, presence, presence_since, created_at, updated_at";

pub(super) fn engine_report_from_db(s: &str) -> Option<EngineReport> {
    match s {
        "connected" => Some(EngineReport::Connected),
        "disconnected" => Some(EngineReport::Disconnected),
        "logged_out" => Some(EngineReport::LoggedOut),
        _ => None,
    }
}

pub(super) fn engine_report_to_db(r: EngineReport) -> &'static str {
    match r {
        EngineReport::Connected => "connected",
        EngineReport::Disconnected => "disconnected",
        EngineReport::LoggedOut => "logged_out",
    }
}

fn business_row(r: &Row<'_>) -> rusqlite::Result<Business> {
    Ok(Business {
        id: r.get(0)?,
        name: r.get(1)?,
        created_at: r.get(2)?,
        updated_at: r.get(3)?,
    })
}

fn channel_row(r: &Row<'_>) -> rusqlite::Result<Channel> {
    Ok(Channel {
        id: r.get(0)?,
        name: r.get(1)?,
        engine: r.get(2)?,
        business_id: r.get(3)?,
        backup_channel_id: r.get(4)?,
        created_at: r.get(5)?,
        updated_at: r.get(6)?,
        heartbeat_timeout: r.get(7)?,
        presence_grace: r.get(8)?,
    })
}

fn device_row(r: &Row<'_>) -> rusqlite::Result<Device> {
    Ok(Device {
        id: r.get(0)?,
        name: r.get(1)?,
        channel_id: r.get(2)?,
        phone: r.get(3)?,
        status: Presence::from_db(&r.get::<_, String>(4)?),
        status_since: r.get(5)?,
        created_at: r.get(6)?,
        updated_at: r.get(7)?,
    })
}

/// A device with the names of its channel, business and account, as of now; completed by a
/// WHERE clause.
pub(super) const CONTEXT_QUERY: &str =
    "SELECT d.account_id, a.name, b.id, b.name, ch.id, ch.name, ch.engine,
            d.id, d.name, d.phone, d.presence, d.presence_since, d.engine_state,
            ch.heartbeat_timeout_ms, ch.grace_ms
     FROM devices d
     JOIN accounts a ON a.id = d.account_id
     JOIN channels ch ON ch.account_id = d.account_id AND ch.id = d.channel_id
     JOIN businesses b ON b.account_id = d.account_id AND b.id = ch.business_id";

pub(super) fn context_row(r: &Row<'_>) -> rusqlite::Result<DeviceContext> {
    Ok(DeviceContext {
        account_id: r.get(0)?,
        account_name: r.get(1)?,
        business_id: r.get(2)?,
        business_name: r.get(3)?,
        channel_id: r.get(4)?,
        channel_name: r.get(5)?,
        engine: r.get(6)?,
        device_id: r.get(7)?,
        device_name: r.get(8)?,
        phone: r.get(9)?,
        presence: Presence::from_db(&r.get::<_, String>(10)?),
        presence_since: r.get(11)?,
        engine_state: r
            .get::<_, Option<String>>(12)?
            .as_deref()
            .and_then(engine_report_from_db),
        channel_heartbeat_ms: r.get(13)?,
        channel_grace_ms: r.get(14)?,
    })
}

/// Whether `table` has a row (account, id).
pub(super) fn owned(c: &Connection, table: &str, account: &str, id: &str) -> StoreResult<bool> {
    Ok(c.prepare_cached(&format!(
        "SELECT 1 FROM {table} WHERE account_id = ?1 AND id = ?2"
    ))?
    .exists(params![account, id])?)
}

fn require(c: &Connection, table: &str, field: &str, account: &str, id: &str) -> StoreResult<()> {
    if owned(c, table, account, id)? {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "{field} {id:?} does not exist"
        )))
    }
}

fn taken(what: &str, id: &str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    let message = format!("{what} {id:?} already exists");
    move |e| {
        if is_unique_violation(&e) {
            StoreError::Conflict(message)
        } else {
            e.into()
        }
    }
}

/// ?1 … ?10 of both the INSERT and the UPDATE (which leaves ?7, created_at, alone).
fn channel_params(account: &str, ch: &Channel) -> ParamsFromIter<Vec<SqlValue>> {
    params_from_iter(vec![
        account.to_owned().into(),
        ch.id.clone().into(),
        ch.business_id.clone().into(),
        ch.name.clone().into(),
        ch.engine.clone().into(),
        ch.backup_channel_id.clone().into(),
        ch.created_at.into(),
        ch.updated_at.into(),
        ch.heartbeat_timeout.into(),
        ch.presence_grace.into(),
    ])
}

fn check_channel_refs(c: &Connection, account: &str, ch: &Channel) -> StoreResult<()> {
    require(c, "businesses", "business_id", account, &ch.business_id)?;
    if let Some(backup) = &ch.backup_channel_id {
        require(c, "channels", "backup_channel_id", account, backup)?;
    }
    Ok(())
}

fn list<T: Send + 'static>(
    c: &Connection,
    table: &str,
    columns: &str,
    account: &str,
    page: &Page,
    row: fn(&Row<'_>) -> rusqlite::Result<T>,
) -> StoreResult<Vec<T>> {
    let mut s = c.prepare_cached(&format!(
        "SELECT {columns} FROM {table} WHERE account_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3"
    ))?;
    let rows = s.query_map(
        params![
            account,
            page.after.as_deref().unwrap_or(""),
            page.limit as i64
        ],
        row,
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn get<T>(
    c: &Connection,
    table: &str,
    columns: &str,
    what: &'static str,
    account: &str,
    id: &str,
    row: fn(&Row<'_>) -> rusqlite::Result<T>,
) -> StoreResult<T> {
    c.prepare_cached(&format!(
        "SELECT {columns} FROM {table} WHERE account_id = ?1 AND id = ?2"
    ))?
    .query_row(params![account, id], row)
    .optional()?
    .ok_or(StoreError::NotFound(what))
}

fn changed(n: usize, what: &'static str) -> StoreResult<()> {
    if n == 0 {
        Err(StoreError::NotFound(what))
    } else {
        Ok(())
    }
}

#[async_trait::async_trait]
impl DeviceStore for SqliteStore {
    async fn create_business(&self, account: String, b: Business) -> StoreResult<Business> {
        self.write(move |c| {
            c.execute(
                "INSERT INTO businesses (account_id, id, name, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![account, b.id, b.name, b.created_at, b.updated_at],
            )
            .map_err(taken("business", &b.id))?;
            Ok(b)
        })
        .await
    }

    async fn list_businesses(&self, account: String, page: Page) -> StoreResult<Vec<Business>> {
        self.read(move |c| {
            list(
                c,
                "businesses",
                BUSINESS_COLUMNS,
                &account,
                &page,
                business_row,
            )
        })
        .await
    }

    async fn get_business(&self, account: String, id: String) -> StoreResult<Business> {
        self.read(move |c| {
            get(
                c,
                "businesses",
                BUSINESS_COLUMNS,
                "business",
                &account,
                &id,
                business_row,
            )
        })
        .await
    }

    async fn update_business(&self, account: String, b: Business) -> StoreResult<Business> {
        self.write(move |c| {
            let n = c.execute(
                "UPDATE businesses SET name = ?3, updated_at = ?4 WHERE account_id = ?1 AND id = ?2",
                params![account, b.id, b.name, b.updated_at],
            )?;
            changed(n, "business")?;
            Ok(b)
        })
        .await
    }

    async fn delete_business(&self, account: String, id: String) -> StoreResult<()> {
        self.write(move |c| {
            let in_use = c
                .prepare_cached(
                    "SELECT 1 FROM channels WHERE account_id = ?1 AND business_id = ?2",
                )?
                .exists(params![account, id])?;
            if in_use {
                return Err(StoreError::Conflict(
                    "the business still has channels; delete or move them first".into(),
                ));
            }
            let n = c.execute(
                "DELETE FROM businesses WHERE account_id = ?1 AND id = ?2",
                params![account, id],
            )?;
            changed(n, "business")
        })
        .await
    }

    async fn create_channel(&self, account: String, ch: Channel) -> StoreResult<Channel> {
        self.write(move |c| {
            check_channel_refs(c, &account, &ch)?;
            c.execute(
                "INSERT INTO channels (account_id, id, business_id, name, engine, backup_channel_id,
                                       created_at, updated_at, heartbeat_timeout_ms, grace_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                channel_params(&account, &ch),
            )
            .map_err(taken("channel", &ch.id))?;
            Ok(ch)
        })
        .await
    }

    async fn list_channels(&self, account: String, page: Page) -> StoreResult<Vec<Channel>> {
        self.read(move |c| list(c, "channels", CHANNEL_COLUMNS, &account, &page, channel_row))
            .await
    }

    async fn get_channel(&self, account: String, id: String) -> StoreResult<Channel> {
        self.read(move |c| {
            get(
                c,
                "channels",
                CHANNEL_COLUMNS,
                "channel",
                &account,
                &id,
                channel_row,
            )
        })
        .await
    }

    async fn update_channel(&self, account: String, ch: Channel) -> StoreResult<Channel> {
        self.write(move |c| {
            check_channel_refs(c, &account, &ch)?;
            let n = c.execute(
                "UPDATE channels SET business_id = ?3, name = ?4, engine = ?5,
                        backup_channel_id = ?6, updated_at = ?8, heartbeat_timeout_ms = ?9,
                        grace_ms = ?10
                 WHERE account_id = ?1 AND id = ?2",
                channel_params(&account, &ch),
            )?;
            changed(n, "channel")?;
            Ok(ch)
        })
        .await
    }

    async fn delete_channel(&self, account: String, id: String) -> StoreResult<()> {
        self.write(move |c| {
            let in_use = c
                .prepare_cached("SELECT 1 FROM devices WHERE account_id = ?1 AND channel_id = ?2")?
                .exists(params![account, id])?;
            if in_use {
                return Err(StoreError::Conflict(
                    "the channel still has devices; delete or move them first".into(),
                ));
            }
            c.execute(
                "UPDATE channels SET backup_channel_id = NULL
                 WHERE account_id = ?1 AND backup_channel_id = ?2",
                params![account, id],
            )?;
            let n = c.execute(
                "DELETE FROM channels WHERE account_id = ?1 AND id = ?2",
                params![account, id],
            )?;
            changed(n, "channel")
        })
        .await
    }

    async fn create_device(
        &self,
        account: String,
        d: Device,
        token_hash: Vec<u8>,
    ) -> StoreResult<Device> {
        self.write(move |c| {
            require(c, "channels", "channel_id", &account, &d.channel_id)?;
            c.execute(
                "INSERT INTO devices (account_id, id, channel_id, name, phone, token_hash,
                                      created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    account,
                    d.id,
                    d.channel_id,
                    d.name,
                    d.phone,
                    token_hash,
                    d.created_at,
                    d.updated_at
                ],
            )
            .map_err(taken("device", &d.id))?;
            Ok(d)
        })
        .await
    }

    async fn list_devices(
        &self,
        account: String,
        page: Page,
        filter: DeviceFilter,
    ) -> StoreResult<Vec<Device>> {
        self.read(move |c| {
            let mut sql = format!(
                "SELECT {} FROM devices d
                 JOIN channels ch ON ch.account_id = d.account_id AND ch.id = d.channel_id
                 WHERE d.account_id = ? AND d.id > ?",
                DEVICE_COLUMNS
                    .split(',')
                    .map(|col| format!("d.{}", col.trim()))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let mut args: Vec<SqlValue> =
                vec![account.into(), page.after.unwrap_or_default().into()];
            if let Some(status) = filter.status {
                sql.push_str(" AND d.presence = ?");
                let db = match status.as_str() {
                    "connected" => Presence::Connected,
                    "disconnected" => Presence::Disconnected,
                    _ => Presence::Unknown,
                };
                args.push(db.as_db().to_owned().into());
            }
            for (column, value) in [
                ("ch.engine", filter.engine),
                ("ch.business_id", filter.business_id),
                ("d.channel_id", filter.channel_id),
            ] {
                if let Some(v) = value {
                    sql.push_str(&format!(" AND {column} = ?"));
                    args.push(v.into());
                }
            }
            sql.push_str(" ORDER BY d.id LIMIT ?");
            args.push((page.limit as i64).into());
            let mut s = c.prepare_cached(&sql)?;
            let rows = s.query_map(params_from_iter(args), device_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn get_device(&self, account: String, id: String) -> StoreResult<Device> {
        self.read(move |c| {
            get(
                c,
                "devices",
                DEVICE_COLUMNS,
                "device",
                &account,
                &id,
                device_row,
            )
        })
        .await
    }

    async fn update_device(&self, account: String, d: Device) -> StoreResult<Device> {
        self.write(move |c| {
            require(c, "channels", "channel_id", &account, &d.channel_id)?;
            let n = c.execute(
                "UPDATE devices SET channel_id = ?3, name = ?4, phone = ?5, updated_at = ?6
                 WHERE account_id = ?1 AND id = ?2",
                params![account, d.id, d.channel_id, d.name, d.phone, d.updated_at],
            )?;
            changed(n, "device")?;
            Ok(d)
        })
        .await
    }

    async fn delete_device(&self, account: String, id: String) -> StoreResult<()> {
        self.write(move |c| {
            let n = c.execute(
                "DELETE FROM devices WHERE account_id = ?1 AND id = ?2",
                params![account, id],
            )?;
            changed(n, "device")
        })
        .await
    }

    async fn rotate_device_token(
        &self,
        account: String,
        id: String,
        token_hash: Vec<u8>,
        now: i64,
    ) -> StoreResult<()> {
        self.write(move |c| {
            let n = c.execute(
                "UPDATE devices SET token_hash = ?3, updated_at = ?4
                 WHERE account_id = ?1 AND id = ?2",
                params![account, id, token_hash, now],
            )?;
            changed(n, "device")
        })
        .await
    }

    async fn device_for_token(&self, token_hash: Vec<u8>) -> StoreResult<Option<DeviceContext>> {
        self.read(move |c| {
            Ok(
                c.prepare_cached(&format!("{CONTEXT_QUERY} WHERE d.token_hash = ?1"))?
                    .query_row([token_hash], context_row)
                    .optional()?,
            )
        })
        .await
    }
}
