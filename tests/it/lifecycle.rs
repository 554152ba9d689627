//! End-to-end tests of the process itself (CONTRACT section 1): start-up on a bad
//! configuration, the `listening` line, graceful stop, and restarts on the same database.

use std::process::Command;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::helpers::*;

#[test]
fn a_bad_configuration_exits_2_with_one_line_naming_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (settings, key) in [
        (
            "[dispatch]\nmax_attempts = \"five\"\n",
            "dispatch.max_attempts",
        ),
        ("[server]\nport = 8080\n", "server.port"),
        (
            "[outcomes]\nerror_pct = 70.0\ntimeout_pct = 40.0\n",
            "outcomes",
        ),
        (
            "[providers.email]\nerror_pct = 101.0\n",
            "providers.email.error_pct",
        ),
        ("[server\n", "settings.toml"),
        // A real provider whose secret variable is not set (nor named).
        (
            "[server]\npublic_url = \"https://example.com\"\n[providers.sms-mms]\nkind = \"twilio\"\n\
             account_sid = \"AC1\"\nauth_token_env = \"MESSAGING_TEST_UNSET_TOKEN\"\n",
            "providers.sms-mms.auth_token_env",
        ),
        (
            "[providers.email]\nkind = \"sendgrid\"\n",
            "providers.email.api_key_env",
        ),
        (
            "[providers.email]\nkind = \"carrier-pigeon\"\n",
            "providers.email.kind",
        ),
        (
            "[providers.email]\nkind = \"sendgrid\"\napi_key_env = \"PATH\"\nbase_urll = \"x\"\n",
            "providers.email.base_urll",
        ),
    ] {
        let path = dir.path().join("settings.toml");
        std::fs::write(&path, settings).expect("write settings");
        let output = Command::new(BIN)
            .arg("--config")
            .arg(&path)
            .env_remove("MESSAGING_CONFIG")
            .output()
            .expect("run");
        assert_eq!(output.status.code(), Some(2), "{settings}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(key), "{key} not named in {stderr}");
        if settings.contains("\"five\"") {
            // Word for word the README's example of such a line.
            assert_eq!(
                stderr.trim_end(),
                "messaging-service: configuration error: dispatch.max_attempts: \
                 invalid type: found string \"five\", expected u32"
            );
        }
    }

    let output = Command::new(BIN)
        .env("MESSAGING_CONFIG", dir.path().join("missing.toml"))
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));

    // An empty MESSAGING_CONFIG (a compose file's `${UNSET}`) is no file named: the
    // defaults are read, and the first problem is the environment's own.
    let empty = tempfile::tempdir().expect("temp dir");
    let output = Command::new(BIN)
        .env("MESSAGING_CONFIG", "")
        .env("MESSAGING__LOG__LEVEL", "loud")
        .current_dir(empty.path())
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("messaging-service: configuration error: log.level:"),
        "{stderr}"
    );

    let output = Command::new(BIN)
        .env_remove("MESSAGING_CONFIG")
        .env("MESSAGING__LOG__LEVEL", "loud")
        .current_dir(dir.path())
        .arg("--config")
        .arg(dir.path().join("empty.toml"))
        .output()
        .expect("run");
    // The missing file is the first problem met.
    assert_eq!(output.status.code(), Some(2));
    std::fs::write(dir.path().join("empty.toml"), "").expect("write");
    let output = Command::new(BIN)
        .env_remove("MESSAGING_CONFIG")
        .env("MESSAGING__LOG__LEVEL", "loud")
        .arg("--config")
        .arg(dir.path().join("empty.toml"))
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("log.level"));
}

