//! The two databases behind one store: SQLite (embedded, one instance) and PostgreSQL
//! (several instances sharing work). The queries are written once and compiled for each
//! connection type (see `for_each_backend!`); this file holds what differs: opening and
//! migrating, the connection enum, and transactions.

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::pg::Pg;
use diesel::pg::PgConnection;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool, PooledConnection};
use diesel::serialize::ToSql;
use diesel::sql_types::{HasSqlType, Untyped};
use diesel::sqlite::SqliteConnection;
use diesel::{Connection, QueryResult, RunQueryDsl};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use super::StoreError;

pub const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/sqlite");
pub const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/postgres");

/// How long a connection waits for SQLite's write lock before the write fails (and the
/// client gets a 503 rather than a hang). The single writer keeps our own writes from ever
/// waiting on each other, so only another process holding the lock waits this long; when
/// it does, everything queued behind the failed batch fails with it (persistence.rs), so no
/// request waits longer than this plus its own commit.
pub const BUSY_TIMEOUT_MS: u64 = 2_000;
/// Any key will do, as long as every instance uses the same one: migrations of two
/// instances starting at once run one after the other.
const MIGRATION_LOCK: i64 = 0x6d65_7373_6167_6573; // "messages"

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn of(url: &str) -> Result<Backend, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            sqlite_path(url).map(|_| Backend::Sqlite)
        }
    }

    /// Writers by default, each committing its own lane of writes (see `Lane` in the
    /// store): SQLite allows one. PostgreSQL has a second (new messages and half the
    /// messages' attempt records), so that one batch runs while the other waits for the
    /// server (its round trips, its commit's WAL flush); `database.writers` may set
    /// another number there, as `open` is told.
    pub fn writers(self) -> usize {
        match self {
            Backend::Sqlite => 1,
            Backend::Postgres => 2,
        }
    }
}

/// The file path inside `sqlite://PATH` (relative) or `sqlite:///abs/path`. Not one
/// SQLite would read as a URI (`file:...`, which may name an in-memory database or
/// another spelling of a file the one-process lock would not see) nor `:memory:`: a 202
/// promises a file on disk.
pub fn sqlite_path(url: &str) -> Result<&str, StoreError> {
    match url.strip_prefix("sqlite://") {
        Some(path) if !path.is_empty() && path != ":memory:" && !path.starts_with("file:") => {
            Ok(path)
        }
        _ => Err(StoreError::UnsupportedUrl(url.to_owned())),
    }
}

/// Every pooled SQLite connection gets the same durability and safety settings.
#[derive(Debug)]
struct SqlitePragmas;

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for SqlitePragmas {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute(&format!(
            "PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}; PRAGMA journal_mode = WAL; \
             PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;"
        ))
        .map_err(diesel::r2d2::Error::QueryError)
    }
}

/// The connections of one database: its readers' and its writers'.
#[derive(Clone)]
pub struct DbPool {
    pub(crate) pools: Pools,
    /// Write lanes the pool holds connections for, besides its readers'.
    writers: usize,
}

#[derive(Clone)]
pub(crate) enum Pools {
    Sqlite(Pool<ConnectionManager<SqliteConnection>>),
    Postgres(Pool<ConnectionManager<PgConnection>>),
}

pub enum DbConn {
    Sqlite(PooledConnection<ConnectionManager<SqliteConnection>>),
    Postgres(PooledConnection<ConnectionManager<PgConnection>>),
}

/// Every pooled PostgreSQL connection bounds each statement, so a query the server
/// cannot finish in time fails instead of holding the writer.
#[derive(Debug)]
struct PgTimeouts {
    statement_ms: u64,
}

impl CustomizeConnection<PgConnection, diesel::r2d2::Error> for PgTimeouts {
    fn on_acquire(&self, conn: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute(&format!(
            "SET statement_timeout = {ms}; SET lock_timeout = {ms}; \
             SET idle_in_transaction_session_timeout = {idle};",
            ms = self.statement_ms,
            idle = self.statement_ms * 2
        ))
        .map_err(diesel::r2d2::Error::QueryError)
    }
}

