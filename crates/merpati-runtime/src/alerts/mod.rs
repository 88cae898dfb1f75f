//! The alert runner: one task that drives the alert engine (`merpati_domain::alert::engine`)
//! and sends the notifications it commits.
//!
//! It runs the engine when the presence hub has written announcements (the engine reads
//! them from the store, in order, so a wake that comes late or twice changes nothing), when
//! the earliest stored due time comes, and when the API changes something. Then it sends every notification that is due, each as one attempt, and
//! records the outcome (sent, retried on the notifications' schedule, or given up) in a
//! write of its own. It never polls: it sleeps until the earliest due time the store
//! knows of. A notification is committed before it is sent, so a crash between the two
//! sends it after the restart, with the same id.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use merpati_domain::alert::engine::{self, Outcome, SendResult, Settings};
use merpati_domain::alert::message::Kind;
use merpati_domain::alert::{IncidentState, Message, Notification, Notifier};
use merpati_domain::clock::SharedClock;
use merpati_domain::ids::{AccountId, NotificationId};
use merpati_domain::{SharedStore, StoreError, StoreResult};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, Change};
use crate::cluster::Ownership;
use crate::delivery::DeliveryWaker;
use crate::metrics::Metrics;

pub mod notify;

pub use notify::{Attempted, Sender};

/// Notifications started at once, at most.
const MAX_SENDING: usize = 64;

/// How long device changes are gathered before the engine takes them in.
const GATHER: Duration = Duration::from_millis(20);

enum Command {
    Wake,
    Tick(oneshot::Sender<()>),
}

/// The API's end of the runner.
#[derive(Clone)]
pub struct AlertHandle {
    commands: mpsc::Sender<Command>,
    sender: Arc<Sender>,
    settings: Arc<Settings>,
    delivery: DeliveryWaker,
    bus: Bus,
    metrics: Arc<Metrics>,
}

impl AlertHandle {
    /// Something the engine weighs changed (a rule, a window, an acknowledgement).
    pub fn wake(&self) {
        let _ = self.commands.try_send(Command::Wake);
    }

    /// Runs the engine now and waits until every notification due is sent or retried
    /// later. With a manual clock, this is how tests move time.
    pub async fn tick(&self) {
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::Tick(reply)).await.is_ok() {
            let _ = done.await;
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Tells whoever needs to know what an engine run the API made committed.
    pub fn committed(&self, out: &Outcome) {
        tell(&self.delivery, &self.bus, &self.metrics, out);
    }

    /// Sends a test message to `notifier` now, outside the durable path, and answers
    /// with what happened.
    pub async fn test(
        &self,
        account: &AccountId,
        notifier: &Notifier,
        language: merpati_domain::alert::Language,
        now: i64,
    ) -> Attempted {
        let message = Message::new(Kind::Test, notifier.language.unwrap_or(language), now);
        let n = Notification::new(account.clone(), None, notifier.id.clone(), message, now);
        self.sender.send(notifier, &n, now).await
    }
}

pub struct AlertRunner {
    store: SharedStore,
    clock: SharedClock,
    delivery: DeliveryWaker,
    bus: Bus,
    announced: Arc<Notify>,
    metrics: Arc<Metrics>,
    settings: Arc<Settings>,
    sender: Arc<Sender>,
    commands: mpsc::Receiver<Command>,
    ownership: Arc<Ownership>,
    shutdown: CancellationToken,
}

pub struct RunnerSettings {
    pub store: SharedStore,
    pub clock: SharedClock,
    pub delivery: DeliveryWaker,
    pub bus: Bus,
    /// The presence hub's: notified when announcements are written.
    pub announced: Arc<Notify>,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    pub sender: Sender,
    /// Only the leading node runs the engine and sends its notifications.
    pub ownership: Arc<Ownership>,
    pub shutdown: CancellationToken,
}

pub fn runner(s: RunnerSettings) -> (AlertHandle, AlertRunner) {
    let (tx, rx) = mpsc::channel(64);
    let settings = Arc::new(s.settings);
    let sender = Arc::new(s.sender);
    let handle = AlertHandle {
        commands: tx,
        sender: sender.clone(),
        settings: settings.clone(),
        delivery: s.delivery.clone(),
        bus: s.bus.clone(),
        metrics: s.metrics.clone(),
    };
    let runner = AlertRunner {
        store: s.store,
        clock: s.clock,
        delivery: s.delivery,
        bus: s.bus,
        announced: s.announced,
        metrics: s.metrics,
        settings,
        sender,
        commands: rx,
        ownership: s.ownership,
        shutdown: s.shutdown,
    };
    (handle, runner)
}

type Sent = (Notification, Attempted, i64);

impl AlertRunner {
    pub async fn run(mut self) {
        let mut sending: JoinSet<Sent> = JoinSet::new();
        let mut in_flight: HashSet<NotificationId> = HashSet::new();
        let mut ticks: Vec<oneshot::Sender<()>> = Vec::new();
        let mut run_now = true;
        let mut wake_at: Option<i64> = None;
        // Device changes come in storms (a network blip drops thousands): the engine takes
        // them in together, a moment after the first, rather than one run each.
        let mut gathering: Option<tokio::time::Instant> = None;
        loop {
            if run_now {
                run_now = false;
                gathering = None;
                wake_at = if self.ownership.leads() {
                    self.pass(&mut sending, &mut in_flight).await
                } else {
                    None
                };
                if self.ownership.shared() || !self.ownership.leads() {
                    // Announcements written on other nodes, and a leadership taken over
                    // (or a lease this node is sure of again), are seen within a second.
                    let poll = self.clock.now_ms() + 1000;
                    wake_at = Some(wake_at.map_or(poll, |at| at.min(poll)));
                }
                if sending.is_empty() {
                    for t in ticks.drain(..) {
                        let _ = t.send(());
                    }
                }
            }
            let sleep = wake_at.map(|at| {
                let ms = (at - self.clock.now_ms()).max(0) as u64;
                tokio::time::sleep(Duration::from_millis(ms))
            });
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                command = self.commands.recv() => match command {
                    Some(Command::Wake) => run_now = true,
                    Some(Command::Tick(reply)) => {
                        ticks.push(reply);
                        run_now = true;
                    }
                    None => break,
                },
                _ = self.announced.notified() => {
                    gathering.get_or_insert_with(|| tokio::time::Instant::now() + GATHER);
                }
                _ = async { tokio::time::sleep_until(gathering.expect("guarded")).await },
                    if gathering.is_some() => run_now = true,
                Some(done) = sending.join_next(), if !sending.is_empty() => {
                    if let Ok((n, attempted, at)) = done {
                        in_flight.remove(&n.id);
                        self.record(n, attempted.result, at).await;
                    }
                    run_now = true;
                }
                _ = async { sleep.expect("guarded").await }, if sleep.is_some() => run_now = true,
            }
        }
        // What is under way is abandoned, not lost: still pending, it is sent after the
        // next start.
        sending.shutdown().await;
    }

