//! The one integration-test binary: real servers on port 0, real receivers on loopback.

mod api;
mod bad_input;
mod bench;
mod changes;
mod compat;
mod connections;
mod dedup;
mod filters;
mod guard;
mod health;
mod helpers;
mod hostile;
mod isolation;
mod lanes;
mod layers;
mod link;
mod payloads;
mod presence;
mod restart;
mod retention;
mod retries;
mod revisions;
mod simulate;
