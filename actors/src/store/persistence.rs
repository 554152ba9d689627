//! `PersistenceActor`: the only code that touches a database connection. It runs on a
//! `SyncArbiter` (blocking Diesel calls never stall an async thread) and handles two kinds
//! of message: `CommitQueued`, which commits the `WriteQueue` batch after batch, and a read.
//!
//! Group commit: writers push onto the `WriteQueue` and only the writer that finds no
//! commit scheduled sends `CommitQueued`. The actor that gets it takes everything queued,
//! commits it as one transaction, and takes again until the queue is empty; whatever
//! arrives while one transaction commits goes into the next. So there is one writer at a
//! time (SQLite allows no more), a burst pays for one fsync, and a lone write waits for
//! nothing but its own commit.

use std::sync::{Arc, Mutex};

use actix::{Actor, Addr, Handler, Message, SyncContext};
use tokio::sync::oneshot;

use super::backend::{in_write_transaction, DbConn, DbPool, Runner, Tx};
use super::StoreError;

/// Bound on one transaction, so a flood never makes one commit slow for everyone in it.
const MAX_BATCH: usize = 2048;

/// Writes waiting for their transaction, and whether a commit is already on its way.
#[derive(Default)]
pub(crate) struct WriteQueue {
    state: Mutex<QueueState>,
}

#[derive(Default)]
struct QueueState {
    waiting: Vec<Box<dyn Job>>,
    commit_scheduled: bool,
}

impl WriteQueue {
    /// The state is a list and a flag that every step leaves consistent, so a panic
    /// elsewhere that poisoned the lock leaves nothing to repair: carry on with it.
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues a write; asks for a commit unless one is already scheduled.
    pub(crate) fn push(&self, job: Box<dyn Job>, persistence: &Addr<PersistenceActor>) {
        let kick = {
            let mut state = self.lock();
            state.waiting.push(job);
            !std::mem::replace(&mut state.commit_scheduled, true)
        };
        if kick {
            // One message at a time at most, so the unbounded send is bounded here.
            persistence.do_send(CommitQueued);
        }
    }

    /// Everything waiting now: when the database refused a whole batch for a reason that
    /// is not the batch's own (a lock, a lost server), the writes queued behind it would
    /// meet the same fault, so they are answered at once instead of waiting in turn.
    fn take_all(&self) -> Vec<Box<dyn Job>> {
        std::mem::take(&mut self.lock().waiting)
    }

    /// The next batch, or `None` (and no commit scheduled any more) when nothing waits.
    fn take(&self) -> Option<Vec<Box<dyn Job>>> {
        let mut state = self.lock();
        if state.waiting.is_empty() {
            state.commit_scheduled = false;
            return None;
        }
        let take = state.waiting.len().min(MAX_BATCH);
        Some(state.waiting.drain(..take).collect())
    }
}

pub(crate) struct PersistenceActor {
    pool: DbPool,
    conn: Option<DbConn>,
    queue: Arc<WriteQueue>,
}

impl PersistenceActor {
    pub(crate) fn new(pool: DbPool, queue: Arc<WriteQueue>) -> Self {
        PersistenceActor {
            pool,
            conn: None,
            queue,
        }
    }

    /// This actor's own connection, taken from the pool once and kept: a writer that
    /// keeps one connection keeps its prepared statements.
    fn connection(&mut self) -> Result<&mut DbConn, StoreError> {
        if self.conn.is_none() {
            self.conn = Some(self.pool.get()?);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| StoreError::ConnectionLost("no connection".into()))
    }

    /// Gives the connection back after an error that may have broken it; the pool checks
    /// it (and drops it if broken) before anyone uses it again.
    fn after_error(&mut self, e: &StoreError) {
        if e.taints_connection() {
            self.conn = None;
        }
    }
}

impl Actor for PersistenceActor {
    type Context = SyncContext<Self>;
}

/// One write waiting for its batch: it runs inside the batch's transaction and answers
/// only once that transaction has committed, or failed.
pub(crate) trait Job: Send {
    /// Runs the write; an error aborts the transaction it runs in.
    fn apply(&mut self, tx: &mut Tx<'_>) -> Result<(), StoreError>;
    fn finish(self: Box<Self>, commit: Result<(), StoreError>);
}

pub(crate) struct WriteJob<I, O> {
    input: I,
    run: Runner<I, O>,
    result: Option<Result<O, StoreError>>,
    reply: oneshot::Sender<Result<O, StoreError>>,
}

impl<I: Send + 'static, O: Send + 'static> WriteJob<I, O> {
    pub(crate) fn boxed(
        input: I,
        run: Runner<I, O>,
        reply: oneshot::Sender<Result<O, StoreError>>,
    ) -> Box<dyn Job> {
        Box::new(WriteJob {
            input,
            run,
            result: None,
            reply,
        })
    }
}

impl<I: Send, O: Send> Job for WriteJob<I, O> {
    fn apply(&mut self, tx: &mut Tx<'_>) -> Result<(), StoreError> {
        let result = self.run.run(tx, &self.input);
        let status = result.as_ref().map(|_| ()).map_err(Clone::clone);
        self.result = Some(result);
        status
    }

