//! merpati: a self-hosted event hub for messaging-device gateways.
//!
//! This crate is the top of the layers: the HTTP kit (`api`), the features' routes, and the
//! app that wires them to the runtime (`merpati-runtime`) and the storage backend picked at
//! run time (`store`). [`run`] serves everything on a listener until a shutdown signal;
//! [`start`] does the same under the caller's control, which is how the tests run a server
//! on port 0.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub mod accounts;
pub mod alerts;
pub mod api;
pub mod app;
pub mod audit;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod connectors;
pub mod dashboard;
pub mod devices;
pub mod endpoints;
pub mod events;
pub mod ingest;
pub mod jobs;
pub mod presence;
pub mod remote;
pub mod serve;
pub mod store;
pub mod stream;
pub mod tls;

use config::{Config, Secret};
use merpati_domain::alert::engine as alert_engine;
use merpati_domain::clock::{SharedClock, SystemClock};
use merpati_domain::ids;
use merpati_domain::SharedStore;
use merpati_runtime::alerts::{self as alert_runtime, AlertHandle};
use merpati_runtime::bus::{Bus, Subscriber};
use merpati_runtime::cluster::Ownership;
use merpati_runtime::delivery::guard::{Guard, GuardedResolver};
use merpati_runtime::delivery::send;
use merpati_runtime::delivery::{self, DeliveryWaker, Pauses};
use merpati_runtime::mail as email;
use merpati_runtime::metrics::Metrics;
use merpati_runtime::presence::{self as presence_hub, HubSettings, PresenceHandle};
use merpati_runtime::{jobs as job_runner, retention};

/// Serves until SIGINT or SIGTERM, then stops gracefully. Fails if an essential task
/// failed and stopped the server.
pub async fn run(config: Config, listener: TcpListener) -> anyhow::Result<()> {
    // Listening before anything starts: a signal that comes while the server starts (its
    // worker may already deliver) stops it gracefully rather than killing the process.
    let signalled = shutdown_signal()?;
    let server = start(config, listener, Arc::new(SystemClock)).await?;
    tokio::select! {
        _ = signalled => {}
        _ = server.shutdown.cancelled() => {}
    }
    tracing::info!("shutting down");
    server.stop().await
}

/// A running server: its address and the means to stop it.
pub struct Server {
    pub addr: std::net::SocketAddr,
    ownership: Arc<Ownership>,
    tls: Option<Arc<tls::Tls>>,
    shutdown: CancellationToken,
    failed: Failed,
    tasks: TaskTracker,
    store: SharedStore,
    http: tokio::task::JoinHandle<std::io::Result<()>>,
    presence: PresenceHandle,
    alerts: AlertHandle,
    bus: Bus,
}

impl Server {
    /// The presence hub, e.g. to make it look at its deadlines after a test moved the clock.
    pub fn presence(&self) -> &PresenceHandle {
        &self.presence
    }

    /// The alert runner, e.g. to make it look at what is due after a test moved the clock.
    pub fn alerts(&self) -> &AlertHandle {
        &self.alerts
    }

    /// Reads the TLS certificate and key again (what SIGHUP does); new connections get
    /// them, open ones keep theirs.
    pub fn reload_tls(&self) -> anyhow::Result<()> {
        if let Some(tls) = &self.tls {
            tls.reload()?;
        }
        Ok(())
    }

    /// The changes the server commits from now on, as they are made durable.
    pub fn subscribe(&self) -> Subscriber {
        self.bus.subscribe()
    }

    /// Stops accepting, lets requests and attempts under way finish, closes the database.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let served = self.http.await;
        self.tasks.close();
        self.tasks.wait().await;
        // Only once every attempt is recorded: the node's records count while it holds its
        // lease, and leaving hands its slots to the others at once.
        if let Err(e) = self.store.leave_cluster(&self.ownership.node()).await {
            tracing::warn!(error = %e, "cannot end this node's lease");
        }
        self.store.close().await;
        served.context("HTTP server task")?.context("HTTP server")?;
        match self.failed.0.lock().expect("failed lock").take() {
            Some(task) => anyhow::bail!("the {task} failed, and the server stopped"),
            None => Ok(()),
        }
    }
}

