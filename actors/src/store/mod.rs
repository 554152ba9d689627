//! Durable storage: the SQLite pool and its migrations, the `PersistenceActor` that runs
//! Diesel on a `SyncArbiter` and commits queued writes in batches (group commit), and
//! `Store`, the handle everyone else calls.
//!
//! Write path: caller -> `Store::write` -> `WriteQueue` -> `PersistenceActor` (one
//! transaction per batch) -> the caller's reply is sent only after its batch committed.
//! While one batch commits, the next one fills, so a burst of requests pays for one
//! fsync, not one each.

mod dispatch;
mod messages;
mod persistence;
mod rows;
pub mod schema;

use std::time::Duration;

use std::sync::Arc;

use actix::{Addr, SyncArbiter};
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool};
use diesel::sqlite::SqliteConnection;
use diesel::{ExpressionMethods, RunQueryDsl};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use thiserror::Error;
use tokio::sync::oneshot;

use crate::domain::Timestamp;

pub use dispatch::{AttemptRecord, QueuedMessage};
pub use messages::{
    AttemptView, ConversationView, InboundStored, MessageView, NewInbound, NewOutbound,
    OutboundStored, Page, PageRequest,
};

use persistence::{PersistenceActor, Read, WriteJob, WriteQueue};

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/sqlite");

/// How long a connection waits for SQLite's write lock before the write fails (and the
/// client gets a 503 rather than a hang). Group commit keeps our own writers from ever
/// waiting on each other, so only another process holding the lock waits this long.
const BUSY_TIMEOUT_MS: u64 = 2_000;

pub type SqlitePool = Pool<ConnectionManager<SqliteConnection>>;

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum StoreError {
    /// The database refused or failed the work: locked, read-only, full, gone.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The persistence actors are gone (shutting down).
    #[error("storage is shutting down")]
    Closed,
    /// The URL names a backend this build does not serve.
    #[error("unsupported database url: {0}")]
    UnsupportedUrl(String),
}

impl From<diesel::result::Error> for StoreError {
    fn from(e: diesel::result::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// Every pooled connection gets the same durability and safety settings.
#[derive(Debug)]
struct SqlitePragmas;

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for SqlitePragmas {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        diesel::sql_query(format!("PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}"))
            .execute(conn)
            .and_then(|_| diesel::sql_query("PRAGMA journal_mode = WAL").execute(conn))
            .and_then(|_| diesel::sql_query("PRAGMA synchronous = FULL").execute(conn))
            .and_then(|_| diesel::sql_query("PRAGMA foreign_keys = ON").execute(conn))
            .map(|_| ())
            .map_err(diesel::r2d2::Error::QueryError)
    }
}

/// The file path inside `sqlite://PATH` (relative) or `sqlite:///abs/path`.
pub fn sqlite_path(url: &str) -> Result<&str, StoreError> {
    match url.strip_prefix("sqlite://") {
        Some(path) if !path.is_empty() && path != ":memory:" => Ok(path),
        _ => Err(StoreError::UnsupportedUrl(url.to_owned())),
    }
}

/// Opens the pool and applies pending migrations before anything is served.
pub fn open(url: &str, pool_size: u32) -> Result<SqlitePool, StoreError> {
    let path = sqlite_path(url)?;
    // `pool_size` workers plus one spare for start-up and readiness checks.
    let pool = Pool::builder()
        .max_size(pool_size + 1)
        .min_idle(Some(1))
        .connection_timeout(Duration::from_secs(5))
        .connection_customizer(Box::new(SqlitePragmas))
        .build(ConnectionManager::<SqliteConnection>::new(path))
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let mut conn = pool
        .get()
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    conn.run_pending_migrations(MIGRATIONS)
        .map_err(|e| StoreError::Unavailable(format!("migrations failed: {e}")))?;
    Ok(pool)
}

/// The handle to storage: cheap to clone, safe to share between threads.
#[derive(Clone)]
pub struct Store {
    /// One thread, one connection: the only writer, its prepared statements kept warm.
    writer: Addr<PersistenceActor>,
    readers: Addr<PersistenceActor>,
    queue: Arc<WriteQueue>,
}

impl Store {
    /// Starts the writer (a `SyncArbiter` of one thread) and `threads` readers. Must run
    /// inside an actix system.
    pub fn start(pool: SqlitePool, threads: usize) -> Store {
        let queue = Arc::new(WriteQueue::default());
        let (write_pool, shared) = (pool.clone(), queue.clone());
        let writer = SyncArbiter::start(1, move || {
            PersistenceActor::new(write_pool.clone(), shared.clone())
        });
        let shared = queue.clone();
        let readers = SyncArbiter::start(threads.max(1), move || {
            PersistenceActor::new(pool.clone(), shared.clone())
        });
        Store {
            writer,
            readers,
            queue,
        }
    }

