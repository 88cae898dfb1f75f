//! merpati's runtime: the tasks that keep working while requests come and go, written
//! against the domain's storage traits and never against a backend.
//!
//! - `delivery`: the delivery worker (claims, lanes, attempts, the recorder) and the
//!   handoff ingest uses to give it fresh deliveries.
//! - `presence`: the presence hub, which owns every device's lease.
//! - `retention`: the background pruner; `jobs`: the runner of long jobs.
//! - `alerts`: the alert runner, which drives the alert engine and sends notifications.
//! - `bus`: committed changes as events in the process.
//! - `connectors`: what each connector took in, for the API to show.
//! - `mail`: the SMTP transport, for e-mail notifiers and e-mail endpoints.
//! - `memory`: giving spare memory back once a burst is over.
//! - `metrics`: what Prometheus scrapes.

pub mod alerts;
pub mod bus;
pub mod cluster;
pub mod connectors;
pub mod delivery;
pub mod jobs;
pub mod limits;
pub mod mail;
pub mod memory;
pub mod metrics;
pub mod presence;
pub mod retention;
