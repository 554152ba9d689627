//! Durable storage: SQLite (embedded, one instance) or PostgreSQL (several instances),
//! their migrations, the `PersistenceActor` that runs Diesel on `SyncArbiter`s and commits
//! queued writes in batches (group commit), and `Store`, the handle everyone else calls.
//!
//! Write path: caller -> `Store::write` -> its lane's `WriteQueue` -> that lane's
//! `PersistenceActor` (one transaction per batch) -> the caller's reply is sent only after
//! its batch committed. While one batch commits, the next one fills, so a burst of
//! requests pays for one commit, not one each. SQLite has one lane; PostgreSQL two, whose
//! batches run at once (see `Lane` for which write takes which).
//!
//! With PostgreSQL, instances share the queued work through leases: the instance that
//! accepts a message leases it at once and renews its leases while it works them; the
//! others claim only messages whose lease has lapsed (an instance that died).

mod backend;
mod callbacks;
mod dispatch;
mod messages;
mod persistence;
mod rows;
pub mod schema;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::{Addr, SyncArbiter};
use rand_core::{RngCore, SeedableRng};
use thiserror::Error;
use tokio::sync::oneshot;

use crate::domain::{IdempotencyKey, Timestamp};

pub use backend::{open, sqlite_path, Backend, DbPool, BUSY_TIMEOUT_MS};
pub use callbacks::{CallbackFate, CallbackView, DueCallback, RequeueTarget, Requeued};
pub use dispatch::{AttemptRecord, Lease, QueuedMessage};
pub use messages::{
    AttemptView, Bounded, ConversationView, DeliveryReceipt, DeliveryStatus, InboundStored,
    MessageView, NewInbound, NewOutbound, OutboundStored, Page, PageRequest, ReceiptSource,
};

use backend::{bulk_runner, in_read_snapshot, runner, BulkRunner, DbConn, Runner, Tx};
use callbacks::{CallbackClaim, CallbackResult, Requeue, RequeueRange};
use dispatch::{Claim, Renewal};
use persistence::{PersistenceActor, Read, WriteJob, WriteQueue};

/// How many message ids one step of a bulk retry covers: a few milliseconds of the
/// writer (one PK range read, at most that many rows changed), so new messages queued
/// behind it wait no longer than behind a batch of their own.
pub const REQUEUE_STEP: i64 = 5_000;

/// Why the database did not do what was asked. The kinds differ in what a caller does:
/// a lost connection is replaced, a lock or a timeout is waited out, a conflict is read
/// back, a superseded attempt is dropped.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum StoreError {
    /// The connection broke or the server went away; the next call opens a fresh one.
    #[error("the database connection was lost: {0}")]
    ConnectionLost(String),
    /// Another process holds SQLite's write lock past the busy timeout.
    #[error("the database is locked by another process: {0}")]
    Locked(String),
    /// No answer within `database.timeout_ms` (a statement, a connect, a silent peer).
    #[error("the database did not answer in time: {0}")]
    TimedOut(String),
    /// The database file or server refuses writes.
    #[error("the database is read-only: {0}")]
    ReadOnly(String),
    #[error("the disk holding the database is full: {0}")]
    DiskFull(String),
    /// A unique constraint refused the write (another instance got there first).
    #[error("conflicting write: {0}")]
    Conflict(String),
    /// The attempt's message is leased to another instance now: its record stands.
    #[error("attempt superseded by another instance")]
    Superseded,
    /// PostgreSQL rolled the transaction back to break a deadlock with another
    /// transaction, or a serialization conflict: nothing of it was written, and the same
    /// writes run again usually go through.
    #[error("the database rolled the transaction back: {0}")]
    RolledBack(String),
    /// The database refused a change its rules forbid (a final status changed, a row
    /// naming a message that is gone, a value a column cannot hold): the write's own
    /// fault, not the database's.
    #[error("the database refused the change: {0}")]
    Refused(String),
    /// Anything else the database reported.
    #[error("database error: {0}")]
    Failed(String),
    /// The persistence actors are gone (shutting down).
    #[error("storage is shutting down")]
    Closed,
    /// The URL names a backend this build does not serve.
    #[error("unsupported database url: {0}")]
    UnsupportedUrl(String),
}

impl StoreError {
    /// The kind as a log field value, so operators can tell a lock from a lost server.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::ConnectionLost(_) => "connection_lost",
            StoreError::Locked(_) => "locked",
            StoreError::TimedOut(_) => "timed_out",
            StoreError::ReadOnly(_) => "read_only",
            StoreError::DiskFull(_) => "disk_full",
            StoreError::Conflict(_) => "conflict",
            StoreError::Superseded => "superseded",
            StoreError::RolledBack(_) => "rolled_back",
            StoreError::Refused(_) => "refused",
            StoreError::Failed(_) => "failed",
            StoreError::Closed => "closed",
            StoreError::UnsupportedUrl(_) => "unsupported_url",
        }
    }

    /// Whether the error belongs to one write rather than to the database: a batch that
    /// fails with one is run again write by write, so that the others still land.
    pub fn is_per_write(&self) -> bool {
        matches!(
            self,
            StoreError::Conflict(_) | StoreError::Superseded | StoreError::Refused(_)
        )
    }

    /// Whether the connection that saw the error may be unusable: it is given back to the
    /// pool (which drops a broken one and checks the next before use) and a fresh one
    /// taken for the next call. A read-only error counts: SQLite opens a file it cannot
    /// write read-only, and such a connection would refuse writes for good.
    pub fn taints_connection(&self) -> bool {
        matches!(
            self,
            StoreError::ConnectionLost(_)
                | StoreError::TimedOut(_)
                | StoreError::ReadOnly(_)
                | StoreError::Failed(_)
        )
    }

    /// Classifies what a driver said. SQLite and libpq report most faults as text, so the
    /// text decides where Diesel gives no kind.
    fn from_message(message: &str) -> StoreError {
        let lower = message.to_ascii_lowercase();
        let owned = message.to_owned();
        if lower.contains("superseded") {
            StoreError::Superseded
        } else if lower.contains("deadlock detected") {
            // PostgreSQL's 40P01, which Diesel reports with no kind of its own (nor its
            // code), so its English text: a server with another `lc_messages` reports it
            // as `Failed`, and the batch is not run again.
            StoreError::RolledBack(owned)
        } else if lower.contains("final status")
            // PostgreSQL's 22021 (a NUL, or bytes that are not UTF-8, in a text value).
            || lower.contains("invalid byte sequence")
        {
            StoreError::Refused(owned)
        } else if lower.contains("database is locked") || lower.contains("database is busy") {
            StoreError::Locked(owned)
        } else if lower.contains("readonly") || lower.contains("read-only") {
            StoreError::ReadOnly(owned)
        } else if lower.contains("disk is full") || lower.contains("no space left") {
            StoreError::DiskFull(owned)
        } else if lower.contains("statement timeout")
            || lower.contains("timed out")
            || lower.contains("timeout expired")
        {
            StoreError::TimedOut(owned)
        } else if lower.contains("terminating connection")
            || lower.contains("server closed the connection")
            || lower.contains("connection")
            || lower.contains("no more connections")
            || lower.contains("could not receive data")
            || lower.contains("could not send data")
            || lower.contains("ssl syscall")
            || lower.contains("the database system is")
        {
            StoreError::ConnectionLost(owned)
        } else {
            StoreError::Failed(owned)
        }
    }
}