/// libpq's own bounds, added to the URL unless it sets them: a connect that hangs, and a
/// peer that stops acknowledging (TCP keepalive and `tcp_user_timeout`).
fn with_libpq_timeouts(url: &str, timeout: Duration) -> String {
    let secs = timeout.as_secs().max(1);
    let keepalive = (secs / 3).max(1);
    let mut url = url.to_owned();
    for (key, value) in [
        ("connect_timeout", secs.to_string()),
        ("keepalives", "1".to_owned()),
        ("keepalives_idle", keepalive.to_string()),
        ("keepalives_interval", keepalive.to_string()),
        ("keepalives_count", "3".to_owned()),
        ("tcp_user_timeout", timeout.as_millis().to_string()),
    ] {
        if !url.contains(&format!("{key}=")) {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(&format!("{key}={value}"));
        }
    }
    url
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::ConnectionLost(e.to_string())
}

impl DbPool {
    pub fn backend(&self) -> Backend {
        match &self.pools {
            Pools::Sqlite(_) => Backend::Sqlite,
            Pools::Postgres(_) => Backend::Postgres,
        }
    }

    /// The write lanes a store on this pool runs: the number `open` was given (one on
    /// SQLite), each with a connection of its own.
    pub fn writers(&self) -> usize {
        self.writers
    }

    /// Whether every connection the pool manages is back in it: none held, and none
    /// being opened by r2d2's own threads (for a caller that stopped waiting for it).
    pub fn is_settled(&self) -> bool {
        let state = match &self.pools {
            Pools::Sqlite(pool) => pool.state(),
            Pools::Postgres(pool) => pool.state(),
        };
        state.connections == state.idle_connections
    }

    pub fn get(&self) -> Result<DbConn, StoreError> {
        match &self.pools {
            Pools::Sqlite(pool) => pool.get().map(DbConn::Sqlite).map_err(unavailable),
            Pools::Postgres(pool) => pool.get().map(DbConn::Postgres).map_err(unavailable),
        }
    }
}

/// Opens the pool (`pool_size` readers and `writers` write lanes, always one on SQLite,
/// where one writer at a time owns the file) and applies pending migrations before
/// anything is served. `timeout` bounds each database call (`database.timeout_ms`).
/// The pool checks a connection before handing it out, so one that broke while idle is
/// replaced rather than used.
pub fn open(
    url: &str,
    pool_size: u32,
    writers: usize,
    timeout: Duration,
) -> Result<DbPool, StoreError> {
    fn builder<M: diesel::r2d2::ManageConnection>(
        connections: u32,
        timeout: Duration,
    ) -> diesel::r2d2::Builder<M> {
        // No idle connection kept by r2d2: its threads would open one whenever a
        // persistence thread takes the last, and one still opening as the process exits
        // runs libpq's TLS handshake while `exit` tears OpenSSL down, a SIGSEGV (a core
        // dump showed r2d2's `add_connection` in `PQconnectdb` on a null OpenSSL lock,
        // the main thread in the exit handlers). Each persistence thread takes its own
        // connection when it first needs one and keeps it; none waits for a spare.
        Pool::builder()
            .max_size(connections)
            .min_idle(Some(0))
            .test_on_check_out(true)
            .connection_timeout(timeout)
    }
    let backend = Backend::of(url)?;
    let writers = match backend {
        Backend::Sqlite => 1,
        Backend::Postgres => writers.max(1),
    };
    let connections = pool_size.saturating_add(u32::try_from(writers).unwrap_or(u32::MAX));
    match backend {
        Backend::Sqlite => {
            let pool = builder(connections, timeout)
                .connection_customizer(Box::new(SqlitePragmas))
                .build(ConnectionManager::<SqliteConnection>::new(sqlite_path(
                    url,
                )?))
                .map_err(unavailable)?;
            let mut conn = pool.get().map_err(unavailable)?;
            conn.run_pending_migrations(SQLITE_MIGRATIONS)
                .map_err(|e| unavailable(format!("migrations failed: {e}")))?;
            Ok(DbPool {
                pools: Pools::Sqlite(pool),
                writers,
            })
        }
        Backend::Postgres => {
            let pool = builder(connections, timeout)
                .connection_customizer(Box::new(PgTimeouts {
                    statement_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                }))
                .build(ConnectionManager::<PgConnection>::new(with_libpq_timeouts(
                    url, timeout,
                )))
                .map_err(unavailable)?;
            // A connection of its own, without the pool's statement and lock timeouts:
            // another instance's migrations hold the lock for as long as they take, and
            // a migration on a large table (an index over millions of messages) takes
            // longer than `database.timeout_ms`; bounded, either stopped the start. A
            // server gone silent is still noticed: libpq's keepalives are in the URL.
            let mut conn = PgConnection::establish(&with_libpq_timeouts(url, timeout))
                .map_err(|e| unavailable(e.to_string()))?;
            diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
                .execute(&mut conn)?;
            let migrated = conn
                .run_pending_migrations(POSTGRES_MIGRATIONS)
                .map(|_| ())
                .map_err(|e| unavailable(format!("migrations failed: {e}")));
            diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"))
                .execute(&mut conn)?;
            migrated?;
            Ok(DbPool {
                pools: Pools::Postgres(pool),
                writers,
            })
        }
    }
}

