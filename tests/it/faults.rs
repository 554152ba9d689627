//! A 202 is a promise. These tests cause the faults a real service meets (SIGKILL mid-
//! stream, SIGTERM under load, a flood past the backlog, a database locked by another
//! process or on a full disk, clients that stall) and check that every accepted message
//! survives and is finished, and that the service recovers by itself.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel::RunQueryDsl;
use serde_json::{json, Value};

use crate::helpers::*;

/// Clients that post SMS until told to stop or until the server goes away; they keep the
/// id of every message that got a 202.
struct Load {
    stop: Arc<AtomicBool>,
    accepted: Arc<Mutex<Vec<i64>>>,
    refused: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(app: &TestApp, clients: usize, per_client: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(AtomicU64::new(0));
        let threads = (0..clients)
            .map(|c| {
                let (client, stop, accepted, refused) = (
                    app.client(),
                    stop.clone(),
                    accepted.clone(),
                    refused.clone(),
                );
                std::thread::spawn(move || {
                    for n in 0..per_client {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        match client.try_post("/api/messages/sms", &sms(c * per_client + n)) {
                            Some((202, body)) => {
                                let id = body["id"].as_i64().expect("id");
                                accepted.lock().expect("lock").push(id);
                            }
                            Some((503, body)) => {
                                assert_eq!(body["error"]["code"], "overloaded", "{body}");
                                refused.fetch_add(1, Ordering::Relaxed);
                            }
                            Some((status, body)) => panic!("unexpected {status}: {body}"),
                            None => break, // the server is gone
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            accepted,
            refused,
            threads,
        }
    }

    fn accepted_count(&self) -> usize {
        self.accepted.lock().expect("lock").len()
    }

    /// Stops the clients and collects what they saw.
    fn finish(self) -> (Vec<i64>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.join()
    }

    /// Lets every client send all it was asked to, then collects what they saw.
    fn join(self) -> (Vec<i64>, u64) {
        for thread in self.threads {
            thread.join().expect("client thread");
        }
        let accepted = self.accepted.lock().expect("lock").clone();
        (accepted, self.refused.load(Ordering::Relaxed))
    }
}

/// Every accepted id exists and ends `sent` or `failed`; nothing stays `queued`.
fn all_finished(app: &TestApp, accepted: &[i64]) {
    let unique: BTreeSet<i64> = accepted.iter().copied().collect();
    assert_eq!(unique.len(), accepted.len(), "an id was given twice");
    for id in accepted {
        let status = finished(app, *id)["status"].clone();
        assert!(status == "sent" || status == "failed", "{id}: {status}");
    }
}

fn integrity_ok(database: &Path) {
    let mut conn = sqlite(database);
    #[derive(diesel::QueryableByName)]
    struct Check {
        #[diesel(sql_type = diesel::sql_types::Text)]
        integrity_check: String,
    }
    let rows: Vec<Check> = diesel::sql_query("PRAGMA integrity_check")
        .load(&mut conn)
        .expect("integrity check");
    assert_eq!(rows.first().map(|r| r.integrity_check.as_str()), Some("ok"));
}

/// Kills the server with SIGKILL once `kill_after` messages were accepted by four
/// concurrent clients, restarts it on the same database, and checks every 202.
fn killed_mid_stream(kill_after: usize, settings: &str) {
    let dir = Arc::new(TestDir::new());
    let app = TestApp::spawn_in(dir.clone(), settings);
    let load = Load::start(&app, 4, 10_000);
    app.eventually("enough accepted messages", || {
        (load.accepted_count() >= kill_after).then_some(())
    });
    signal(app.pid(), "KILL");
    let (status, _) = app.wait_for_exit();
    assert_eq!(status.code(), None, "killed by a signal");
    let (accepted, _) = load.finish();
    assert!(accepted.len() >= kill_after);

    if !on_postgres() {
        integrity_ok(&database_path(dir.path()));
    }
    let app = TestApp::spawn_in(dir, SEEDED);
    all_finished(&app, &accepted);
}

#[test]
fn sigkill_early_in_a_stream_of_writes_loses_no_accepted_message() {
    killed_mid_stream(20, "");
}

#[test]
fn sigkill_while_group_commits_are_busy_loses_no_accepted_message() {
    killed_mid_stream(300, "");
}

#[test]
fn sigkill_while_dispatch_is_in_flight_loses_no_accepted_message() {
    // Attempts take 30 ms and a third fail and retry: at the kill, attempts are in flight
    // and attempt records are being committed.
    killed_mid_stream(
        150,
        "[outcomes]\nlatency_ms = 30\nerror_pct = 33.0\n[dispatch]\nbackoff_initial_ms = 10\n",
    );
}

/// How a server stopped by a signal under load ended.
struct Stopped {
    status: ExitStatus,
    logs: Vec<Value>,
    /// The ids the clients got a 202 for.
    accepted: Vec<i64>,
    /// From the signal to the exit, as the test measures it.
    took: Duration,
}

/// Starts a server on `dir` whose attempts take a minute (everything is still queued at
/// the stop), lets four clients post until 200 messages are accepted, then sends
/// `signal_name` while they keep posting, and waits for the exit.
fn stop_under_load(dir: Arc<TestDir>, signal_name: &str) -> Stopped {
    let app = TestApp::spawn_in(dir, "[outcomes]\nlatency_ms = 60000\n");
    let load = Load::start(&app, 4, 10_000);
    app.eventually("load under way", || {
        (load.accepted_count() >= 200).then_some(())
    });
    let signalled = Instant::now();
    signal(app.pid(), signal_name);
    let (status, logs) = app.wait_for_exit();
    let took = signalled.elapsed();
    let (accepted, _) = load.finish();
    assert_eq!(
        logs.last().map(|l| l["msg"].clone()),
        Some(json!("stopped")),
        "SIG{signal_name}: the log was flushed to the end"
    );
    Stopped {
        status,
        logs,
        accepted,
        took,
    }
}

#[test]
fn sigterm_under_load_exits_0_and_the_next_start_finishes_the_work() {
    let dir = Arc::new(TestDir::new());
    let Stopped {
        status, accepted, ..
    } = stop_under_load(dir.clone(), "TERM");
    assert_eq!(status.code(), Some(0));
    let app = TestApp::spawn_in(dir, SEEDED);
    let resumed = app.logs_with("resumed queued messages")[0]["count"]
        .as_u64()
        .expect("count");
    assert!(resumed > 0, "work was handed back to the next start");
    all_finished(&app, &accepted);
}

/// The README's bound on a graceful stop under load.
const STOP_LIMIT: Duration = Duration::from_secs(10);

#[test]
fn sigterm_and_sigint_under_load_exit_0_within_10_seconds() {
    for signal_name in ["TERM", "INT"] {
        let stopped = stop_under_load(Arc::new(TestDir::new()), signal_name);
        assert_eq!(stopped.status.code(), Some(0), "SIG{signal_name}");
        assert!(
            stopped.took <= STOP_LIMIT,
            "SIG{signal_name}: exited {:?} after the signal, the limit is {STOP_LIMIT:?}",
            stopped.took
        );
        let stopping = stopped
            .logs
            .iter()
            .find(|l| l["msg"] == "stopping")
            .expect("a stopping line");
        assert_eq!(stopping["signal"], format!("SIG{signal_name}"));
        assert!(!stopped.accepted.is_empty());
    }
}

/// A connection that sent a request head promising 200 bytes of body, and 15 of them.
fn stalled_mid_body(addr: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .write_all(
            b"POST /api/messages/sms HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 200\r\n\r\n{\"from\": \"+1201",
        )
        .expect("partial body");
    stream
}

#[test]
fn sigterm_with_a_client_stalled_mid_body_still_exits_within_10_seconds() {
    let app = TestApp::spawn("");
    let addr = app.base.trim_start_matches("http://").to_owned();
    let stalled = stalled_mid_body(&addr);
    // Served after the stalled request was sent on its own connection: the server is
    // reading that body when the signal comes.
    assert_eq!(app.get("/healthz").status, 200);
    let signalled = Instant::now();
    signal(app.pid(), "TERM");
    let (status, _) = app.wait_for_exit();
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0));
    assert!(took <= STOP_LIMIT, "exited {took:?} after SIGTERM");
    drop(stalled);
}

#[test]
fn forty_readers_of_pages_of_large_messages_stay_within_the_read_budget() {
    // 40 messages of 250 KB: a 10 MB page. Forty readers at once would hold some 1.2 GB
    // of rows, views and JSON; the budget lets a few through at a time.
    let app = TestApp::spawn("[providers.sms-mms]\nseed = 42\n");
    let large = "x".repeat(250_000);
    for n in 0..40 {
        let mut body = sms(0);
        body["body"] = json!(format!("{n:03}{large}"));
        app.accept("/api/messages/sms", &body);
    }
    let watcher = PeakRss::watch(app.pid());
    let readers: Vec<_> = (0..40)
        .map(|_| {
            let base = app.base.clone();
            std::thread::spawn(move || {
                ureq::get(&format!(
                    "{base}/api/conversations/1/messages?page_size=100"
                ))
                .call()
                .expect("answered")
                .into_string()
                .expect("text")
            })
        })
        .collect();
    for reader in readers {
        // Counted, not parsed: the check must not cost more than the answer.
        let page = reader.join().expect("reader");
        assert_eq!(
            page.matches("\"direction\":\"outbound\"").count(),
            40,
            "a complete page"
        );
        assert_eq!(page.matches(large.as_str()).count(), 40, "every body whole");
    }
    let peak = watcher.stop();
    assert!(
        peak < 250 * 1024 * 1024,
        "peak RSS {} MB",
        peak / (1024 * 1024)
    );
}

#[test]
fn small_reads_do_not_wait_behind_a_large_page_waiting_for_room() {
    // A 25 MB page, four times over, is more than the large answers' whole room.
    let app = TestApp::spawn("[providers.sms-mms]\nseed = 42\n");
    let large = "x".repeat(250_000);
    for n in 0..100 {
        let mut body = sms(0);
        body["body"] = json!(format!("{n:03}{large}"));
        app.accept("/api/messages/sms", &body);
    }
    let small = app.accept("/api/messages/sms", &sms(1));
    // Larger than a single message's first guess of room (16 KB), small enough for the
    // small answers' lane: read a second time, with room for what it holds.
    let mut second_round = sms(2);
    second_round["body"] = json!("y".repeat(20_001));
    let second_round = app.accept("/api/messages/sms", &second_round);
    let small_conversation = app.get(&format!("/api/messages/{small}")).json()["conversation_id"]
        .as_i64()
        .expect("a conversation");
    let addr = app.base.trim_start_matches("http://").to_owned();
    let page = b"GET /api/conversations/1/messages?page_size=100 HTTP/1.1\r\nHost: x\r\n\r\n";
    // One reader that stops reading keeps a copy's worth of the room until its connection
    // ends; the next reader of the page waits for the rest of it, for up to 60 s.
    let mut stalled = TcpStream::connect(&addr).expect("connect");
    stalled.write_all(page).expect("request");
    let mut head = [0u8; 12];
    stalled.read_exact(&mut head).expect("its answer begins");
    assert_eq!(&head, b"HTTP/1.1 200");
    let mut waiting = TcpStream::connect(&addr).expect("connect");
    waiting.write_all(page).expect("request");
    // Readers of small answers, and of one that does not exist, after it: each answered
    // at once, not after the large page's wait.
    for round in 0..10 {
        for (path, status) in [
            (
                format!("/api/conversations/{small_conversation}/messages"),
                200,
            ),
            (format!("/api/messages/{small}"), 200),
            (format!("/api/messages/{second_round}"), 200),
            ("/api/conversations/999/messages".to_owned(), 404),
        ] {
            let asked = Instant::now();
            assert_eq!(app.get(&path).status, status, "{path}");
            let took = asked.elapsed();
            assert!(
                took < Duration::from_secs(3),
                "round {round}: {path} took {took:?}"
            );
        }
    }
    drop((stalled, waiting));
}

#[test]
fn a_flood_past_the_backlog_gets_503s_in_bounded_memory_and_recovers_by_itself() {
    let app = TestApp::spawn("[dispatch]\nbacklog_limit = 1000\n[outcomes]\nlatency_ms = 3000\n");
    let watcher = PeakRss::watch(app.pid());
    let (accepted, refused) = Load::start(&app, 8, 600).join();
    let peak = watcher.stop();

    assert!(
        accepted.len() >= 1000,
        "the backlog fills: {}",
        accepted.len()
    );
    assert!(refused > 0, "past it, 503s");
    assert!(peak < 150 * 1024 * 1024, "peak RSS {peak} bytes");
    // Load drops; the providers drain the backlog and new messages are taken again.
    all_finished(&app, &accepted);
    let later = app.eventually("the service to take messages again", || {
        let response = app.post("/api/messages/sms", &sms(999_999));
        (response.status == 202).then_some(response)
    });
    assert_eq!(later.json()["status"], "queued");
}

/// For a test of SQLite itself: a server whose message 1 is accepted and finished;
/// `None` (SKIPPED) on PostgreSQL.
fn sqlite_app_with_message_1(test: &str) -> Option<TestApp> {
    if sqlite_only(test) {
        return None;
    }
    let app = TestApp::spawn("");
    assert_eq!(app.accept("/api/messages/sms", &sms(0)), 1);
    all_finished(&app, &[1]);
    Some(app)
}

#[test]
fn an_attempt_record_the_database_refuses_is_written_again_until_it_lands() {
    let dir = Arc::new(TestDir::new());
    let app = TestApp::spawn_in(dir.clone(), SEEDED);
    // A trigger that refuses every attempt record: the fault, caused in the database.
    let (refuse, allow): (&[&str], &[&str]) = if on_postgres() {
        (
            &[
                "CREATE FUNCTION refuse_attempts() RETURNS trigger AS $$ BEGIN \
                 RAISE EXCEPTION 'refused by the test'; END; $$ LANGUAGE plpgsql",
                "CREATE TRIGGER refuse_attempts BEFORE INSERT ON dispatch_attempts \
                 FOR EACH ROW EXECUTE FUNCTION refuse_attempts()",
            ],
            &[
                "DROP TRIGGER refuse_attempts ON dispatch_attempts",
                "DROP FUNCTION refuse_attempts()",
            ],
        )
    } else {
        (
            &[
                "CREATE TRIGGER refuse_attempts BEFORE INSERT ON dispatch_attempts \
               BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
            ],
            &["DROP TRIGGER refuse_attempts"],
        )
    };
    for statement in refuse {
        dir.execute_sql(statement);
    }
    let id = app.accept("/api/messages/sms", &sms(0));
    app.eventually("a refused record retried", || {
        (app.logs_with("attempt not recorded; will retry").len() >= 2).then_some(())
    });
    let waiting = app.message(id);
    assert_eq!(
        waiting["status"], "queued",
        "not sent until its record lands"
    );
    assert_eq!(waiting["attempts"], json!([]));

    for statement in allow {
        dir.execute_sql(statement);
    }
    let sent = finished(&app, id);
    assert_eq!(sent["status"], "sent");
    assert_eq!(outcomes(&sent), ["success"], "one attempt, recorded once");
}

#[test]
fn a_database_locked_by_another_process_gets_503_and_recovers_without_restart() {
    /// The README's bound: the 2 s busy timeout, a commit, and a loaded CI machine's slack.
    const LOCK_BOUND: Duration = Duration::from_millis(3_000);
    let Some(app) = sqlite_app_with_message_1("a_database_locked_by_another_process...") else {
        return;
    };
    let mut other = sqlite(&database_path(app.dir.path()));
    // Like any polite SQLite client, wait for the service's own short writes to pass.
    diesel::sql_query("PRAGMA busy_timeout = 5000")
        .execute(&mut other)
        .expect("set busy timeout");
    diesel::sql_query("BEGIN EXCLUSIVE")
        .execute(&mut other)
        .expect("take the write lock");

    let refused = app.post("/api/messages/sms", &sms(1));
    assert_eq!(refused.error_code(503), "not_ready");
    assert_eq!(refused.header("Retry-After"), Some("1"));
    // Writes queued behind a batch that waits for the lock are answered with it, so no
    // client waits much past the 2 s busy timeout (it was 5.9 s when each waited in turn).
    let waits: Vec<_> = (0..8)
        .map(|n| {
            let client = app.client();
            std::thread::spawn(move || {
                let started = Instant::now();
                let answer = client.try_post("/api/messages/sms", &sms(10 + n));
                (answer.map(|(status, _)| status), started.elapsed())
            })
        })
        .collect();
    for wait in waits {
        let (status, took) = wait.join().expect("client");
        assert_eq!(status, Some(503));
        assert!(took < LOCK_BOUND, "answered after {took:?}");
    }
    let started = Instant::now();
    assert_eq!(app.get("/readyz").error_code(503), "not_ready");
    assert!(
        started.elapsed() < LOCK_BOUND,
        "/readyz took {:?}",
        started.elapsed()
    );
    let hook = app.post("/api/webhooks/sms", &sample_sms_webhook());
    assert_eq!(hook.error_code(503), "not_ready");
    assert_eq!(app.get("/healthz").status, 200, "alive all the same");
    assert_eq!(app.get("/api/messages/1").status, 200, "reads still work");

    diesel::sql_query("COMMIT")
        .execute(&mut other)
        .expect("release the lock");
    drop(other);
    assert_eq!(app.get("/readyz").status, 200);
    let accepted = app.post("/api/messages/sms", &sms(2));
    assert_eq!(accepted.status, 202);
    // Nothing refused was stored: ids 1 (before) and 2 (after) only.
    assert_eq!(accepted.json()["id"], 2);
    all_finished(&app, &[1, 2]);
}

/// Files made immutable (`chattr +i`: read-only even for root) until dropped.
struct Immutable(Vec<PathBuf>);

impl Immutable {
    fn set(files: Vec<PathBuf>) -> Option<Immutable> {
        let done = Command::new("chattr")
            .arg("+i")
            .args(&files)
            .status()
            .ok()?;
        done.success().then_some(Immutable(files))
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").args(&self.0).status();
    }
}

#[test]
fn a_read_only_database_file_gets_503_and_recovers_without_restart() {
    let Some(app) = sqlite_app_with_message_1("a_read_only_database_file...") else {
        return;
    };
    let database = database_path(app.dir.path());
    let wal = database.with_extension("db-wal");
    // Not the -shm file: SQLite maps it into memory, where a refused write is a SIGBUS.
    let Some(read_only) = Immutable::set(vec![database, wal]) else {
        skipped(
            "a_read_only_database_file...",
            "chattr +i is not possible here (needs root on ext4)",
        );
        return;
    };
    for n in 1..=2 {
        let refused = app.post("/api/messages/sms", &sms(n));
        assert_eq!(refused.error_code(503), "not_ready");
    }
    assert_eq!(app.get("/readyz").error_code(503), "not_ready");
    assert_eq!(app.get("/api/messages/1").status, 200, "reads still work");

    drop(read_only);
    app.eventually("readiness to come back", || {
        (app.get("/readyz").status == 200).then_some(())
    });
    let accepted = app.post("/api/messages/sms", &sms(3));
    assert_eq!(accepted.status, 202, "{}", accepted.text);
    assert_eq!(accepted.json()["id"], 2, "nothing refused was stored");
    all_finished(&app, &[1, 2]);
}

/// A small tmpfs the test mounts (root only) and unmounts when dropped.
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    fn mount(dir: &Path) -> Option<SmallDisk> {
        let path = dir.join("disk");
        std::fs::create_dir_all(&path).ok()?;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
            .arg(&path)
            .output()
            .ok()?;
        mounted.status.success().then_some(SmallDisk { path })
    }

    /// Fills the disk to the last byte.
    fn fill(&self) -> PathBuf {
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).expect("create filler");
        let block = vec![0u8; 64 * 1024];
        while file.write_all(&block).is_ok() {}
        while file.write_all(&block[..512]).is_ok() {}
        let _ = file.flush();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[test]
fn a_full_disk_gets_503_and_recovers_without_restart() {
    if sqlite_only("a_full_disk_gets_503...") {
        return;
    }
    let dir = Arc::new(TestDir::new());
    let Some(disk) = SmallDisk::mount(dir.path()) else {
        skipped(
            "a_full_disk_gets_503...",
            "cannot mount a tmpfs (needs root)",
        );
        return;
    };
    let app = TestApp::spawn_at(dir.clone(), &disk.path.join("messaging.db"), "");
    assert_eq!(app.post("/api/messages/sms", &sms(0)).status, 202);

    let filler = disk.fill();
    let mut refused = 0;
    for n in 1..=3 {
        let response = app.post("/api/messages/sms", &sms(n));
        assert_ne!(response.status, 202, "a 202 that could not be stored");
        assert_eq!(response.error_code(503), "not_ready");
        refused += 1;
    }
    assert_eq!(refused, 3);
    assert_eq!(app.get("/readyz").error_code(503), "not_ready");

    std::fs::remove_file(filler).expect("free the disk");
    app.eventually("readiness to come back", || {
        (app.get("/readyz").status == 200).then_some(())
    });
    let id = app.accept("/api/messages/sms", &sms(4));
    all_finished(&app, &[1, id]);
    drop(app);
    drop(disk);
}

/// Reads whatever the server sends until it closes the connection.
fn read_to_close(stream: &mut TcpStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// CONTRACT 12: the errors actix-http's parser answers before any handler (a head it
/// cannot parse, one with too many headers, a first head that stalls) carry the error
/// body of section 3.4 too; an answer written before one on the same connection is left
/// as it was.
#[test]
fn the_http_parsers_own_refusals_carry_the_error_body() {
    let app = TestApp::spawn("");
    let addr = app.base.trim_start_matches("http://").to_owned();
    let exchange = |head: &[u8]| {
        let mut stream = TcpStream::connect(&addr).expect("connect");
        stream.write_all(head).expect("write the head");
        read_to_close(&mut stream)
    };
    let many_headers: String = (0..200).map(|n| format!("X-{n}: a\r\n")).collect();
    let many = format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n");
    let del = b"POST /api/messages/sms HTTP/1.1\r\nHost: x\r\nIdempotency-Key: a\x7fb\r\nContent-Length: 0\r\n\r\n";
    let fine = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let cases: [(&str, Vec<u8>, &str, &str); 4] = [
        (
            "too many headers",
            many.into_bytes(),
            "431",
            "headers_too_large",
        ),
        (
            "a DEL byte in a header",
            del.to_vec(),
            "400",
            "malformed_request",
        ),
        (
            "after a good request",
            [fine.as_slice(), del].concat(),
            "400",
            "malformed_request",
        ),
        (
            "a stalled first head",
            b"GET /healthz HTTP/1.1\r\nHo".to_vec(),
            "408",
            "request_timeout",
        ),
    ];
    for (case, head, status, code) in cases {
        let answer = exchange(&head);
        let start = answer.rfind("HTTP/1.1 4").expect("an error answer");
        if case == "after a good request" {
            let earlier = &answer[..start];
            assert!(
                earlier.starts_with("HTTP/1.1 200 OK\r\n"),
                "{case}: {answer}"
            );
            assert!(earlier.ends_with(r#"{"status":"ok"}"#), "{case}: {answer}");
        } else {
            assert_eq!(start, 0, "{case}: {answer}");
        }
        let (top, body) = answer[start..].split_once("\r\n\r\n").expect("a head");
        assert!(
            top.starts_with(&format!("HTTP/1.1 {status} ")),
            "{case}: {top}"
        );
        assert!(
            top.contains("\r\ncontent-type: application/json\r\n"),
            "{case}: {top}"
        );
        assert!(
            top.contains(&format!("\r\ncontent-length: {}\r\n", body.len())),
            "{case}: {top}"
        );
        let error: Value = serde_json::from_str(body).expect("a JSON body");
        assert_eq!(error["error"]["code"], code, "{case}: {body}");
    }
    // The service still serves after all that.
    assert_eq!(app.get("/healthz").status, 200);
}

#[test]
fn stalled_and_idle_clients_do_not_stop_others_from_being_served() {
    let app = TestApp::spawn("");
    let addr = app.base.trim_start_matches("http://").to_owned();
    // Many idle connections, one that stalls in its head, one that stalls in its body.
    let idle: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(&addr).expect("connect"))
        .collect();
    let mut stalled_head = TcpStream::connect(&addr).expect("connect");
    stalled_head
        .write_all(b"POST /api/messages/sms HTTP/1.1\r\nHost: x\r\nContent-Ty")
        .expect("partial head");
    let mut stalled_body = stalled_mid_body(&addr);

    // Everyone else is served meanwhile.
    for n in 0..20 {
        assert_eq!(app.post("/api/messages/sms", &sms(n)).status, 202);
    }
    assert_eq!(app.get("/healthz").status, 200);

    // The stalled ones are answered and closed by the server's deadlines.
    let head_answer = read_to_close(&mut stalled_head);
    assert!(
        head_answer.is_empty()
            || head_answer.starts_with("HTTP/1.1 408")
                && head_answer.contains(r#""code":"request_timeout""#),
        "{head_answer}"
    );
    let body_answer = read_to_close(&mut stalled_body);
    assert!(body_answer.starts_with("HTTP/1.1 408"), "{body_answer}");
    assert!(
        body_answer.contains(r#""code":"request_timeout""#),
        "{body_answer}"
    );
    assert!(body_answer.contains("did not arrive"), "{body_answer}");
    drop(idle);
    assert_eq!(app.get("/api/conversations").json()["meta"]["total"], 20);
}

/// Reads one whole HTTP/1.1 response (head, then `Content-Length` bytes of body), leaving
/// the connection open.
fn read_response(stream: &mut TcpStream) -> String {
    stream
        .set_read_timeout(Some(DEADLINE))
        .expect("read timeout");
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&answer).into_owned();
        if let Some(head_end) = text.find("\r\n\r\n") {
            let length = text[..head_end]
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .expect("a Content-Length header");
            if answer.len() >= head_end + 4 + length {
                return text;
            }
        }
        let n = stream.read(&mut chunk).expect("read the response");
        assert!(n > 0, "closed in the middle of the response: {text}");
        answer.extend_from_slice(&chunk[..n]);
    }
}

/// Sends the start of a request head on `conn` and waits for the server to close it,
/// 20 s at most (the watch's 10 s and slack); how long that took, and how the read ended.
fn stall_a_head(conn: &mut TcpStream) -> (Duration, String) {
    let stalled = Instant::now();
    conn.write_all(b"GET /heal").expect("a head, cut short");
    conn.set_read_timeout(Some(Duration::from_secs(10 + 10)))
        .expect("read timeout");
    let mut rest = Vec::new();
    let read = conn.read_to_end(&mut rest);
    let held = stalled.elapsed();
    match &read {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("still open after {held:?} ({:?}): {e}", e.kind()),
    }
    (held, format!("{read:?}"))
}

/// actix-http times only a connection's first request head: a client that sent the first
/// bytes of its second request and stopped held the connection for ever (a slowloris).
/// The connection watch ends it once no request has been under way for 10 s.
#[test]
fn a_later_request_head_that_stalls_is_closed_too() {
    let app = TestApp::spawn("");
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut conn = TcpStream::connect(&addr).expect("connect");
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send a request");
    let answer = read_response(&mut conn);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (held, read) = stall_a_head(&mut conn);
    assert!(
        held >= Duration::from_secs(4),
        "closed after only {held:?} ({read})"
    );
    // Everyone else is served as before.
    assert_eq!(app.get("/healthz").status, 200);
}

/// The same stall after a request that was still under way when the watch first looked
/// (10 s after the connection's first request): the end of that request starts the 10 s,
/// not the rest of the 300 s a busy connection has.
#[test]
fn a_stalled_head_after_a_long_request_is_closed_10_s_after_it() {
    let app = TestApp::spawn("");
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut conn = TcpStream::connect(&addr).expect("connect");
    let first = Instant::now();
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("a first request");
    assert!(read_response(&mut conn).starts_with("HTTP/1.1 200"));
    // A slow client, within every deadline (keep-alive 5 s, a body 10 s): its second
    // request starts at 4 s and its body ends at 12 s, so the request is under way when
    // the watch first looks, 10 s after the first.
    std::thread::sleep(Duration::from_secs(4));
    let body = sms(1).to_string();
    let (part, rest) = body.split_at(body.len() / 2);
    conn.write_all(
        format!(
            "POST /api/messages/sms HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{part}",
            body.len()
        )
        .as_bytes(),
    )
    .expect("a head and half a body");
    std::thread::sleep(Duration::from_secs(8));
    conn.write_all(rest.as_bytes())
        .expect("the rest of the body");
    let answer = read_response(&mut conn);
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert!(
        first.elapsed() >= Duration::from_secs(11),
        "{:?}",
        first.elapsed()
    );
    stall_a_head(&mut conn);
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_5_seconds() {
    let app = TestApp::spawn("");
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut conn = TcpStream::connect(&addr).expect("connect");
    // The clock starts before the request, so the server's idle time can only be shorter
    // than what the test measures, however late this thread runs.
    let sent = Instant::now();
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
        .expect("send a request");
    let answer = read_response(&mut conn);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("connection: close"),
        "the connection is kept alive: {answer}"
    );

    // Idle from here until the server's keep-alive timeout (5 s) closes the connection: a
    // timeout of the server's own, observed with slack on either side.
    conn.set_read_timeout(Some(Duration::from_secs(5 + 3)))
        .expect("read timeout");
    let mut byte = [0u8; 1];
    let read = conn.read(&mut byte);
    let idle = sent.elapsed();
    match &read {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(_) => panic!("the server sent more on an idle connection: {byte:?}"),
        Err(e) => panic!("not closed after {idle:?} idle ({:?}): {e}", e.kind()),
    }
    assert!(
        idle >= Duration::from_secs(4),
        "closed after only {idle:?} idle ({read:?})"
    );
    // Everyone else is served as before.
    assert_eq!(app.get("/healthz").status, 200);
}
