//! Connectors and their secrets.

use std::collections::BTreeMap;

use merpati_domain::connector::{Connector, ConnectorStore, EngineApi, InboundConnector};
use merpati_domain::ids::{AccountId, ChannelId, ConnectorId, DeviceId};
use merpati_domain::{StoreError, StoreResult};
use postgres::Row;

use crate::conn::Conn;
use crate::error::{is_unique_violation, DbResult};
use crate::rows::json_column;
use crate::PostgresStore;

const COLUMNS: &str = "id, account_id, engine, channel_id, device_id, bindings, api_base_url, \
                       api_key, poll_interval_ms, notifications, created_at, updated_at, revision";

fn api_key_context(id: &str) -> String {
    format!("connectors.api_key:{id}")
}

fn secret_context(id: &str) -> String {
    format!("connector_secrets.secret:{id}")
}

fn connector_row(c: &Conn, r: &Row) -> DbResult<Connector> {
    let id: String = r.get(0);
    let bindings: BTreeMap<String, DeviceId> = json_column::<BTreeMap<String, String>>(r.get(5))?
        .into_iter()
        .map(|(k, v)| (k, DeviceId::from(v)))
        .collect();
    let key = r
        .get::<_, Option<&str>>(7)
        .map(|sealed| c.open(&api_key_context(&id), sealed))
        .transpose()?;
    let api = match (r.get::<_, Option<String>>(6), key) {
        (Some(base_url), Some(key)) => Some(EngineApi { base_url, key }),
        _ => None,
    };
    Ok(Connector {
        id: ConnectorId::from(id),
        account_id: AccountId::from(r.get::<_, String>(1)),
        engine: r.get(2),
        channel_id: ChannelId::from(r.get::<_, String>(3)),
        device_id: r.get::<_, Option<String>>(4).map(DeviceId::from),
        bindings,
        api,
        poll_interval_ms: r.get(8),
        notifications: r.get(9),
        created_at: r.get(10),
        updated_at: r.get(11),
        revision: r.get(12),
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

fn get(c: &mut Conn, account: &AccountId, id: &ConnectorId) -> DbResult<Connector> {
    let row = c
        .query_opt(
            &format!("SELECT {COLUMNS} FROM connectors WHERE account_id = $1 AND id = $2"),
            &[&account.as_str(), &id.as_str()],
        )?
        .ok_or(StoreError::NotFound("connector"))?;
    connector_row(c, &row)
}

/// Its channel is the account's, and so is each of its devices, on that channel.
fn check_refs(c: &mut Conn, k: &Connector) -> DbResult<()> {
    let channel = c
        .query_opt(
            "SELECT 1 FROM channels WHERE account_id = $1 AND id = $2",
            &[&k.account_id.as_str(), &k.channel_id.as_str()],
        )?
        .is_some();
    if !channel {
        return Err(StoreError::Invalid(format!(
            "channel_id {:?} is not a channel of this account",
            k.channel_id.as_str()
        ))
        .into());
    }
    for device in k.devices() {
        let on: Option<String> = c
            .query_opt(
                "SELECT channel_id FROM devices WHERE account_id = $1 AND id = $2",
                &[&k.account_id.as_str(), &device.as_str()],
            )?
            .map(|r| r.get(0));
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
impl ConnectorStore for PostgresStore {
    async fn create_connector(&self, k: Connector, secret: String) -> StoreResult<Connector> {
        self.write(move |c| {
            check_refs(c.conn(), &k)?;
            let id = k.id.as_str();
            let api_key = k.api.as_ref().map(|a| c.seal(&api_key_context(id), &a.key));
            c.execute(
                &format!(
                    "INSERT INTO connectors ({COLUMNS})
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 0)"
                ),
                &[
                    &id,
                    &k.account_id.as_str(),
                    &k.engine,
                    &k.channel_id.as_str(),
                    &k.device_id.as_ref().map(|d| d.as_str()),
                    &bindings_json(&k),
                    &k.api.as_ref().map(|a| a.base_url.as_str()),
                    &api_key,
                    &k.poll_interval_ms,
                    &k.notifications,
                    &k.created_at,
                    &k.updated_at,
                ],
            )
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::Conflict("a connector with this id already exists".into()).into()
                } else {
                    e
                }
            })?;
            let sealed = c.seal(&secret_context(id), &secret);
            c.execute(
                "INSERT INTO connector_secrets (connector_id, secret, created_at)
                 VALUES ($1, $2, $3)",
                &[&id, &sealed, &k.created_at],
            )?;
            get(c.conn(), &k.account_id, &k.id)
        })
        .await
    }

    async fn list_connectors(&self, account: AccountId) -> StoreResult<Vec<Connector>> {
        self.read(move |c| {
            let rows = c.query(
                &format!("SELECT {COLUMNS} FROM connectors WHERE account_id = $1 ORDER BY id"),
                &[&account.as_str()],
            )?;
            rows.iter().map(|r| connector_row(c, r)).collect()
        })
        .await
    }

    async fn get_connector(&self, account: AccountId, id: ConnectorId) -> StoreResult<Connector> {
        self.read(move |c| get(c, &account, &id)).await
    }

    async fn update_connector(&self, k: Connector) -> StoreResult<Connector> {
        self.write(move |c| {
            check_refs(c.conn(), &k)?;
            let api_key = k
                .api
                .as_ref()
                .map(|a| c.seal(&api_key_context(k.id.as_str()), &a.key));
            let n = c.execute(
                "UPDATE connectors SET channel_id = $3, device_id = $4, bindings = $5,
                     api_base_url = $6, api_key = $7, poll_interval_ms = $8, notifications = $9,
                     updated_at = $10, revision = revision + 1
                 WHERE account_id = $1 AND id = $2 AND revision = $11",
                &[
                    &k.account_id.as_str(),
                    &k.id.as_str(),
                    &k.channel_id.as_str(),
                    &k.device_id.as_ref().map(|d| d.as_str()),
                    &bindings_json(&k),
                    &k.api.as_ref().map(|a| a.base_url.as_str()),
                    &api_key,
                    &k.poll_interval_ms,
                    &k.notifications,
                    &k.updated_at,
                    &k.revision,
                ],
            )?;
            if n == 0 {
                get(c.conn(), &k.account_id, &k.id)?;
                return Err(StoreError::Stale("connector").into());
            }
            get(c.conn(), &k.account_id, &k.id)
        })
        .await
    }

    async fn delete_connector(&self, account: AccountId, id: ConnectorId) -> StoreResult<()> {
        self.write(move |c| {
            let n = c.execute(
                "DELETE FROM connectors WHERE account_id = $1 AND id = $2",
                &[&account.as_str(), &id.as_str()],
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
            get(c.conn(), &account, &id)?;
            c.execute(
                "DELETE FROM connector_secrets WHERE connector_id = $1 AND expires_at <= $2",
                &[&id.as_str(), &now],
            )?;
            c.execute(
                "UPDATE connector_secrets SET expires_at = LEAST(COALESCE(expires_at, $2), $2)
                 WHERE connector_id = $1",
                &[&id.as_str(), &old_expires_at],
            )?;
            let sealed = c.seal(&secret_context(id.as_str()), &new_secret);
            c.execute(
                "INSERT INTO connector_secrets (connector_id, secret, created_at)
                 VALUES ($1, $2, $3)",
                &[&id.as_str(), &sealed, &now],
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
            let Some(row) = c.query_opt(
                &format!("SELECT {COLUMNS} FROM connectors WHERE id = $1"),
                &[&id.as_str()],
            )?
            else {
                return Ok(None);
            };
            let connector = connector_row(c, &row)?;
            let secrets = c
                .query(
                    "SELECT secret FROM connector_secrets
                     WHERE connector_id = $1 AND (expires_at IS NULL OR expires_at > $2)
                     ORDER BY created_at DESC, id DESC",
                    &[&id.as_str(), &now],
                )?
                .iter()
                .map(|r| c.open(&secret_context(id.as_str()), r.get(0)))
                .collect::<DbResult<Vec<String>>>()?;
            Ok(Some(InboundConnector { connector, secrets }))
        })
        .await
    }

    async fn polled_connectors(&self) -> StoreResult<Vec<Connector>> {
        self.read(move |c| {
            let rows = c.query(
                &format!(
                    "SELECT {COLUMNS} FROM connectors WHERE api_base_url IS NOT NULL ORDER BY id"
                ),
                &[],
            )?;
            rows.iter().map(|r| connector_row(c, r)).collect()
        })
        .await
    }
}