    /// Runs the engine until it has nothing left now, starts what is due to be sent, and
    /// answers when to look again.
    async fn pass(
        &mut self,
        sending: &mut JoinSet<Sent>,
        in_flight: &mut HashSet<NotificationId>,
    ) -> Option<i64> {
        let now = self.clock.now_ms();
        let mut next_due;
        loop {
            let settings = self.settings.clone();
            let outcome = self
                .store
                .alert_write(Box::new(move |tx| engine::run(tx, &settings, now)))
                .await;
            match outcome {
                Ok(out) => {
                    self.told(&out);
                    next_due = out.next_due;
                    if !out.more {
                        break;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "the alert engine failed; trying again in a second");
                    return Some(now + 1000);
                }
            }
        }
        let room = MAX_SENDING.saturating_sub(sending.len());
        let due = match self
            .store
            .due_notifications(now, room + in_flight.len())
            .await
        {
            Ok(due) => due,
            Err(e) => {
                tracing::error!(error = %e, "reading due notifications failed");
                return Some(now + 1000);
            }
        };
        let mut limited = false;
        for n in due {
            if in_flight.contains(&n.id) {
                continue;
            }
            if sending.len() >= MAX_SENDING {
                limited = true;
                break;
            }
            let notifier = match self
                .store
                .get_notifier(n.account_id.clone(), n.notifier_id.clone())
                .await
            {
                Ok(x) => x,
                Err(StoreError::NotFound(_)) => {
                    let failed = SendResult::Failed {
                        error: "the notifier was deleted".into(),
                        permanent: true,
                        retry_after_ms: None,
                    };
                    self.record(n, failed, now).await;
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "reading a notifier failed");
                    continue;
                }
            };
            in_flight.insert(n.id.clone());
            let sender = self.sender.clone();
            let clock = self.clock.clone();
            sending.spawn(async move {
                let at = clock.now_ms();
                let attempted = sender.send(&notifier, &n, at).await;
                (n, attempted, clock.now_ms())
            });
        }
        // Due now and not under way: only what did not fit.
        match next_due {
            Some(at) if at <= now && !limited => {
                next_due = if sending.is_empty() {
                    Some(now + 1000)
                } else {
                    None
                };
            }
            Some(at) if at <= now => next_due = Some(now),
            _ => {}
        }
        next_due
    }

    async fn record(&mut self, n: Notification, result: SendResult, now: i64) {
        let settings = self.settings.clone();
        let (id, notifier) = (n.id.clone(), n.notifier_id.clone());
        if let SendResult::Failed { error, .. } = &result {
            tracing::warn!(notification = %id, notifier = %notifier, error = %error, "a notification failed");
        }
        let outcome = match &result {
            SendResult::Sent => "sent",
            SendResult::Failed { .. } => "failed",
        };
        self.metrics.notification(n.message.kind.as_str(), outcome);
        let recorded: StoreResult<Outcome> = self
            .store
            .alert_write(Box::new(move |tx| {
                engine::record_attempt(tx, &settings, n, result, now)
            }))
            .await;
        match recorded {
            Ok(out) => self.told(&out),
            Err(e) => {
                tracing::error!(notification = %id, error = %e, "recording a notification failed")
            }
        }
    }

    fn told(&self, out: &Outcome) {
        tell(&self.delivery, &self.bus, &self.metrics, out);
    }
}

/// What an engine run committed, told: the delivery worker woken for the `incident.*`
/// events' deliveries, and the incidents' changes on the bus.
fn tell(delivery: &DeliveryWaker, bus: &Bus, metrics: &Metrics, out: &Outcome) {
    if out.due_deliveries > 0 {
        delivery.wake();
    }
    for change in &out.incidents {
        metrics.event(match change.state {
            IncidentState::Open => "incident.opened",
            IncidentState::Acknowledged => "incident.acknowledged",
            IncidentState::Resolved => "incident.resolved",
        });
        bus.publish(Change::Incident {
            account: change.account_id.clone(),
            incident: change.incident_id.clone(),
            state: change.state,
        });
    }
}
