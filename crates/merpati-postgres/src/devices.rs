//! An account's businesses, channels and devices, and the device a token belongs to.

use merpati_domain::device::{
    Business, Channel, Device, DeviceContext, DeviceFilter, DeviceStore, Presence,
};
use merpati_domain::ids::{AccountId, BusinessId, ChannelId, DeviceId};
use merpati_domain::limits::check_cap;
use merpati_domain::presence::machine::EngineReport;
use merpati_domain::{Page, StoreError, StoreResult};
use postgres::Row;

use crate::conn::{Conn, Param};
use crate::error::{is_unique_violation, DbError, DbResult};
use crate::table::{owned, Table};
use crate::PostgresStore;

const BUSINESS_COLUMNS: &str = "id, name, created_at, updated_at, revision";
const CHANNEL_COLUMNS: &str = "id, name, engine, business_id, backup_channel_id, created_at,
    updated_at, heartbeat_timeout_ms, grace_ms, revision";
const DEVICE_COLUMNS: &str =
    "id, name, channel_id, phone, presence, presence_since, created_at, updated_at, revision";

/// How the `presence` column spells a device's announced presence.
pub(crate) fn presence_to_db(p: Presence) -> &'static str {
    match p {
        Presence::Unknown => "unknown",
        Presence::Connected => "up",
        Presence::Disconnected => "down",
    }
}

pub(crate) fn presence_from_db(s: &str) -> Presence {
    match s {
        "up" => Presence::Connected,
        "down" => Presence::Disconnected,
        _ => Presence::Unknown,
    }
}

fn business_row(_: &Conn, r: &Row) -> DbResult<Business> {
    Ok(Business {
        id: BusinessId::from(r.get::<_, String>(0)),
        name: r.get(1),
        created_at: r.get(2),
        updated_at: r.get(3),
        revision: r.get(4),
    })
}

fn channel_row(_: &Conn, r: &Row) -> DbResult<Channel> {
    Ok(Channel {
        id: ChannelId::from(r.get::<_, String>(0)),
        name: r.get(1),
        engine: r.get(2),
        business_id: BusinessId::from(r.get::<_, String>(3)),
        backup_channel_id: r.get::<_, Option<String>>(4).map(ChannelId::from),
        created_at: r.get(5),
        updated_at: r.get(6),
        heartbeat_timeout_ms: r.get(7),
        grace_ms: r.get(8),
        revision: r.get(9),
    })
}

fn device_row(_: &Conn, r: &Row) -> DbResult<Device> {
    Ok(Device {
        id: DeviceId::from(r.get::<_, String>(0)),
        name: r.get(1),
        channel_id: ChannelId::from(r.get::<_, String>(2)),
        phone: r.get(3),
        status: presence_from_db(r.get(4)),
        status_since: r.get(5),
        created_at: r.get(6),
        updated_at: r.get(7),
        revision: r.get(8),
    })
}

/// A device with the names of its channel, business and account, as of now; completed by a
/// WHERE clause.
pub(crate) const CONTEXT_QUERY: &str =
    "SELECT d.account_id, a.name, b.id, b.name, ch.id, ch.name, ch.engine,
            d.id, d.name, d.phone, d.presence, d.presence_since, d.engine_state,
            ch.heartbeat_timeout_ms, ch.grace_ms, a.limits
     FROM devices d
     JOIN accounts a ON a.id = d.account_id
     JOIN channels ch ON ch.account_id = d.account_id AND ch.id = d.channel_id
     JOIN businesses b ON b.account_id = d.account_id AND b.id = ch.business_id";

/// The context query over keyed devices (`by_keys`): made once, as it runs for every
/// presence group and alert run.
pub(crate) static CONTEXTS_BY_KEYS: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| by_keys(CONTEXT_QUERY, false));

/// `query` (the context query or one made from it) over the devices named by two arrays,
/// `$1` accounts and `$2` ids, each device found by its key (and locked, with `lock`, in the
/// arrays' order). A join the planner made while the table was small looked each key up
/// among its channel's devices, and was kept as the channel grew: 7 to 9 ms a presence
/// group at 10,000 devices. The `LIMIT` keeps each look one probe of the key.
pub(crate) fn by_keys(query: &str, lock: bool) -> String {
    let lock = if lock { " FOR UPDATE" } else { "" };
    query.replacen(
        "FROM devices d",
        &format!(
            "FROM UNNEST($1::TEXT[], $2::TEXT[]) AS k(account_id, id)
             CROSS JOIN LATERAL (
                 SELECT * FROM devices d
                 WHERE d.account_id = k.account_id AND d.id = k.id
                 LIMIT 1{lock}
             ) d"
        ),
        1,
    )
}

