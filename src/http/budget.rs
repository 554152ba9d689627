//! The byte budget of large answers in flight. A page of a conversation's messages may
//! hold 100 bodies of up to `server.max_body_bytes` each; forty clients reading such pages
//! at once once took the process from 25 MB to 1.6 GB. Before a page or a message is
//! loaded, room is taken from a fixed budget for its bodies and attachments, times the
//! copies an answer passes through: first a guess, and when the database finds the answer
//! larger than the room (it reads the sizes with or before the rows, in the same snapshot
//! as the answer) it loads no more (of a page nothing, of a message its own row) and says
//! how large, and the reader takes that much room and reads again.
//! Once the answer's bytes are handed to its connection only that one copy is left, so it
//! keeps only that much, until its last byte is written: a client that stops reading holds
//! about a quarter of what its page took, not all of it. Readers beyond the budget wait
//! their turn, for `WAIT` at most (then 503 `overloaded`); every answer stays complete.
//!
//! Small answers have a lane of their own: the semaphore is first come, first served, so a
//! reader of a few KB queued behind one waiting for 80 MB would wait as long as it does.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::{BodySize, MessageBody};
use actix_web::web::Bytes;
use messaging_actors::store::Bounded;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Bytes of answers in flight at most, counted in KiB permits: both lanes together.
pub const BUDGET_BYTES: usize = 96 * 1024 * 1024;
/// The small answers' lane, out of `BUDGET_BYTES`.
const SMALL_LANE_BYTES: usize = 16 * 1024 * 1024;
/// The most room (copies included) an answer may take in the small lane.
const SMALL_MAX_KIB: u32 = 1024;
/// Copies a page passes through on its way out (the rows read, the views, the JSON, the
/// socket buffer), and what the allocator keeps besides.
const COPIES: usize = 4;
/// How long a reader waits for room before it is answered 503: a client that stops
/// reading holds its share until its connection ends, and nobody waits forever behind it.
pub const WAIT: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct ReadBudget {
    small: Lane,
    large: Lane,
    wait: Duration,
}

#[derive(Clone)]
struct Lane {
    permits: Arc<Semaphore>,
    total_kib: u32,
}

impl Lane {
    fn new(bytes: usize) -> Self {
        let total_kib = u32::try_from(bytes / 1024).unwrap_or(u32::MAX).max(1);
        Lane {
            permits: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
        }
    }
}

/// No room in the budget within its wait.
#[derive(Debug, PartialEq, Eq)]
pub struct Busy;

/// Room taken for one answer, given back as the answer is written out (`BudgetedBody`),
/// or when it is dropped.
pub struct Room {
    permit: Option<OwnedSemaphorePermit>,
    fits: Option<i64>,
}

impl Room {
    /// The bodies' and attachments' bytes this room holds; `None` when it is a whole lane,
    /// which any answer fits (it goes alone).
    pub fn fits(&self) -> Option<i64> {
        self.fits
    }
}

impl Default for ReadBudget {
    fn default() -> Self {
        ReadBudget::new(SMALL_LANE_BYTES, BUDGET_BYTES - SMALL_LANE_BYTES, WAIT)
    }
}

impl ReadBudget {
    fn new(small_bytes: usize, large_bytes: usize, wait: Duration) -> Self {
        ReadBudget {
            small: Lane::new(small_bytes),
            large: Lane::new(large_bytes),
            wait,
        }
    }

    /// Waits for room for an answer of `bytes` of bodies and attachments (an answer
    /// larger than the large lane waits for all of it, then goes alone), for `WAIT` at most.
    #[cfg(test)]
    async fn reserve(&self, bytes: i64) -> Result<Room, Busy> {
        self.reserve_by(bytes, Instant::now() + self.wait).await
    }

    /// `reserve`, waiting until `deadline` at most.
    async fn reserve_by(&self, bytes: i64, deadline: Instant) -> Result<Room, Busy> {
        // Rounded up, so that the room fits every byte it was taken for.
        let wanted = usize::try_from(bytes.max(0))
            .unwrap_or(usize::MAX)
            .saturating_mul(COPIES)
            .div_ceil(1024);
        let wanted = u32::try_from(wanted).unwrap_or(u32::MAX).max(1);
        let lane = if wanted <= SMALL_MAX_KIB.min(self.small.total_kib) {
            &self.small
        } else {
            &self.large
        };
        let kib = wanted.min(lane.total_kib);
        let fits = (wanted <= lane.total_kib).then(|| i64::from(kib) * 1024 / COPIES as i64);
        let room = lane.permits.clone().acquire_many_owned(kib);
        match tokio::time::timeout_at(deadline, room).await {
            Ok(permit) => Ok(Room {
                permit: permit.ok(),
                fits,
            }),
            Err(_) => Err(Busy),
        }
    }
}

/// Reads an answer within room taken from `budget`: first `guess` bytes of bodies and
/// attachments, then, if the database finds the answer larger, as many as it holds.
/// `read` gets the bytes the room fits (`None`: any) and the room to keep until its read
/// is over; `None` from it is an answer that does not exist. The rounds together wait
/// for room for `WAIT` at most.
pub async fn read_within<T, E, F, Fut>(
    budget: &ReadBudget,
    guess: i64,
    mut read: F,
) -> Result<Option<(T, Room)>, E>
where
    E: From<Busy>,
    F: FnMut(Option<i64>, Room) -> Fut,
    Fut: std::future::Future<Output = Result<(Option<Bounded<T>>, Room), E>>,
{
    let deadline = Instant::now() + budget.wait;
    let mut room = budget.reserve_by(guess, deadline).await?;
    for round in 0.. {
        let fits = room.fits();
        let (found, room_back) = read(fits, room).await?;
        match found {
            None => return Ok(None),
            Some(Bounded::Loaded(answer)) => return Ok(Some((answer, room_back))),
            Some(Bounded::Larger(bytes)) => {
                drop(room_back);
                // A page that keeps growing between reads (messages arriving with older
                // timestamps) gets the whole lane after a few rounds: it fits any answer.
                let bytes = if round < 2 { bytes } else { i64::MAX };
                room = budget.reserve_by(bytes, deadline).await?;
            }
        }
    }
    unreachable!("the rounds end by returning")
}

