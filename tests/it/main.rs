//! The end-to-end suite: the real `messaging-service` binary, started on port 0 with a
//! database of its own per test (SQLite, or PostgreSQL under
//! `MESSAGING_TEST_BACKEND=postgres`). One test crate, so one build and one link, with one
//! set of fixtures in `helpers`; one module per area. Run one area with
//! `cargo test -p messaging-service --test it dispatch::`.

mod helpers;

mod access;
mod api;
mod breaker;
mod callbacks;
mod db_faults;
mod dispatch;
mod faults;
mod instances;
mod lifecycle;
mod monitoring;
mod providers;
mod schema;