impl From<diesel::result::Error> for StoreError {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match e {
            Error::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
                StoreError::Conflict(info.message().to_owned())
            }
            Error::DatabaseError(DatabaseErrorKind::ClosedConnection, info) => {
                StoreError::ConnectionLost(info.message().to_owned())
            }
            Error::DatabaseError(DatabaseErrorKind::SerializationFailure, info) => {
                StoreError::RolledBack(info.message().to_owned())
            }
            Error::DatabaseError(DatabaseErrorKind::ReadOnlyTransaction, info) => {
                StoreError::ReadOnly(info.message().to_owned())
            }
            // One write's fault: taken for the database's, it failed every write queued
            // behind it on its lane, and again at each of its retries.
            Error::DatabaseError(
                DatabaseErrorKind::ForeignKeyViolation
                | DatabaseErrorKind::NotNullViolation
                | DatabaseErrorKind::CheckViolation,
                info,
            ) => StoreError::Refused(info.message().to_owned()),
            Error::DatabaseError(_, info) => StoreError::from_message(info.message()),
            Error::BrokenTransactionManager => {
                StoreError::ConnectionLost("the transaction state is unknown".into())
            }
            other => StoreError::from_message(&other.to_string()),
        }
    }
}

/// A message as `GET /api/messages/{id}` shows it: the row, its attempts, its callbacks.
pub type MessageDetailParts = (MessageView, Vec<AttemptView>, Vec<CallbackView>);

/// `on_backend!` for a connection inside a transaction.
macro_rules! on_tx {
    ($tx:expr, $module:ident :: $query:ident ( $($arg:expr),* )) => {
        match $tx {
            Tx::Sqlite(c) => $module::sqlite::$query(c, $($arg),*),
            Tx::Postgres(c) => $module::postgres::$query(c, $($arg),*),
        }
    };
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

/// One writer thread and the queue it commits, batch after batch, in the order queued.
///
/// Why lanes: on PostgreSQL one writer left the machine idle part of the time at 64
/// connections, since a batch spends most of its time waiting for the server (its round
/// trips, its commit's WAL flush); a second writer runs a batch meanwhile. But one writer
/// is also an order that callers lean on: a provider queues an attempt's record and goes
/// on without waiting for it, so two writers taking any write let attempt 2's record
/// commit before attempt 1's. So each write has its lane by what it must follow: a
/// message's attempt records always the same lane (by its id); new messages, outbound and
/// inbound, the last (nothing can name a message before its insert has been answered,
/// keyed inserts keep one order there, and only message inserts lock conversation rows,
/// so the lanes never wait on each other for those); its lease renewals the lane of its
/// records; everything else the first, after waiting for every lane where it must follow
/// records it cannot name (`write_after_queued`). SQLite has one lane, which is all of
/// them.
struct Lane {
    queue: Arc<WriteQueue>,
    writer: Addr<PersistenceActor>,
}

/// What a real provider finds when it reads a message before sending it.
#[derive(Debug)]
pub enum ToSend {
    Read(Box<MessageView>, Vec<AttemptView>),
    /// No such message: nothing to send, ever.
    Gone,
    /// Another instance holds its lease: it sends the message, not this one.
    TakenOver,
}

/// What a lease renewal found: the leases lost, and why a lane could not tell, if one
/// could not.
#[derive(Debug, Default)]
pub struct Renewed {
    pub lost: Vec<i64>,
    pub failed: Option<StoreError>,
}

/// The handle to storage: cheap to clone, safe to share between threads.
#[derive(Clone)]
pub struct Store {
    /// `Backend::writers` lanes, each a queue and one writer thread with its own
    /// connection (its prepared statements kept warm); `Lane` says which write takes
    /// which.
    lanes: Arc<[Lane]>,
    readers: Addr<PersistenceActor>,
    /// How many threads `readers` has.
    reader_threads: usize,
    backend: Backend,
    /// This instance's name on the leases it takes and the attempts it records.
    instance: Arc<str>,
    lease: Duration,
    /// Bound on every call, so that a database that stops answering costs a client a 503
    /// within `database.timeout_ms`, never a hung request.
    timeout: Duration,
    /// The database's clock minus this process's, in microseconds: leases are read and
    /// written in the database's time, so instances with skewed clocks agree on them.
    clock_offset: Arc<AtomicI64>,
    /// Set when this instance hands its work back at a stop: it claims nothing after.
    released: Arc<AtomicBool>,
    /// For `close` to see every connection back in it.
    pool: DbPool,
}

/// How a write's caller waits for it, and what becomes of the write once it stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// `database.timeout_ms` at most; then, unless its transaction has begun, the write
    /// is dropped unrun: nobody was told it was written, and no other write waits on it
    /// (new messages, claims, lease renewals, the marks of `write_after_queued`).
    Droppable,
    /// `database.timeout_ms` at most; the write runs all the same (a receipt, an
    /// operator's setting, a callback's result: each idempotent, or a state its caller
    /// learns again).
    Kept,
    /// Until it is answered, however long the database takes: an attempt record, which
    /// its provider writes again until it lands and which a receipt queued after it waits
    /// for. One copy at a time: a copy left behind by a timeout would land first and
    /// make the next one a conflict, read as another instance's record.
    ToTheEnd,
}

impl Store {
    /// Starts the pool's writers (`DbPool::writers`, a `SyncArbiter` of one thread each)
    /// and `threads` readers; `lease` is how long a claim on a queued message lasts unless
    /// renewed. Must run inside an actix system.
    pub fn start(pool: DbPool, threads: usize, lease: Duration, timeout: Duration) -> Store {
        let backend = pool.backend();
        let lanes: Arc<[Lane]> = (0..pool.writers())
            .map(|_| {
                let queue = Arc::new(WriteQueue::default());
                let (pool, shared) = (pool.clone(), queue.clone());
                let writer = SyncArbiter::start(1, move || {
                    PersistenceActor::new(pool.clone(), shared.clone())
                });
                Lane { queue, writer }
            })
            .collect();
        let reader_threads = threads.max(1);
        // Readers never commit: the queue they are given stays unused.
        let unused = Arc::new(WriteQueue::default());
        let readers = SyncArbiter::start(reader_threads, {
            let pool = pool.clone();
            move || PersistenceActor::new(pool.clone(), unused.clone())
        });
        let instance = format!("{:016x}", rand_pcg::Pcg64::from_os_rng().next_u64());
        Store {
            lanes,
            readers,
            reader_threads,
            backend,
            instance: instance.into(),
            lease,
            timeout,
            clock_offset: Arc::new(AtomicI64::new(0)),
            released: Arc::new(AtomicBool::new(false)),
            pool,
        }
    }

