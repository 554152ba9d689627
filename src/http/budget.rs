//! The byte budget of large answers in flight. A page of a conversation's messages may
//! hold 100 bodies of up to `server.max_body_bytes` each; forty clients reading such pages
//! at once once took the process from 25 MB to 1.6 GB. Before a page is loaded its size is
//! estimated from the database (the bodies' lengths), and that many bytes, times the copies
//! an answer passes through, are taken from a fixed budget; they are given back only when
//! the last byte of the answer has been written. Readers beyond the budget wait their turn;
//! every answer stays complete.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use actix_web::body::{BodySize, MessageBody};
use actix_web::web::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes of answers in flight at most, counted in KiB permits.
pub const BUDGET_BYTES: usize = 96 * 1024 * 1024;
/// Copies a page passes through on its way out (the rows read, the views, the JSON, the
/// socket buffer), and what the allocator keeps besides.
const COPIES: usize = 4;

#[derive(Clone)]
pub struct ReadBudget {
    permits: Arc<Semaphore>,
    total_kib: u32,
}

impl Default for ReadBudget {
    fn default() -> Self {
        let total_kib = u32::try_from(BUDGET_BYTES / 1024).unwrap_or(u32::MAX);
        ReadBudget {
            permits: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
        }
    }
}

impl ReadBudget {
    /// Waits for room for an answer of about `bytes` (an answer larger than the whole
    /// budget waits for all of it, then goes alone).
    pub async fn reserve(&self, bytes: i64) -> Option<OwnedSemaphorePermit> {
        let kib = usize::try_from(bytes.max(0))
            .unwrap_or(usize::MAX)
            .saturating_mul(COPIES)
            / 1024;
        let kib = u32::try_from(kib)
            .unwrap_or(u32::MAX)
            .clamp(1, self.total_kib);
        self.permits.clone().acquire_many_owned(kib).await.ok()
    }
}

/// An answer's body that holds its share of the budget until it is written out.
pub struct BudgetedBody {
    bytes: Option<Bytes>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl BudgetedBody {
    pub fn new(bytes: Vec<u8>, permit: Option<OwnedSemaphorePermit>) -> Self {
        BudgetedBody {
            bytes: Some(Bytes::from(bytes)),
            _permit: permit,
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
        Poll::Ready(self.bytes.take().map(Ok))
    }
}
