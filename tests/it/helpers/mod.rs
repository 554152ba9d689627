//! The suite's one set of fixtures, shared by every module of the `it` crate.
//! Waiting is always polling against a deadline, never a fixed sleep.

mod app;
mod database;
mod fixtures;
mod skip;

pub use app::*;
pub use database::*;
pub use fixtures::*;
pub use skip::*;