/// The essential task that failed, if one did.
#[derive(Clone, Default)]
struct Failed(Arc<std::sync::Mutex<Option<&'static str>>>);

/// Runs a task the server cannot work without. Should it panic, the server stops (and
/// [`run`] fails, for a supervisor to start it again) rather than go on accepting events it
/// no longer delivers; everything accepted is in the database for the next start.
fn spawn_essential(
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
    failed: &Failed,
    name: &'static str,
    task: impl Future<Output = ()> + Send + 'static,
) {
    use futures_util::FutureExt;
    let (shutdown, failed) = (shutdown.clone(), failed.clone());
    tasks.spawn(async move {
        if std::panic::AssertUnwindSafe(task)
            .catch_unwind()
            .await
            .is_err()
        {
            tracing::error!(
                task = name,
                "an essential task panicked; stopping the server"
            );
            failed.0.lock().expect("failed lock").get_or_insert(name);
            shutdown.cancel();
        }
    });
}

/// Opens the store, starts the worker and the HTTP server, and returns at once.
pub async fn start(
    config: Config,
    listener: TcpListener,
    clock: SharedClock,
) -> anyhow::Result<Server> {
    let admin_token = admin_token(&config)?;
    let store = store::open(&config).await?;
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let failed = Failed::default();
    let waker = DeliveryWaker::default();
    let node = merpati_domain::cluster::new_node_id();
    let ownership = Arc::new(Ownership::new(&node));
    let metrics = Arc::new(Metrics::default());
    let mut membership = merpati_runtime::cluster::Membership {
        store: store.clone(),
        node,
        name: node_name(&config),
        lease: config.cluster.lease,
        ownership: ownership.clone(),
        on_change: {
            let waker = waker.clone();
            Box::new(move || waker.wake())
        },
        clock: clock.clone(),
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
    };
    if let Err(e) = membership.join().await {
        store.close().await;
        return Err(e.into());
    }
    tracing::info!(
        node = %membership.node,
        name = %membership.name,
        slots = ownership.fence().epochs.len(),
        "joined the nodes of the database"
    );
    {
        let (shutdown, failed) = (shutdown.clone(), failed.clone());
        tasks.spawn(async move {
            if let Err(e) = membership.run().await {
                tracing::error!(error = %e, "stopping the server");
                failed
                    .0
                    .lock()
                    .expect("failed lock")
                    .get_or_insert("node lease");
                shutdown.cancel();
            }
        });
    }
    let bus = Bus::default();
    let pauses = Pauses::new(bus.clone());
    let announced = Arc::new(tokio::sync::Notify::new());
    let (handoff, inbox, owners_to_wake) = delivery::handoff(&config.delivery, ownership.clone());
    // Offers of other nodes go to the worker; a wake naming none makes it look for what
    // is due.
    {
        let (ownership, waker, handoff) = (ownership.clone(), waker.clone(), handoff.clone());
        store.listen_for_offers(Box::new(move |offers| {
            let mut look = false;
            let mut mine = Vec::new();
            for offer in offers {
                if !ownership.takes_any(&[offer.slot]) {
                    continue;
                }
                if offer.deliveries.is_empty() {
                    look = true;
                }
                mine.extend(offer.deliveries);
            }
            handoff.offered(mine);
            if look {
                waker.wake();
            }
        }))?;
    }
    let mailer = mailer(&config)?;
    spawn_essential(
        &tasks,
        &shutdown,
        &failed,
        "wakes of other nodes",
        owners_to_wake.run(store.clone(), shutdown.clone()),
    );

    spawn_essential(
        &tasks,
        &shutdown,
        &failed,
        "delivery worker",
        delivery::Worker {
            store: store.clone(),
            config: config.delivery.clone(),
            clock: clock.clone(),
            waker: waker.clone(),
            inbox,
            pauses: pauses.clone(),
            bus: bus.clone(),
            metrics: metrics.clone(),
            mailer: mailer.clone(),
            ownership: ownership.clone(),
            shutdown: shutdown.clone(),
        }
        .run(),
    );

    let purge = Arc::new(tokio::sync::Notify::new());
    let (presence, mut hub) = presence_hub::hub(HubSettings {
        store: store.clone(),
        clock: clock.clone(),
        waker: waker.clone(),
        bus: bus.clone(),
        lease: config.presence.lease.clone(),
        min_heartbeat_interval: config.presence.min_heartbeat_interval,
        announced: announced.clone(),
        metrics: metrics.clone(),
        ownership: ownership.clone(),
        shutdown: shutdown.clone(),
    });
    // After every node was down, no link survived and nobody heard the devices.
    let (nodes, _) = store.cluster_nodes().await?;
    let after_restart = nodes.iter().all(|n| n.id == ownership.node());
    hub.start(after_restart).await?;
    spawn_essential(&tasks, &shutdown, &failed, "presence hub", hub.run());
    spawn_essential(
        &tasks,
        &shutdown,
        &failed,
        "retention pruner",
        retention::Pruner {
            store: store.clone(),
            clock: clock.clone(),
            config: config.retention.clone(),
            wake: purge.clone(),
            ownership: ownership.clone(),
            shutdown: shutdown.clone(),
        }
        .run(),
    );

    let (jobs, job_runner) = job_runner::runner(
        store.clone(),
        clock.clone(),
        waker.clone(),
        bus.clone(),
        ownership.clone(),
        shutdown.clone(),
    );
    spawn_essential(&tasks, &shutdown, &failed, "job runner", job_runner.run());

    let addr = listener.local_addr()?;
    let wiring = Wiring {
        store: &store,
        clock: &clock,
        waker: &waker,
        bus: &bus,
        shutdown: &shutdown,
        announced: &announced,
        metrics: &metrics,
        ownership: &ownership,
    };
    let (alerts, alert_runner) = alert_runner(&config, &wiring, addr, mailer).await?;
    spawn_essential(
        &tasks,
        &shutdown,
        &failed,
        "alert runner",
        alert_runner.run(),
    );

    let connectors_changed = Arc::new(tokio::sync::Notify::new());
    let guard = Guard::new(config.delivery.allowed_networks.clone());
    let resolver = GuardedResolver::new(guard.clone(), config.delivery.resolve.clone());
    spawn_essential(
        &tasks,
        &shutdown,
        &failed,
        "engine poller",
        merpati_runtime::connectors::Poller {
            store: store.clone(),
            clock: clock.clone(),
            presence: presence.clone(),
            client: send::client(config.delivery.timeout, resolver),
            guard,
            timeout: config.delivery.timeout,
            changed: connectors_changed.clone(),
            public_url: config
                .alerts
                .public_url
                .clone()
                .unwrap_or_else(|| format!("http://{addr}")),
            shutdown: shutdown.clone(),
        }
        .run(),
    );

    let metrics_for_listener = metrics.clone();
    let connection_limits = config.server.clone();
    let tls = config
        .tls
        .as_ref()
        .map(|files| tls::Tls::load(&files.cert, &files.key).map(Arc::new))
        .transpose()?;
    if let Some(tls) = &tls {
        tasks.spawn(reload_on_hangup(tls.clone(), shutdown.clone()));
    }
    let state = api::AppState {
        store: store.clone(),
        lease: config.presence.lease.clone(),
        config: Arc::new(config),
        clock,
        admin_token_hash: Arc::new(ids::token_hash(admin_token.expose())),
        delivery: waker,
        handoff,
        pauses,
        presence: presence.clone(),
        bus: bus.clone(),
        tasks: tasks.clone(),
        shutdown: shutdown.clone(),
        jobs,
        device_tokens: Default::default(),
        purge,
        alerts: alerts.clone(),
        connector_stats: Default::default(),
        connectors_changed: connectors_changed.clone(),
        metrics,
        rates: Default::default(),
        ownership: ownership.clone(),
    };
    let state_ownership = ownership;
    let app = app::router(state);
    let http = tokio::spawn(serve::serve(
        listener,
        app,
        connection_limits,
        tls.clone(),
        shutdown.clone(),
        metrics_for_listener,
    ));
    tracing::info!(%addr, https = tls.is_some(), "merpati is listening");
    Ok(Server {
        ownership: state_ownership,
        addr,
        tls,
        shutdown,
        failed,
        tasks,
        store,
        http,
        presence,
        alerts,
        bus,
    })
}

/// What the runtime's tasks share.
struct Wiring<'a> {
    store: &'a SharedStore,
    clock: &'a SharedClock,
    waker: &'a DeliveryWaker,
    bus: &'a Bus,
    shutdown: &'a CancellationToken,
    announced: &'a Arc<tokio::sync::Notify>,
    metrics: &'a Arc<Metrics>,
    ownership: &'a Arc<Ownership>,
}

