//! Polling the engines whose connectors give their API: the engine's own word on each
//! session, every `poll_interval`, into the presence hub. A poll that gets no answer says
//! nothing, so an engine that dies leaves its devices' leases to run out.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use merpati_domain::clock::SharedClock;
use merpati_domain::connector::Connector;
use merpati_domain::device::EngineReport;
use merpati_domain::ids::ConnectorId;
use merpati_domain::presence::machine::Input;
use merpati_domain::{SharedStore, StoreError};
use merpati_engines::{status, Engine, State};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::delivery::guard::Guard;
use crate::delivery::send::{self, Client};
use crate::presence::PresenceHandle;

/// Without a `poll_interval`, an engine is asked this often.
pub const DEFAULT_INTERVAL_MS: i64 = 30_000;
/// Connectors are read again this often, and whenever one changes.
const RELOAD_MS: i64 = 60_000;
/// How often the poller looks at what is due, in real time.
const LOOK_EVERY: Duration = Duration::from_millis(250);

pub struct Poller {
    pub store: SharedStore,
    pub clock: SharedClock,
    pub presence: PresenceHandle,
    pub client: Client,
    pub guard: Guard,
    pub timeout: Duration,
    /// Notified when a connector is created, changed or deleted.
    pub changed: Arc<Notify>,
    /// The server's public address, under which engines post (Telegram's webhook).
    pub public_url: String,
    pub shutdown: CancellationToken,
}

impl Poller {
    pub async fn run(self) {
        // The secret each Telegram bot was last given, so that a rotation gives it again.
        let mut given: HashMap<ConnectorId, String> = HashMap::new();
        let mut connectors: Vec<Connector> = Vec::new();
        let mut due: HashMap<ConnectorId, i64> = HashMap::new();
        let mut loaded_at: Option<i64> = None;
        loop {
            let now = self.clock.now_ms();
            if loaded_at.is_none_or(|t| now - t >= RELOAD_MS) {
                match self.store.polled_connectors().await {
                    Ok(all) => {
                        due.retain(|id, _| all.iter().any(|c| &c.id == id));
                        given.retain(|id, _| all.iter().any(|c| &c.id == id));
                        connectors = all;
                        loaded_at = Some(now);
                    }
                    Err(e) => tracing::warn!(error = %e, "reading the polled connectors"),
                }
            }
            for c in &connectors {
                let next = due.entry(c.id.clone()).or_insert(now);
                if now >= *next {
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return,
                        _ = self.poll(c, now, &mut given) => {}
                    }
                    *next = now + c.poll_interval_ms.unwrap_or(DEFAULT_INTERVAL_MS);
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = self.changed.notified() => loaded_at = None,
                _ = tokio::time::sleep(LOOK_EVERY) => {}
            }
        }
    }

    async fn poll(&self, c: &Connector, now: i64, given: &mut HashMap<ConnectorId, String>) {
        let (Some(engine), Some(api)) = (Engine::parse(&c.engine), &c.api) else {
            return;
        };
        let keys: Vec<&str> = c.bindings.keys().map(String::as_str).collect();
        for request in status::requests(engine, &api.base_url, &api.key, &keys) {
            let got = send::get(
                &self.client,
                &self.guard,
                &request.url,
                &request.headers,
                self.timeout,
            )
            .await;
            let Some(code) = got.status else {
                tracing::debug!(connector = %c.id, error = ?got.error, "engine did not answer");
                continue;
            };
            for (key, state) in
                status::read(engine, &request, code, got.body.as_bytes(), now / 1000)
            {
                self.apply(c, key.as_deref(), state).await;
            }
            if engine == Engine::Telegram && (200..300).contains(&code) {
                let current = status::telegram_webhook(got.body.as_bytes());
                self.point_telegram(c, current.as_deref(), now, given).await;
            }
        }
    }

    /// Telegram is told where to post, by `setWebhook`, whenever it posts elsewhere or the
    /// connector's secret changed since it was told.
    async fn point_telegram(
        &self,
        c: &Connector,
        current: Option<&str>,
        now: i64,
        given: &mut HashMap<ConnectorId, String>,
    ) {
        let Some(api) = &c.api else { return };
        let secret = match self.store.inbound_connector(c.id.clone(), now).await {
            Ok(Some(found)) => match found.secrets.into_iter().next() {
                Some(s) => s,
                None => return,
            },
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "reading a connector's secret");
                return;
            }
        };
        let url = c.inbound_url(&self.public_url);
        if current == Some(url.as_str()) && given.get(&c.id) == Some(&secret) {
            return;
        }
        let (set_url, body) = status::telegram_set_webhook(&api.base_url, &api.key, &url, &secret);
        let set = send::post(&self.client, &self.guard, &set_url, &[], body, self.timeout).await;
        if set.status.is_some_and(|s| (200..300).contains(&s)) {
            given.insert(c.id.clone(), secret);
            tracing::info!(connector = %c.id, "Telegram's webhook set");
        } else {
            tracing::warn!(connector = %c.id, status = ?set.status, "Telegram's setWebhook failed");
        }
    }

    async fn apply(&self, c: &Connector, key: Option<&str>, state: State) {
        let Some(device) = c.device_for(key) else {
            return;
        };
        let ctx = match self
            .store
            .device_context(c.account_id.clone(), device.clone())
            .await
        {
            Ok(ctx) => ctx,
            Err(StoreError::NotFound(_)) => return,
            Err(e) => {
                tracing::warn!(error = %e, "reading a polled device");
                return;
            }
        };
        let input = match state {
            State::Connected => Input::EngineWorking,
            State::Pending | State::Disconnected => Input::Report(EngineReport::Disconnected),
            State::LoggedOut => Input::Report(EngineReport::LoggedOut),
        };
        if let Err(e) = self.presence.input(&ctx, input).await {
            tracing::warn!(error = %e, "a polled state");
        }
    }
}
