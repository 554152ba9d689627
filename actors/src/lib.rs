//! The messaging core: domain types, routing, storage and metrics. It knows nothing of
//! HTTP; the `messaging-service` binary translates JSON to the messages defined here.
//!
//! # Layout
//! - `domain`: channels, addresses, participants, timestamps, message content; the
//!   validation of single values.
//! - `router`: the provider registry (channel -> provider), the backlog bound and
//!   `RouterActor`, which tags, stores and hands every outbound message to its provider.
//! - `provider`: `ProviderActor`, one per provider on its own arbiter: outcome draws,
//!   simulated latency, retries, attempt records, per-provider counters.
//! - `outcome`: the seeded outcome stream (`Pcg64`) and the retry policy.
//! - `breaker`: the per-provider circuit breaker as a state machine with an injected clock.
//! - `store`: SQLite through Diesel and r2d2; `PersistenceActor` on a `SyncArbiter`
//!   committing the `WriteQueue` batch by batch (group commit), `Store` as the handle.
//! - `metrics`: every Prometheus series of the contract, on a registry of its own.
//!
//! # Actor map
//! ```text
//! HTTP handlers --AcceptOutbound--> RouterActor --insert_outbound--> Store
//!                                       |  --Dispatch--> ProviderActor (one per provider)
//!                                       |                   --record_attempt--> Store
//! start-up --ResumeQueued--> RouterActor (queued rows, in id order, to their providers)
//! HTTP handlers --insert_inbound / reads------------------------->  Store
//! Store: WriteQueue --CommitQueued--> PersistenceActor (SyncArbiter, pool_size threads)
//!        reads -----------Read-------> PersistenceActor
//! ```

pub mod admission;
pub mod breaker;
pub mod callbacks;
pub mod domain;
pub mod leases;
pub mod metrics;
pub mod outcome;
pub mod provider;
pub mod router;
pub mod senders;
pub mod store;
