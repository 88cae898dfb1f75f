//! merpati's domain: the types, one storage trait per feature, and the product's rules as
//! pure functions (which deliveries an event makes, the dedup verdict, a delivery's outcome,
//! an endpoint's health, presence and its announcements, what retention may cut).
//!
//! This crate is the bottom layer: it depends on nothing of merpati's but the wire formats
//! (`merpati-webhooks`). Storage backends implement its traits and call its rules; the
//! runtime and the HTTP features are written against them.

pub mod account;
pub mod alert;
pub mod audit;
pub mod clock;
pub mod cluster;
pub mod commit_stats;
pub mod connector;
pub mod delivery;
pub mod device;
pub mod endpoint;
pub mod endpoint_stats;
pub mod event;
pub mod fanout;
pub mod ids;
pub mod ingest;
pub mod job;
pub mod limits;
pub mod presence;
pub mod retention;
pub mod retry;
pub mod slots;
pub mod storage;
pub mod store;

pub use storage::{Page, StoreError, StoreResult};
pub use store::{SharedStore, Store};