pub(crate) fn context_row(r: &Row) -> DbResult<DeviceContext> {
    Ok(DeviceContext {
        account_id: AccountId::from(r.get::<_, String>(0)),
        account_name: r.get(1),
        business_id: BusinessId::from(r.get::<_, String>(2)),
        business_name: r.get(3),
        channel_id: ChannelId::from(r.get::<_, String>(4)),
        channel_name: r.get(5),
        engine: r.get(6),
        device_id: DeviceId::from(r.get::<_, String>(7)),
        device_name: r.get(8),
        phone: r.get(9),
        presence: presence_from_db(r.get(10)),
        presence_since: r.get(11),
        engine_state: r.get::<_, Option<&str>>(12).and_then(EngineReport::parse),
        channel_heartbeat_ms: r.get(13),
        channel_grace_ms: r.get(14),
        account_limits: crate::rows::json_column(r.get(15))?,
    })
}

fn require(c: &mut Conn, table: &str, field: &str, account: &str, id: &str) -> DbResult<()> {
    if owned(c, table, account, id)? {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!("{field} {id:?} does not exist")).into())
    }
}

fn taken(what: &str, id: &str) -> impl FnOnce(DbError) -> DbError {
    let message = format!("{what} {id:?} already exists");
    move |e| {
        if is_unique_violation(&e) {
            StoreError::Conflict(message).into()
        } else {
            e
        }
    }
}

fn check_channel_refs(c: &mut Conn, account: &AccountId, ch: &Channel) -> DbResult<()> {
    let account = account.as_str();
    require(
        c,
        "businesses",
        "business_id",
        account,
        ch.business_id.as_str(),
    )?;
    if let Some(backup) = &ch.backup_channel_id {
        require(c, "channels", "backup_channel_id", account, backup.as_str())?;
    }
    Ok(())
}

const BUSINESSES: Table<Business> = Table {
    name: "businesses",
    columns: BUSINESS_COLUMNS,
    what: "business",
    row: business_row,
};
const CHANNELS: Table<Channel> = Table {
    name: "channels",
    columns: CHANNEL_COLUMNS,
    what: "channel",
    row: channel_row,
};
const DEVICES: Table<Device> = Table {
    name: "devices",
    columns: DEVICE_COLUMNS,
    what: "device",
    row: device_row,
};

