//! Durable storage: SQLite (embedded, one instance) or PostgreSQL (several instances),
//! their migrations, the `PersistenceActor` that runs Diesel on `SyncArbiter`s and commits
//! queued writes in batches (group commit), and `Store`, the handle everyone else calls.
//!
//! Write path: caller -> `Store::write` -> `WriteQueue` -> `PersistenceActor` (one
//! transaction per batch) -> the caller's reply is sent only after its batch committed.
//! While one batch commits, the next one fills, so a burst of requests pays for one
//! commit, not one each.
//!
//! With PostgreSQL, instances share the queued work through leases: the instance that
//! accepts a message leases it at once and renews its leases while it works them; the
//! others claim only messages whose lease has lapsed (an instance that died).

mod backend;
mod dispatch;
mod messages;
mod persistence;
mod rows;
pub mod schema;

use std::sync::Arc;
use std::time::Duration;

use actix::{Addr, SyncArbiter};
use rand_core::{RngCore, SeedableRng};
use thiserror::Error;
use tokio::sync::oneshot;

use crate::domain::Timestamp;

pub use backend::{open, sqlite_path, Backend, DbPool};
pub use dispatch::{AttemptRecord, Lease, QueuedMessage};
pub use messages::{
    AttemptView, ConversationView, InboundStored, MessageView, NewInbound, NewOutbound,
    OutboundStored, Page, PageRequest,
};

use backend::{runner, DbConn, Runner};
use dispatch::Claim;
use persistence::{PersistenceActor, Read, WriteJob, WriteQueue};

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum StoreError {
    /// The database refused or failed the work: locked, read-only, full, gone.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A unique constraint refused the write (another instance got there first).
    #[error("conflicting write: {0}")]
    Conflict(String),
    /// The persistence actors are gone (shutting down).
    #[error("storage is shutting down")]
    Closed,
    /// The URL names a backend this build does not serve.
    #[error("unsupported database url: {0}")]
    UnsupportedUrl(String),
}

impl From<diesel::result::Error> for StoreError {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match e {
            Error::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
                StoreError::Conflict(info.message().to_owned())
            }
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

/// Runs a read on whichever backend the connection is, where the query was compiled for
/// both by `for_each_backend!`.
macro_rules! on_backend {
    ($conn:expr, $module:ident :: $query:ident ( $($arg:expr),* )) => {
        match $conn {
            DbConn::Sqlite(c) => $module::sqlite::$query(c, $($arg),*),
            DbConn::Postgres(c) => $module::postgres::$query(c, $($arg),*),
        }
    };
}

/// The handle to storage: cheap to clone, safe to share between threads.
#[derive(Clone)]
pub struct Store {
    /// One thread, one connection: the only writer, its prepared statements kept warm.
    writer: Addr<PersistenceActor>,
    readers: Addr<PersistenceActor>,
    queue: Arc<WriteQueue>,
    backend: Backend,
    /// This instance's name on the leases it takes (PostgreSQL).
    instance: Arc<str>,
    lease: Duration,
}

impl Store {
    /// Starts the writer (a `SyncArbiter` of one thread) and `threads` readers; `lease` is
    /// how long a claim on a queued message lasts unless renewed. Must run inside an actix
    /// system.
    pub fn start(pool: DbPool, threads: usize, lease: Duration) -> Store {
        let backend = pool.backend();
        let queue = Arc::new(WriteQueue::default());
        let (write_pool, shared) = (pool.clone(), queue.clone());
        let writer = SyncArbiter::start(1, move || {
            PersistenceActor::new(write_pool.clone(), shared.clone())
        });
        let shared = queue.clone();
        let readers = SyncArbiter::start(threads.max(1), move || {
            PersistenceActor::new(pool.clone(), shared.clone())
        });
        let instance = format!("{:016x}", rand_pcg::Pcg64::from_os_rng().next_u64());
        Store {
            writer,
            readers,
            queue,
            backend,
            instance: instance.into(),
            lease,
        }
    }