    fn finish(self: Box<Self>, commit: Result<(), StoreError>) {
        let answer = match (commit, self.result) {
            (Ok(()), Some(result)) => result,
            (Ok(()), None) => Err(StoreError::Failed("write was not applied".into())),
            (Err(e), _) => Err(e),
        };
        // The caller may have gone (client hung up); the write stands either way.
        let _ = self.reply.send(answer);
    }
}

/// Commit what the `WriteQueue` holds, batch after batch, until it is empty.
pub(crate) struct CommitQueued;

impl Message for CommitQueued {
    type Result = ();
}

impl Handler<CommitQueued> for PersistenceActor {
    type Result = ();

    fn handle(&mut self, _: CommitQueued, _: &mut Self::Context) {
        while let Some(batch) = self.queue.take() {
            // A panic must not end the loop: the queue would stay "commit scheduled" and
            // every later write would wait forever. The batch's writes are dropped unrun
            // (their callers hear "not stored") and the connection is opened afresh.
            let committed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.commit(batch);
            }));
            if committed.is_err() {
                self.conn = None;
            }
        }
    }
}

impl PersistenceActor {
    /// One transaction for the whole batch. Should one write in it fail for a reason of
    /// its own (a conflict, a superseded attempt), the batch is rolled back and each write
    /// run again in a transaction of its own, so that one bad write cannot sink its
    /// neighbours; that costs a commit per write, but only on the rare batch with such a
    /// failure in it. A fault of the database itself fails the batch and every write
    /// queued behind it at once.
    fn commit(&mut self, mut jobs: Vec<Box<dyn Job>>) {
        let conn = match self.connection() {
            Ok(conn) => conn,
            Err(e) => {
                let e = e.clone();
                self.fail_all(jobs, &e);
                return;
            }
        };
        let commit =
            in_write_transaction(conn, |tx| jobs.iter_mut().try_for_each(|job| job.apply(tx)));
        match commit {
            Err(e) if e.is_per_write() && jobs.len() > 1 => {
                for mut job in jobs {
                    let alone = match self.connection() {
                        Ok(conn) => in_write_transaction(conn, |tx| job.apply(tx)),
                        Err(e) => Err(e),
                    };
                    if let Err(e) = &alone {
                        self.after_error(e);
                    }
                    job.finish(alone);
                }
            }
            Err(e) if !e.is_per_write() => self.fail_all(jobs, &e),
            commit => {
                for job in jobs {
                    job.finish(commit.clone());
                }
            }
        }
    }

    fn fail_all(&mut self, jobs: Vec<Box<dyn Job>>, e: &StoreError) {
        self.after_error(e);
        for job in jobs.into_iter().chain(self.queue.take_all()) {
            job.finish(Err(e.clone()));
        }
    }
}

/// A read-only query run on one pooled connection.
pub(crate) struct Read<F, O> {
    query: F,
    _output: std::marker::PhantomData<fn() -> O>,
}

impl<F, O> Read<F, O> {
    pub(crate) fn new(query: F) -> Self {
        Read {
            query,
            _output: std::marker::PhantomData,
        }
    }
}

impl<F, O> Message for Read<F, O>
where
    O: 'static,
{
    type Result = Result<O, StoreError>;
}

impl<F, O> Handler<Read<F, O>> for PersistenceActor
where
    F: Fn(&mut DbConn) -> Result<O, StoreError> + Send + 'static,
    O: Send + 'static,
{
    type Result = Result<O, StoreError>;

    fn handle(&mut self, read: Read<F, O>, _: &mut Self::Context) -> Self::Result {
        // A connection kept idle here may have died since its last use (a server restart,
        // a terminated backend): a read has no effect, so it runs once more on a fresh one.
        let conn = self.connection()?;
        match (read.query)(conn) {
            Err(e) if e.taints_connection() => self.after_error(&e),
            answer => return answer,
        }
        let conn = self.connection()?;
        let answer = (read.query)(conn);
        if let Err(e) = &answer {
            self.after_error(e);
        }
        answer
    }
}