#[async_trait::async_trait]
impl DeviceStore for PostgresStore {
    async fn create_business(&self, account: AccountId, b: Business) -> StoreResult<Business> {
        self.write(move |c| {
            c.execute(
                "INSERT INTO businesses (account_id, id, name, created_at, updated_at, revision)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &account.as_str(),
                    &b.id.as_str(),
                    &b.name,
                    &b.created_at,
                    &b.updated_at,
                    &b.revision,
                ],
            )
            .map_err(taken("business", b.id.as_str()))?;
            Ok(b)
        })
        .await
    }

    async fn list_businesses(&self, account: AccountId, page: Page) -> StoreResult<Vec<Business>> {
        self.read(move |c| BUSINESSES.list(c, &account, &page))
            .await
    }

    async fn get_business(&self, account: AccountId, id: BusinessId) -> StoreResult<Business> {
        self.read(move |c| BUSINESSES.get(c, &account, id.as_str()))
            .await
    }

    async fn update_business(&self, account: AccountId, b: Business) -> StoreResult<Business> {
        self.write(move |c| {
            let n = c.execute(
                "UPDATE businesses SET name = $3, updated_at = $4, revision = revision + 1
                 WHERE account_id = $1 AND id = $2 AND revision = $5",
                &[
                    &account.as_str(),
                    &b.id.as_str(),
                    &b.name,
                    &b.updated_at,
                    &b.revision,
                ],
            )?;
            BUSINESSES.updated(c.conn(), n, &account, b.id.as_str())
        })
        .await
    }

    async fn delete_business(&self, account: AccountId, id: BusinessId) -> StoreResult<()> {
        self.write(move |c| {
            let in_use = c
                .query_opt(
                    "SELECT 1 FROM channels WHERE account_id = $1 AND business_id = $2 LIMIT 1",
                    &[&account.as_str(), &id.as_str()],
                )?
                .is_some();
            if in_use {
                return Err(StoreError::Conflict(
                    "the business still has channels; delete or move them first".into(),
                )
                .into());
            }
            let n = c.execute(
                "DELETE FROM businesses WHERE account_id = $1 AND id = $2",
                &[&account.as_str(), &id.as_str()],
            )?;
            BUSINESSES.changed(n)
        })
        .await
    }

    async fn create_channel(&self, account: AccountId, ch: Channel) -> StoreResult<Channel> {
        self.write(move |c| {
            check_channel_refs(c.conn(), &account, &ch)?;
            c.execute(
                "INSERT INTO channels (account_id, id, business_id, name, engine, backup_channel_id,
                                       created_at, updated_at, heartbeat_timeout_ms, grace_ms,
                                       revision)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                &[
                    &account.as_str(),
                    &ch.id.as_str(),
                    &ch.business_id.as_str(),
                    &ch.name,
                    &ch.engine,
                    &ch.backup_channel_id.as_ref().map(|b| b.as_str()),
                    &ch.created_at,
                    &ch.updated_at,
                    &ch.heartbeat_timeout_ms,
                    &ch.grace_ms,
                    &ch.revision,
                ],
            )
            .map_err(taken("channel", ch.id.as_str()))?;
            Ok(ch)
        })
        .await
    }

    async fn list_channels(&self, account: AccountId, page: Page) -> StoreResult<Vec<Channel>> {
        self.read(move |c| CHANNELS.list(c, &account, &page)).await
    }

    async fn get_channel(&self, account: AccountId, id: ChannelId) -> StoreResult<Channel> {
        self.read(move |c| CHANNELS.get(c, &account, id.as_str()))
            .await
    }

    async fn update_channel(&self, account: AccountId, ch: Channel) -> StoreResult<Channel> {
        self.write(move |c| {
            check_channel_refs(c.conn(), &account, &ch)?;
            let n = c.execute(
                "UPDATE channels SET business_id = $3, name = $4, engine = $5,
                        backup_channel_id = $6, updated_at = $7, heartbeat_timeout_ms = $8,
                        grace_ms = $9, revision = revision + 1
                 WHERE account_id = $1 AND id = $2 AND revision = $10",
                &[
                    &account.as_str(),
                    &ch.id.as_str(),
                    &ch.business_id.as_str(),
                    &ch.name,
                    &ch.engine,
                    &ch.backup_channel_id.as_ref().map(|b| b.as_str()),
                    &ch.updated_at,
                    &ch.heartbeat_timeout_ms,
                    &ch.grace_ms,
                    &ch.revision,
                ],
            )?;
            CHANNELS.updated(c.conn(), n, &account, ch.id.as_str())
        })
        .await
    }

    async fn delete_channel(&self, account: AccountId, id: ChannelId) -> StoreResult<()> {
        self.write(move |c| {
            let in_use = c
                .query_opt(
                    "SELECT 1 FROM devices WHERE account_id = $1 AND channel_id = $2 LIMIT 1",
                    &[&account.as_str(), &id.as_str()],
                )?
                .is_some();
            if in_use {
                return Err(StoreError::Conflict(
                    "the channel still has devices; delete or move them first".into(),
                )
                .into());
            }
            c.execute(
                "UPDATE channels SET backup_channel_id = NULL, revision = revision + 1
                 WHERE account_id = $1 AND backup_channel_id = $2",
                &[&account.as_str(), &id.as_str()],
            )?;
            let n = c.execute(
                "DELETE FROM channels WHERE account_id = $1 AND id = $2",
                &[&account.as_str(), &id.as_str()],
            )?;
            CHANNELS.changed(n)
        })
        .await
    }

    async fn create_device(
        &self,
        account: AccountId,
        d: Device,
        token_hash: Vec<u8>,
        cap: u32,
    ) -> StoreResult<Device> {
        self.write(move |c| {
            let count = crate::rows::count_of(c.conn(), "devices", &account)?;
            check_cap(count, cap, "devices")?;
            require(
                c.conn(),
                "channels",
                "channel_id",
                account.as_str(),
                d.channel_id.as_str(),
            )?;
            c.execute(
                "INSERT INTO devices (account_id, id, channel_id, name, phone, token_hash,
                                      created_at, updated_at, revision)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                &[
                    &account.as_str(),
                    &d.id.as_str(),
                    &d.channel_id.as_str(),
                    &d.name,
                    &d.phone,
                    &token_hash,
                    &d.created_at,
                    &d.updated_at,
                    &d.revision,
                ],
            )
            .map_err(taken("device", d.id.as_str()))?;
            Ok(d)
        })
        .await
    }

    async fn list_devices(
        &self,
        account: AccountId,
        page: Page,
        filter: DeviceFilter,
    ) -> StoreResult<Vec<Device>> {
        self.read(move |c| {
            let columns = DEVICE_COLUMNS
                .split(',')
                .map(|col| format!("d.{}", col.trim()))
                .collect::<Vec<_>>()
                .join(", ");
            let mut args: Vec<String> = vec![account.into_string(), page.after.unwrap_or_default()];
            let mut sql = format!(
                "SELECT {columns} FROM devices d
                 JOIN channels ch ON ch.account_id = d.account_id AND ch.id = d.channel_id
                 WHERE d.account_id = $1 AND d.id > $2"
            );
            let filters = [
                (
                    "d.presence",
                    filter.status.map(|s| presence_to_db(s).to_owned()),
                ),
                ("ch.engine", filter.engine),
                (
                    "ch.business_id",
                    filter.business_id.map(BusinessId::into_string),
                ),
                (
                    "d.channel_id",
                    filter.channel_id.map(ChannelId::into_string),
                ),
            ];
            for (column, value) in filters {
                if let Some(v) = value {
                    args.push(v);
                    sql.push_str(&format!(" AND {column} = ${}", args.len()));
                }
            }
            let limit = page.limit as i64;
            sql.push_str(&format!(" ORDER BY d.id LIMIT ${}", args.len() + 1));
            let mut params: Vec<Param<'_>> = args.iter().map(|a| a as Param<'_>).collect();
            params.push(&limit);
            let rows = c.query(&sql, &params)?;
            rows.iter().map(|r| device_row(c, r)).collect()
        })
        .await
    }

    async fn get_device(&self, account: AccountId, id: DeviceId) -> StoreResult<Device> {
        self.read(move |c| DEVICES.get(c, &account, id.as_str()))
            .await
    }

    async fn update_device(&self, account: AccountId, d: Device) -> StoreResult<Device> {
        self.write(move |c| {
            require(
                c.conn(),
                "channels",
                "channel_id",
                account.as_str(),
                d.channel_id.as_str(),
            )?;
            let n = c.execute(
                "UPDATE devices SET channel_id = $3, name = $4, phone = $5, updated_at = $6,
                        revision = revision + 1
                 WHERE account_id = $1 AND id = $2 AND revision = $7",
                &[
                    &account.as_str(),
                    &d.id.as_str(),
                    &d.channel_id.as_str(),
                    &d.name,
                    &d.phone,
                    &d.updated_at,
                    &d.revision,
                ],
            )?;
            DEVICES.updated(c.conn(), n, &account, d.id.as_str())
        })
        .await
    }

    async fn delete_device(&self, account: AccountId, id: DeviceId) -> StoreResult<()> {
        self.write(move |c| {
            let n = c.execute(
                "DELETE FROM devices WHERE account_id = $1 AND id = $2",
                &[&account.as_str(), &id.as_str()],
            )?;
            DEVICES.changed(n)
        })
        .await
    }

    async fn rotate_device_token(
        &self,
        account: AccountId,
        id: DeviceId,
        token_hash: Vec<u8>,
        now: i64,
    ) -> StoreResult<()> {
        self.write(move |c| {
            let n = c.execute(
                "UPDATE devices SET token_hash = $3, updated_at = $4
                 WHERE account_id = $1 AND id = $2",
                &[&account.as_str(), &id.as_str(), &token_hash, &now],
            )?;
            DEVICES.changed(n)
        })
        .await
    }

    async fn device_for_token(&self, token_hash: Vec<u8>) -> StoreResult<Option<DeviceContext>> {
        self.read(move |c| {
            c.query_opt(
                &format!("{CONTEXT_QUERY} WHERE d.token_hash = $1"),
                &[&token_hash],
            )?
            .as_ref()
            .map(context_row)
            .transpose()
        })
        .await
    }
}
