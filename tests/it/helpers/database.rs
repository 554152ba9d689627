//! Where a test's data lives: SQLite in its temporary folder, or a database of its own on
//! the test PostgreSQL server when `MESSAGING_TEST_BACKEND=postgres`.

use std::path::{Path, PathBuf};

use diesel::{Connection, RunQueryDsl};
use tempfile::TempDir;

use super::postgres_server;

/// Which database the end-to-end tests run on: SQLite unless
/// `MESSAGING_TEST_BACKEND=postgres` (with `MESSAGING_TEST_POSTGRES_URL` naming the server).
pub fn on_postgres() -> bool {
    std::env::var("MESSAGING_TEST_BACKEND").is_ok_and(|b| b == "postgres")
}

/// A database of its own on the test PostgreSQL server, dropped with this value.
pub struct PgDatabase {
    server: String,
    name: String,
}

impl PgDatabase {
    /// Creates a database with a name no other test uses on `server`.
    pub fn create(server: &str) -> PgDatabase {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "msgtest_{}_{}_{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = diesel::PgConnection::establish(&format!("{server}/postgres"))
            .expect("connect to the test PostgreSQL server");
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .expect("create the test database");
        PgDatabase {
            server: server.to_owned(),
            name,
        }
    }

    /// The URL a server (or `connect`) opens it with.
    pub fn url(&self) -> String {
        format!("{}/{}", self.server, self.name)
    }

    /// The database's name, as `pg_stat_activity.datname` shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A connection of the test's own, beside the servers'.
    pub fn connect(&self) -> diesel::PgConnection {
        diesel::PgConnection::establish(&self.url()).expect("connect to the test database")
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        if let Ok(mut admin) = diesel::PgConnection::establish(&format!("{}/postgres", self.server))
        {
            let _ = diesel::sql_query(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut admin);
        }
    }
}

/// A test's files, and its database: a SQLite file in the folder, or (on PostgreSQL) a
/// database of its own, dropped with the folder.
pub struct TestDir {
    tmp: TempDir,
    pg: Option<PgDatabase>,
}

impl TestDir {
    /// A fresh folder, and on PostgreSQL a fresh database.
    pub fn new() -> TestDir {
        let pg = on_postgres().then(|| {
            let server = postgres_server("postgres backend")
                .expect("MESSAGING_TEST_BACKEND=postgres needs MESSAGING_TEST_POSTGRES_URL");
            PgDatabase::create(&server)
        });
        TestDir {
            tmp: tempfile::tempdir().expect("temp dir"),
            pg,
        }
    }

    /// The folder (settings files, the SQLite database, anything else a test writes).
    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// The `database.url` a server on this test's database is given.
    pub fn database_url(&self) -> String {
        match &self.pg {
            Some(pg) => pg.url(),
            None => format!("sqlite://{}", database_path(self.path()).display()),
        }
    }

    /// Runs one statement on the test's database, whichever it is. On SQLite it waits
    /// for a server's write in progress rather than failing with `database is locked`.
    pub fn execute_sql(&self, sql: &str) {
        let done = match &self.pg {
            Some(pg) => diesel::sql_query(sql).execute(&mut pg.connect()),
            None => {
                let mut conn = sqlite(&database_path(self.path()));
                diesel::sql_query("PRAGMA busy_timeout = 5000")
                    .execute(&mut conn)
                    .and_then(|_| diesel::sql_query(sql).execute(&mut conn))
            }
        };
        done.expect("execute");
    }
}

impl Default for TestDir {
    fn default() -> Self {
        TestDir::new()
    }
}

/// The SQLite database file a server in `dir` uses.
pub fn database_path(dir: &Path) -> PathBuf {
    dir.join("messaging.db")
}

/// A connection of the test's own to the SQLite file `database`, beside the server's.
pub fn sqlite(database: &Path) -> diesel::SqliteConnection {
    diesel::SqliteConnection::establish(&database.display().to_string())
        .expect("open the SQLite database")
}