#[test]
fn a_database_that_cannot_be_opened_is_logged_without_its_password() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("settings.toml"), "").expect("write settings");
    // Port 1: nothing listens there, so the connection is refused at once. The other two
    // are URLs libpq cannot read, whose errors quote what they could not read.
    // Each error must still say why, so that a test of redaction cannot pass on an
    // error that never held libpq's text.
    for (url, shown, why) in [
        (
            "postgres://app:s3cret@127.0.0.1:1/messaging?password=s3cret",
            "postgres://127.0.0.1:1/messaging",
            "Connection refused",
        ),
        (
            "postgres://app:s3%zzcret@127.0.0.1:1/messaging",
            "postgres://127.0.0.1:1/messaging",
            r#"invalid percent-encoded token: "***""#,
        ),
        (
            "postgres://app:s3/cret@127.0.0.1:1/messaging",
            "(a URL not shown: it may hold a password)",
            "the database's own error is not shown",
        ),
    ] {
        let output = Command::new(BIN)
            .arg("--config")
            .arg(dir.path().join("settings.toml"))
            .env_remove("MESSAGING_CONFIG")
            .env("MESSAGING__SERVER__BIND", "127.0.0.1:0")
            .env("MESSAGING__DATABASE__URL", url)
            .env("MESSAGING__DATABASE__TIMEOUT_MS", "1000")
            .output()
            .expect("run");
        assert_eq!(output.status.code(), Some(1), "{url}");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let failed: Value = stdout
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|line| line["msg"] == "service failed")
            .unwrap_or_else(|| panic!("no `service failed` line in {stdout}"));
        let error = failed["error"].as_str().unwrap_or_default();
        assert!(
            error.starts_with(&format!("opening database {shown}: ")),
            "{error}"
        );
        assert!(error.contains(why), "{error}");
        for piece in ["s3cret", "s3%zz", "zzcret", "\"s3\"", "cret"] {
            assert!(!stdout.contains(piece), "{piece} in {stdout}");
        }
        assert!(!String::from_utf8_lossy(&output.stderr).contains("cret"));
    }
}

#[test]
fn the_listening_line_holds_the_real_bound_address() {
    let app = TestApp::spawn("");
    let line = &app.logs_with("listening")[0];
    assert_eq!(line["level"], "info");
    assert!(line["ts"].as_str().is_some_and(|t| t.ends_with('Z')));
    let addr = line["addr"].as_str().expect("addr");
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "{addr}"
    );
    assert_eq!(app.get("/healthz").status, 200);
}

/// With port 0 the `listening` line is the only way to learn the address, so it is
/// written at every `log.level`, `error` too (`spawn` waits for it).
#[test]
fn the_listening_line_is_logged_at_every_level() {
    for level in ["warning", "error"] {
        let app = TestApp::spawn(&format!("[log]\nlevel = \"{level}\"\n"));
        assert_eq!(app.get("/healthz").status, 200, "{level}");
        let listening = app.logs_with("listening");
        assert_eq!(listening.len(), 1, "{level}");
        assert_eq!(listening[0]["level"], "info");
    }
}

#[test]
fn every_log_line_is_json_with_ts_level_and_msg() {
    let app = TestApp::spawn("");
    app.post("/api/messages/sms", &sample_sms());
    app.post("/api/messages/sms", &json!({"broken": true}));
    app.get("/api/messages/1");
    signal(app.pid(), "TERM");
    let (status, logs) = app.wait_for_exit();
    assert!(status.success());
    assert!(logs.len() >= 3, "{logs:?}");
    for line in &logs {
        for key in ["ts", "level", "msg"] {
            assert!(line[key].is_string(), "{key} missing in {line}");
        }
        assert!(
            !line.to_string().contains("Hello! This is a test SMS"),
            "bodies are never logged: {line}"
        );
    }
}

#[test]
fn sigterm_and_sigint_stop_gracefully_with_exit_0() {
    for signal_name in ["TERM", "INT"] {
        let app = TestApp::spawn("");
        assert_eq!(app.post("/api/messages/sms", &sample_sms()).status, 202);
        signal(app.pid(), signal_name);
        let (status, logs) = app.wait_for_exit();
        assert_eq!(status.code(), Some(0), "SIG{signal_name}");
        let last = logs.last().expect("a last line");
        assert_eq!(last["msg"], "stopped", "the log was flushed to the end");
        let stopping = logs
            .iter()
            .find(|l| l["msg"] == "stopping")
            .expect("stopping");
        assert_eq!(stopping["signal"], format!("SIG{signal_name}"));
    }
}