    /// Stores an outbound message (queued when it has a provider, failed when not), or
    /// finds the message an earlier request with the same idempotency key created.
    pub async fn insert_outbound(&self, new: NewOutbound) -> Result<OutboundStored, StoreError> {
        self.write(new, messages::insert_outbound).await
    }

    /// Stores an inbound message unless its provider id was seen before.
    pub async fn insert_inbound(&self, new: NewInbound) -> Result<InboundStored, StoreError> {
        self.write(new, messages::insert_inbound).await
    }

    /// Records a finished attempt and the message status it leads to, in one savepoint.
    pub async fn record_attempt(&self, record: AttemptRecord) -> Result<(), StoreError> {
        self.write(record, dispatch::record_attempt).await
    }

    /// Marks a message `failed` without an attempt (it cannot be routed).
    pub async fn mark_failed(&self, message_id: i64) -> Result<(), StoreError> {
        self.write(message_id, dispatch::mark_failed).await
    }

    /// Every queued outbound message, oldest first, for recovery at start.
    pub async fn load_queued(&self) -> Result<Vec<QueuedMessage>, StoreError> {
        self.read(dispatch::load_queued).await
    }

    pub async fn get_message(
        &self,
        id: i64,
    ) -> Result<Option<(MessageView, Vec<AttemptView>)>, StoreError> {
        self.read(move |conn| messages::get_message(conn, id)).await
    }

    pub async fn list_conversations(
        &self,
        page: PageRequest,
    ) -> Result<Page<ConversationView>, StoreError> {
        self.read(move |conn| messages::list_conversations(conn, page))
            .await
    }

    /// `None` when the conversation does not exist.
    pub async fn list_conversation_messages(
        &self,
        conversation_id: i64,
        page: PageRequest,
    ) -> Result<Option<Page<MessageView>>, StoreError> {
        self.read(move |conn| messages::list_conversation_messages(conn, conversation_id, page))
            .await
    }

    /// Answers when the database takes writes: one small write through group commit, so
    /// a locked, read-only or full database shows here as it would to a client.
    pub async fn probe(&self) -> Result<(), StoreError> {
        self.write((), |conn, ()| {
            use schema::readiness_probe::dsl::{checked_at, id, readiness_probe};
            diesel::replace_into(readiness_probe)
                .values((id.eq(1), checked_at.eq(Timestamp::now().to_storage())))
                .execute(conn)
                .map(|_| ())
                .map_err(StoreError::from)
        })
        .await
    }

    async fn write<I, O>(
        &self,
        input: I,
        run: fn(&mut SqliteConnection, &I) -> Result<O, StoreError>,
    ) -> Result<O, StoreError>
    where
        I: Send + 'static,
        O: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.queue
            .push(WriteJob::boxed(input, run, reply), &self.writer)?;
        // A dropped sender means the batch never ran (actor stopped): not stored.
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn read<F, O>(&self, query: F) -> Result<O, StoreError>
    where
        F: FnOnce(&mut SqliteConnection) -> Result<O, StoreError> + Send + 'static,
        O: Send + 'static,
    {
        self.readers
            .send(Read::new(query))
            .await
            .map_err(|_| StoreError::Closed)?
    }
}

/// Runs `f` inside one `BEGIN IMMEDIATE` transaction, taking the write lock up front so
/// that a batch never fails half-way on a lock upgrade.
pub(crate) fn in_write_transaction<T>(
    conn: &mut SqliteConnection,
    f: impl FnOnce(&mut SqliteConnection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    conn.immediate_transaction(f)
}