/// An answer's body that holds its share of the budget until it is written out.
pub struct BudgetedBody {
    bytes: Option<Bytes>,
    permit: Option<OwnedSemaphorePermit>,
}

impl BudgetedBody {
    pub fn new(bytes: Vec<u8>, room: Room) -> Self {
        BudgetedBody {
            bytes: Some(Bytes::from(bytes)),
            permit: room.permit,
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

    const MIB: usize = 1024 * 1024;

    fn available_kib(lane: &Lane) -> usize {
        lane.permits.available_permits()
    }

    /// A reader finds no room within its wait and is told so, instead of waiting for as
    /// long as another client takes to read its page.
    #[actix_web::test]
    async fn a_reader_waits_for_room_for_a_while_only() {
        let budget = ReadBudget::new(MIB, 4 * MIB, Duration::from_millis(50));
        let whole = budget.reserve(40 * MIB as i64).await.expect("room");
        assert_eq!(whole.fits(), None, "larger than the lane: it goes alone");
        assert_eq!(available_kib(&budget.large), 0);
        let refused = tokio::time::timeout(Duration::from_secs(5), budget.reserve(MIB as i64));
        assert_eq!(
            refused.await.map(|r| r.err()),
            Ok(Some(Busy)),
            "still waiting after 5 s"
        );
        drop(whole);
        let again = budget.reserve(MIB as i64).await.expect("room again");
        assert_eq!(again.fits(), Some(MIB as i64));
    }

    /// A small answer is not queued behind a large one waiting for the whole large lane.
    #[actix_web::test]
    async fn a_small_answer_does_not_wait_behind_a_large_one() {
        let budget = ReadBudget::new(MIB, 4 * MIB, Duration::from_secs(60));
        let held = budget.reserve(3 * MIB as i64 / 4).await.expect("room");
        let waiting = {
            let budget = budget.clone();
            actix_web::rt::spawn(async move { budget.reserve(4 * MIB as i64).await.is_ok() })
        };
        // Once the large reader waits, the lane has nothing left to give.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while available_kib(&budget.large) != 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the large reader queued"
            );
            actix_web::rt::task::yield_now().await;
        }
        let small = tokio::time::timeout(Duration::from_secs(5), budget.reserve(2048)).await;
        let small = small.expect("not queued").expect("room");
        assert_eq!(small.fits(), Some(2048));
        drop(held);
        assert!(waiting.await.expect("task"), "the large reader's turn came");
    }

    /// Room taken for a number of bytes fits all of them, whatever the KiB rounding.
    #[actix_web::test]
    async fn room_taken_for_some_bytes_fits_them() {
        let budget = ReadBudget::new(MIB, 4 * MIB, WAIT);
        for bytes in [
            0,
            1,
            255,
            257,
            20_000,
            262_145,
            999_999,
            3 * MIB as i64 / 4 + 1,
        ] {
            let room = budget.reserve(bytes).await.expect("room");
            let fits = room.fits().expect("within a lane");
            assert!(fits >= bytes, "{bytes} bytes, room for {fits}");
        }
    }

    /// An answer larger than the first guess is read twice: once to learn its size, once
    /// within room for it.
    #[actix_web::test]
    async fn an_answer_larger_than_the_guess_is_read_again_once() {
        let budget = ReadBudget::new(MIB, 4 * MIB, WAIT);
        let size = 20_001;
        let mut reads = Vec::new();
        let answer = read_within::<_, Busy, _, _>(&budget, 16 * 1024, |fits, room| {
            reads.push(fits);
            let found = match fits {
                Some(fits) if fits < size => Bounded::Larger(size),
                _ => Bounded::Loaded("answer"),
            };
            std::future::ready(Ok((Some(found), room)))
        })
        .await
        .expect("room");
        assert_eq!(answer.map(|(a, _)| a), Some("answer"));
        assert_eq!(reads.len(), 2, "{reads:?}");
    }

    /// Once its bytes are handed to the connection, an answer keeps only their size of
    /// the budget, until it is dropped (written out, or its connection gone).
    #[test]
    fn an_answer_handed_over_keeps_one_copy_of_its_share() {
        let budget = ReadBudget::new(MIB, 4 * MIB, WAIT);
        let page = vec![b'x'; 64 * 1024];
        let room = actix_web::rt::System::new()
            .block_on(budget.reserve(page.len() as i64))
            .expect("room");
        assert_eq!(available_kib(&budget.small), 1024 - 4 * 64);
        let mut body = BudgetedBody::new(page, room);
        let mut cx = Context::from_waker(Waker::noop());
        let chunk = Pin::new(&mut body).poll_next(&mut cx);
        assert!(matches!(chunk, Poll::Ready(Some(Ok(ref b))) if b.len() == 64 * 1024));
        assert_eq!(available_kib(&budget.small), 1024 - 64);
        drop(body);
        assert_eq!(available_kib(&budget.small), 1024);
    }
}
