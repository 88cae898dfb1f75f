//! What an operator's Prometheus scrapes: counters the runtime and the API move as work is
//! done (atomics: nothing is locked on the hot path), and gauges set from the store and
//! the runtime's own state at each scrape. Every label set is bounded: event types,
//! outcomes, statuses, engines (the first few an account made, then `other`), never an id.

use std::collections::HashSet;
use std::sync::Mutex;

use merpati_domain::store::{Counts, Histogram};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram as Buckets};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

/// Engines named in labels, at most; the rest are `other`.
const MAX_ENGINES: usize = 32;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabel {
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IngestLabels {
    r#type: &'static str,
    /// `stored` or `duplicate`.
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HowLabel {
    how: &'static str,
}

/// How the worker came to hold a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// Handed over in memory by ingest on this node.
    Handed,
    /// Offered by the node that stored it, and read.
    Offered,
    /// Claimed from the store: a retry, a parked delivery, or one nobody handed or offered.
    Claimed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ThenLabel {
    then: &'static str,
}

/// What followed when the store could not take attempt records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordsRefused {
    /// Sent again after a pause.
    SentAgain,
    /// Given up on: their deliveries are attempted again once their lease runs out.
    GivenUp,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotificationLabels {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeviceLabels {
    status: &'static str,
    engine: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// A delivery attempt's outcome, as metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    Succeeded,
    Retrying,
    Failed,
}

/// The store's commit durations, as they were at the last scrape: a histogram the store
/// keeps, shown as one.
#[derive(Debug, Default)]
struct Commits(Mutex<Histogram>);

impl Collector for Commits {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let h = self.0.lock().expect("commits lock").clone();
        let mut metric = encoder.encode_descriptor(
            "merpati_commit_duration",
            "How long each commit of the store took, from its first statement to durable",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        metric.encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)
    }
}

pub struct Metrics {
    registry: Registry,
    commits: std::sync::Arc<Commits>,
    events: Family<TypeLabel, Counter>,
    ingest: Family<IngestLabels, Counter>,
    deliveries: Family<OutcomeLabel, Counter>,
    taken: Family<HowLabel, Counter>,
    records_refused: Family<ThenLabel, Counter>,
    dead_node_sessions_ended: Counter,
    delivery_duration: Buckets,
    notifications: Family<NotificationLabels, Counter>,
    deliveries_pending: Gauge,
    deliveries_held: Gauge,
    devices: Family<DeviceLabels, Gauge>,
    incidents: Family<StateLabel, Gauge>,
    incidents_open: Gauge,
    links_open: Gauge,
    connections_open: Gauge,
    connections_refused: Counter,
    endpoints_paused: Gauge,
    store_up: Gauge,
    engines: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let events = Family::<TypeLabel, Counter>::default();
        registry.register(
            "merpati_events",
            "Events stored, by type (inbound items, announcements, notices, incidents)",
            events.clone(),
        );
        let ingest = Family::<IngestLabels, Counter>::default();
        registry.register(
            "merpati_ingest_items",
            "Items devices sent, by type and whether they were stored or a re-sent duplicate",
            ingest.clone(),
        );
        let deliveries = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "merpati_deliveries",
            "Delivery attempts recorded, by outcome: succeeded, retrying, failed",
            deliveries.clone(),
        );
        let taken = Family::<HowLabel, Counter>::default();
        registry.register(
            "merpati_deliveries_taken",
            "Deliveries the worker took to attempt, by how: handed over by ingest on this node, \
             offered by the node that stored them, claimed from the store (one it already \
             held, claimed or read again, is not counted)",
            taken.clone(),
        );
        let records_refused = Family::<ThenLabel, Counter>::default();
        registry.register(
            "merpati_attempt_records_refused",
            "Attempt records the store could not take, by what followed: sent again after a \
             pause, or given up on (their deliveries are attempted again when their lease \
             runs out)",
            records_refused.clone(),
        );
        let dead_node_sessions_ended = Counter::default();
        registry.register(
            "merpati_dead_node_sessions_ended",
            "Database sessions of nodes whose lease ran out (a frozen node's listening \
             session) that this node ended as the leader",
            dead_node_sessions_ended.clone(),
        );
        // 1 ms to about 33 s.
        let delivery_duration = Buckets::new(exponential_buckets(0.001, 2.0, 16));
        registry.register_with_unit(
            "merpati_delivery_duration",
            "How long each delivery attempt took, from sending to the end of the answer",
            Unit::Seconds,
            delivery_duration.clone(),
        );
        let notifications = Family::<NotificationLabels, Counter>::default();
        registry.register(
            "merpati_notifications",
            "Alert notification attempts, by kind and outcome: sent, retrying, failed",
            notifications.clone(),
        );
        let deliveries_pending = Gauge::default();
        registry.register(
            "merpati_deliveries_pending",
            "Deliveries not yet final (due, leased, waiting their turn or their retry)",
            deliveries_pending.clone(),
        );
        let deliveries_held = Gauge::default();
        registry.register(
            "merpati_deliveries_held",
            "Deliveries kept for disabled endpoints",
            deliveries_held.clone(),
        );
        let devices = Family::<DeviceLabels, Gauge>::default();
        registry.register(
            "merpati_devices",
            "Devices by announced status (connected, disconnected, unknown) and engine",
            devices.clone(),
        );
        let incidents = Family::<StateLabel, Gauge>::default();
        registry.register(
            "merpati_incidents",
            "Incidents not resolved, by state",
            incidents.clone(),
        );
        let incidents_open = Gauge::default();
        registry.register(
            "merpati_incidents_open",
            "Incidents not resolved (open or acknowledged)",
            incidents_open.clone(),
        );
        let links_open = Gauge::default();
        registry.register(
            "merpati_links_open",
            "Device links (WebSockets) open",
            links_open.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "merpati_connections_open",
            "HTTP connections open (device links among them)",
            connections_open.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "merpati_connections_refused",
            "Connections closed at once because server.max_connections were open",
            connections_refused.clone(),
        );
        let endpoints_paused = Gauge::default();
        registry.register(
            "merpati_endpoints_paused",
            "Endpoints whose circuit breaker is open",
            endpoints_paused.clone(),
        );
        let store_up = Gauge::default();
        registry.register(
            "merpati_store_up",
            "Whether the store answered this scrape's reads: 1, or 0 (the gauges read from it \
             then keep their last values)",
            store_up.clone(),
        );
        let commits = std::sync::Arc::new(Commits::default());
        registry.register_collector(Box::new(commits.clone()));
        Metrics {
            registry,
            commits,
            events,
            ingest,
            deliveries,
            taken,
            records_refused,
            dead_node_sessions_ended,
            delivery_duration,
            notifications,
            deliveries_pending,
            deliveries_held,
            devices,
            incidents,
            incidents_open,
            links_open,
            connections_open,
            connections_refused,
            endpoints_paused,
            store_up,
            engines: Mutex::new(HashSet::new()),
        }
    }
}

