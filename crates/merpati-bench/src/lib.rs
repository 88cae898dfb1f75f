//! merpati's benchmarks and device simulator, apart from the server: they drive a merpati
//! over its public API and device protocol only, as its users' devices and receivers do.
//!
//! - `simulate`: a fleet of simulated devices speaking the real device protocol.
//! - `delivery`: `merpati bench delivery`, ingest to receipt; `presence`: `merpati bench
//!   presence`, 10,000 links and a mass drop; `alerts`: `merpati bench alerts`, an alert
//!   storm of 10,000 devices in 100 businesses.
//! - `baselines`: what the same load costs with no merpati (loopback HTTP, a relay).
//! - `process`, `receivers`, `load`: the server under test, the receivers, the devices' load;
//!   `failover`: a node killed mid-run, and what arrived.

pub mod alerts;
mod baselines;
pub mod delivery;
mod failover;
mod load;
pub mod presence;
mod process;
mod receivers;
pub mod simulate;

pub use alerts::{alerts, AlertArgs, AlertFigures};
pub use delivery::{delivery, measure_running, DeliveryArgs, DeliveryFigures};
pub use failover::{longest_silence_after, FailoverFigures};
pub use presence::{presence, PresenceArgs, PresenceFigures};
