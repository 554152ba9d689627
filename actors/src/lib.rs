//! The messaging core: domain types, routing, storage and metrics. It knows nothing of
//! HTTP; the `messaging-service` binary translates JSON to the messages defined here.
//!
//! # Layout
//! - `domain`: channels, addresses, participants, timestamps, message content; the
//!   validation of single values.
//! - `router`: the provider registry (channel -> provider) and `RouterActor`, which tags,
//!   stores and answers every outbound message.
//! - `store`: SQLite through Diesel and r2d2; `PersistenceActor` on a `SyncArbiter`,
//!   `WriteBatcher` for group commit, `Store` as the handle.
//! - `metrics`: every Prometheus series of the contract, on a registry of its own.
//!
//! # Actor map
//! ```text
//! HTTP handlers --AcceptOutbound--> RouterActor --insert_outbound--> Store
//! HTTP handlers --insert_inbound / reads------------------------->  Store
//! Store: WriteBatcher --CommitBatch--> PersistenceActor (SyncArbiter, pool_size threads)
//!        reads -----------Read-------> PersistenceActor
//! ```

pub mod domain;
pub mod metrics;
pub mod router;
pub mod store;
