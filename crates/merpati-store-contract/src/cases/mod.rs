//! The cases of the contract, by what they hold a backend to.

pub mod alerts;
pub mod audit;
pub mod claims;
pub mod cluster;
pub mod connectors;
pub mod dedup;
pub mod fanout;
pub mod limits;
pub mod outcomes;
pub mod presence;
pub mod queues;
pub mod retention;
pub mod revisions;
pub mod sessions;
