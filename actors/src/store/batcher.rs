//! `WriteBatcher`: group commit. It keeps at most one batch in the persistence actor at a
//! time; whatever arrives while that batch commits waits here and goes out as the next
//! batch. Under light load a batch is one write (no added latency); under heavy load the
//! batch grows to what is waiting, so the fsync per write shrinks with the load.

use actix::{Actor, ActorFutureExt, Addr, AsyncContext, Context, Handler, Message, WrapFuture};

use super::persistence::{CommitBatch, Job, PersistenceActor};

/// Bound on one transaction, so a flood never makes one commit slow for everyone in it.
const MAX_BATCH: usize = 2048;

pub(crate) struct WriteBatcher {
    persistence: Addr<PersistenceActor>,
    waiting: Vec<Box<dyn Job>>,
    in_flight: bool,
}

impl WriteBatcher {
    pub(crate) fn new(persistence: Addr<PersistenceActor>) -> Self {
        WriteBatcher {
            persistence,
            waiting: Vec::new(),
            in_flight: false,
        }
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.in_flight || self.waiting.is_empty() {
            return;
        }
        let take = self.waiting.len().min(MAX_BATCH);
        let batch: Vec<Box<dyn Job>> = self.waiting.drain(..take).collect();
        self.in_flight = true;
        let commit = self.persistence.send(CommitBatch(batch));
        ctx.spawn(commit.into_actor(self).map(|_, batcher, ctx| {
            // On a mailbox error the batch was dropped unrun; its callers see their reply
            // channel close and report the write as not stored.
            batcher.in_flight = false;
            batcher.flush(ctx);
        }));
    }
}

impl Actor for WriteBatcher {
    type Context = Context<Self>;
}

/// A write to join the next batch. The caller awaits the job's own reply channel.
pub(crate) struct Enqueue(pub(crate) Box<dyn Job>);

impl Message for Enqueue {
    type Result = ();
}

impl Handler<Enqueue> for WriteBatcher {
    type Result = ();

    fn handle(&mut self, Enqueue(job): Enqueue, ctx: &mut Self::Context) {
        self.waiting.push(job);
        self.flush(ctx);
    }
}
