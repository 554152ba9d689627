//! `TestApp`: the real `messaging-service` binary on port 0 with a temporary SQLite
//! database, its JSON log lines captured, and one method per endpoint. Waiting is always
//! polling against a deadline, never a fixed sleep.

#![allow(dead_code)] // each test file uses a different part of this helper

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel::{Connection, RunQueryDsl};
use serde_json::{json, Value};
use tempfile::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_messaging-service");
pub const DEADLINE: Duration = Duration::from_secs(20);

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub text: String,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The contract's error code, after checking the status.
    pub fn error_code(&self, status: u16) -> String {
        assert_eq!(self.status, status, "body: {}", self.text);
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code in {}", self.text))
            .to_owned()
    }
}

/// Which database the end-to-end tests run on: SQLite unless
/// `MESSAGING_TEST_BACKEND=postgres` (with `MESSAGING_TEST_POSTGRES_URL` naming the server).
pub fn on_postgres() -> bool {
    std::env::var("MESSAGING_TEST_BACKEND").is_ok_and(|b| b == "postgres")
}

/// The PostgreSQL server for tests, e.g. `postgres://postgres@127.0.0.1:5432`. `None`
/// (and a loud SKIPPED line) when unset; under `CI=true` unset is a failure.
pub fn postgres_server(test: &str) -> Option<String> {
    match std::env::var("MESSAGING_TEST_POSTGRES_URL") {
        Ok(url) => Some(url.trim_end_matches('/').to_owned()),
        Err(_) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must set MESSAGING_TEST_POSTGRES_URL (.ci/run does)"
            );
            eprintln!("SKIPPED {test}: MESSAGING_TEST_POSTGRES_URL is not set");
            None
        }
    }
}

/// A database of its own on the test PostgreSQL server, dropped with this value.
pub struct PgDatabase {
    server: String,
    pub name: String,
}

impl PgDatabase {
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

    pub fn url(&self) -> String {
        format!("{}/{}", self.server, self.name)
    }

    pub fn execute(&self, sql: &str) {
        let mut conn = diesel::PgConnection::establish(&self.url()).expect("connect");
        diesel::sql_query(sql).execute(&mut conn).expect("execute");
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

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    pub fn database_url(&self) -> String {
        match &self.pg {
            Some(pg) => pg.url(),
            None => format!("sqlite://{}", database_path(self.path()).display()),
        }
    }

    /// Runs one statement on the test's database, whichever it is.
    pub fn execute_sql(&self, sql: &str) {
        match &self.pg {
            Some(pg) => pg.execute(sql),
            None => {
                let path = database_path(self.path()).display().to_string();
                let mut conn = diesel::SqliteConnection::establish(&path).expect("open");
                diesel::sql_query(sql).execute(&mut conn).expect("execute");
            }
        }
    }
}

impl Default for TestDir {
    fn default() -> Self {
        TestDir::new()
    }
}

/// Says loudly that a test does not apply on PostgreSQL; true when it should return.
pub fn sqlite_only(test: &str) -> bool {
    if on_postgres() {
        eprintln!("SKIPPED {test}: it exercises SQLite itself");
    }
    on_postgres()
}

pub struct TestApp {
    pub base: String,
    pub dir: Arc<TestDir>,
    child: Child,
    logs: Arc<Mutex<Vec<Value>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    agent: ureq::Agent,
}

impl TestApp {
    /// A fresh server on a fresh database with `settings` (TOML) as its config file.
    pub fn spawn(settings: &str) -> TestApp {
        TestApp::spawn_in(Arc::new(TestDir::new()), settings)
    }

    /// A server on the database of `dir` (for restarts on the same data).
    pub fn spawn_in(dir: Arc<TestDir>, settings: &str) -> TestApp {
        let url = dir.database_url();
        TestApp::spawn_with_url(dir, &url, settings)
    }

    /// A server on the SQLite file `database`, its settings file in `dir`.
    pub fn spawn_at(dir: Arc<TestDir>, database: &Path, settings: &str) -> TestApp {
        let url = format!("sqlite://{}", database.display());
        TestApp::spawn_with_url(dir, &url, settings)
    }