    /// Whether several instances may share this database (and so its queued work).
    pub fn shares_work(&self) -> bool {
        self.backend == Backend::Postgres
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// How many write lanes (each one writer and its connection) this store commits on.
    pub fn writers(&self) -> usize {
        self.lanes.len()
    }

    pub fn lease_duration(&self) -> Duration {
        self.lease
    }

    /// Now, by the database's clock as last measured.
    fn database_time(&self) -> Timestamp {
        Timestamp::now().shifted(self.clock_offset.load(Ordering::Relaxed))
    }

    fn lease(&self) -> Lease {
        self.lease_for(self.lease)
    }

    fn lease_for(&self, duration: Duration) -> Lease {
        Lease {
            owner: self.instance.to_string(),
            until: Timestamp::after(duration).shifted(self.clock_offset.load(Ordering::Relaxed)),
        }
    }

    /// Measures the database's clock against this process's (PostgreSQL; SQLite shares
    /// the process's clock). Half the round trip is the error, far below a lease.
    pub async fn sync_clock(&self) -> Result<(), StoreError> {
        if !self.shares_work() {
            return Ok(());
        }
        let before = Timestamp::now();
        let database = self
            .read(|conn| match conn {
                DbConn::Postgres(c) => dispatch::postgres_now(c),
                DbConn::Sqlite(_) => Ok(Timestamp::now()),
            })
            .await?;
        let after = Timestamp::now();
        let midpoint = before.shifted(after.micros_since(before) / 2);
        self.clock_offset
            .store(database.micros_since(midpoint), Ordering::Relaxed);
        Ok(())
    }

    /// Stores an outbound message (queued when it has a provider, failed when not), or
    /// finds the message an earlier request with the same idempotency key created.
    pub async fn insert_outbound(
        &self,
        mut new: NewOutbound,
    ) -> Result<OutboundStored, StoreError> {
        new.lease = Some(self.lease());
        // A keyed request first looks for its earlier self, one at a time; the rest of a
        // batch's new messages share multi-row inserts.
        let bulk = match new.idempotency {
            None => Some(bulk_runner!(messages::insert_outbound_many)),
            Some(_) => None,
        };
        self.write_new_message(new, runner!(messages::insert_outbound), bulk)
            .await
    }

    /// The answer an earlier request with this idempotency key got, if there was one.
    pub async fn find_by_idempotency_key(
        &self,
        key: IdempotencyKey,
    ) -> Result<Option<OutboundStored>, StoreError> {
        self.read(move |conn| on_backend!(conn, messages::find_by_idempotency_key(&key)))
            .await
    }

    /// Stores an inbound message unless its provider id was seen before. It takes the lane
    /// of new messages: message inserts are the only writes that lock conversation rows,
    /// so with all of them in one lane an instance's lanes never wait on each other there.
    pub async fn insert_inbound(&self, new: NewInbound) -> Result<InboundStored, StoreError> {
        self.write_new_message(new, runner!(messages::insert_inbound), None)
            .await
    }

    /// Records a finished attempt and the message status it leads to, in one transaction;
    /// `StoreError::Superseded` when another instance holds the message's lease now.
    pub async fn record_attempt(&self, record: AttemptRecord) -> Result<(), StoreError> {
        self.write_on(
            self.lane_of(record.message_id),
            (record, self.instance.to_string()),
            runner!(dispatch::record_attempt),
            Some(bulk_runner!(dispatch::record_attempts)),
            Wait::ToTheEnd,
        )
        .await
    }

    /// Whether attempt `attempt` of message `id` was recorded by this instance: a record
    /// written again after its first copy committed unseen (its answer lost with the
    /// connection) meets that copy, not another instance's record.
    pub async fn recorded_here(&self, id: i64, attempt: u32) -> Result<bool, StoreError> {
        let instance = self.instance.to_string();
        let attempt = i32::try_from(attempt).unwrap_or(i32::MAX);
        let by = self
            .read(move |conn| on_backend!(conn, dispatch::attempt_recorded_by(id, attempt)))
            .await?;
        Ok(by.flatten().as_deref() == Some(instance.as_str()))
    }

    /// Applies a delivery receipt; the message id, or `None` for an unknown provider id.
    /// It names the message by the provider's id, so it cannot know which lane holds the
    /// attempt record it follows: it comes after every write queued before it.
    pub async fn record_delivery(
        &self,
        receipt: DeliveryReceipt,
    ) -> Result<Option<i64>, StoreError> {
        self.write_after_queued(receipt, runner!(messages::record_delivery))
            .await
    }

    /// Gives receipts that came before their attempt's record to their messages (see
    /// `messages::record_delivery`); the number applied. Writes only when one waits.
    pub async fn apply_early_receipts(&self) -> Result<usize, StoreError> {
        if !self
            .read(|conn| on_backend!(conn, messages::any_early_receipt()))
            .await?
        {
            return Ok(0);
        }
        self.write((), runner!(messages::apply_early_receipts))
            .await
    }

    /// Stores an operator's breaker setting (`forced_open`, `disabled`, `closed`).
    pub async fn set_breaker_override(
        &self,
        provider: String,
        state: &'static str,
    ) -> Result<String, StoreError> {
        self.write((provider, state), runner!(dispatch::set_breaker_override))
            .await
    }

    /// Every stored breaker setting: provider name, state, and the stamp that tells one
    /// setting from the next.
    pub async fn breaker_overrides(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        self.read(|conn| on_backend!(conn, dispatch::breaker_overrides()))
            .await
    }

    /// Up to `limit` due callbacks, leased to this instance for `lease` (longer than one
    /// try takes, so no other instance sends the same callback meanwhile).
    pub async fn claim_callbacks(
        &self,
        limit: i64,
        lease: Duration,
    ) -> Result<Vec<DueCallback>, StoreError> {
        let claim = CallbackClaim {
            lease: self.lease_for(lease),
            now: self.database_time(),
            limit,
        };
        let run = Runner {
            sqlite: callbacks::claim_callbacks_sqlite,
            postgres: callbacks::claim_callbacks_postgres,
        };
        self.write_on(&self.lanes[0], claim, run, None, Wait::Droppable)
            .await
    }

    /// Records how a try of callback `id` ended (only while this instance holds it).
    pub async fn finish_callback(
        &self,
        id: i64,
        fate: CallbackFate,
        result: String,
    ) -> Result<(), StoreError> {
        let done = CallbackResult {
            id,
            owner: self.instance.to_string(),
            fate,
            result,
        };
        self.write(done, runner!(callbacks::finish_callback)).await
    }

    /// A message with its attempts and its callbacks, read in one snapshot, if its body
    /// and attachments fit in `room` bytes (see `Bounded`). `hold` (the room itself) is
    /// kept until the read is over and handed back with it: a caller that gives up
    /// waiting does not free the room while the reader still loads the answer.
    pub async fn get_message_detail<H: Send + 'static>(
        &self,
        id: i64,
        room: Option<i64>,
        hold: H,
    ) -> Result<(Option<Bounded<MessageDetailParts>>, H), StoreError> {
        self.read_holding(hold, move |conn| {
            if let DbConn::Postgres(c) = conn {
                return messages::message_detail_on_postgres(c, id, room);
            }
            in_read_snapshot(conn, |tx| {
                let found = on_tx!(tx, messages::get_message_within(id, room))?;
                Ok(match found {
                    Some(Bounded::Loaded((message, attempts))) => {
                        let callbacks = on_tx!(tx, callbacks::callbacks_of(id))?;
                        Some(Bounded::Loaded((message, attempts, callbacks)))
                    }
                    Some(Bounded::Larger(bytes)) => Some(Bounded::Larger(bytes)),
                    None => None,
                })
            })
        })
        .await
    }

