//! Connectors and their secrets.

use std::collections::BTreeMap;

use merpati_domain::connector::{Connector, ConnectorStore, EngineApi, InboundConnector};
use merpati_domain::ids::{AccountId, ConnectorId, DeviceId};
use merpati_domain::{StoreError, StoreResult};
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::error::{is_unique_violation, DbResult};
use crate::rows::{id, opt_id};
use crate::SqliteStore;

const COLUMNS: &str = "id, account_id, engine, channel_id, device_id, bindings, api_base_url, \
                       api_key, poll_interval_ms, notifications, created_at, updated_at, revision";
/// As read: the engine's API key opened.
const READ_COLUMNS: &str =
    "id, account_id, engine, channel_id, device_id, bindings, api_base_url, \
     open_secret('connectors.api_key:' || id, api_key), poll_interval_ms, notifications, \
     created_at, updated_at, revision";

fn connector_row(r: &Row<'_>) -> rusqlite::Result<Connector> {
    let bindings: String = r.get(5)?;
    let bindings: BTreeMap<String, DeviceId> =
        serde_json::from_str::<BTreeMap<String, String>>(&bindings)
            .map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(5, rusqlite::types::Type::Text, e.into())
            })?
            .into_iter()
            .map(|(k, v)| (k, DeviceId::from(v)))
            .collect();
    let api = match (
        r.get::<_, Option<String>>(6)?,
        r.get::<_, Option<String>>(7)?,
    ) {
        (Some(base_url), Some(key)) => Some(EngineApi { base_url, key }),
        _ => None,
    };
    Ok(Connector {
        id: id(r, 0)?,
        account_id: id(r, 1)?,
        engine: r.get(2)?,
        channel_id: id(r, 3)?,
        device_id: opt_id(r, 4)?,
        bindings,
        api,
        poll_interval_ms: r.get(8)?,
        notifications: r.get(9)?,
        created_at: r.get(10)?,
        updated_at: r.get(11)?,
        revision: r.get(12)?,
    })
}

fn bindings_json(c: &Connector) -> String {
    let plain: BTreeMap<&str, &str> = c
        .bindings
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    serde_json::to_string(&plain).expect("a map of strings serializes")
}

fn get(c: &Connection, account: &AccountId, id: &ConnectorId) -> DbResult<Connector> {
    Ok(c.prepare_cached(&format!(
        "SELECT {READ_COLUMNS} FROM connectors WHERE account_id = ?1 AND id = ?2"
    ))?
    .query_row(params![account.as_str(), id.as_str()], connector_row)
    .optional()?
    .ok_or(StoreError::NotFound("connector"))?)
}