    /// A server on the database `url`, its settings file in `dir`.
    pub fn spawn_with_url(dir: Arc<TestDir>, url: &str, settings: &str) -> TestApp {
        let config = dir.path().join("settings.toml");
        std::fs::write(&config, settings).expect("write settings");
        let mut command = Command::new(BIN);
        if !settings.contains("lease_ms") {
            // Short leases, so that a restart after a kill takes the work over quickly on
            // PostgreSQL (SQLite ignores them); a test that sets lease_ms keeps its own.
            command.env("MESSAGING__DISPATCH__LEASE_MS", "1000");
        }
        let mut child = command
            .arg("--config")
            .arg(&config)
            .env_remove("MESSAGING_CONFIG")
            .env("MESSAGING__SERVER__BIND", "127.0.0.1:0")
            .env("MESSAGING__DATABASE__URL", url)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start messaging-service");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("stdout");
        let sink = logs.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| json!({"msg": "<not json>", "line": line}));
                sink.lock().expect("log lock").push(value);
            }
        });
        let mut app = TestApp {
            base: String::new(),
            dir,
            child,
            logs,
            reader: Some(reader),
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(30))
                .build(),
        };
        let started = Instant::now();
        let addr = loop {
            if let Some(line) = app.logs_with("listening").first() {
                break line["addr"].as_str().expect("addr").to_owned();
            }
            if let Ok(Some(status)) = app.child.try_wait() {
                let mut stderr = String::new();
                if let Some(mut e) = app.child.stderr.take() {
                    let _ = e.read_to_string(&mut stderr);
                }
                panic!("server exited with {status} before listening: {stderr}");
            }
            assert!(started.elapsed() < DEADLINE, "server did not start in time");
            std::thread::sleep(Duration::from_millis(10));
        };
        app.base = format!("http://{addr}");
        app
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A handle other threads can send requests with.
    pub fn client(&self) -> Client {
        Client {
            base: self.base.clone(),
            agent: self.agent.clone(),
        }
    }

    /// Every captured log line whose `msg` is `msg`.
    pub fn logs_with(&self, msg: &str) -> Vec<Value> {
        self.logs
            .lock()
            .expect("log lock")
            .iter()
            .filter(|l| l["msg"] == msg)
            .cloned()
            .collect()
    }

    pub fn all_logs(&self) -> Vec<Value> {
        self.logs.lock().expect("log lock").clone()
    }

    /// Polls `check` until it returns `Some`, or panics after the deadline.
    pub fn eventually<T>(&self, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let started = Instant::now();
        loop {
            if let Some(value) = check() {
                return value;
            }
            assert!(started.elapsed() < DEADLINE, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Response {
        let mut request = self.agent.request(method, &format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.set(name, value);
        }
        let result = match body {
            Some(bytes) => request.send_bytes(bytes),
            None => request.call(),
        };
        let response = match result {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = response.status();
        let headers = response
            .headers_names()
            .into_iter()
            .filter_map(|name| {
                let value = response.header(&name)?.to_owned();
                Some((name, value))
            })
            .collect();
        let text = response.into_string().expect("response body");
        Response {
            status,
            headers,
            text,
        }
    }

    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, &[], None)
    }

    pub fn post(&self, path: &str, body: &Value) -> Response {
        self.post_with(path, body, &[])
    }

    pub fn post_with(&self, path: &str, body: &Value, headers: &[(&str, &str)]) -> Response {
        let mut all = vec![("Content-Type", "application/json")];
        all.extend_from_slice(headers);
        self.request("POST", path, &all, Some(body.to_string().as_bytes()))
    }

    /// The value of one series in `/metrics`, e.g.
    /// `messaging_messages_accepted_total{channel="sms"}`.
    pub fn metric(&self, series: &str) -> f64 {
        let text = self.get("/metrics").text;
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no series {series} in /metrics"))
    }

    /// SIGTERM, then wait for the exit status.
    pub fn stop(self) -> ExitStatus {
        signal(self.child.id(), "TERM");
        self.wait_for_exit().0
    }

    /// Waits for the process to end (after a signal) and returns its status with every
    /// line it logged, read to the end of its stdout.
    pub fn wait_for_exit(mut self) -> (ExitStatus, Vec<Value>) {
        let started = Instant::now();
        let status = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break status;
            }
            assert!(started.elapsed() < DEADLINE, "server did not stop in time");
            std::thread::sleep(Duration::from_millis(10));
        };
        if let Some(reader) = self.reader.take() {
            reader.join().expect("log reader");
        }
        (status, self.all_logs())
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends requests from any thread; transport failures (a killed server) are `None`.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    agent: ureq::Agent,
}

impl Client {
    pub fn try_post(&self, path: &str, body: &Value) -> Option<(u16, Value)> {
        let result = self
            .agent
            .post(&format!("{}{path}", self.base))
            .set("Content-Type", "application/json")
            .send_string(&body.to_string());
        let response = match result {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(_) => return None,
        };
        let status = response.status();
        let body = response.into_json().ok()?;
        Some((status, body))
    }
}

/// A process's resident set size in bytes, from /proc (0 once it is gone).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

pub fn database_path(dir: &Path) -> PathBuf {
    dir.join("messaging.db")
}

/// The assessment's sample requests, in the order its script sends them.
pub fn sample_sms() -> Value {
    json!({"from": "+12016661234", "to": "+18045551234", "type": "sms",
           "body": "Hello! This is a test SMS message.", "attachments": null,
           "timestamp": "2024-11-01T14:00:00Z"})
}

pub fn sample_mms() -> Value {
    json!({"from": "+12016661234", "to": "+18045551234", "type": "mms",
           "body": "Hello! This is a test MMS message with attachment.",
           "attachments": ["https://example.com/image.jpg"],
           "timestamp": "2024-11-01T14:00:00Z"})
}

pub fn sample_email() -> Value {
    json!({"from": "user@usehatchapp.com", "to": "contact@gmail.com",
           "body": "Hello! This is a test email message with <b>HTML</b> formatting.",
           "attachments": ["https://example.com/document.pdf"],
           "timestamp": "2024-11-01T14:00:00Z"})
}

pub fn sample_sms_webhook() -> Value {
    json!({"from": "+18045551234", "to": "+12016661234", "type": "sms",
           "messaging_provider_id": "message-1", "body": "This is an incoming SMS message",
           "attachments": null, "timestamp": "2024-11-01T14:00:00Z"})
}

pub fn sample_mms_webhook() -> Value {
    json!({"from": "+18045551234", "to": "+12016661234", "type": "mms",
           "messaging_provider_id": "message-2", "body": "This is an incoming MMS message",
           "attachments": ["https://example.com/received-image.jpg"],
           "timestamp": "2024-11-01T14:00:00Z"})
}

pub fn sample_email_webhook() -> Value {
    json!({"from": "contact@gmail.com", "to": "user@usehatchapp.com", "xillio_id": "message-3",
           "body": "<html><body>This is an incoming email with <b>HTML</b> content</body></html>",
           "attachments": ["https://example.com/received-document.pdf"],
           "timestamp": "2024-11-01T14:00:00Z"})
}
