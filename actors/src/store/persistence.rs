//! `PersistenceActor`: the only code that touches a database connection. It runs on a
//! `SyncArbiter` (blocking Diesel calls never stall an async thread) and handles two kinds
//! of message: `CommitQueued`, which commits the `WriteQueue` batch after batch, and a read.
//!
//! Group commit: callers push onto a `WriteQueue` and only the caller that finds no
//! commit scheduled sends `CommitQueued` to the queue's own writer (one thread). It takes
//! everything queued, commits it as one transaction, and takes again until the queue is
//! empty; whatever arrives while one transaction commits goes into the next. So a queue
//! commits in the order it was filled (the store's lanes are one queue each), a burst
//! pays for one fsync, and a lone write waits for nothing but its own commit. Within a
//! transaction, writes of one kind (a `BulkRunner`'s) share multi-row statements, so a
//! burst also pays for few statements. A thread of its own answers a committed batch's
//! callers, so the writer starts the next at once.

use std::any::Any;
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex};

use actix::{Actor, Addr, Handler, Message, SyncContext};
use tokio::sync::oneshot;

use super::backend::{in_write_transaction, BulkRunner, DbConn, DbPool, Runner, Tx};
use super::StoreError;

/// Bound on one transaction, so a flood never makes one commit slow for everyone in it.
const MAX_BATCH: usize = 2048;
/// Rows in one multi-row statement: under SQLite's 32,766 bound parameters with a
/// message's 20 columns, and PostgreSQL's 65,535.
const BULK_ROWS: usize = 512;
/// Committed batches whose callers are still to be told, before the writer waits for
/// the thread that tells them (it never falls far behind: telling is a channel send).
const BATCHES_TO_ANSWER: usize = 64;

/// Writes waiting for their transaction, and whether a commit is already on its way.
#[derive(Default)]
pub(crate) struct WriteQueue {
    state: Mutex<QueueState>,
}

#[derive(Default)]
struct QueueState {
    waiting: Vec<Box<dyn Job>>,
    commit_scheduled: bool,
    /// The length at which `push` next drops the writes whose callers have gone.
    sweep_at: usize,
}

impl WriteQueue {
    /// The state is a list and a flag that every step leaves consistent, so a panic
    /// elsewhere that poisoned the lock leaves nothing to repair: carry on with it.
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues a write; asks for a commit unless one is already scheduled. While the
    /// database is slow the queue grows, and the callers of its droppable writes (new
    /// messages, claims, lease renewals, ordering marks) give up (`database.timeout_ms`,
    /// or a client hanging up): each time it has doubled, those writes are dropped, so
    /// they take at most about twice the room of those someone still waits for, however
    /// long the database takes. The writes that are kept are attempt records (one per
    /// message a provider holds, whose writer waits for it) and a few an operator or a
    /// webhook caused. The sweep is rare, so its cost is small for each write.
    pub(crate) fn push(&self, job: Box<dyn Job>, persistence: &Addr<PersistenceActor>) {
        if self.enqueue(job) {
            // One message at a time at most, so the unbounded send is bounded here.
            persistence.do_send(CommitQueued);
        }
    }

    /// Queues a write; answers whether a commit must be asked for.
    fn enqueue(&self, job: Box<dyn Job>) -> bool {
        let mut state = self.lock();
        if state.waiting.len() >= state.sweep_at.max(MAX_BATCH) {
            state.waiting.retain(|job| !job.abandoned());
            state.sweep_at = 2 * state.waiting.len();
        }
        state.waiting.push(job);
        !std::mem::replace(&mut state.commit_scheduled, true)
    }

    /// How many writes wait for a batch now.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }

    /// Everything waiting now: when the database refused a whole batch for a reason that
    /// is not the batch's own (a lock, a lost server), the writes queued behind it would
    /// meet the same fault, so they are answered at once instead of waiting in turn.
    fn take_all(&self) -> Vec<Box<dyn Job>> {
        let mut state = self.lock();
        state.sweep_at = 0;
        std::mem::take(&mut state.waiting)
    }