    /// Whether several instances may share this database (and so its queued work).
    pub fn shares_work(&self) -> bool {
        self.backend == Backend::Postgres
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn lease_duration(&self) -> Duration {
        self.lease
    }

    fn lease(&self) -> Lease {
        Lease {
            owner: self.instance.to_string(),
            until: Timestamp::after(self.lease),
        }
    }

    /// Stores an outbound message (queued when it has a provider, failed when not), or
    /// finds the message an earlier request with the same idempotency key created.
    pub async fn insert_outbound(
        &self,
        mut new: NewOutbound,
    ) -> Result<OutboundStored, StoreError> {
        if self.shares_work() {
            new.lease = Some(self.lease());
        }
        self.write(new, runner!(messages::insert_outbound)).await
    }

    /// Stores an inbound message unless its provider id was seen before.
    pub async fn insert_inbound(&self, new: NewInbound) -> Result<InboundStored, StoreError> {
        self.write(new, runner!(messages::insert_inbound)).await
    }

    /// Records a finished attempt and the message status it leads to, in one transaction.
    pub async fn record_attempt(&self, record: AttemptRecord) -> Result<(), StoreError> {
        self.write(record, runner!(dispatch::record_attempt)).await
    }

    /// Marks a message `failed` without an attempt (it cannot be routed).
    pub async fn mark_failed(&self, message_id: i64) -> Result<(), StoreError> {
        self.write(message_id, runner!(dispatch::mark_failed)).await
    }

    /// The queued outbound messages this instance is to work, oldest first: on SQLite all
    /// of them (recovery at start); on PostgreSQL up to `limit` whose lease lapsed or never
    /// was, now leased to this instance.
    pub async fn claim_queued(&self, limit: i64) -> Result<Vec<QueuedMessage>, StoreError> {
        let claim = Claim {
            lease: self.lease(),
            limit,
        };
        let run = Runner {
            sqlite: dispatch::claim_sqlite,
            postgres: dispatch::claim_postgres,
        };
        self.write(claim, run).await
    }

    /// Extends this instance's leases on the messages it works (PostgreSQL).
    pub async fn renew_leases(&self) -> Result<usize, StoreError> {
        self.write(self.lease(), runner!(dispatch::renew_leases))
            .await
    }

    /// Hands this instance's queued work back, for another instance to claim at once.
    pub async fn release_leases(&self) -> Result<usize, StoreError> {
        self.write(self.instance.to_string(), runner!(dispatch::release_leases))
            .await
    }

    pub async fn get_message(
        &self,
        id: i64,
    ) -> Result<Option<(MessageView, Vec<AttemptView>)>, StoreError> {
        self.read(move |conn| on_backend!(conn, messages::get_message(id)))
            .await
    }

    pub async fn list_conversations(
        &self,
        page: PageRequest,
    ) -> Result<Page<ConversationView>, StoreError> {
        self.read(move |conn| on_backend!(conn, messages::list_conversations(page)))
            .await
    }

    /// `None` when the conversation does not exist.
    pub async fn list_conversation_messages(
        &self,
        conversation_id: i64,
        page: PageRequest,
    ) -> Result<Option<Page<MessageView>>, StoreError> {
        self.read(move |conn| {
            on_backend!(
                conn,
                messages::list_conversation_messages(conversation_id, page)
            )
        })
        .await
    }

    /// Answers when the database takes writes: one small write through group commit, so
    /// a locked, read-only or full database shows here as it would to a client.
    pub async fn probe(&self) -> Result<(), StoreError> {
        self.write((), runner!(dispatch::probe)).await
    }

    async fn write<I, O>(&self, input: I, run: Runner<I, O>) -> Result<O, StoreError>
    where
        I: Send + 'static,
        O: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.queue
            .push(WriteJob::boxed(input, run, reply), &self.writer);
        // A dropped sender means the batch never ran (actor stopped): not stored.
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn read<F, O>(&self, query: F) -> Result<O, StoreError>
    where
        F: FnOnce(&mut DbConn) -> Result<O, StoreError> + Send + 'static,
        O: Send + 'static,
    {
        self.readers
            .send(Read::new(query))
            .await
            .map_err(|_| StoreError::Closed)?
    }
}