/// The text of a PostgreSQL statement that never changes, each parameter written `?`
/// and bound in order (`FixedSql(SQL).bind::<Type, _>(value)...`), kept prepared on its
/// connection as Diesel keeps what its query builder makes. (`diesel::sql_query` is never
/// kept: Diesel cannot tell whether its text is fixed.)
pub(crate) struct FixedSql(pub &'static str);

/// `query` with its next parameter bound, of SQL type `ST`.
pub(crate) struct Bound<Q, V, ST> {
    query: Q,
    value: V,
    _type: std::marker::PhantomData<ST>,
}

/// `FixedSql` and every `Bound` made from it: binds the next parameter, and writes the
/// text with the parameters bound so far.
pub(crate) trait BindFixed: Sized {
    fn bind<ST, V>(self, value: V) -> Bound<Self, V, ST> {
        Bound {
            query: self,
            value,
            _type: std::marker::PhantomData,
        }
    }

    fn text(&self) -> &'static str;

    /// Writes the text up to this parameter's `?`, the parameter, and the text after it
    /// up to the next; `pieces` is the text split at each `?`.
    fn walk_bound<'b>(
        &'b self,
        pass: &mut AstPass<'_, 'b, Pg>,
        pieces: &mut std::str::Split<'static, char>,
    ) -> QueryResult<()>;
}

impl BindFixed for FixedSql {
    fn text(&self) -> &'static str {
        self.0
    }

    fn walk_bound<'b>(
        &'b self,
        pass: &mut AstPass<'_, 'b, Pg>,
        pieces: &mut std::str::Split<'static, char>,
    ) -> QueryResult<()> {
        pass.push_sql(pieces.next().unwrap_or_default());
        Ok(())
    }
}

impl<Q, V, ST> BindFixed for Bound<Q, V, ST>
where
    Q: BindFixed,
    Pg: HasSqlType<ST>,
    V: ToSql<ST, Pg>,
{
    fn text(&self) -> &'static str {
        self.query.text()
    }

    fn walk_bound<'b>(
        &'b self,
        pass: &mut AstPass<'_, 'b, Pg>,
        pieces: &mut std::str::Split<'static, char>,
    ) -> QueryResult<()> {
        self.query.walk_bound(pass, pieces)?;
        pass.push_bind_param::<ST, V>(&self.value)?;
        pass.push_sql(pieces.next().unwrap_or_default());
        Ok(())
    }
}

impl<Q, V, ST> QueryFragment<Pg> for Bound<Q, V, ST>
where
    Self: BindFixed,
{
    fn walk_ast<'b>(&'b self, mut pass: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let mut pieces = self.text().split('?');
        self.walk_bound(&mut pass, &mut pieces)?;
        // Text with more `?` than bound parameters must fail, not run with fewer.
        match pieces.next() {
            None => Ok(()),
            Some(_) => Err(diesel::result::Error::QueryBuilderError(
                "a fixed statement has a parameter left unbound".into(),
            )),
        }
    }
}