    pub async fn pending_callbacks(&self) -> Result<i64, StoreError> {
        self.read(|conn| on_backend!(conn, callbacks::pending_callbacks()))
            .await
    }

    /// Sends failed messages again, attempt numbers continuing. One message goes back to
    /// `queued` leased here, for the router to hand over at once. A provider's go back
    /// without a lease, in steps of `REQUEUE_STEP` ids, each a transaction of its own: a
    /// retry of a million failures neither holds the writer for seconds (every new
    /// message would wait behind it) nor reads them all into memory; the router's claims
    /// then take them as the backlog has room. Only ids there when the retry began are
    /// looked at (one that fails while the retry runs, still ahead of its steps, matches
    /// and is taken too). An error part-way leaves the steps before it done: repeating
    /// the retry takes the rest.
    pub async fn requeue(&self, target: RequeueTarget) -> Result<Requeued, StoreError> {
        let (name, since) = match target {
            RequeueTarget::One(id) => {
                let requeue = Requeue {
                    lease: self.lease(),
                    id,
                };
                return self.write(requeue, runner!(callbacks::requeue)).await;
            }
            RequeueTarget::Provider { name, since } => (name, since),
        };
        let bounds = self
            .read(|conn| on_backend!(conn, callbacks::message_id_bounds()))
            .await?;
        let Some((low, high)) = bounds else {
            return Ok(Requeued::Many(0));
        };
        let (mut after, mut count) = (low - 1, 0);
        while after < high {
            let upto = after.saturating_add(REQUEUE_STEP).min(high);
            let step = RequeueRange {
                name: name.clone(),
                since,
                after,
                upto,
                now: Timestamp::now(),
            };
            count += self.write(step, runner!(callbacks::requeue_range)).await?;
            after = upto;
        }
        Ok(Requeued::Many(count))
    }

    /// Marks a message `failed` without an attempt (it cannot be routed).
    pub async fn mark_failed(&self, message_id: i64) -> Result<(), StoreError> {
        self.write(message_id, runner!(dispatch::mark_failed)).await
    }

    /// Up to `limit` queued outbound messages with ids above `after_id`, oldest first,
    /// now leased to this instance: those whose lease lapsed or never was.
    pub async fn claim_queued(
        &self,
        limit: i64,
        after_id: i64,
    ) -> Result<Vec<QueuedMessage>, StoreError> {
        if self.released.load(Ordering::Acquire) {
            return Ok(Vec::new());
        }
        let claim = Claim {
            lease: self.lease(),
            now: self.database_time(),
            limit,
            after_id,
        };
        let run = Runner {
            sqlite: dispatch::claim_sqlite,
            postgres: dispatch::claim_postgres,
        };
        self.write_on(&self.lanes[0], claim, run, None, Wait::Droppable)
            .await
    }

    /// Whether `claim_queued` from `after_id` would take anything (a read).
    pub async fn any_claimable(&self, after_id: i64) -> Result<bool, StoreError> {
        if self.released.load(Ordering::Acquire) {
            return Ok(false);
        }
        let claim = Claim {
            lease: self.lease(),
            now: self.database_time(),
            limit: 1,
            after_id,
        };
        self.read(move |conn| on_backend!(conn, dispatch::any_claimable(&claim)))
            .await
    }

    /// At a SQLite start, clears the leases an earlier process of this instance left
    /// (it owned the file, so none is another's): its queued messages are then claimed
    /// like any other, as far as the backlog has room. On PostgreSQL, where instances
    /// share the work, a lease lapses instead. Answers how many were cleared.
    pub async fn forget_earlier_leases(&self) -> Result<usize, StoreError> {
        if self.shares_work() {
            return Ok(0);
        }
        self.write((), runner!(dispatch::forget_leases)).await
    }

    /// Extends this instance's leases on `ids`, the messages it holds in memory. Each
    /// message's renewal goes on the lane of its attempt records: a renewal on another
    /// lane would lock the rows those records' trigger locks, from a transaction running
    /// at the same time, in an order of its own (a deadlock PostgreSQL breaks only after
    /// a second). Answers the ids whose lease this instance no longer holds (another
    /// instance took the message over, or it is no longer queued), as the lanes that
    /// answered found them, and the error of a lane whose renewal failed (nothing is known
    /// of its leases): one failing lane must not hide what the others found.
    pub async fn renew_leases(&self, ids: Vec<i64>) -> Renewed {
        let lease = self.lease();
        let mut by_lane: Vec<Vec<i64>> = vec![Vec::new(); self.lanes.len()];
        for id in ids {
            by_lane[self.lane_index(id)].push(id);
        }
        // Every lane at once, and each whatever another's fate: one slow or failing lane
        // must not leave the others' leases to lapse.
        let renewals = self
            .lanes
            .iter()
            .zip(by_lane)
            .filter(|(_, ids)| !ids.is_empty())
            .map(|(lane, ids)| {
                let asked = ids.clone();
                let renewal = Renewal {
                    lease: lease.clone(),
                    ids,
                };
                let renewed = self.write_on(
                    lane,
                    renewal,
                    runner!(dispatch::renew_leases),
                    None,
                    Wait::Droppable,
                );
                async move {
                    let renewed: HashSet<i64> = renewed.await?.into_iter().collect();
                    Ok::<_, StoreError>(
                        asked
                            .into_iter()
                            .filter(|id| !renewed.contains(id))
                            .collect::<Vec<i64>>(),
                    )
                }
            });
        let mut renewed = Renewed::default();
        for lane in futures_util::future::join_all(renewals).await {
            match lane {
                Ok(lost) => renewed.lost.extend(lost),
                Err(e) => renewed.failed = Some(e),
            }
        }
        renewed
    }

    /// Hands this instance's queued work back, for another instance to claim at once.
    /// Claims stop first: the lease keeper's sweep, still running until the process
    /// exits, would otherwise take the freed messages straight back and leave the next
    /// start waiting out their leases. Records queued before it land first, so another
    /// instance never claims a message whose finished attempt is still on its way.
    /// `keep`: messages whose attempt is still under way here (their providers were told
    /// to start nothing more but could not finish in time); their leases lapse instead,
    /// so no other instance sends them while this one may still be.
    pub async fn release_leases(&self, keep: Vec<i64>) -> Result<usize, StoreError> {
        self.released.store(true, Ordering::Release);
        let input = (self.instance.to_string(), keep);
        self.write_after_queued(input, runner!(dispatch::release_leases))
            .await
    }

