//! The messaging core: domain types, routing, storage and metrics. It knows nothing of
//! HTTP; the `messaging-service` binary translates JSON to the messages defined here.
//!
//! # Layout
//! - `domain`: channels, addresses, participants, timestamps, message content, and the
//!   checked newtypes the HTTP layer parses requests into.
//! - `admission`: the backlog bound, shared by the router and the providers.
//! - `router`: the provider registry (channel -> provider) and `RouterActor`, which tags,
//!   stores and hands every outbound message to its provider, and requeues retries.
//! - `provider`: `ProviderActor`, one per provider on its own arbiter: the seeded
//!   simulator or a real sender, breaker, retries, attempt records, per-provider counters.
//! - `senders`: the real providers' HTTP requests (Twilio, SendGrid) and how their answers
//!   become outcomes.
//! - `outcome`: the seeded outcome stream (`Pcg64`) and the retry policy.
//! - `breaker`: the per-provider circuit breaker as a state machine with an injected clock,
//!   operators' forced states included.
//! - `leases`: `LeaseKeeper`: renews the leases of held messages, sweeps lapsed ones,
//!   syncs the database clock and the operators' breaker settings.
//! - `callbacks`: `CallbackWorker`: delivers the status-callback outbox.
//! - `store`: SQLite or PostgreSQL through Diesel and r2d2; `PersistenceActor` on a
//!   `SyncArbiter` committing the `WriteQueue` batch by batch (group commit), `Store` as
//!   the handle.
//! - `metrics`: every Prometheus series of the contract, on a registry of its own.
//!
//! # Actor map
//! ```text
//! HTTP handlers --AcceptOutbound / RequeueFailed--> RouterActor --insert / requeue--> Store
//!   (AcceptOutbound goes to the router's twin on the handler's own thread)
//!                                       |  --Dispatch(Many)--> ProviderActor (one per provider)
//!                                       |                   --record_attempt--> Store
//! start-up --ResumeQueued--> RouterActor (queued rows, in id order, to their providers,
//!   as far as the backlog has room; ClaimQueued takes the rest: RouterActor --claim--> Store)
//! LeaseKeeper --GetHeldIds--> ProviderActor; --renew--> Store; --ClaimQueued--> RouterActor
//! CallbackWorker --claim/finish callbacks--> Store; POST --> clients
//! HTTP handlers --insert_inbound / reads------------------------->  Store
//! Store: WriteQueue --CommitQueued--> PersistenceActor (one writer per lane: SQLite 1, PG 2)
//!        reads -----------Read-------> PersistenceActor (pool_size readers)
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