/// The alert runner, with the engine's settings and the means to send notifications.
/// The SMTP transport, when `alerts.smtp_url` is set: for e-mail notifiers and e-mail
/// endpoints alike.
fn mailer(config: &Config) -> anyhow::Result<Option<email::Mailer>> {
    let a = &config.alerts;
    Ok(match (&a.smtp_url, &a.smtp_from) {
        (Some(url), Some(from)) => {
            let smtp = email::SmtpConfig {
                server: email::parse_smtp_url(url.expose()).map_err(anyhow::Error::msg)?,
                from: email::parse_mailbox(from).map_err(anyhow::Error::msg)?,
                timeout: config.delivery.timeout,
                ca_pem: match &a.smtp_ca_file {
                    Some(path) => Some(
                        std::fs::read(path)
                            .with_context(|| format!("reading {}", path.display()))?,
                    ),
                    None => None,
                },
            };
            Some(email::Mailer::new(&smtp).map_err(anyhow::Error::msg)?)
        }
        (Some(_), None) => anyhow::bail!("alerts.smtp_url is set: set alerts.smtp_from too"),
        _ => None,
    })
}

async fn alert_runner(
    config: &Config,
    w: &Wiring<'_>,
    addr: std::net::SocketAddr,
    mailer: Option<email::Mailer>,
) -> anyhow::Result<(AlertHandle, alert_runtime::AlertRunner)> {
    let a = &config.alerts;
    let ms = |d: std::time::Duration| d.as_millis() as i64;
    let settings = alert_engine::Settings {
        group_wait_ms: ms(a.group_wait),
        reopen_within_ms: ms(a.reopen_within),
        flap_drops: a.flap_drops,
        flap_within_ms: ms(a.flap_within),
        flap_quiet_ms: ms(a.flap_quiet),
        conversations_window_ms: ms(a.conversations_window),
        public_url: a
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{addr}")),
        link_key: w.store.link_key().await?,
    };
    let guard = Guard::new(config.delivery.allowed_networks.clone());
    let resolver = GuardedResolver::new(guard.clone(), config.delivery.resolve.clone());
    let sender = alert_runtime::Sender {
        client: send::client(config.delivery.timeout, resolver),
        guard,
        mailer,
        timeout: config.delivery.timeout,
    };
    Ok(alert_runtime::runner(alert_runtime::RunnerSettings {
        store: w.store.clone(),
        clock: w.clock.clone(),
        delivery: w.waker.clone(),
        bus: w.bus.clone(),
        announced: w.announced.clone(),
        metrics: w.metrics.clone(),
        settings,
        sender,
        ownership: w.ownership.clone(),
        shutdown: w.shutdown.clone(),
    }))
}

