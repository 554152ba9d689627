//! `TestApp`: the real `messaging-service` binary on port 0, its JSON log lines captured,
//! one method per kind of request; `Client` for other threads; signals and the process's
//! memory.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{PgDatabase, TestDir};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_messaging-service");
/// How long any wait may take before the test fails: generous, as it only bounds a poll.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// One HTTP answer, read to the end.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub text: String,
}

impl Response {
    /// The body as JSON; panics (showing it) when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    /// The first header called `name`, whatever its case.
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

/// Polls `check` every 10 ms until it returns `Some`, or panics once `limit` has passed.
pub fn poll_until<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One running server, killed when dropped.
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

    /// One instance on the shared PostgreSQL database `db`, with a folder of its own:
    /// several may run on one `db` at once.
    pub fn spawn_on(db: &PgDatabase, settings: &str) -> TestApp {
        TestApp::spawn_with_url(Arc::new(TestDir::new()), &db.url(), settings)
    }

    /// `spawn_on` with `env` in the server's environment (a real provider's secrets).
    pub fn spawn_on_with_env(db: &PgDatabase, settings: &str, env: &[(&str, &str)]) -> TestApp {
        TestApp::launch(Arc::new(TestDir::new()), &db.url(), settings, env, None)
    }

    /// A server on the database `url`, its settings file in `dir`.
    pub fn spawn_with_url(dir: Arc<TestDir>, url: &str, settings: &str) -> TestApp {
        TestApp::launch(dir, url, settings, &[], None)
    }

    /// A fresh server with `env` in its environment (the secrets real providers read).
    pub fn spawn_with_env(settings: &str, env: &[(&str, &str)]) -> TestApp {
        TestApp::spawn_in_with_env(Arc::new(TestDir::new()), settings, env)
    }

    /// `spawn_with_env` on the database of `dir` (for restarts on the same data).
    pub fn spawn_in_with_env(dir: Arc<TestDir>, settings: &str, env: &[(&str, &str)]) -> TestApp {
        let url = dir.database_url();
        TestApp::launch(dir, &url, settings, env, None)
    }

    /// A fresh server started with a soft limit of `open_files` open files (its hard limit
    /// the test's own).
    pub fn spawn_with_open_files(settings: &str, open_files: u64) -> TestApp {
        let dir = Arc::new(TestDir::new());
        let url = dir.database_url();
        TestApp::launch(dir, &url, settings, &[], Some(open_files))
    }

    fn launch(
        dir: Arc<TestDir>,
        url: &str,
        settings: &str,
        env: &[(&str, &str)],
        open_files: Option<u64>,
    ) -> TestApp {
        let config = dir.path().join("settings.toml");
        std::fs::write(&config, settings).expect("write settings");
        // `prlimit` (util-linux) sets the limit on itself and then runs the service in its
        // place, so the child's pid is the service's.
        let mut command = match open_files {
            Some(soft) => {
                let (_, hard) =
                    rlimit::getrlimit(rlimit::Resource::NOFILE).expect("read the limit");
                let mut command = Command::new("prlimit");
                command.arg(format!("--nofile={soft}:{hard}")).arg(BIN);
                command
            }
            None => Command::new(BIN),
        };
        command.envs(env.iter().copied());
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
        let addr = poll_until("the server to listen", DEADLINE, || {
            if let Some(line) = app.logs_with("listening").first() {
                return Some(line["addr"].as_str().expect("addr").to_owned());
            }
            if let Ok(Some(status)) = app.child.try_wait() {
                let mut stderr = String::new();
                if let Some(mut e) = app.child.stderr.take() {
                    let _ = e.read_to_string(&mut stderr);
                }
                panic!("server exited with {status} before listening: {stderr}");
            }
            None
        });
        app.base = format!("http://{addr}");
        app
    }

    /// The server's process id.
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

    /// Every line captured so far.
    pub fn all_logs(&self) -> Vec<Value> {
        self.logs.lock().expect("log lock").clone()
    }

    /// Polls `check` until it returns `Some`, or panics after the `DEADLINE`.
    pub fn eventually<T>(&self, what: &str, check: impl FnMut() -> Option<T>) -> T {
        poll_until(what, DEADLINE, check)
    }

    /// Any request; a 4xx or 5xx is a `Response` too, only a transport failure panics.
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

    /// `GET path`.
    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, &[], None)
    }

    /// `POST path` with a JSON body.
    pub fn post(&self, path: &str, body: &Value) -> Response {
        self.post_with(path, body, &[])
    }

    /// `POST path` with a JSON body and more headers.
    pub fn post_with(&self, path: &str, body: &Value, headers: &[(&str, &str)]) -> Response {
        let mut all = vec![("Content-Type", "application/json")];
        all.extend_from_slice(headers);
        self.request("POST", path, &all, Some(body.to_string().as_bytes()))
    }

    /// Posts `body` to `path`, checks the 202 and returns the new message's id.
    pub fn accept(&self, path: &str, body: &Value) -> i64 {
        let response = self.post(path, body);
        assert_eq!(response.status, 202, "{path}: {}", response.text);
        response.json()["id"].as_i64().expect("id")
    }

    /// `GET /api/messages/{id}`: the message with its attempts; it must exist.
    pub fn message(&self, id: i64) -> Value {
        let response = self.get(&format!("/api/messages/{id}"));
        assert_eq!(response.status, 200, "message {id}: {}", response.text);
        response.json()
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
        let child = &mut self.child;
        let status = poll_until("the server to exit", DEADLINE, || {
            child.try_wait().ok().flatten()
        });
        if let Some(reader) = self.reader.take() {
            reader.join().expect("log reader");
        }
        if !status.success() {
            // What the process said on its way out (a panic, an abort's cause) goes into
            // the failing test's output; the assertion on the status comes after.
            let mut stderr = String::new();
            if let Some(mut e) = self.child.stderr.take() {
                let _ = e.read_to_string(&mut stderr);
            }
            eprintln!("messaging-service exited with {status}; its stderr:\n{stderr}");
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
    base: String,
    agent: ureq::Agent,
}

impl Client {
    /// `POST path` with a JSON body: the status and the JSON answer.
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

/// Samples a process's resident set size until stopped, keeping the peak.
pub struct PeakRss {
    peak: Arc<std::sync::atomic::AtomicU64>,
    watching: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl PeakRss {
    pub fn watch(pid: u32) -> PeakRss {
        use std::sync::atomic::Ordering;
        let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let watching = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let thread = {
            let (peak, watching) = (peak.clone(), watching.clone());
            std::thread::spawn(move || {
                while watching.load(Ordering::Relaxed) {
                    peak.fetch_max(rss_bytes(pid), Ordering::Relaxed);
                    // The sampling interval of this watcher, which paces itself: it waits
                    // for nothing in the service, and no assertion depends on its timing.
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        PeakRss {
            peak,
            watching,
            thread,
        }
    }

    /// The peak, in bytes.
    pub fn stop(self) -> u64 {
        use std::sync::atomic::Ordering;
        self.watching.store(false, Ordering::Relaxed);
        let _ = self.thread.join();
        self.peak.load(Ordering::Relaxed)
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

/// Sends signal `name` (`TERM`, `INT`, `KILL`) to process `pid`.
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}