    /// Ends the use of the database for good, at a graceful stop after the last write
    /// that matters (the leases' release): the writers and every reader finish what they
    /// are doing, hand their connections back to the pool and take nothing more, so that
    /// no query runs while the process exits. Writes and reads after it wait until their
    /// timeout (an attempt record, which has none, until the process exits: nothing at a
    /// stop waits for records). Answers once every thread has stopped, or after the
    /// store's timeout.
    pub async fn close(&self) {
        let mut stopped = Vec::with_capacity(self.reader_threads + self.lanes.len());
        let writers = self.lanes.iter().map(|lane| (&lane.writer, 1));
        for (arbiter, threads) in writers.chain([(&self.readers, self.reader_threads)]) {
            for _ in 0..threads {
                let (tell, told) = oneshot::channel();
                arbiter.do_send(persistence::Close(tell));
                stopped.push(told);
            }
        }
        // Then every connection back in the pool: r2d2 opens connections on threads of its
        // own, and one still being opened for a caller that stopped waiting would run
        // libpq's TLS handshake while `exit` tears OpenSSL down (a SIGSEGV once in CI after
        // a graceful stop on PostgreSQL). Once opened, it sits idle, unused.
        let all = async {
            for told in stopped {
                let _ = told.await;
            }
            while !self.pool.is_settled() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let _ = tokio::time::timeout(self.timeout, all).await;
    }

    pub async fn get_message(
        &self,
        id: i64,
    ) -> Result<Option<(MessageView, Vec<AttemptView>)>, StoreError> {
        self.read(move |conn| on_backend!(conn, messages::get_message(id)))
            .await
    }

    /// Message `id` as a real provider reads it before sending. An instance frozen past
    /// its lease (or cut off from the database) may have a retry's timer fire before its
    /// next renewal tells it the lease was lost: `TakenOver` then keeps it from sending a
    /// message the new owner is sending too.
    pub async fn message_to_send(&self, id: i64) -> Result<ToSend, StoreError> {
        let instance = self.instance.clone();
        self.read(move |conn| {
            Ok(match on_backend!(conn, messages::get_message_leased(id))? {
                Some((_, _, Some(owner))) if *owner != *instance => ToSend::TakenOver,
                Some((message, attempts, _)) => ToSend::Read(Box::new(message), attempts),
                None => ToSend::Gone,
            })
        })
        .await
    }

    /// A page of conversations and their total, read in one snapshot.
    pub async fn list_conversations(
        &self,
        page: PageRequest,
    ) -> Result<Page<ConversationView>, StoreError> {
        self.read(move |conn| {
            in_read_snapshot(conn, |tx| on_tx!(tx, messages::list_conversations(page)))
        })
        .await
    }

    /// A page of a conversation's messages and its total, read in one snapshot, if its
    /// bodies and attachments fit in `room` bytes; `None` when the conversation does not
    /// exist. `hold` as for `get_message_detail`.
    pub async fn list_conversation_messages<H: Send + 'static>(
        &self,
        conversation_id: i64,
        page: PageRequest,
        room: Option<i64>,
        hold: H,
    ) -> Result<(Option<Bounded<Page<MessageView>>>, H), StoreError> {
        self.read_holding(hold, move |conn| {
            in_read_snapshot(conn, |tx| {
                on_tx!(
                    tx,
                    messages::list_conversation_messages(conversation_id, page, room)
                )
            })
        })
        .await
    }

    /// Answers when the database takes writes: one small write through group commit, so
    /// a locked, read-only or full database shows here as it would to a client. It first
    /// waits for every lane (a transaction on each lane's connection), so a lane whose
    /// connection was lost or whose batch waits on a lock shows too: on PostgreSQL new
    /// messages take the last lane, not the first. One `database.timeout_ms` bounds it.
    pub async fn probe(&self) -> Result<(), StoreError> {
        self.write_after_queued((), runner!(dispatch::probe)).await
    }

    /// A write on the first lane.
    async fn write<I, O>(&self, input: I, run: Runner<I, O>) -> Result<O, StoreError>
    where
        I: Send + 'static,
        O: Send + 'static,
    {
        self.write_on(&self.lanes[0], input, run, None, Wait::Kept)
            .await
    }

    /// The lane of new messages, outbound and inbound: the last (on SQLite the only one).
    fn new_messages_lane(&self) -> &Lane {
        &self.lanes[self.lanes.len() - 1]
    }

    /// The lane of one message's attempt records (and lease renewals), always the same
    /// one, so that they commit in the order its provider queued them.
    fn lane_of(&self, message_id: i64) -> &Lane {
        &self.lanes[self.lane_index(message_id)]
    }

    fn lane_index(&self, message_id: i64) -> usize {
        let lanes = self.lanes.len() as u64;
        (message_id.unsigned_abs() % lanes) as usize
    }

    /// A write on the first lane once every lane has committed what was queued on it
    /// before this call, so that it follows every write queued before it, whatever their
    /// lanes. An empty write in each lane's queue marks the point, the first lane's too:
    /// within a batch, writes without a shared statement run before those with one, so a
    /// receipt in the same batch as its record would run first. Should a mark fail, so
    /// does this write (the database is failing the writes before it too). One
    /// `database.timeout_ms` bounds the whole.
    async fn write_after_queued<I, O>(&self, input: I, run: Runner<I, O>) -> Result<O, StoreError>
    where
        I: Send + 'static,
        O: Send + 'static,
    {
        let empty = Runner {
            sqlite: |_, _: &()| Ok(()),
            postgres: |_, _: &()| Ok(()),
        };
        let ordered = async {
            for lane in self.lanes.iter() {
                self.write_on(lane, (), empty, None, Wait::Droppable)
                    .await?;
            }
            self.write(input, run).await
        };
        match tokio::time::timeout(self.timeout, ordered).await {
            Ok(written) => written,
            Err(_) => Err(self.timed_out()),
        }
    }

    /// A new message's insert, on the lane of new messages.
    async fn write_new_message<I, O>(
        &self,
        input: I,
        run: Runner<I, O>,
        bulk: Option<BulkRunner<I, O>>,
    ) -> Result<O, StoreError>
    where
        I: Send + 'static,
        O: Send + 'static,
    {
        self.write_on(self.new_messages_lane(), input, run, bulk, Wait::Droppable)
            .await
    }