/// What this node is called among the nodes of its database: `cluster.node_name`, else the
/// host's name.
fn node_name(config: &Config) -> String {
    config.cluster.node_name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "merpati".to_owned())
    })
}

const ADMIN_TOKEN_FILE: &str = "admin-token";

/// The configured admin token; else the one stored in the data dir; else a new one, stored
/// there (readable by the owner only). The log says where it is, never what it is.
pub fn admin_token(config: &Config) -> anyhow::Result<Secret> {
    if let Some(token) = &config.admin_token {
        return Ok(token.clone());
    }
    let path = config.data_dir.join(ADMIN_TOKEN_FILE);
    if path.exists() {
        let token = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        return Ok(Secret::new(token.trim()));
    }
    let token = ids::new_token("mat");
    write_private(&path, &token)?;
    tracing::info!(
        file = %path.display(),
        "generated an admin token, readable by this user only: read it from the file"
    );
    Ok(Secret::new(token))
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    std::io::Write::write_all(&mut file, contents.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

/// Reads the certificate and key again at each SIGHUP, until the server stops.
async fn reload_on_hangup(tls: Arc<tls::Tls>, shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: the certificate is read only at start");
            return;
        };
        loop {
            tokio::select! {
                _ = hangups.recv() => match tls.reload() {
                    Ok(()) => tracing::info!("SIGHUP: the TLS certificate and key are read again"),
                    Err(e) => tracing::error!(error = %e, "SIGHUP: the TLS files in use stay"),
                },
                () = shutdown.cancelled() => return,
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (tls, shutdown);
    }
}

/// SIGINT or SIGTERM. The handlers are installed when this is called, not when the future
/// is first polled.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

/// Runs a future to completion on a new multi-threaded runtime.
pub fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime starts")
        .block_on(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn essentials() -> (TaskTracker, CancellationToken, Failed) {
        (
            TaskTracker::new(),
            CancellationToken::new(),
            Failed::default(),
        )
    }

    #[tokio::test]
    async fn an_essential_task_that_panics_stops_the_server_and_is_named() {
        let (tasks, shutdown, failed) = essentials();
        spawn_essential(&tasks, &shutdown, &failed, "job runner", async {});
        spawn_essential(&tasks, &shutdown, &failed, "delivery worker", async {
            panic!("an invariant broke")
        });
        tasks.close();
        tasks.wait().await;
        assert!(shutdown.is_cancelled());
        assert_eq!(*failed.0.lock().unwrap(), Some("delivery worker"));
    }

    #[tokio::test]
    async fn essential_tasks_that_end_do_not_stop_the_server() {
        let (tasks, shutdown, failed) = essentials();
        spawn_essential(&tasks, &shutdown, &failed, "job runner", async {});
        tasks.close();
        tasks.wait().await;
        assert!(!shutdown.is_cancelled());
        assert!(failed.0.lock().unwrap().is_none());
    }
}
