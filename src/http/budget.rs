//! The byte budget of large answers in flight. A page of a conversation's messages may
//! hold 100 bodies of up to `server.max_body_bytes` each; forty clients reading such pages
//! at once once took the process from 25 MB to 1.6 GB. Before a page is loaded its size is
//! estimated from the database (the bodies' lengths), and that many bytes, times the copies
//! an answer passes through, are taken from a fixed budget. Once the answer's bytes are
//! handed to its connection only that one copy is left, so it keeps only that much, until
//! its last byte is written: a client that stops reading holds about a quarter of what its
//! page took, not all of it. Readers beyond the budget wait their turn, for `WAIT` at most
//! (then 503 `overloaded`); every answer stays complete.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::{BodySize, MessageBody};
use actix_web::web::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes of answers in flight at most, counted in KiB permits.
pub const BUDGET_BYTES: usize = 96 * 1024 * 1024;
/// Copies a page passes through on its way out (the rows read, the views, the JSON, the
/// socket buffer), and what the allocator keeps besides.
const COPIES: usize = 4;
/// How long a reader waits for room before it is answered 503: a client that stops
/// reading holds its share until its connection ends, and nobody waits forever behind it.
pub const WAIT: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct ReadBudget {
    permits: Arc<Semaphore>,
    total_kib: u32,
    wait: Duration,
}

/// No room in the budget within its wait.
#[derive(Debug, PartialEq, Eq)]
pub struct Busy;

impl Default for ReadBudget {
    fn default() -> Self {
        ReadBudget::new(BUDGET_BYTES, WAIT)
    }
}

impl ReadBudget {
    fn new(bytes: usize, wait: Duration) -> Self {
        let total_kib = u32::try_from(bytes / 1024).unwrap_or(u32::MAX);
        ReadBudget {
            permits: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
            wait,
        }
    }

    /// Waits for room for an answer of about `bytes` (an answer larger than the whole
    /// budget waits for all of it, then goes alone), for `WAIT` at most.
    pub async fn reserve(&self, bytes: i64) -> Result<Option<OwnedSemaphorePermit>, Busy> {
        let kib = usize::try_from(bytes.max(0))
            .unwrap_or(usize::MAX)
            .saturating_mul(COPIES)
            / 1024;
        let kib = u32::try_from(kib)
            .unwrap_or(u32::MAX)
            .clamp(1, self.total_kib);
        let room = self.permits.clone().acquire_many_owned(kib);
        match tokio::time::timeout(self.wait, room).await {
            Ok(permit) => Ok(permit.ok()),
            Err(_) => Err(Busy),
        }
    }
}

/// An answer's body that holds its share of the budget until it is written out.
pub struct BudgetedBody {
    bytes: Option<Bytes>,
    permit: Option<OwnedSemaphorePermit>,
}

impl BudgetedBody {
    pub fn new(bytes: Vec<u8>, permit: Option<OwnedSemaphorePermit>) -> Self {
        BudgetedBody {
            bytes: Some(Bytes::from(bytes)),
            permit,
        }
    }
}

impl MessageBody for BudgetedBody {
    type Error = std::convert::Infallible;

    fn size(&self) -> BodySize {
        BodySize::Sized(self.bytes.as_ref().map_or(0, |b| b.len() as u64))
    }

    fn poll_next(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let bytes = self.bytes.take();
        if let (Some(bytes), Some(permit)) = (&bytes, self.permit.as_mut()) {
            // Handed to the connection: the copies before this one are gone.
            let keep = (bytes.len() / 1024).max(1);
            let spare = permit.num_permits().saturating_sub(keep);
            drop(permit.split(spare));
        }
        Poll::Ready(bytes.map(Ok))
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;

    fn available_kib(budget: &ReadBudget) -> usize {
        budget.permits.available_permits()
    }

    /// A reader finds no room within its wait and is told so, instead of waiting for as
    /// long as another client takes to read its page.
    #[actix_web::test]
    async fn a_reader_waits_for_room_for_a_while_only() {
        let budget = ReadBudget::new(1024 * 1024, Duration::from_millis(50));
        let whole = budget.reserve(10 * 1024 * 1024).await.expect("room");
        assert_eq!(available_kib(&budget), 0);
        let refused = tokio::time::timeout(Duration::from_secs(5), budget.reserve(1)).await;
        assert_eq!(
            refused.map(|r| r.err()),
            Ok(Some(Busy)),
            "still waiting after 5 s"
        );
        drop(whole);
        assert!(budget.reserve(1).await.expect("room again").is_some());
    }

    /// Once its bytes are handed to the connection, an answer keeps only their size of
    /// the budget, until it is dropped (written out, or its connection gone).
    #[test]
    fn an_answer_handed_over_keeps_one_copy_of_its_share() {
        let budget = ReadBudget::new(1024 * 1024, WAIT);
        let page = vec![b'x'; 64 * 1024];
        let permit = actix_web::rt::System::new()
            .block_on(budget.reserve(page.len() as i64))
            .expect("room");
        assert_eq!(available_kib(&budget), 1024 - 4 * 64);
        let mut body = BudgetedBody::new(page, permit);
        let mut cx = Context::from_waker(Waker::noop());
        let chunk = Pin::new(&mut body).poll_next(&mut cx);
        assert!(matches!(chunk, Poll::Ready(Some(Ok(ref b))) if b.len() == 64 * 1024));
        assert_eq!(available_kib(&budget), 1024 - 64);
        drop(body);
        assert_eq!(available_kib(&budget), 1024);
    }
}