    /// The next batch, or `None` (and no commit scheduled any more) when nothing waits.
    fn take(&self) -> Option<Vec<Box<dyn Job>>> {
        let mut state = self.lock();
        if state.waiting.is_empty() {
            state.commit_scheduled = false;
            return None;
        }
        let take = state.waiting.len().min(MAX_BATCH);
        let batch = state.waiting.drain(..take).collect();
        // The next sweep is due at twice what is left, not at twice a past peak.
        state.sweep_at = state.sweep_at.min(2 * state.waiting.len());
        Some(batch)
    }
}

pub(crate) struct PersistenceActor {
    pool: DbPool,
    conn: Option<DbConn>,
    queue: Arc<WriteQueue>,
    answers: Option<SyncSender<Answers>>,
}

/// A committed batch and how its commit went, for the thread that answers its callers.
type Answers = (Vec<Box<dyn Job>>, Result<(), StoreError>);

impl PersistenceActor {
    pub(crate) fn new(pool: DbPool, queue: Arc<WriteQueue>) -> Self {
        PersistenceActor {
            pool,
            conn: None,
            queue,
            answers: None,
        }
    }

    /// Tells a committed batch's callers on a thread of its own. Why: a lane's one writer
    /// is what its writes wait for, and each answer wakes the caller's thread with a
    /// `write` system call (a tenth of the writer's samples in perf at 64 connections)
    /// and drops the write's data.
    /// The writer starts the next batch at once; answers still go out in commit order.
    /// Should that thread be gone, the writer answers itself.
    fn answer(&mut self, jobs: Vec<Box<dyn Job>>, commit: Result<(), StoreError>) {
        if self.answers.is_none() {
            let (sender, batches) = mpsc::sync_channel::<Answers>(BATCHES_TO_ANSWER);
            let spawned = std::thread::Builder::new()
                .name("store-answers".into())
                .spawn(move || {
                    for (jobs, commit) in batches {
                        for job in jobs {
                            job.finish(commit.clone());
                        }
                    }
                });
            if spawned.is_ok() {
                self.answers = Some(sender);
            }
        }
        let unsent = match &self.answers {
            Some(sender) => sender.send((jobs, commit)).err().map(|unsent| unsent.0),
            None => Some((jobs, commit)),
        };
        if let Some((jobs, commit)) = unsent {
            self.answers = None;
            for job in jobs {
                job.finish(commit.clone());
            }
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
    /// It may be dropped and its caller has stopped waiting (it timed out and answered
    /// an error): nobody was or will be told it was written, so it is not. A client
    /// hanging up does not count: the router waits for the write on its own.
    fn abandoned(&self) -> bool;
    /// Runs the write; an error aborts the transaction it runs in.
    fn apply(&mut self, tx: &mut Tx<'_>) -> Result<(), StoreError>;
    fn finish(self: Box<Self>, commit: Result<(), StoreError>);
    /// Writes of one kind that can share a multi-row statement name that kind.
    fn kind(&self) -> Option<&'static str>;
    /// Runs this write and `others`, all of this one's kind, in shared statements.
    fn apply_with(
        &mut self,
        others: &mut [Box<dyn Job>],
        tx: &mut Tx<'_>,
    ) -> Result<(), StoreError>;
    fn as_any(&mut self) -> &mut dyn Any;
}

pub(crate) struct WriteJob<I, O> {
    input: I,
    run: Runner<I, O>,
    bulk: Option<BulkRunner<I, O>>,
    result: Option<Result<O, StoreError>>,
    reply: oneshot::Sender<Result<O, StoreError>>,
    droppable: bool,
}

impl<I: Send + 'static, O: Send + 'static> WriteJob<I, O> {
    /// `droppable`: the write may be dropped unrun once its caller stops waiting.
    pub(crate) fn boxed(
        input: I,
        run: Runner<I, O>,
        bulk: Option<BulkRunner<I, O>>,
        reply: oneshot::Sender<Result<O, StoreError>>,
        droppable: bool,
    ) -> Box<dyn Job> {
        Box::new(WriteJob {
            input,
            run,
            bulk,
            result: None,
            reply,
            droppable,
        })
    }
}

impl<I: Send + 'static, O: Send + 'static> Job for WriteJob<I, O> {
    fn abandoned(&self) -> bool {
        self.droppable && self.reply.is_closed()
    }

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
        // The caller may have gone since the write was applied; it stands all the same.
        let _ = self.reply.send(answer);
    }

    fn kind(&self) -> Option<&'static str> {
        self.bulk.map(|bulk| bulk.kind)
    }

    fn apply_with(
        &mut self,
        others: &mut [Box<dyn Job>],
        tx: &mut Tx<'_>,
    ) -> Result<(), StoreError> {
        let Some(bulk) = self.bulk else {
            self.apply(tx)?;
            return others.iter_mut().try_for_each(|job| job.apply(tx));
        };
        // One kind is one query, so one input and output type: every `other` is a Self.
        let mut group: Vec<&mut Self> = Vec::with_capacity(others.len() + 1);
        group.push(self);
        for other in others.iter_mut() {
            match other.as_any().downcast_mut::<Self>() {
                Some(job) => group.push(job),
                None => return Err(StoreError::Failed("two queries share a kind".into())),
            }
        }
        for chunk in group.chunks_mut(BULK_ROWS) {
            let inputs: Vec<&I> = chunk.iter().map(|job| &job.input).collect();
            let outputs = bulk.run(tx, &inputs)?;
            if outputs.len() != chunk.len() {
                return Err(StoreError::Failed(format!(
                    "{} answered {} of {} writes",
                    bulk.kind,
                    outputs.len(),
                    chunk.len()
                )));
            }
            for (job, output) in chunk.iter_mut().zip(outputs) {
                job.result = Some(Ok(output));
            }
        }
        Ok(())
    }

    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}

/// Runs a batch's writes inside its transaction, each kind's together, but for those
/// abandoned meanwhile (the transaction itself may have waited for a lock).
fn apply_all(jobs: &mut Vec<Box<dyn Job>>, tx: &mut Tx<'_>) -> Result<(), StoreError> {
    jobs.retain(|job| !job.abandoned());
    // No write in a batch can wait on another's answer (each is answered only after the
    // commit), so every order of them is one their callers could have seen: the writes
    // of one kind go together and share multi-row statements.
    jobs.sort_by_key(|job| job.kind());
    for group in jobs.chunk_by_mut(|a, b| a.kind() == b.kind()) {
        match group.split_first_mut() {
            Some((first, others)) if first.kind().is_some() && !others.is_empty() => {
                first.apply_with(others, tx)?;
            }
            _ => group.iter_mut().try_for_each(|job| job.apply(tx))?,
        }
    }
    Ok(())
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
    /// failure in it. A batch the database rolled back to break a deadlock runs once
    /// more, and fails alone if it is rolled back again. A fault of the database itself
    /// fails the batch and every write queued behind it at once.
    fn commit(&mut self, mut jobs: Vec<Box<dyn Job>>) {
        let conn = match self.connection() {
            Ok(conn) => conn,
            Err(e) => {
                let e = e.clone();
                self.fail_all(jobs, &e);
                return;
            }
        };
        let mut commit = in_write_transaction(conn, |tx| apply_all(&mut jobs, tx));
        // Two batches of two instances that lock the same conversations in different
        // orders (a batch's inserts are several statements) can wait on each other;
        // PostgreSQL rolls one back. Nothing of it was written, so it runs again once
        // before its callers hear of it.
        if matches!(commit, Err(StoreError::RolledBack(_))) {
            commit = match self.connection() {
                Ok(conn) => in_write_transaction(conn, |tx| apply_all(&mut jobs, tx)),
                Err(e) => Err(e),
            };
        }
        match commit {
            // A deadlock is this batch's and another's, not the database's: the writes
            // queued behind it are not failed with it.
            Err(e @ StoreError::RolledBack(_)) => {
                self.after_error(&e);
                self.answer(jobs, Err(e));
            }
            Err(e) if e.is_per_write() && jobs.len() > 1 => {
                for mut job in jobs {
                    if job.abandoned() {
                        continue;
                    }
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
            commit => self.answer(jobs, commit),
        }
    }

    fn fail_all(&mut self, jobs: Vec<Box<dyn Job>>, e: &StoreError) {
        self.after_error(e);
        for job in jobs.into_iter().chain(self.queue.take_all()) {
            job.finish(Err(e.clone()));
        }
    }
}

/// Ends one thread's use of the database for good, at a graceful stop: its connection
/// goes back to the pool, the sender hears so, and the thread takes no message again.
/// Why: on PostgreSQL the process crashed now and then after its last log line (SIGABRT
/// once, SIGSEGV once in CI), most likely a query still running on one of these threads
/// while the C runtime tore libpq's TLS state down at exit. A parked thread leaves a
/// second `Close` sent to its arbiter for another of the arbiter's threads.
pub(crate) struct Close(pub(crate) oneshot::Sender<()>);

impl Message for Close {
    type Result = ();
}

impl Handler<Close> for PersistenceActor {
    type Result = ();

    fn handle(&mut self, close: Close, _: &mut Self::Context) {
        self.conn = None;
        let _ = close.0.send(());
        // Until the process ends, which does not wait for this thread.
        loop {
            std::thread::park();
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use diesel::Connection;
    use tokio::sync::oneshot;

    use super::*;

    /// A write for these tests: its number, and the log every run appends to.
    struct Probe {
        n: u32,
        log: Arc<Mutex<Vec<String>>>,
    }

    fn note(probe: &Probe, entry: String) {
        probe.log.lock().expect("log").push(entry);
    }

    fn one(probe: &Probe) -> Result<u32, StoreError> {
        note(probe, format!("one {}", probe.n));
        Ok(probe.n * 10)
    }

    fn many(probes: &[&Probe]) -> Result<Vec<u32>, StoreError> {
        let ns: Vec<String> = probes.iter().map(|p| p.n.to_string()).collect();
        note(probes[0], format!("many {}", ns.join(",")));
        Ok(probes.iter().map(|p| p.n * 10).collect())
    }

    fn short(probes: &[&Probe]) -> Result<Vec<u32>, StoreError> {
        Ok(probes.iter().skip(1).map(|p| p.n).collect())
    }

    fn runner() -> Runner<Probe, u32> {
        Runner {
            sqlite: |_, p| one(p),
            postgres: |_, p| one(p),
        }
    }

    fn bulk(kind: &'static str) -> BulkRunner<Probe, u32> {
        BulkRunner {
            kind,
            sqlite: |_, ps| many(ps),
            postgres: |_, ps| many(ps),
        }
    }

    type Reply = oneshot::Receiver<Result<u32, StoreError>>;

    fn job(
        n: u32,
        kind: Option<BulkRunner<Probe, u32>>,
        log: &Arc<Mutex<Vec<String>>>,
    ) -> (Box<dyn Job>, Reply) {
        job_running(n, runner(), kind, log)
    }

    /// A write that runs whether or not its caller still waits.
    fn job_kept(n: u32, log: &Arc<Mutex<Vec<String>>>) -> (Box<dyn Job>, Reply) {
        probe_job(n, runner(), None, log, false)
    }

    fn job_running(
        n: u32,
        run: Runner<Probe, u32>,
        kind: Option<BulkRunner<Probe, u32>>,
        log: &Arc<Mutex<Vec<String>>>,
    ) -> (Box<dyn Job>, Reply) {
        probe_job(n, run, kind, log, true)
    }

    fn probe_job(
        n: u32,
        run: Runner<Probe, u32>,
        kind: Option<BulkRunner<Probe, u32>>,
        log: &Arc<Mutex<Vec<String>>>,
        droppable: bool,
    ) -> (Box<dyn Job>, Reply) {
        let (reply, answer) = oneshot::channel();
        let probe = Probe {
            n,
            log: log.clone(),
        };
        (WriteJob::boxed(probe, run, kind, reply, droppable), answer)
    }

    fn run(mut jobs: Vec<Box<dyn Job>>) -> Result<(), StoreError> {
        let mut conn = diesel::sqlite::SqliteConnection::establish(":memory:").expect("open");
        let applied = apply_all(&mut jobs, &mut Tx::Sqlite(&mut conn));
        for job in jobs {
            job.finish(applied.clone());
        }
        applied
    }

    /// Writes of one kind share one multi-row call, wherever they stood in the batch;
    /// a kind alone, and writes of no kind, run one by one; every caller gets its own
    /// answer back.
    #[test]
    fn a_batch_runs_each_kind_together_and_answers_each_write() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let kinds = [
            Some(bulk("a")),
            None,
            Some(bulk("a")),
            Some(bulk("b")),
            Some(bulk("a")),
            None,
        ];
        let (jobs, replies): (Vec<_>, Vec<_>) = kinds
            .into_iter()
            .enumerate()
            .map(|(n, kind)| job(u32::try_from(n).expect("small"), kind, &log))
            .unzip();
        run(jobs).expect("applied");
        let mut log = log.lock().expect("log").clone();
        log.sort();
        assert_eq!(log, ["many 0,2,4", "one 1", "one 3", "one 5"]);
        for (n, mut reply) in (0u32..).zip(replies) {
            assert_eq!(reply.try_recv().expect("answered"), Ok(n * 10));
        }
    }

    /// A droppable write (a new message) whose caller stopped waiting before its batch
    /// ran is not run: its caller answered an error (or nobody), so nobody may learn it
    /// was written. Any other write runs all the same: others may wait on it.
    #[test]
    fn a_new_message_whose_caller_has_gone_is_not_run() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (mut jobs, mut replies): (Vec<_>, Vec<_>) = (0..4)
            .map(|n| job(n, (n % 2 == 0).then(|| bulk("a")), &log))
            .unzip();
        let (kept, kept_reply) = job_kept(4, &log);
        jobs.push(kept);
        drop(kept_reply);
        drop(replies.remove(2));
        drop(replies.remove(1));
        run(jobs).expect("applied");
        let mut log = log.lock().expect("log").clone();
        log.sort();
        assert_eq!(
            log,
            ["one 0", "one 3", "one 4"],
            "the abandoned 1 and 2 never ran; 4, not droppable, did"
        );
        for (n, mut reply) in [0u32, 3].into_iter().zip(replies) {
            assert_eq!(reply.try_recv().expect("answered"), Ok(n * 10));
        }
    }

    /// While no batch is taken (a stalled database), the queue keeps only about twice
    /// the writes someone still waits for, however many were abandoned.
    #[test]
    fn a_stalled_queue_drops_the_writes_nobody_waits_for() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let queue = WriteQueue::default();
        let mut kept = Vec::new();
        for n in 0..20_000u32 {
            let (write, reply) = job(n, Some(bulk("a")), &log);
            queue.enqueue(write);
            // One caller in a hundred still waits; the rest timed out.
            if n % 100 == 0 {
                kept.push(reply);
            }
            assert!(
                queue.waiting() <= 2 * MAX_BATCH + 1,
                "{n}: {}",
                queue.waiting()
            );
        }
        let live = queue.take_all();
        let mut waiting: Vec<u32> = Vec::new();
        for mut job in live {
            if !job.abandoned() {
                let probe = job.as_any().downcast_mut::<WriteJob<Probe, u32>>();
                waiting.push(probe.expect("a probe").input.n);
            }
        }
        let wanted: Vec<u32> = (0..20_000).step_by(100).collect();
        assert_eq!(
            waiting, wanted,
            "every write still waited for is kept, in order"
        );
    }

    /// The sweep's threshold follows the queue down: after a peak has been committed, the
    /// next stall is swept at `MAX_BATCH` again, not at twice the old peak.
    #[test]
    fn the_sweep_forgets_a_past_peak() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let queue = WriteQueue::default();
        let mut waiting = Vec::new();
        for n in 0..20_000u32 {
            let (write, reply) = job(n, Some(bulk("a")), &log);
            queue.enqueue(write);
            waiting.push(reply);
        }
        while queue.take().is_some() {}
        drop(waiting);
        for n in 0..5_000u32 {
            let (write, _gone) = job(n, Some(bulk("a")), &log);
            queue.enqueue(write);
            assert!(queue.waiting() <= MAX_BATCH + 1, "{n}: {}", queue.waiting());
        }
    }

    /// A statement has a bound on its parameters: a large batch is split.
    #[test]
    fn a_large_batch_of_one_kind_is_split_into_bounded_statements() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let count = u32::try_from(BULK_ROWS + 3).expect("small");
        let (jobs, _replies): (Vec<_>, Vec<_>) =
            (0..count).map(|n| job(n, Some(bulk("a")), &log)).unzip();
        run(jobs).expect("applied");
        let sizes: Vec<usize> = log
            .lock()
            .expect("log")
            .iter()
            .map(|entry| entry.split(',').count())
            .collect();
        assert_eq!(sizes, [BULK_ROWS, 3]);
    }

