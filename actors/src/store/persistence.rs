//! `PersistenceActor`: the only code that touches a database connection. It runs on a
//! `SyncArbiter` (blocking Diesel calls never stall an async thread) and handles two kinds
//! of message: a batch of writes committed as one transaction, and a read.

use actix::{Actor, Handler, Message, SyncContext};
use diesel::sqlite::SqliteConnection;
use tokio::sync::oneshot;

use super::{in_write_transaction, SqlitePool, StoreError};

pub(crate) struct PersistenceActor {
    pool: SqlitePool,
}

impl PersistenceActor {
    pub(crate) fn new(pool: SqlitePool) -> Self {
        PersistenceActor { pool }
    }

    fn connection(
        &self,
    ) -> Result<
        diesel::r2d2::PooledConnection<diesel::r2d2::ConnectionManager<SqliteConnection>>,
        StoreError,
    > {
        self.pool
            .get()
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }
}

impl Actor for PersistenceActor {
    type Context = SyncContext<Self>;
}

/// One write waiting for its batch: it runs inside the batch's transaction under its own
/// savepoint (so one failed write does not undo its neighbours) and answers only once the
/// whole batch has committed, or failed.
pub(crate) trait Job: Send {
    fn apply(&mut self, conn: &mut SqliteConnection);
    fn finish(self: Box<Self>, commit: Result<(), StoreError>);
}

pub(crate) struct WriteJob<I, O> {
    input: I,
    run: fn(&mut SqliteConnection, &I) -> Result<O, StoreError>,
    result: Option<Result<O, StoreError>>,
    reply: oneshot::Sender<Result<O, StoreError>>,
}

impl<I: Send + 'static, O: Send + 'static> WriteJob<I, O> {
    pub(crate) fn boxed(
        input: I,
        run: fn(&mut SqliteConnection, &I) -> Result<O, StoreError>,
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
    fn apply(&mut self, conn: &mut SqliteConnection) {
        let (input, run) = (&self.input, self.run);
        self.result = Some(diesel::Connection::transaction(conn, |conn| {
            run(conn, input)
        }));
    }

    fn finish(self: Box<Self>, commit: Result<(), StoreError>) {
        let answer = match (commit, self.result) {
            (Ok(()), Some(result)) => result,
            (Ok(()), None) => Err(StoreError::Unavailable("write was not applied".into())),
            (Err(e), _) => Err(e),
        };
        // The caller may have gone (client hung up); the write stands either way.
        let _ = self.reply.send(answer);
    }
}

/// A batch of writes for one transaction.
pub(crate) struct CommitBatch(pub(crate) Vec<Box<dyn Job>>);

impl Message for CommitBatch {
    type Result = ();
}

impl Handler<CommitBatch> for PersistenceActor {
    type Result = ();

    fn handle(&mut self, CommitBatch(mut jobs): CommitBatch, _: &mut Self::Context) {
        let commit = self.connection().and_then(|mut conn| {
            in_write_transaction(&mut conn, |conn| {
                for job in jobs.iter_mut() {
                    job.apply(conn);
                }
                Ok(())
            })
        });
        for job in jobs {
            job.finish(commit.clone());
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
    F: FnOnce(&mut SqliteConnection) -> Result<O, StoreError> + Send + 'static,
    O: Send + 'static,
{
    type Result = Result<O, StoreError>;

    fn handle(&mut self, read: Read<F, O>, _: &mut Self::Context) -> Self::Result {
        let mut conn = self.connection()?;
        (read.query)(&mut conn)
    }
}
