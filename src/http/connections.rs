//! The connection watch: a bound on how long a client may hold a connection without a
//! request under way, and on how long one request may hold it, where actix-http sets
//! none. Its head timeout covers only a connection's first request: once one response is
//! out, a client that sends the first bytes of a second request head and stops held the
//! connection, its buffer and its worker's slot for ever (a slowloris needs only that),
//! and no timer covers a response the client stops reading.
//!
//! Each connection gets a watch at accept: its own handle on the socket (a duplicate of
//! the descriptor, so it can never reach another connection's socket once this one is
//! closed) and a task on the same worker that shuts the socket down once a limit is
//! passed, which ends the connection in actix-http as a client hang-up would. The
//! `observe` middleware marks each request from its start until its response body has
//! been written whole (or dropped). The watch ends when actix-http drops the connection.

use std::any::Any;
use std::cell::Cell;
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix_web::body::{BodySize, MessageBody};
use actix_web::dev::Extensions;
use actix_web::web::Bytes;
use tokio::sync::{oneshot, Notify};

/// No request under way for this long (after the last response, or from the accept): the
/// connection ends. actix-http closes an idle keep-alive connection after 5 s and gives a
/// first request head 5 s, so only a stalled later head meets this.
pub const IDLE_LIMIT: Duration = Duration::from_secs(10);

/// One request under way for this long (its handler, then writing its answer): the
/// connection ends. Every handler ends well before (a body has 10 s, a large page waits
/// at most 60 s for room, the database answers or times out), so only a client that stops
/// reading its answer meets this; one still reading a 25 MB page then reads at least
/// 85 KB/s.
pub const BUSY_LIMIT: Duration = Duration::from_secs(300);

/// What the middleware tells the watch of one connection; kept in the connection's data.
pub struct ConnectionWatch {
    state: Rc<WatchState>,
}

struct WatchState {
    under_way: Cell<u32>,
    /// When `under_way` last went to or from 0 (or the accept).
    since: Cell<Instant>,
    /// The watch sleeps to the busy limit: the end of the last request under way must
    /// wake it, or the connection could idle for the rest of that limit, not 10 s. (A
    /// request that starts while it sleeps to the idle limit needs nothing: the watch
    /// looks again before it acts.) So a busy connection wakes its watch about once per
    /// idle limit, not twice per request.
    sleeping_busy: Cell<bool>,
    changed: Rc<Notify>,
    /// Dropped with the connection's data: the watch task then ends at once, closing its
    /// handle so the socket closes when actix-http closes its own.
    _alive: oneshot::Sender<()>,
}

/// Holds a request as under way until dropped.
pub struct UnderWay {
    state: Rc<WatchState>,
}

impl ConnectionWatch {
    /// For the `HttpServer::on_connect` hook: a watch for each TCP connection. Should the
    /// descriptor not duplicate (out of descriptors), the connection is served unwatched.
    pub fn on_connect(connection: &dyn Any, data: &mut Extensions) {
        let Some(stream) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() else {
            return;
        };
        let Ok(handle) = stream.as_fd().try_clone_to_owned() else {
            return;
        };
        let (alive, gone) = oneshot::channel();
        let changed = Rc::new(Notify::new());
        let state = Rc::new(WatchState {
            under_way: Cell::new(0),
            since: Cell::new(Instant::now()),
            sleeping_busy: Cell::new(false),
            changed: changed.clone(),
            _alive: alive,
        });
        actix_web::rt::spawn(watch(
            Rc::downgrade(&state),
            changed,
            std::net::TcpStream::from(handle),
            gone,
        ));
        data.insert(ConnectionWatch { state });
    }

    /// Marks a request under way until the returned value is dropped.
    pub fn start(&self) -> UnderWay {
        let state = &self.state;
        if state.under_way.get() == 0 {
            state.since.set(Instant::now());
        }
        state.under_way.set(state.under_way.get() + 1);
        UnderWay {
            state: state.clone(),
        }
    }
}

impl Drop for UnderWay {
    fn drop(&mut self) {
        let state = &self.state;
        let left = state.under_way.get().saturating_sub(1);
        state.under_way.set(left);
        if left == 0 {
            state.since.set(Instant::now());
            if state.sleeping_busy.replace(false) {
                state.changed.notify_one();
            }
        }
    }
}

/// How long from `since` until the connection's limit, given how many requests are under
/// way; zero once it has passed.
fn time_left(under_way: u32, since: Instant, now: Instant) -> Duration {
    let limit = if under_way == 0 {
        IDLE_LIMIT
    } else {
        BUSY_LIMIT
    };
    limit.saturating_sub(now.saturating_duration_since(since))
}

async fn watch(
    state: std::rc::Weak<WatchState>,
    changed: Rc<Notify>,
    socket: std::net::TcpStream,
    mut gone: oneshot::Receiver<()>,
) {
    loop {
        let Some(current) = state.upgrade() else {
            return;
        };
        let under_way = current.under_way.get();
        let left = time_left(under_way, current.since.get(), Instant::now());
        current.sleeping_busy.set(under_way > 0);
        drop(current);
        if left.is_zero() {
            // Both ways: actix-http reads the end of the stream and drops the connection.
            let _ = socket.shutdown(Shutdown::Both);
            return;
        }
        tokio::select! {
            _ = &mut gone => return,
            () = changed.notified() => {}
            () = tokio::time::sleep(left) => {}
        }
    }
}

/// A response body that keeps its request under way until it has been written whole.
pub struct WatchedBody<B> {
    body: B,
    _under_way: Option<UnderWay>,
}

impl<B> WatchedBody<B> {
    pub fn new(body: B, under_way: Option<UnderWay>) -> Self {
        WatchedBody {
            body,
            _under_way: under_way,
        }
    }
}

impl<B: MessageBody + Unpin> MessageBody for WatchedBody<B> {
    type Error = B::Error;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Bytes, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_connection_has_its_limit_and_a_busy_one_a_longer_one() {
        let start = Instant::now();
        let later = |secs| start + Duration::from_secs(secs);
        assert_eq!(time_left(0, start, start), IDLE_LIMIT);
        assert_eq!(time_left(0, start, later(4)), Duration::from_secs(6));
        assert!(time_left(0, start, later(10)).is_zero());
        assert!(time_left(0, start, later(3600)).is_zero());
        assert_eq!(time_left(1, start, later(10)), Duration::from_secs(290));
        assert!(time_left(2, start, later(300)).is_zero());
        // A clock read before `since` (another thread's `Instant`) is no time at all.
        assert_eq!(time_left(0, later(5), start), IDLE_LIMIT);
    }
}