    /// Fails its first run as PostgreSQL fails the transaction it picks to break a
    /// deadlock; succeeds after.
    fn deadlocked_once(probe: &Probe) -> Result<u32, StoreError> {
        let runs = {
            let mut log = probe.log.lock().expect("log");
            log.push(format!("one {}", probe.n));
            log.len()
        };
        if runs == 1 {
            return Err(StoreError::RolledBack("deadlock detected".into()));
        }
        Ok(probe.n * 10)
    }

    /// A batch the database rolled back to break a deadlock runs again, and its caller
    /// hears only of the second run.
    #[test]
    fn a_batch_rolled_back_to_break_a_deadlock_runs_again() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("retry.db").display());
        let pool = super::super::backend::open(&url, 1, 1, std::time::Duration::from_secs(10))
            .expect("open");
        let mut writer = PersistenceActor::new(pool, Arc::new(WriteQueue::default()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let retried = Runner {
            sqlite: |_, p| deadlocked_once(p),
            postgres: |_, p| deadlocked_once(p),
        };
        let (batch, answer) = job_running(7, retried, None, &log);
        writer.commit(vec![batch]);
        assert_eq!(answer.blocking_recv().expect("answered"), Ok(70));
        assert_eq!(log.lock().expect("log").len(), 2, "run once more");

        // Rolled back every time: run twice, no more, and the caller hears why.
        let log = Arc::new(Mutex::new(Vec::new()));
        let always = Runner {
            sqlite: |_, p| always_deadlocked(p),
            postgres: |_, p| always_deadlocked(p),
        };
        let (batch, answer) = job_running(8, always, None, &log);
        // A write queued behind the batch is not the deadlock's: it waits for its own.
        let (queued, mut queued_answer) = job(9, None, &log);
        writer.queue.lock().waiting.push(queued);
        writer.commit(vec![batch]);
        assert!(matches!(
            answer.blocking_recv().expect("answered"),
            Err(StoreError::RolledBack(_))
        ));
        assert_eq!(
            queued_answer.try_recv(),
            Err(oneshot::error::TryRecvError::Empty),
            "the queued write was failed with the batch"
        );
        assert_eq!(
            log.lock().expect("log").len(),
            2,
            "run once more, and only once"
        );
    }

    fn always_deadlocked(probe: &Probe) -> Result<u32, StoreError> {
        note(probe, format!("one {}", probe.n));
        Err(StoreError::RolledBack("deadlock detected".into()))
    }

    /// A multi-row call that does not answer every write fails the batch rather than
    /// leaving a caller without its answer.
    #[test]
    fn a_bulk_answer_short_of_its_writes_fails_the_batch() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let short = BulkRunner {
            kind: "a",
            sqlite: |_, ps| short(ps),
            postgres: |_, ps| short(ps),
        };
        let (jobs, replies): (Vec<_>, Vec<_>) = (0..3).map(|n| job(n, Some(short), &log)).unzip();
        assert!(matches!(run(jobs), Err(StoreError::Failed(_))));
        for mut reply in replies {
            assert!(reply.try_recv().expect("answered").is_err());
        }
    }
}