#[derive(diesel::QueryableByName)]
struct Waiting {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// The lock `store::open` takes around its migrations ("messages" in ASCII).
const MIGRATION_LOCK: i64 = 0x6d65_7373_6167_6573;

/// The service started by hand on the database `url` (no readiness wait, unlike
/// `TestApp`), its log lines collected as they come; killed if the test fails first, so
/// that no server outlives it.
struct RawService {
    child: std::process::Child,
    logs: Arc<std::sync::Mutex<Vec<Value>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl RawService {
    fn start(url: &str, timeout_ms: u64) -> RawService {
        use std::io::BufRead;
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("settings.toml");
        std::fs::write(&config, "").expect("settings");
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .env_remove("MESSAGING_CONFIG")
            .env("MESSAGING__SERVER__BIND", "127.0.0.1:0")
            .env("MESSAGING__DATABASE__URL", url)
            .env("MESSAGING__DATABASE__TIMEOUT_MS", timeout_ms.to_string())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start messaging-service");
        let stdout = child.stdout.take().expect("stdout");
        let logs = Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = logs.clone();
        let reader = std::thread::spawn(move || {
            let lines = std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok);
            for line in lines.filter_map(|line| serde_json::from_str::<Value>(&line).ok()) {
                kept.lock().expect("logs").push(line);
            }
        });
        RawService {
            child,
            logs,
            reader: Some(reader),
            _dir: dir,
        }
    }

    fn has_logged(&self, msg: &str) -> bool {
        self.logs
            .lock()
            .expect("logs")
            .iter()
            .any(|l| l["msg"] == msg)
    }

