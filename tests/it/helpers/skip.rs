//! Skip guards. A test that cannot run here says `SKIPPED` on stderr and returns; under
//! `CI=true` a missing tool or server is a failure instead (`.ci/run` provides them all).

use std::process::{Command, Stdio};

use super::{on_postgres, PgDatabase};

/// Says loudly that `test` is skipped and why; under `CI=true` that is a failure.
pub fn skipped(test: &str, why: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} may not be skipped in CI (.ci/run provides what it needs): {why}"
    );
    eprintln!("SKIPPED {test}: {why}");
}

/// Whether `tool` runs (`tool --version`); if not, `skipped`.
pub fn have(tool: &str, test: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        skipped(test, &format!("{tool} is not installed"));
    }
    found
}

/// The PostgreSQL server for tests, e.g. `postgres://postgres@127.0.0.1:5432`. `None`
/// (and a loud SKIPPED line) when unset; under `CI=true` unset is a failure.
pub fn postgres_server(test: &str) -> Option<String> {
    match std::env::var("MESSAGING_TEST_POSTGRES_URL") {
        Ok(url) => Some(url.trim_end_matches('/').to_owned()),
        Err(_) => {
            skipped(test, "MESSAGING_TEST_POSTGRES_URL is not set");
            None
        }
    }
}

/// A database of its own on the test PostgreSQL server, for a test of several instances;
/// `None` (SKIPPED, a failure under `CI=true`) when no server is named.
pub fn postgres_database(test: &str) -> Option<PgDatabase> {
    postgres_server(test).map(|server| PgDatabase::create(&server))
}

/// Says loudly that a test of SQLite itself does not apply on PostgreSQL (not a failure,
/// even in CI); true when it should return.
pub fn sqlite_only(test: &str) -> bool {
    if on_postgres() {
        eprintln!("SKIPPED {test}: it exercises SQLite itself");
    }
    on_postgres()
}