    /// A write on `lane` that, with `bulk`, may share a multi-row statement with the
    /// others of its kind in its batch (and runs alone as `run` when a batch is rerun write
    /// by write); `wait` says how long its caller waits and what becomes of it after.
    async fn write_on<I, O>(
        &self,
        lane: &Lane,
        input: I,
        run: Runner<I, O>,
        bulk: Option<BulkRunner<I, O>>,
        wait: Wait,
    ) -> Result<O, StoreError>
    where
        I: Send + 'static,
        O: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let droppable = wait == Wait::Droppable;
        lane.queue.push(
            WriteJob::boxed(input, run, bulk, reply, droppable),
            &lane.writer,
        );
        // A dropped sender means the batch never ran (actor stopped): not stored. A
        // droppable write whose caller timed out before its batch ran is dropped unrun;
        // one already in a transaction when the timeout came, or a kept one, may still
        // commit: the caller answers 503 and never 202, and an Idempotency-Key retry
        // finds what did commit.
        let answer = match wait {
            Wait::ToTheEnd => Ok(answer.await),
            Wait::Droppable | Wait::Kept => tokio::time::timeout(self.timeout, answer).await,
        };
        match answer {
            Ok(answer) => answer.map_err(|_| StoreError::Closed)?,
            Err(_) => Err(self.timed_out()),
        }
    }

    fn timed_out(&self) -> StoreError {
        StoreError::TimedOut(format!("no answer within {} ms", self.timeout.as_millis()))
    }

    /// `read`, with `hold` kept until the query is over (dropped with it if the caller
    /// gave up) and handed back with its answer.
    async fn read_holding<F, O, H>(&self, hold: H, query: F) -> Result<(O, H), StoreError>
    where
        F: Fn(&mut DbConn) -> Result<O, StoreError> + Send + 'static,
        O: Send + 'static,
        H: Send + 'static,
    {
        let held = std::sync::Mutex::new(Some(hold));
        self.read(move |conn| {
            let answer = query(conn)?;
            let hold = held
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()
                .ok_or(StoreError::Closed)?;
            Ok((answer, hold))
        })
        .await
    }

    async fn read<F, O>(&self, query: F) -> Result<O, StoreError>
    where
        F: Fn(&mut DbConn) -> Result<O, StoreError> + Send + 'static,
        O: Send + 'static,
    {
        let read = self.readers.send(Read::new(query));
        match tokio::time::timeout(self.timeout, read).await {
            Ok(answer) => answer.map_err(|_| StoreError::Closed)?,
            Err(_) => Err(self.timed_out()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    use diesel::pg::PgConnection;
    use diesel::{Connection, RunQueryDsl};

    use super::messages::tests::{databases, sessions_waiting_for_a_lock};
    use super::{
        open, AttemptRecord, DeliveryReceipt, DeliveryStatus, InboundStored, Lane, NewInbound,
        NewOutbound, OutboundStored, ReceiptSource, Store, StoreError,
    };
    use crate::domain::{Channel, MessageContent, MessageStatus, Timestamp};

    /// An SMS to recipient `n` for the `sms-mms` provider, as the router stores one.
    pub(crate) fn new_message(n: u32) -> NewOutbound {
        NewOutbound {
            content: MessageContent {
                channel: Channel::Sms,
                from: "+12016661234".into(),
                to: format!("+1804555{n:04}"),
                body: "hi".into(),
                attachments: None,
                timestamp: Timestamp::now(),
                subject: None,
            },
            provider: Some("sms-mms".into()),
            idempotency: None,
            lease: None,
            status_callback: None,
            send_at: None,
        }
    }

    /// Polls a write once: its first poll queues it, and says whether it was answered.
    fn answered<F: Future + Unpin>(write: &mut F) -> bool {
        let mut context = Context::from_waker(Waker::noop());
        matches!(std::pin::Pin::new(write).poll(&mut context), Poll::Ready(_))
    }

    fn success(message_id: i64, provider_message_id: Option<&str>) -> AttemptRecord {
        AttemptRecord {
            message_id,
            provider: "sms-mms".into(),
            attempt: 1,
            outcome: "success",
            latency_ms: 1,
            error_code: None,
            provider_message_id: provider_message_id.map(str::to_owned),
            status: MessageStatus::Sent,
            next_attempt_at: None,
        }
    }

    /// Holds message `id`'s row from a connection of the test's own, in a transaction
    /// left open: an attempt record of it waits (its trigger locks the row) until
    /// `let_go`, and so does the rest of its batch.
    fn hold(holder: &mut PgConnection, id: i64) {
        diesel::sql_query("BEGIN").execute(holder).expect("begin");
        diesel::sql_query(format!(
            "SELECT id FROM messages WHERE id = {id} FOR UPDATE"
        ))
        .execute(holder)
        .expect("lock the row");
    }

    fn let_go(holder: &mut PgConnection) {
        diesel::sql_query("ROLLBACK")
            .execute(holder)
            .expect("rollback");
    }

    /// Until a session of this database waits for a lock.
    async fn until_a_write_waits(holder: &mut PgConnection) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if sessions_waiting_for_a_lock(holder) > 0 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the held write never waited"
            );
            tokio::task::yield_now().await;
        }
    }

    /// `database.writers` lanes on PostgreSQL, one on SQLite whatever is asked; with three
    /// lanes or one, each message's records land and its status follows the last.
    #[actix::test]
    async fn a_store_commits_on_the_lanes_it_was_given() {
        let dir = tempfile::tempdir().expect("temp dir");
        let sqlite = format!("sqlite://{}", dir.path().join("lanes.db").display());
        for db in databases() {
            let url = db.postgres_url().unwrap_or(sqlite.clone());
            for asked in [1, 3] {
                let pool = open(&url, 1, asked, Duration::from_secs(10)).expect("open");
                let store = Store::start(pool, 1, Duration::from_secs(30), Duration::from_secs(20));
                let expected = if db.postgres_url().is_some() {
                    asked
                } else {
                    1
                };
                assert_eq!(store.writers(), expected);
                let ids = stored_ids(&store, 6).await;
                // At once, so that every lane has records to commit.
                let records: Vec<_> = ids
                    .iter()
                    .map(|&id| {
                        let store = store.clone();
                        actix::spawn(async move { store.record_attempt(success(id, None)).await })
                    })
                    .collect();
                for recorded in records {
                    recorded.await.expect("task").expect("recorded");
                }
                for id in ids {
                    let (message, attempts) =
                        store.get_message(id).await.expect("read").expect("found");
                    assert_eq!(message.status, "sent", "{id} on {asked}");
                    assert_eq!(attempts.len(), 1, "{id} on {asked}");
                }
                store.close().await;
            }
        }
    }

    /// A page's size for the read budget is its bodies' and attachments' UTF-8 bytes:
    /// counted in characters, a page of emoji took a quarter of its room and forty readers
    /// could hold four times the budget.
    #[actix::test]
    async fn a_pages_size_is_counted_in_bytes_not_characters() {
        for db in databases() {
            let store = Store::start(
                db.pool.clone(),
                1,
                Duration::from_secs(30),
                Duration::from_secs(20),
            );
            let mut conversation = None;
            let mut ids = Vec::new();
            for body in ["\u{1F600}".repeat(1000), "\u{e9}".repeat(500)] {
                let mut message = new_message(7);
                message.content.body = body;
                message.content.attachments = Some(vec!["https://x.example/\u{e9}".into()]);
                match store.insert_outbound(message).await {
                    Ok(OutboundStored::Created {
                        id,
                        conversation_id,
                        ..
                    }) => {
                        conversation = Some(conversation_id);
                        ids.push(id);
                    }
                    other => panic!("not stored: {other:?}"),
                }
            }
            let conversation = conversation.expect("a conversation");
            let page = super::PageRequest {
                page: 1,
                page_size: 100,
            };
            let read = store.list_conversation_messages(conversation, page, Some(5_000), ());
            let bytes = match read.await.expect("read").0 {
                Some(super::Bounded::Larger(bytes)) => bytes,
                other => panic!("loaded past its room: {other:?}"),
            };
            // 4,000 and 1,000 bytes of bodies, and two attachment lists of at least
            // their URL's 20 bytes.
            assert!((5_040..5_200).contains(&bytes), "{bytes}");
            // Room for exactly that is enough.
            let read = store.list_conversation_messages(conversation, page, Some(bytes), ());
            match read.await.expect("read").0 {
                Some(super::Bounded::Loaded(page)) => assert_eq!(page.items.len(), 2),
                other => panic!("not loaded: {other:?}"),
            }
            // A message's own row is measured the same way.
            let read = store.get_message_detail(ids[0], Some(3_999), ());
            assert!(matches!(
                read.await.expect("read").0,
                Some(super::Bounded::Larger(4_000..=4_100))
            ));
            // Its connections closed now, not by threads torn down as the test process
            // exits: libpq's TLS teardown racing `exit` is a SIGSEGV (see `Close`).
            store.close().await;
        }
    }

    /// What a read holds (the answer's room in the read budget) stays held while the
    /// reader still loads the answer, also after its caller gave up waiting for it, and
    /// is let go when the read is over.
    #[actix::test]
    async fn a_read_given_up_on_keeps_what_it_holds_until_it_is_over() {
        let db = databases().swap_remove(0);
        let store = Store::start(
            db.pool.clone(),
            1,
            Duration::from_secs(30),
            Duration::from_millis(200),
        );
        let held = std::sync::Arc::new(());
        let (finish, finished) = std::sync::mpsc::channel::<()>();
        let finished = std::sync::Mutex::new(finished);
        let slow = store.read_holding(held.clone(), move |_| {
            // The reader is busy until the test lets it go.
            let _ = finished
                .lock()
                .map(|f| f.recv_timeout(Duration::from_secs(30)));
            Ok(())
        });
        assert!(matches!(slow.await, Err(StoreError::TimedOut(_))));
        assert_eq!(
            std::sync::Arc::strong_count(&held),
            2,
            "let go while loading"
        );
        finish.send(()).expect("the reader waits");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::sync::Arc::strong_count(&held) != 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "still held after the read"
            );
            actix::clock::sleep(Duration::from_millis(5)).await;
        }
        store.close().await;
    }

    /// Stores new outbound messages `0..count`; their ids.
    async fn stored_ids(store: &Store, count: u32) -> Vec<i64> {
        let mut ids = Vec::new();
        for n in 0..count {
            match store.insert_outbound(new_message(n)).await {
                Ok(OutboundStored::Created { id, .. }) => ids.push(id),
                other => panic!("not stored: {other:?}"),
            }
        }
        ids
    }

    /// `ids` split into those whose records go on the first lane and the rest.
    fn by_first_lane(store: &Store, ids: &[i64]) -> (Vec<i64>, Vec<i64>) {
        let first: &Lane = &store.lanes[0];
        ids.iter()
            .partition(|&&id| std::ptr::eq(store.lane_of(id), first))
    }

    /// A renewal waiting on one lane (a row lock held there, past the store's timeout)
    /// does not hold back the other lane's: the lanes renew at once, each whatever the
    /// other's fate, so one slow lane never lets the other's leases lapse.
    #[actix::test]
    async fn on_postgres_a_slow_lane_does_not_hold_back_the_others_renewals() {
        use crate::store::schema::messages;
        use diesel::QueryDsl;

        for db in databases() {
            let Some(url) = db.postgres_url() else {
                continue;
            };
            let store = Store::start(
                db.pool.clone(),
                1,
                Duration::from_secs(30),
                Duration::from_secs(1),
            );
            let ids = stored_ids(&store, 4).await;
            let (on_first, on_other) = by_first_lane(&store, &ids);
            assert!(!on_first.is_empty() && !on_other.is_empty(), "{ids:?}");
            let mut reader = PgConnection::establish(&url).expect("connect");
            let mut lease_until = |id: i64| -> String {
                messages::table
                    .find(id)
                    .select(messages::lease_until)
                    .first::<Option<String>>(&mut reader)
                    .expect("read")
                    .expect("leased")
            };
            let before = lease_until(on_other[0]);
            let mut holder = PgConnection::establish(&url).expect("connect");
            hold(&mut holder, on_first[0]);

            // A message the other lane finds no lease of: it must still be reported.
            let gone = (ids.iter().max().expect("ids") + 1..)
                .find(|&id| store.lane_index(id) == store.lane_index(on_other[0]))
                .expect("an id on the other lane");
            let renewed = store
                .renew_leases(vec![on_first[0], on_other[0], gone])
                .await;
            assert!(
                renewed.failed.is_some(),
                "the held lane answered: {renewed:?}"
            );
            assert_eq!(
                renewed.lost,
                vec![gone],
                "the other lane's finding was lost"
            );
            assert!(
                lease_until(on_other[0]) > before,
                "the other lane's lease was not renewed"
            );
            let_go(&mut holder);
        }
    }

    /// On PostgreSQL writes go in two lanes, each committing in its own order. While an
    /// attempt record waits on a lock, a later record or lease renewal of a message in its
    /// lane waits behind it, and a delivery receipt waits for it (and then finds its
    /// provider id), but records of the other lane and new messages (inbound too) commit;
    /// the readiness probe waits for every lane. Each of these fails if its write took
    /// another lane: a receipt without the wait would answer at once that no message has
    /// that id; and one that shares a batch with its record would run before it (writes
    /// without a shared statement go first).
    #[actix::test]
    async fn on_postgres_each_lane_waits_only_for_its_own_writes() {
        for db in databases() {
            let Some(url) = db.postgres_url() else {
                continue;
            };
            let store = Store::start(
                db.pool.clone(),
                1,
                Duration::from_secs(30),
                Duration::from_secs(20),
            );
            let ids = stored_ids(&store, 6).await;
            let first: &Lane = &store.lanes[0];
            assert!(
                !std::ptr::eq(first, store.new_messages_lane()),
                "new messages have a lane of their own"
            );
            let (on_first, on_last) = by_first_lane(&store, &ids);
            assert!(on_first.len() >= 3 && on_last.len() >= 3, "{ids:?}");
            let mut holder = PgConnection::establish(&url).expect("connect");

            // A record in the lane of new messages waits.
            hold(&mut holder, on_last[0]);
            let mut held = Box::pin(store.record_attempt(success(on_last[0], Some("SM-held"))));
            assert!(!answered(&mut held));
            until_a_write_waits(&mut holder).await;
            let mut behind = Box::pin(store.record_attempt(success(on_last[1], None)));
            let mut renewal = Box::pin(store.renew_leases(vec![on_last[2]]));
            let mut receipt = Box::pin(store.record_delivery(receipt_for("SM-held")));
            assert!(!answered(&mut behind) && !answered(&mut renewal) && !answered(&mut receipt));
            let mut probe = Box::pin(store.probe());
            assert!(!answered(&mut probe));
            store
                .record_attempt(success(on_first[0], None))
                .await
                .expect("the first lane commits");
            assert!(!answered(&mut probe), "the probe waits for every lane");
            assert!(!answered(&mut held), "the held record commits only after");
            assert!(!answered(&mut behind), "a record waits behind its lane");
            assert!(
                !answered(&mut renewal),
                "a renewal goes on its records' lane"
            );
            assert!(!answered(&mut receipt), "a receipt waits for every record");
            let_go(&mut holder);
            held.await.expect("recorded");
            behind.await.expect("recorded");
            probe.await.expect("the probe commits after");
            let renewal = renewal.await;
            assert!(renewal.failed.is_none(), "{renewal:?}");
            assert_eq!(renewal.lost, Vec::<i64>::new(), "none lost");
            assert_eq!(receipt.await.expect("applied"), Some(on_last[0]));

            // A record in the first lane waits; new messages do not. A receipt that lands
            // in one batch with its record still finds it.
            hold(&mut holder, on_first[1]);
            let mut held = Box::pin(store.record_attempt(success(on_first[1], None)));
            assert!(!answered(&mut held));
            until_a_write_waits(&mut holder).await;
            let created = store.insert_outbound(new_message(7)).await;
            assert!(
                matches!(created, Ok(OutboundStored::Created { .. })),
                "{created:?}"
            );
            let inbound = NewInbound {
                content: new_message(7).content,
                provider_message_id: "SM-inbound".into(),
            };
            let received = store.insert_inbound(inbound).await;
            assert!(
                matches!(received, Ok(InboundStored::Created { .. })),
                "inbound messages take the lane of new messages: {received:?}"
            );
            let mut record = Box::pin(store.record_attempt(success(on_first[2], Some("SM-first"))));
            assert!(!answered(&mut record));
            let mut receipt = Box::pin(store.record_delivery(receipt_for("SM-first")));
            // Until the receipt (or its mark) waits behind the record in the first lane.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while store.lanes[0].queue.waiting() < 2 {
                assert!(!answered(&mut receipt), "the receipt did not wait");
                assert!(
                    std::time::Instant::now() < deadline,
                    "the receipt never queued"
                );
                tokio::task::yield_now().await;
            }
            assert!(!answered(&mut held), "the held record commits only after");
            let_go(&mut holder);
            held.await.expect("recorded");
            record.await.expect("recorded");
            assert_eq!(receipt.await.expect("applied"), Some(on_first[2]));
        }
    }

    /// A write the database refuses for a fault of its own (here a record naming a
    /// message that is gone, which breaks a foreign key) fails alone: taken for a fault of
    /// the database, it failed every write queued beside and behind it, at each retry.
    #[actix::test]
    async fn a_write_refused_for_its_own_fault_fails_alone() {
        for db in databases() {
            let store = Store::start(
                db.pool.clone(),
                1,
                Duration::from_secs(30),
                Duration::from_secs(20),
            );
            let ids = stored_ids(&store, 3).await;
            let (gone, good): (Vec<_>, Vec<_>) = [999_999, ids[0], ids[1], 999_998, ids[2]]
                .into_iter()
                .map(|id| {
                    let store = store.clone();
                    (
                        id,
                        actix::spawn(async move { store.record_attempt(success(id, None)).await }),
                    )
                })
                .partition(|(id, _)| *id > 999_000);
            for (id, recorded) in good {
                recorded.await.expect("task").expect("recorded");
                let (message, _) = store.get_message(id).await.expect("read").expect("found");
                assert_eq!(message.status, "sent", "{id}");
            }
            for (id, recorded) in gone {
                let refused = recorded.await.expect("task");
                assert!(
                    matches!(refused, Err(StoreError::Refused(_))),
                    "{id}: {refused:?}"
                );
            }
            store.close().await;
        }
    }

    fn receipt_for(provider_message_id: &str) -> DeliveryReceipt {
        DeliveryReceipt {
            source: ReceiptSource::Twilio,
            provider_message_id: provider_message_id.into(),
            status: DeliveryStatus::Delivered,
            error_code: None,
        }
    }

    /// After `close` no thread of the store holds a connection or runs a query: every
    /// pooled connection is idle (the writer keeps one checked out while it runs), and a
    /// write made after it is never applied.
    #[actix::test]
    async fn after_close_no_connection_is_in_use_and_nothing_more_is_written() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("close.db").display());
        let pool = open(&url, 3, 1, Duration::from_secs(5)).expect("open");
        let super::backend::Pools::Sqlite(watched) = pool.pools.clone() else {
            panic!("a SQLite url opens SQLite");
        };
        let store = Store::start(pool, 2, Duration::from_secs(30), Duration::from_millis(500));
        store
            .insert_outbound(new_message(1))
            .await
            .expect("written");
        let read = store.get_message(1).await.expect("read");
        assert!(read.is_some());
        let state = watched.state();
        assert!(
            state.idle_connections < state.connections,
            "the writer holds its connection while it runs: {state:?}"
        );

        // A connection still out of the pool (as one r2d2 is still opening) holds the
        // close until it is back.
        let held = watched.get().expect("a connection");
        let mut closing = Box::pin(store.close());
        for _ in 0..3 {
            assert!(!answered(&mut closing), "closed with a connection out");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(held);
        closing.await;
        let state = watched.state();
        assert_eq!(state.idle_connections, state.connections, "{state:?}");

        let late = store.insert_outbound(new_message(2)).await;
        assert!(matches!(late, Err(StoreError::TimedOut(_))), "{late:?}");
        let mut conn = watched.get().expect("a connection");
        let stored: i64 = {
            use diesel::dsl::count_star;
            use diesel::{QueryDsl, RunQueryDsl};
            super::schema::messages::table
                .select(count_star())
                .first(&mut *conn)
                .expect("count")
        };
        assert_eq!(stored, 1, "nothing was written after the close");
    }

    #[test]
    fn driver_messages_keep_their_kind() {
        for (message, kind) in [
            ("database is locked", "locked"),
            ("attempt to write a readonly database", "read_only"),
            ("database or disk is full", "disk_full"),
            ("canceling statement due to statement timeout", "timed_out"),
            (
                "terminating connection due to administrator command",
                "connection_lost",
            ),
            (
                "server closed the connection unexpectedly",
                "connection_lost",
            ),
            ("attempt superseded by another instance", "superseded"),
            ("a final status cannot change", "refused"),
            ("syntax error at or near \"x\"", "failed"),
        ] {
            assert_eq!(StoreError::from_message(message).kind(), kind, "{message}");
        }
    }

    #[test]
    fn only_faults_of_one_write_rerun_a_batch_and_only_connection_faults_drop_it() {
        let lost = StoreError::ConnectionLost("x".into());
        let locked = StoreError::Locked("x".into());
        let conflict = StoreError::Conflict("x".into());
        assert!(conflict.is_per_write() && StoreError::Superseded.is_per_write());
        assert!(!lost.is_per_write() && !locked.is_per_write());
        assert!(lost.taints_connection());
        assert!(StoreError::ReadOnly("x".into()).taints_connection());
        assert!(!locked.taints_connection() && !conflict.taints_connection());
    }
}