impl Metrics {
    pub fn event(&self, event_type: &'static str) {
        self.events
            .get_or_create(&TypeLabel { r#type: event_type })
            .inc();
    }

    pub fn ingested(&self, event_type: &'static str, stored: bool) {
        self.ingested_n(event_type, stored, 1);
    }

    /// `n` items of one type, all stored or all duplicates.
    pub fn ingested_n(&self, event_type: &'static str, stored: bool, n: u64) {
        let outcome = if stored { "stored" } else { "duplicate" };
        self.ingest
            .get_or_create(&IngestLabels {
                r#type: event_type,
                outcome,
            })
            .inc_by(n);
        if stored {
            self.events
                .get_or_create(&TypeLabel { r#type: event_type })
                .inc_by(n);
        }
    }

    pub fn taken(&self, how: Taken, n: usize) {
        let how = match how {
            Taken::Handed => "handed",
            Taken::Offered => "offered",
            Taken::Claimed => "claimed",
        };
        self.taken.get_or_create(&HowLabel { how }).inc_by(n as u64);
    }

    pub fn dead_node_sessions_ended(&self, n: u64) {
        self.dead_node_sessions_ended.inc_by(n);
    }

    pub fn records_refused(&self, then: RecordsRefused, n: usize) {
        let then = match then {
            RecordsRefused::SentAgain => "sent_again",
            RecordsRefused::GivenUp => "given_up",
        };
        self.records_refused
            .get_or_create(&ThenLabel { then })
            .inc_by(n as u64);
    }

    pub fn attempt(&self, outcome: AttemptOutcome, duration_ms: i64) {
        let outcome = match outcome {
            AttemptOutcome::Succeeded => "succeeded",
            AttemptOutcome::Retrying => "retrying",
            AttemptOutcome::Failed => "failed",
        };
        self.deliveries
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
        self.delivery_duration
            .observe(duration_ms.max(0) as f64 / 1000.0);
    }

    pub fn notification(&self, kind: &'static str, outcome: &'static str) {
        self.notifications
            .get_or_create(&NotificationLabels { kind, outcome })
            .inc();
    }

    pub fn link_opened(&self) {
        self.links_open.inc();
    }

    pub fn link_closed(&self) {
        self.links_open.dec();
    }

    pub fn connection_opened(&self) {
        self.connections_open.inc();
    }

    pub fn connection_closed(&self) {
        self.connections_open.dec();
    }

    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    /// An engine as a label: itself while few are known, else `other`.
    fn engine_label(&self, engine: &str) -> String {
        let mut known = self.engines.lock().expect("engines lock");
        if known.contains(engine) || known.len() < MAX_ENGINES {
            known.insert(engine.to_owned());
            engine.to_owned()
        } else {
            "other".to_owned()
        }
    }

    /// A scrape's text, its gauges set from what the store counts and the breakers paused
    /// now. `counts` is `None` when the store could not be read (a database that went
    /// away): the gauges read from it then keep their last values, and `merpati_store_up`
    /// says so.
    pub fn render(&self, counts: Option<&Counts>, endpoints_paused: usize) -> String {
        self.store_up.set(i64::from(counts.is_some()));
        if let Some(counts) = counts {
            self.set_store_gauges(counts);
        }
        self.endpoints_paused.set(endpoints_paused as i64);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    fn set_store_gauges(&self, counts: &Counts) {
        self.deliveries_pending.set(counts.deliveries_pending);
        self.deliveries_held.set(counts.deliveries_held);
        self.devices.clear();
        for (status, engine, n) in &counts.devices {
            let engine = self.engine_label(engine);
            self.devices
                .get_or_create(&DeviceLabels { status, engine })
                .inc_by(*n);
        }
        self.incidents
            .get_or_create(&StateLabel { state: "open" })
            .set(counts.incidents_open);
        self.incidents
            .get_or_create(&StateLabel {
                state: "acknowledged",
            })
            .set(counts.incidents_acknowledged);
        self.incidents_open
            .set(counts.incidents_open + counts.incidents_acknowledged);
        *self.commits.0.lock().expect("commits lock") = counts.commits.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gauges_show_in_the_text() {
        let m = Metrics::default();
        m.ingested("sms", true);
        m.ingested("sms", false);
        m.attempt(AttemptOutcome::Succeeded, 12);
        m.taken(Taken::Offered, 2);
        m.records_refused(RecordsRefused::SentAgain, 3);
        m.dead_node_sessions_ended(1);
        let text = m.render(
            Some(&Counts {
                deliveries_pending: 3,
                devices: vec![("connected", "wa".into(), 2)],
                incidents_open: 1,
                ..Counts::default()
            }),
            0,
        );
        assert!(
            text.contains("merpati_events_total{type=\"sms\"} 1"),
            "{text}"
        );
        assert!(text.contains("merpati_ingest_items_total{type=\"sms\",outcome=\"duplicate\"} 1"));
        assert!(text.contains("merpati_deliveries_total{outcome=\"succeeded\"} 1"));
        assert!(text.contains("merpati_delivery_duration_seconds_count 1"));
        assert!(text.contains("merpati_deliveries_taken_total{how=\"offered\"} 2"));
        assert!(text.contains("merpati_attempt_records_refused_total{then=\"sent_again\"} 3"));
        assert!(text.contains("merpati_dead_node_sessions_ended_total 1"));
        assert!(text.contains("merpati_deliveries_pending 3"));
        assert!(text.contains("merpati_devices{status=\"connected\",engine=\"wa\"} 2"));
        assert!(text.contains("merpati_incidents_open 1"));
        assert!(text.contains("merpati_store_up 1"));
        assert!(
            text.contains("merpati_commit_duration_seconds_count 0"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn a_scrape_the_store_cannot_answer_shows_the_counters_and_the_last_gauges() {
        let m = Metrics::default();
        m.render(
            Some(&Counts {
                deliveries_pending: 7,
                ..Counts::default()
            }),
            0,
        );
        m.records_refused(RecordsRefused::GivenUp, 1);
        let text = m.render(None, 2);
        assert!(text.contains("merpati_store_up 0"), "{text}");
        assert!(text.contains("merpati_deliveries_pending 7"));
        assert!(text.contains("merpati_endpoints_paused 2"));
        assert!(text.contains("merpati_attempt_records_refused_total{then=\"given_up\"} 1"));
        let text = m.render(Some(&Counts::default()), 0);
        assert!(text.contains("merpati_store_up 1"));
        assert!(text.contains("merpati_deliveries_pending 0"));
    }

    #[test]
    fn engines_past_the_first_few_are_other() {
        let m = Metrics::default();
        for i in 0..MAX_ENGINES {
            assert_eq!(m.engine_label(&format!("e{i}")), format!("e{i}"));
        }
        assert_eq!(m.engine_label("e0"), "e0");
        assert_eq!(m.engine_label("one-too-many"), "other");
    }
}