    /// Its exit status and every line it logged.
    fn wait_for_exit(mut self) -> (std::process::ExitStatus, Vec<Value>) {
        let status = poll_until("the server to exit", DEADLINE, || {
            self.child.try_wait().ok().flatten()
        });
        if let Some(reader) = self.reader.take() {
            reader.join().expect("log reader");
        }
        let logs = std::mem::take(&mut *self.logs.lock().expect("logs"));
        (status, logs)
    }
}

impl Drop for RawService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How long a backend other than the test's own has been waiting on a lock in `db`, in
/// milliseconds (0 when none is).
fn longest_lock_wait_ms(db: &PgDatabase) -> i64 {
    use diesel::RunQueryDsl;
    let waiting = format!(
        "SELECT COALESCE(MAX((EXTRACT(EPOCH FROM (now() - query_start)) * 1000)::BIGINT), 0) \
         AS n FROM pg_stat_activity WHERE datname = '{}' AND wait_event_type = 'Lock' \
         AND pid <> pg_backend_pid()",
        db.name()
    );
    diesel::sql_query(&waiting)
        .load::<Waiting>(&mut db.connect())
        .expect("lock waits")
        .first()
        .map_or(0, |r| r.n)
}

/// A stop signal during start-up is caught from its first moment: here the service waits
/// for another instance's migration lock, is told to stop, and stops gracefully (exit 0,
/// `stopping` and `stopped` logged) as soon as it has started, instead of dying with 143.
#[test]
fn a_stop_signal_during_start_up_stops_gracefully_once_started() {
    use diesel::RunQueryDsl;
    let Some(db) = postgres_database("a_stop_signal_during_start_up_stops_gracefully...") else {
        return;
    };
    let mut holder = db.connect();
    diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
        .execute(&mut holder)
        .expect("take the migration lock");
    let service = RawService::start(&db.url(), 60_000);
    poll_until("the start to wait for the migration lock", DEADLINE, || {
        (longest_lock_wait_ms(&db) > 0).then_some(())
    });
    signal(service.child.id(), "TERM");
    diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"))
        .execute(&mut holder)
        .expect("let the migrations run");
    let (status, logs) = service.wait_for_exit();
    assert_eq!(status.code(), Some(0), "{status}");
    let stopping = logs
        .iter()
        .find(|l| l["msg"] == "stopping")
        .expect("stopping");
    assert_eq!(stopping["signal"], "SIGTERM");
    assert_eq!(
        logs.last().map(|l| l["msg"].clone()),
        Some(json!("stopped"))
    );
}

/// Another instance's migrations may hold their lock for longer than
/// `database.timeout_ms` (a new index over millions of messages): a start waits for them
/// rather than failing on its statement timeout.
#[test]
fn a_start_waits_for_another_instances_migrations_past_its_timeout() {
    use diesel::RunQueryDsl;
    let Some(db) = postgres_database("a_start_waits_for_another_instances_migrations...") else {
        return;
    };
    let mut holder = db.connect();
    diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
        .execute(&mut holder)
        .expect("take the migration lock");
    let mut service = RawService::start(&db.url(), 500);
    poll_until("the start to wait 1.5 s, three timeouts", DEADLINE, || {
        assert_eq!(service.child.try_wait().ok().flatten(), None, "it gave up");
        (longest_lock_wait_ms(&db) > 1_500).then_some(())
    });
    diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"))
        .execute(&mut holder)
        .expect("let the migrations run");
    poll_until("the service to listen", DEADLINE, || {
        assert_eq!(service.child.try_wait().ok().flatten(), None, "it exited");
        service.has_logged("listening").then_some(())
    });
    signal(service.child.id(), "TERM");
    let (status, _) = service.wait_for_exit();
    assert_eq!(status.code(), Some(0), "{status}");
}

#[test]
fn a_restart_on_the_same_database_keeps_every_accepted_message() {
    let dir = Arc::new(TestDir::new());
    let app = TestApp::spawn_in(dir.clone(), "");
    let mut accepted = Vec::new();
    for n in 0..20 {
        let response = app.post("/api/messages/sms", &sms(n));
        assert_eq!(response.status, 202);
        accepted.push(response.json());
    }
    let hook = app.post("/api/webhooks/sms", &sample_sms_webhook()).json();
    assert!(app.stop().success());

    let app = TestApp::spawn_in(dir, "");
    for message in &accepted {
        let stored = app.get(&format!("/api/messages/{}", message["id"]));
        assert_eq!(stored.status, 200);
        let stored = stored.json();
        assert_eq!(stored["provider"], "sms-mms");
        assert_eq!(stored["conversation_id"], message["conversation_id"]);
    }
    // The webhook's dedupe survives the restart too.
    assert_eq!(
        app.post("/api/webhooks/sms", &sample_sms_webhook()).json(),
        hook
    );
    let next = app.post("/api/messages/sms", &sample_sms()).json();
    assert_eq!(next["id"], 22, "ids continue after the 21 stored ones");
    assert_eq!(app.get("/api/conversations").json()["meta"]["total"], 21);
}

/// SQLite serves one instance: a second process on the same file would clear the first
/// one's leases and send what it is sending. It is refused at start (exit 1, saying why),
/// and the first goes on; once the first has stopped, a start on the file succeeds.
#[test]
fn a_second_process_on_one_sqlite_file_is_refused_and_the_first_goes_on() {
    let dir = Arc::new(TestDir::new());
    let url = format!("sqlite://{}", database_path(dir.path()).display());
    let first = TestApp::spawn_with_url(dir.clone(), &url, "");
    let id = first.accept("/api/messages/sms", &sample_sms());
    let (status, logs) = RawService::start(&url, 5_000).wait_for_exit();
    assert_eq!(status.code(), Some(1), "{logs:?}");
    let failed = logs
        .iter()
        .find(|line| line["msg"] == "service failed")
        .unwrap_or_else(|| panic!("no `service failed` line in {logs:?}"));
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(error.contains("in use by another process"), "{error}");
    assert!(
        logs.iter().all(|line| line["msg"] != "listening"),
        "{logs:?}"
    );
    assert_eq!(finished(&first, id)["status"], "sent");
    assert_eq!(first.post("/api/messages/sms", &sms(1)).status, 202);
    assert!(first.stop().success());

    let again = TestApp::spawn_with_url(dir, &url, "");
    assert_eq!(again.message(id)["status"], "sent");
}

/// The connection watch holds two descriptors per connection: a service started with a
/// small soft limit of open files raises it to its hard limit, and says so once.
#[test]
fn a_small_open_file_limit_is_raised_to_the_hard_limit_at_start() {
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).expect("read the limit");
    if hard <= 256 {
        skipped(
            "a_small_open_file_limit_is_raised...",
            "the hard limit of open files is 256 or less",
        );
        return;
    }
    let app = TestApp::spawn_with_open_files("", 256);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", app.pid())).expect("limits");
    let open_files: Vec<&str> = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .expect("the open files line")
        .split_whitespace()
        .collect();
    // "Max open files  SOFT  HARD  files"
    assert_eq!(open_files[3], open_files[4], "{limits}");
    assert_eq!(open_files[4], hard.to_string(), "{limits}");
    let raised = app.logs_with("open file limit raised");
    assert_eq!(raised.len(), 1, "{raised:?}");
    assert_eq!(raised[0]["from"], 256);
    assert_eq!(raised[0]["to"], hard);
}