/// Kept by its text and bind types: no type of its own names it.
impl<Q, V, ST> QueryId for Bound<Q, V, ST> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q, V, ST> Query for Bound<Q, V, ST> {
    type SqlType = Untyped;
}

impl<Q, V, ST, C> RunQueryDsl<C> for Bound<Q, V, ST> {}

/// A connection inside a transaction: what a write runs on.
pub(crate) enum Tx<'a> {
    Sqlite(&'a mut SqliteConnection),
    Postgres(&'a mut PgConnection),
}

/// Runs `f` inside one write transaction through Diesel's transaction manager, so that a
/// failed `COMMIT` or a lost connection leaves the connection marked broken (and the pool
/// drops it) rather than silently inside a transaction. SQLite's `BEGIN IMMEDIATE` takes
/// the write lock up front, so a batch never fails half-way on a lock upgrade.
pub(crate) fn in_write_transaction<T>(
    conn: &mut DbConn,
    f: impl FnOnce(&mut Tx<'_>) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    match conn {
        DbConn::Sqlite(c) => c.immediate_transaction(|c| f(&mut Tx::Sqlite(c))),
        DbConn::Postgres(c) => c.transaction(|c| f(&mut Tx::Postgres(c))),
    }
}

/// Runs a read of several statements in one snapshot, so that none of them sees a batch
/// the one before it did not (a status without the attempt that set it, a page longer
/// than its count or than the sizes read for it). SQLite's deferred `BEGIN` takes its
/// snapshot at the first read; PostgreSQL keeps one across statements only from
/// `REPEATABLE READ` up, which a read-only transaction gets without serialization failures.
pub(crate) fn in_read_snapshot<T>(
    conn: &mut DbConn,
    f: impl FnOnce(&mut Tx<'_>) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    match conn {
        DbConn::Sqlite(c) => c.transaction(|c| f(&mut Tx::Sqlite(c))),
        DbConn::Postgres(c) => c
            .build_transaction()
            .repeatable_read()
            .read_only()
            .run(|c| f(&mut Tx::Postgres(c))),
    }
}

/// One query compiled for both connection types.
pub(crate) struct Runner<I, O> {
    pub sqlite: fn(&mut SqliteConnection, &I) -> Result<O, StoreError>,
    pub postgres: fn(&mut PgConnection, &I) -> Result<O, StoreError>,
}

impl<I, O> Clone for Runner<I, O> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<I, O> Copy for Runner<I, O> {}

impl<I, O> Runner<I, O> {
    pub(crate) fn run(self, tx: &mut Tx<'_>, input: &I) -> Result<O, StoreError> {
        match tx {
            Tx::Sqlite(c) => (self.sqlite)(c, input),
            Tx::Postgres(c) => (self.postgres)(c, input),
        }
    }
}

/// One query over a batch's writes of one kind at once (a multi-row statement), compiled
/// for both connection types; one output per input, in the inputs' order.
pub(crate) struct BulkRunner<I, O> {
    /// Names the kind: a batch's writes with the same kind run together.
    pub kind: &'static str,
    pub sqlite: fn(&mut SqliteConnection, &[&I]) -> Result<Vec<O>, StoreError>,
    pub postgres: fn(&mut PgConnection, &[&I]) -> Result<Vec<O>, StoreError>,
}

impl<I, O> Clone for BulkRunner<I, O> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<I, O> Copy for BulkRunner<I, O> {}

impl<I, O> BulkRunner<I, O> {
    pub(crate) fn run(self, tx: &mut Tx<'_>, inputs: &[&I]) -> Result<Vec<O>, StoreError> {
        match tx {
            Tx::Sqlite(c) => (self.sqlite)(c, inputs),
            Tx::Postgres(c) => (self.postgres)(c, inputs),
        }
    }
}

/// `runner!(module::query)`: the `Runner` of a query that `for_each_backend!` compiled into
/// `module::sqlite::query` and `module::postgres::query`.
macro_rules! runner {
    ($module:ident :: $query:ident) => {
        $crate::store::backend::Runner {
            sqlite: $module::sqlite::$query,
            postgres: $module::postgres::$query,
        }
    };
}
pub(crate) use runner;

/// `bulk_runner!(module::query)`: the `BulkRunner` of a multi-row query that
/// `for_each_backend!` compiled for both backends, its kind named after it.
macro_rules! bulk_runner {
    ($module:ident :: $query:ident) => {
        $crate::store::backend::BulkRunner {
            kind: concat!(stringify!($module), "::", stringify!($query)),
            sqlite: $module::sqlite::$query,
            postgres: $module::postgres::$query,
        }
    };
}
pub(crate) use bulk_runner;

/// Compiles the queries in its body once per backend, as `sqlite::…` and `postgres::…`,
/// with `Conn` naming the connection type. What the SQL dialects do differently (`max`
/// against `greatest`) lives in the migrations' triggers, not in these queries.
macro_rules! for_each_backend {
    ($($body:item)*) => {
        pub(crate) mod sqlite {
            #![allow(unused_imports)]
            use super::*;
            type Conn = diesel::sqlite::SqliteConnection;
            $($body)*
        }
        pub(crate) mod postgres {
            #![allow(unused_imports)]
            use super::*;
            type Conn = diesel::pg::PgConnection;
            $($body)*
        }
    };
}
pub(crate) use for_each_backend;

/// Runs `$body` once for each of a few fixed-size arrays that together cover `$rows` in
/// order, largest first (`$chunk: &[T; N]`; `$body` may `?`).
///
/// Why fixed sizes: Diesel keeps a prepared statement only for a query whose type names
/// its shape, and an insert of a `Vec` of rows names no row count, so it is prepared
/// again at every run; SQLite compiles the table's triggers into every insert it
/// prepares, which cost a quarter of the writer's time. An array's length is in its
/// type: each of these sizes is prepared once per connection, and any count takes at
/// most one statement of each size.
macro_rules! for_cached_chunks {
    ($rows:expr, |$chunk:ident| $body:block) => {{
        let mut rest = &$rows[..];
        while !rest.is_empty() {
            $crate::store::backend::for_cached_chunks!(
                @sizes rest, $chunk, $body; 512 256 128 64 32 16 8 4 2 1
            );
        }
    }};
    (@sizes $rest:ident, $chunk:ident, $body:block; $($size:literal)+) => {
        $(
            if let Some((head, tail)) = $rest.split_first_chunk::<$size>() {
                let $chunk = head;
                $body
                $rest = tail;
                continue;
            }
        )+
    };
}
pub(crate) use for_cached_chunks;

#[cfg(test)]
mod tests {
    use diesel::sql_types::Text;
    use diesel::{QueryableByName, RunQueryDsl};

    #[derive(QueryableByName)]
    struct CompileOption {
        #[diesel(sql_type = Text)]
        compile_options: String,
    }

    /// Without the planner's stability guarantee every cached statement with a bound
    /// `LIMIT` (`.first()`) is parsed again at each run (see `.cargo/config.toml`): the
    /// bundled SQLite must be built with it.
    #[test]
    fn the_bundled_sqlite_keeps_cached_plans_whatever_is_bound() {
        use diesel::Connection;
        let mut conn = diesel::sqlite::SqliteConnection::establish(":memory:").expect("open");
        let options = diesel::sql_query("PRAGMA compile_options")
            .load::<CompileOption>(&mut conn)
            .expect("compile options");
        assert!(
            options.iter().any(|o| o.compile_options == "ENABLE_QPSG"),
            "SQLite was built without SQLITE_ENABLE_QPSG: {:?}",
            options
                .iter()
                .map(|o| o.compile_options.as_str())
                .collect::<Vec<_>>()
        );
    }

    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }

    fn count(conn: &mut diesel::sqlite::SqliteConnection, sql: &str) -> i64 {
        diesel::sql_query(sql)
            .get_result::<Count>(conn)
            .expect("count")
            .n
    }

    /// SQLite migration 000011 rebuilds the tables others reference (with foreign keys
    /// off, outside the runner's transaction). A database made by the migrations before
    /// it keeps every row, its ids' sequence, its triggers and indexes, and its
    /// connection enforces foreign keys again after.
    #[test]
    fn rebuilding_the_referenced_tables_keeps_every_row_and_rule() {
        use diesel::connection::SimpleConnection;
        use diesel::migration::MigrationSource;
        use diesel::sqlite::Sqlite;
        use diesel::Connection;
        use diesel_migrations::MigrationHarness;

        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("upgrade.db");
        let mut conn =
            diesel::sqlite::SqliteConnection::establish(&path.display().to_string()).expect("open");
        diesel::sql_query("PRAGMA foreign_keys = ON")
            .execute(&mut conn)
            .expect("foreign keys");
        let migrations =
            MigrationSource::<Sqlite>::migrations(&super::SQLITE_MIGRATIONS).expect("migrations");
        let rebuild = migrations
            .iter()
            .position(|m| m.name().to_string().ends_with("checks_without_lists"))
            .expect("the rebuild is a migration");
        let (earlier, rest) = migrations.split_at(rebuild);
        conn.applied_migrations()
            .expect("the migrations' own table");
        for migration in earlier {
            conn.run_migration(migration).expect("earlier migration");
        }
        conn.batch_execute(
            "INSERT INTO conversations (participant_a, participant_b, created_at, last_message_at)
                 VALUES ('a', 'b', 't', 't');
             INSERT INTO messages (conversation_id, direction, channel, from_addr, to_addr, body,
                 timestamp, status, created_at, updated_at, status_callback)
                 VALUES (1, 'outbound', 'sms', 'a', 'b', 'one', 't', 'queued', 't', 't', 'http://x'),
                        (1, 'outbound', 'sms', 'a', 'b', 'two', 't', 'queued', 't', 't', NULL),
                        (1, 'outbound', 'sms', 'a', 'b', 'three', 't', 'queued', 't', 't', NULL);
             INSERT INTO dispatch_attempts (message_id, provider_name, attempt, outcome,
                 latency_ms, created_at, message_status) VALUES (1, 'p', 1, 'success', 0, 't', 'sent');
             DELETE FROM messages WHERE id = 3;",
        )
        .expect("rows before");
        let schema = "SELECT count(*) AS n FROM sqlite_master WHERE type IN ('index', 'trigger')";
        let objects = count(&mut conn, schema);

        conn.run_migration(&rest[0]).expect("the rebuild");

        assert_eq!(
            count(&mut conn, schema),
            objects,
            "every index and trigger is back"
        );
        assert_eq!(count(&mut conn, "SELECT count(*) AS n FROM messages"), 2);
        assert_eq!(
            count(&mut conn, "SELECT count(*) AS n FROM dispatch_attempts"),
            1
        );
        assert_eq!(count(&mut conn, "SELECT count(*) AS n FROM callbacks"), 1);
        assert_eq!(
            count(&mut conn, "SELECT message_count AS n FROM conversations"),
            3,
            "no row was counted twice"
        );
        assert_eq!(
            count(
                &mut conn,
                "SELECT foreign_keys AS n FROM pragma_foreign_keys"
            ),
            1
        );
        conn.batch_execute(
            "INSERT INTO messages (conversation_id, direction, channel, from_addr, to_addr, body,
                 timestamp, status, created_at, updated_at)
                 VALUES (1, 'outbound', 'sms', 'a', 'b', 'four', 't', 'queued', 't', 't')",
        )
        .expect("insert after");
        assert_eq!(
            count(&mut conn, "SELECT max(id) AS n FROM messages"),
            4,
            "an id once given is not given again"
        );
        assert_eq!(
            count(&mut conn, "SELECT message_count AS n FROM conversations"),
            4
        );
        // The rules hold: foreign keys, the final status, the checks.
        for refused in [
            "INSERT INTO dispatch_attempts (message_id, provider_name, attempt, outcome,
                 latency_ms, created_at) VALUES (99, 'p', 1, 'success', 0, 't')",
            "UPDATE messages SET status = 'queued' WHERE id = 1",
            "UPDATE messages SET status = 'lost' WHERE id = 2",
            "INSERT INTO dispatch_attempts (message_id, provider_name, attempt, outcome,
                 latency_ms, created_at) VALUES (2, 'p', 1, 'lost', 0, 't')",
        ] {
            assert!(conn.batch_execute(refused).is_err(), "{refused}");
        }
    }
}