/// Its channel is the account's, and so is each of its devices, on that channel.
fn check_refs(c: &Connection, k: &Connector) -> DbResult<()> {
    let channel = c
        .prepare_cached("SELECT 1 FROM channels WHERE account_id = ?1 AND id = ?2")?
        .exists(params![k.account_id.as_str(), k.channel_id.as_str()])?;
    if !channel {
        return Err(StoreError::Invalid(format!(
            "channel_id {:?} is not a channel of this account",
            k.channel_id.as_str()
        ))
        .into());
    }
    for device in k.devices() {
        let on: Option<String> = c
            .prepare_cached("SELECT channel_id FROM devices WHERE account_id = ?1 AND id = ?2")?
            .query_row(params![k.account_id.as_str(), device.as_str()], |r| {
                r.get(0)
            })
            .optional()?;
        match on {
            None => {
                return Err(StoreError::Invalid(format!(
                    "device {:?} is not a device of this account",
                    device.as_str()
                ))
                .into())
            }
            Some(ch) if ch != k.channel_id.as_str() => {
                return Err(StoreError::Invalid(format!(
                    "device {:?} is on channel {ch:?}, not on the connector's",
                    device.as_str()
                ))
                .into())
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[async_trait::async_trait]
impl ConnectorStore for SqliteStore {
    async fn create_connector(&self, k: Connector, secret: String) -> StoreResult<Connector> {
        self.write(move |c| {
            check_refs(c, &k)?;
            c.execute(
                &format!("INSERT INTO connectors ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, seal_secret('connectors.api_key:' || ?1, ?8), ?9, ?10, ?11, ?12, 0)"),
                params![
                    k.id.as_str(),
                    k.account_id.as_str(),
                    k.engine,
                    k.channel_id.as_str(),
                    k.device_id.as_ref().map(|d| d.as_str()),
                    bindings_json(&k),
                    k.api.as_ref().map(|a| a.base_url.as_str()),
                    k.api.as_ref().map(|a| a.key.as_str()),
                    k.poll_interval_ms,
                    k.notifications,
                    k.created_at,
                    k.updated_at,
                ],
            )
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::Conflict("a connector with this id already exists".into()).into()
                } else {
                    crate::error::DbError::from(e)
                }
            })?;
            c.execute(
                "INSERT INTO connector_secrets (connector_id, secret, created_at)
                 VALUES (?1, seal_secret('connector_secrets.secret:' || ?1, ?2), ?3)",
                params![k.id.as_str(), secret, k.created_at],
            )?;
            get(c, &k.account_id, &k.id)
        })
        .await
    }

    async fn list_connectors(&self, account: AccountId) -> StoreResult<Vec<Connector>> {
        self.read(move |c| {
            let mut s = c.prepare_cached(&format!(
                "SELECT {READ_COLUMNS} FROM connectors WHERE account_id = ?1 ORDER BY id"
            ))?;
            let rows = s.query_map([account.as_str()], connector_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn get_connector(&self, account: AccountId, id: ConnectorId) -> StoreResult<Connector> {
        self.read(move |c| get(c, &account, &id)).await
    }

    async fn update_connector(&self, k: Connector) -> StoreResult<Connector> {
        self.write(move |c| {
            check_refs(c, &k)?;
            let n = c.execute(
                "UPDATE connectors SET channel_id = ?3, device_id = ?4, bindings = ?5,
                     api_base_url = ?6,
                     api_key = seal_secret('connectors.api_key:' || id, ?7), poll_interval_ms = ?8, notifications = ?9,
                     updated_at = ?10, revision = revision + 1
                 WHERE account_id = ?1 AND id = ?2 AND revision = ?11",
                params![
                    k.account_id.as_str(),
                    k.id.as_str(),
                    k.channel_id.as_str(),
                    k.device_id.as_ref().map(|d| d.as_str()),
                    bindings_json(&k),
                    k.api.as_ref().map(|a| a.base_url.as_str()),
                    k.api.as_ref().map(|a| a.key.as_str()),
                    k.poll_interval_ms,
                    k.notifications,
                    k.updated_at,
                    k.revision,
                ],
            )?;
            if n == 0 {
                get(c, &k.account_id, &k.id)?;
                return Err(StoreError::Stale("connector").into());
            }
            get(c, &k.account_id, &k.id)
        })
        .await
    }

    async fn delete_connector(&self, account: AccountId, id: ConnectorId) -> StoreResult<()> {
        self.write(move |c| {
            let n = c.execute(
                "DELETE FROM connectors WHERE account_id = ?1 AND id = ?2",
                params![account.as_str(), id.as_str()],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound("connector").into());
            }
            Ok(())
        })
        .await
    }

    async fn rotate_connector_secret(
        &self,
        account: AccountId,
        id: ConnectorId,
        new_secret: String,
        old_expires_at: i64,
        now: i64,
    ) -> StoreResult<()> {
        self.write(move |c| {
            get(c, &account, &id)?;
            c.execute(
                "DELETE FROM connector_secrets WHERE connector_id = ?1 AND expires_at <= ?2",
                params![id.as_str(), now],
            )?;
            c.execute(
                "UPDATE connector_secrets SET expires_at = MIN(COALESCE(expires_at, ?2), ?2)
                 WHERE connector_id = ?1",
                params![id.as_str(), old_expires_at],
            )?;
            c.execute(
                "INSERT INTO connector_secrets (connector_id, secret, created_at)
                 VALUES (?1, seal_secret('connector_secrets.secret:' || ?1, ?2), ?3)",
                params![id.as_str(), new_secret, now],
            )?;
            Ok(())
        })
        .await
    }

    async fn inbound_connector(
        &self,
        id: ConnectorId,
        now: i64,
    ) -> StoreResult<Option<InboundConnector>> {
        self.read(move |c| {
            let Some(connector) = c
                .prepare_cached(&format!(
                    "SELECT {READ_COLUMNS} FROM connectors WHERE id = ?1"
                ))?
                .query_row([id.as_str()], connector_row)
                .optional()?
            else {
                return Ok(None);
            };
            let mut s = c.prepare_cached(
                "SELECT open_secret('connector_secrets.secret:' || connector_id, secret)
                 FROM connector_secrets
                 WHERE connector_id = ?1 AND (expires_at IS NULL OR expires_at > ?2)
                 ORDER BY created_at DESC, rowid DESC",
            )?;
            let secrets = s
                .query_map(params![id.as_str(), now], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()?;
            Ok(Some(InboundConnector { connector, secrets }))
        })
        .await
    }

    async fn polled_connectors(&self) -> StoreResult<Vec<Connector>> {
        self.read(move |c| {
            let mut s = c.prepare_cached(&format!(
                "SELECT {READ_COLUMNS} FROM connectors WHERE api_base_url IS NOT NULL ORDER BY id"
            ))?;
            let rows = s.query_map([], connector_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }
}
