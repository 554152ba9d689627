//! Following a message (CONTRACT section 10): status callbacks to a receiver inside the
//! test that fails, hangs, answers 410 or is down (wiremock), checked with the test's own
//! Standard Webhooks code; callbacks owed across a SIGKILL; scheduled sends; and the retry
//! of failed messages.

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::helpers::*;

const SECRET: &str = "whsec_QmFzZTY0IGNhbGxiYWNrIHNlY3JldCBmb3IgdGVzdHM=";

/// A receiver on a runtime of its own, recording every request it gets.
struct Receiver {
    runtime: tokio::runtime::Runtime,
    server: MockServer,
}

impl Receiver {
    fn start() -> Receiver {
        Receiver::on(TcpListener::bind("127.0.0.1:0").expect("bind"))
    }

    fn on(listener: TcpListener) -> Receiver {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let server = runtime.block_on(MockServer::builder().listener(listener).start());
        Receiver { runtime, server }
    }

    fn url(&self) -> String {
        format!("{}/hooks/messages", self.server.uri())
    }

    /// Answers these statuses in turn (the last one from then on).
    fn answer(&self, statuses: &[u16], delay: Duration) {
        struct InTurn(Mutex<Vec<u16>>, Duration);
        impl Respond for InTurn {
            fn respond(&self, _: &Request) -> ResponseTemplate {
                let mut left = self.0.lock().expect("statuses");
                let status = if left.len() > 1 {
                    left.remove(0)
                } else {
                    left[0]
                };
                ResponseTemplate::new(status).set_delay(self.1)
            }
        }
        let mock = Mock::given(method("POST"))
            .and(path("/hooks/messages"))
            .respond_with(InTurn(Mutex::new(statuses.to_vec()), delay));
        self.runtime.block_on(mock.mount(&self.server));
    }

    fn received(&self) -> Vec<Request> {
        self.runtime
            .block_on(self.server.received_requests())
            .unwrap_or_default()
    }
}

fn header<'a>(request: &'a Request, name: &str) -> &'a str {
    request
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

fn with_callback(mut body: Value, url: &str) -> Value {
    body["status_callback"] = json!(url);
    body
}

fn callbacks_of(app: &TestApp, id: i64) -> Vec<Value> {
    app.message(id)["callbacks"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn a_signed_callback_arrives_after_the_receiver_fails_twice() {
    let receiver = Receiver::start();
    receiver.answer(&[500, 503, 200], Duration::ZERO);
    let app = TestApp::spawn_with_env(
        "[callbacks]\nsecret_env = \"TEST_CALLBACK_SECRET\"\n[providers.sms-mms]\nseed = 42\n",
        &[("TEST_CALLBACK_SECRET", SECRET)],
    );
    let id = app.accept("/api/messages/sms", &with_callback(sms(0), &receiver.url()));
    let started = Instant::now();
    app.eventually("the callback delivered", || {
        let callbacks = callbacks_of(&app, id);
        (callbacks.first().is_some_and(|c| c["state"] == "delivered")).then_some(callbacks)
    });
    // Tries at 0 s, then 1 s and 2 s later: delivered within bounded time.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let requests = receiver.received();
    assert_eq!(requests.len(), 3);
    let ids: Vec<&str> = requests.iter().map(|r| header(r, "webhook-id")).collect();
    assert_eq!(
        ids,
        vec![format!("msg_{id}_sent_0"); 3],
        "one webhook-id on every try"
    );
    for request in &requests {
        let body = String::from_utf8(request.body.clone()).expect("utf-8");
        let timestamp: i64 = header(request, "webhook-timestamp")
            .parse()
            .expect("timestamp");
        let expected =
            standard_webhooks_signature(SECRET, header(request, "webhook-id"), timestamp, &body);
        assert!(
            header(request, "webhook-signature")
                .split(' ')
                .any(|s| s == expected),
            "the signature verifies"
        );
    }
    let body: Value = serde_json::from_slice(&requests[2].body).expect("json");
    assert_eq!(body["type"], "message.status");
    assert!(body["timestamp"].is_string());
    let data = &body["data"];
    assert_eq!(data["id"], id);
    assert_eq!(data["status"], "sent");
    assert_eq!(data["provider"], "sms-mms");
    assert_eq!(data["channel"], "sms");
    assert_eq!(data["attempts"], 1);
    assert_eq!(data["delivery_status"], Value::Null);
    assert_eq!(data["error_code"], Value::Null);
    let listed = &callbacks_of(&app, id)[0];
    assert_eq!(
        (listed["attempts"].clone(), listed["event"].clone()),
        (json!(3), json!("sent"))
    );
    assert_eq!(
        app.metric(r#"messaging_callbacks_total{outcome="delivered"}"#),
        1.0
    );
    assert_eq!(
        app.metric(r#"messaging_callbacks_total{outcome="retried"}"#),
        2.0
    );
}

#[test]
fn a_message_no_provider_serves_gets_its_failed_callback() {
    let receiver = Receiver::start();
    receiver.answer(&[200], Duration::ZERO);
    let app = TestApp::spawn("[routing]\nemail = \"postmark\"\n");
    // Without a key (a batch's multi-row insert) and with one (an insert of its own).
    let body = with_callback(sample_email(), &receiver.url());
    assert_eq!(
        app.post("/api/messages/email", &body).error_code(500),
        "no_provider"
    );
    let keyed = app.post_with("/api/messages/email", &body, &[("Idempotency-Key", "k-1")]);
    assert_eq!(keyed.error_code(500), "no_provider");
    let ids: Vec<i64> = app.eventually("both refusals logged", || {
        let lines = app.logs_with("no provider for channel");
        (lines.len() == 2).then(|| {
            lines
                .iter()
                .filter_map(|l| l["message_id"].as_i64())
                .collect()
        })
    });
    let requests = app.eventually("both failed callbacks", || {
        let requests = receiver.received();
        (requests.len() >= 2).then_some(requests)
    });
    for id in ids {
        let request = requests
            .iter()
            .find(|r| header(r, "webhook-id") == format!("msg_{id}_failed_0"))
            .unwrap_or_else(|| panic!("no callback for message {id}"));
        let body: Value = serde_json::from_slice(&request.body).expect("json");
        assert_eq!(body["data"]["id"], id);
        assert_eq!(body["data"]["status"], "failed");
        assert_eq!(body["data"]["attempts"], 0);
        assert_eq!(body["data"]["provider"], Value::Null);
        app.eventually("the callback marked delivered", || {
            (callbacks_of(&app, id).first()?["state"] == "delivered").then_some(())
        });
    }
    assert_eq!(receiver.received().len(), 2, "one callback each");
}

/// A retry dispatches a failed message again on its own provider (CONTRACT 10). One that
/// failed because its channel goes to no provider is dispatched again into the same
/// fault: 202, failed again as 4.3 says (logged and counted once more), with the next
/// round's `failed` callback. A replay of its first request still answers the first 500.
#[test]
fn a_retry_of_a_message_no_provider_serves_fails_it_again_as_4_3_says() {
    let receiver = Receiver::start();
    receiver.answer(&[200], Duration::ZERO);
    let app = TestApp::spawn(&format!(
        "[callbacks]\nurl = \"{}\"\n[routing]\nemail = \"postmark\"\n",
        receiver.url()
    ));
    let keyed = [("Idempotency-Key", "first")];
    let first = app.post_with("/api/messages/email", &sample_email(), &keyed);
    assert_eq!(first.error_code(500), "no_provider");
    let id = app.eventually("the refusal logged", || {
        app.logs_with("no provider for channel").first()?["message_id"].as_i64()
    });
    let retried = app.post(&format!("/api/messages/{id}/retry"), &json!({}));
    assert_eq!(retried.status, 202, "{}", retried.text);
    assert_eq!(finished(&app, id)["status"], "failed");
    app.eventually("logged again", || {
        (app.logs_with("no provider for channel").len() == 2).then_some(())
    });
    assert_eq!(
        app.metric(r#"messaging_routing_missing_provider_total{channel="email"}"#),
        2.0
    );
    let events = app.eventually("both rounds' failed callbacks", || {
        let events: Vec<String> = callbacks_of(&app, id)
            .iter()
            .map(|c| c["id"].as_str().unwrap_or_default().to_owned())
            .collect();
        (events.len() == 2).then_some(events)
    });
    assert_eq!(
        events,
        [format!("msg_{id}_failed_0"), format!("msg_{id}_failed_1")]
    );
    let replay = app.post_with("/api/messages/email", &sample_email(), &keyed);
    assert_eq!(replay.error_code(500), "no_provider");
}

#[test]
fn a_410_stops_at_once_a_hang_is_retried_and_max_age_gives_up() {
    let gone = Receiver::start();
    gone.answer(&[410], Duration::ZERO);
    let hanging = Receiver::start();
    hanging.answer(&[200], Duration::from_secs(3));
    let failing = Receiver::start();
    failing.answer(&[500], Duration::ZERO);
    let app = TestApp::spawn(
        "[callbacks]\nmax_age_ms = 1500\nrequest_timeout_ms = 500\n[providers.sms-mms]\nseed = 42\n",
    );
    let to_gone = app.accept("/api/messages/sms", &with_callback(sms(0), &gone.url()));
    let to_hanging = app.accept("/api/messages/sms", &with_callback(sms(1), &hanging.url()));
    let to_failing = app.accept("/api/messages/sms", &with_callback(sms(2), &failing.url()));
    let state_of = |id| {
        app.eventually("a final callback state", || {
            let callbacks = callbacks_of(&app, id);
            callbacks
                .first()
                .filter(|c| c["state"] != "pending")
                .cloned()
        })
    };
    let gone_state = state_of(to_gone);
    assert_eq!(
        (gone_state["state"].clone(), gone_state["attempts"].clone()),
        (json!("given_up"), json!(1))
    );
    assert_eq!(gone_state["last_result"], "410");
    assert_eq!(gone.received().len(), 1, "410 stops at once");
    // Each try times out after 500 ms; the next one, 1 s later, is past max_age 1.5 s.
    let hang_state = state_of(to_hanging);
    assert_eq!(hang_state["state"], "given_up");
    assert_eq!(hang_state["last_result"], "timeout");
    let fail_state = state_of(to_failing);
    assert_eq!(fail_state["state"], "given_up");
    assert_eq!(fail_state["last_result"], "500");
    assert!(failing.received().len() >= 2, "retried before giving up");
    assert_eq!(
        app.metric(r#"messaging_callbacks_total{outcome="given_up"}"#),
        3.0
    );
    let given_up = app.logs_with("callback given up");
    assert_eq!(given_up.len(), 3, "{given_up:?}");
    app.eventually("nothing pending", || {
        (app.metric("messaging_callbacks_pending") == 0.0).then_some(())
    });
}

#[test]
fn a_repeated_request_stays_the_same_after_the_default_callback_changes() {
    let receiver = Receiver::start();
    receiver.answer(&[200], Duration::ZERO);
    let dir = Arc::new(TestDir::new());
    let key = [("Idempotency-Key", "order-1")];
    let before = TestApp::spawn_in(dir.clone(), "");
    let first = before.post_with("/api/messages/sms", &sms(0), &key);
    assert_eq!(first.status, 202, "{}", first.text);
    before.stop();
    let with_default = format!("[callbacks]\nurl = \"{}\"\n", receiver.url());
    let after = TestApp::spawn_in(dir.clone(), &with_default);
    let again = after.post_with("/api/messages/sms", &sms(0), &key);
    assert_eq!(again.status, 202, "{}", again.text);
    assert_eq!(again.json()["id"], first.json()["id"]);
    // A body that names a callback is another request.
    let named = with_callback(sms(0), &receiver.url());
    assert_eq!(
        after
            .post_with("/api/messages/sms", &named, &key)
            .error_code(422),
        "idempotency_conflict"
    );
    // Naming the default callback is another request than naming none...
    let upgraded = [("Idempotency-Key", "order-2")];
    let names_default = with_callback(sms(1), &receiver.url());
    let stored = after.post_with("/api/messages/sms", &names_default, &upgraded);
    assert_eq!(stored.status, 202, "{}", stored.text);
    assert_eq!(
        after
            .post_with("/api/messages/sms", &sms(1), &upgraded)
            .error_code(422),
        "idempotency_conflict"
    );
    // ...but versions before 2026-12-07 stored a request naming none as if it named the
    // default, untagged: a row stored so (the tag taken off) matches its repeat.
    dir.execute_sql(
        "UPDATE messages SET request_fingerprint = substr(request_fingerprint, 3) \
         WHERE idempotency_key = 'order-2'",
    );
    let repeat = after.post_with("/api/messages/sms", &sms(1), &upgraded);
    assert_eq!(repeat.status, 202, "{}", repeat.text);
    assert_eq!(repeat.json()["id"], stored.json()["id"]);
}

#[test]
fn a_redirect_is_not_followed_and_does_not_deliver() {
    // Followed, a 302 would turn the POST into a GET without its body, whose 200 would
    // count as delivered; and the signed body could be sent wherever `Location` says.
    let receiver = Receiver::start();
    let elsewhere = format!("{}/elsewhere", receiver.server.uri());
    let mocks = [
        Mock::given(method("POST"))
            .and(path("/hooks/messages"))
            .respond_with(ResponseTemplate::new(302).insert_header("Location", elsewhere.as_str())),
        Mock::given(path("/elsewhere")).respond_with(ResponseTemplate::new(200)),
    ];
    for mock in mocks {
        receiver.runtime.block_on(mock.mount(&receiver.server));
    }
    let app = TestApp::spawn("[callbacks]\nmax_age_ms = 1500\n[providers.sms-mms]\nseed = 42\n");
    let id = app.accept("/api/messages/sms", &with_callback(sms(0), &receiver.url()));
    let state = app.eventually("a final callback state", || {
        callbacks_of(&app, id)
            .first()
            .filter(|c| c["state"] != "pending")
            .cloned()
    });
    assert_eq!(state["state"], "given_up", "{state}");
    assert_eq!(state["last_result"], "302");
    let paths: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| r.url.path().to_owned())
        .collect();
    assert!(
        paths.iter().all(|p| p == "/hooks/messages"),
        "followed the redirect: {paths:?}"
    );
    assert_eq!(
        app.metric(r#"messaging_callbacks_total{outcome="delivered"}"#),
        0.0
    );
}

#[test]
fn callbacks_owed_at_a_sigkill_arrive_once_the_receiver_comes_up() {
    // The receiver's address is known now, but nothing listens there yet.
    let reserved = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = reserved.local_addr().expect("addr");
    drop(reserved);
    let url = format!("http://{address}/hooks/messages");
    let dir = Arc::new(TestDir::new());
    let settings = format!("[callbacks]\nurl = \"{url}\"\n[providers.sms-mms]\nseed = 42\n");
    let app = TestApp::spawn_in(dir.clone(), &settings);
    let ids: Vec<i64> = (0..3)
        .map(|n| app.accept("/api/messages/sms", &sms(n)))
        .collect();
    for id in &ids {
        app.eventually("a refused try recorded", || {
            let callbacks = callbacks_of(&app, *id);
            callbacks
                .first()
                .is_some_and(|c| {
                    c["attempts"].as_i64() >= Some(1) && c["last_result"] == "connection"
                })
                .then_some(())
        });
    }
    signal(app.pid(), "KILL");
    drop(app);

    let receiver = Receiver::on(TcpListener::bind(address).expect("the reserved port"));
    receiver.answer(&[200], Duration::ZERO);
    let app = TestApp::spawn_in(dir, &settings);
    for id in &ids {
        app.eventually("every owed callback delivered", || {
            (callbacks_of(&app, *id)
                .first()
                .is_some_and(|c| c["state"] == "delivered"))
            .then_some(())
        });
    }
    let mut arrived: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| header(r, "webhook-id").to_owned())
        .collect();
    arrived.sort();
    arrived.dedup();
    let expected: Vec<String> = ids.iter().map(|id| format!("msg_{id}_sent_0")).collect();
    assert_eq!(
        arrived, expected,
        "each owed callback, repeats under the same id"
    );
}

/// A graceful stop finishes a callback try under way and records it (CONTRACT 1: finish
/// or hand back in-flight work): after the restart it is delivered, and the receiver,
/// which may have acted on it, never gets it again.
#[test]
fn a_graceful_stop_finishes_a_callback_try_under_way() {
    let receiver = Receiver::start();
    receiver.answer(&[200], Duration::from_millis(1500));
    let dir = Arc::new(TestDir::new());
    let app = TestApp::spawn_in(dir.clone(), "");
    let id = app.accept("/api/messages/sms", &with_callback(sms(1), &receiver.url()));
    app.eventually("the receiver called", || {
        (!receiver.received().is_empty()).then_some(())
    });
    signal(app.pid(), "TERM");
    let (status, logs) = app.wait_for_exit();
    assert!(status.success(), "{status}");
    assert!(
        !logs
            .iter()
            .any(|l| l["msg"] == "callbacks still under way at the stop"),
        "{logs:?}"
    );
    let app = TestApp::spawn_in(dir, "");
    let callbacks = callbacks_of(&app, id);
    assert_eq!(callbacks.len(), 1, "{callbacks:?}");
    assert_eq!(callbacks[0]["state"], "delivered", "{callbacks:?}");
    assert_eq!(callbacks[0]["attempts"], 1, "{callbacks:?}");
    assert_eq!(receiver.received().len(), 1);
}

fn attempt_time(message: &Value) -> SystemTime {
    let at = message["attempts"][0]["at"].as_str().expect("an attempt");
    let parsed = chrono::DateTime::parse_from_rfc3339(at).expect("rfc3339");
    SystemTime::UNIX_EPOCH + Duration::from_micros(parsed.timestamp_micros() as u64)
}

fn rfc3339_in(delay: Duration) -> (String, SystemTime) {
    let at = SystemTime::now() + delay;
    let text = chrono::DateTime::<chrono::Utc>::from(at).to_rfc3339();
    (text, at)
}

#[test]
fn a_scheduled_message_waits_for_its_time_also_across_a_restart() {
    let dir = Arc::new(TestDir::new());
    let app = TestApp::spawn_in(dir.clone(), "[providers.sms-mms]\nseed = 42\n");
    let (send_at, due) = rfc3339_in(Duration::from_secs(2));
    let mut body = sms(0);
    body["send_at"] = json!(send_at);
    let id = app.accept("/api/messages/sms", &body);
    let waiting = app.message(id);
    assert_eq!(waiting["status"], "queued");
    assert_eq!(waiting["attempts"], json!([]));
    let sent = finished(&app, id);
    assert_eq!(sent["status"], "sent");
    assert!(
        attempt_time(&sent) >= due - Duration::from_millis(5),
        "no attempt before send_at"
    );

    // Scheduled, stopped at once, started again: the date holds.
    let (send_at, due) = rfc3339_in(Duration::from_secs(3));
    let mut body = sms(1);
    body["send_at"] = json!(send_at);
    let later = app.accept("/api/messages/sms", &body);
    assert!(app.stop().success());
    let app = TestApp::spawn_in(dir, "[providers.sms-mms]\nseed = 42\n");
    let sent = finished(&app, later);
    assert_eq!(sent["status"], "sent");
    assert!(
        attempt_time(&sent) >= due - Duration::from_millis(5),
        "no attempt before send_at"
    );

    // A past time sends now; more than 35 days ahead is refused.
    let mut past = sms(2);
    past["send_at"] = json!("2020-01-01T00:00:00Z");
    assert_eq!(
        finished(&app, app.accept("/api/messages/sms", &past))["status"],
        "sent"
    );
    let mut far = sms(3);
    far["send_at"] = json!(rfc3339_in(Duration::from_secs(36 * 24 * 3600)).0);
    let refused = app.post("/api/messages/sms", &far);
    assert_eq!(refused.error_code(400), "validation_failed");
    assert_eq!(refused.json()["error"]["field"], "send_at");
}

#[test]
fn a_retry_continues_the_attempt_numbers_and_a_bulk_retry_counts() {
    let receiver = Receiver::start();
    receiver.answer(&[200], Duration::ZERO);
    let settings = format!(
        "[callbacks]\nurl = \"{}\"\n[dispatch]\nmax_attempts = 2\nbackoff_initial_ms = 1\nbackoff_max_ms = 2\n\
         [providers.sms-mms]\nseed = 42\nerror_pct = 100.0\n\
         [providers.sms-mms.breaker]\nwindow_size = 50\nminimum_calls = 50\n[providers.email]\nseed = 7\n",
        receiver.url()
    );
    let app = TestApp::spawn(&settings);
    let since = chrono::Utc::now().to_rfc3339();
    let ids: Vec<i64> = (0..3)
        .map(|n| app.accept("/api/messages/sms", &sms(n)))
        .collect();
    for id in &ids {
        assert_eq!(finished(&app, *id)["status"], "failed");
    }
    let numbers = |id: i64| -> Vec<i64> {
        app.message(id)["attempts"]
            .as_array()
            .expect("attempts")
            .iter()
            .filter_map(|a| a["attempt"].as_i64())
            .collect()
    };
    assert_eq!(numbers(ids[0]), [1, 2]);

    // A body that is not JSON is 415 (CONTRACT 3), though the route reads none.
    let untyped = app.request(
        "POST",
        &format!("/api/messages/{}/retry", ids[0]),
        &[("Content-Type", "text/plain")],
        Some(b"retry please"),
    );
    assert_eq!(untyped.error_code(415), "unsupported_media_type");
    // A body it does carry is held to the contract's bounds (CONTRACT 2 and 3.4).
    let json = [("Content-Type", "application/json")];
    let retry = format!("/api/messages/{}/retry", ids[0]);
    let broken = app.request("POST", &retry, &json, Some(b"{\"oops"));
    assert_eq!(broken.error_code(400), "invalid_json");
    let large = format!("{{\"x\": \"{}\"}}", "a".repeat(300 * 1024));
    let too_large = app.request("POST", &retry, &json, Some(large.as_bytes()));
    assert_eq!(too_large.error_code(413), "payload_too_large");
    assert_eq!(app.message(ids[0])["status"], "failed", "nothing requeued");
    // With no body there is no media type to refuse (the OpenAPI document declares none).
    let bodiless = app.request("POST", "/api/messages/99999/retry", &[], None);
    assert_eq!(bodiless.error_code(404), "not_found");

    let retried = app.post(&format!("/api/messages/{}/retry", ids[0]), &json!({}));
    assert_eq!(retried.status, 202, "{}", retried.text);
    assert_eq!(retried.json()["id"], ids[0]);
    app.eventually("failed again after two more attempts", || {
        let message = app.message(ids[0]);
        (message["status"] == "failed" && numbers(ids[0]).len() == 4).then_some(())
    });
    assert_eq!(numbers(ids[0]), [1, 2, 3, 4], "attempt numbers continue");

    let sent = app.accept("/api/messages/email", &email(0));
    assert_eq!(finished(&app, sent)["status"], "sent");
    let not_failed = app.post(&format!("/api/messages/{sent}/retry"), &json!({}));
    assert_eq!(not_failed.error_code(409), "not_retryable");
    assert_eq!(
        app.post("/api/messages/99999/retry", &json!({}))
            .error_code(404),
        "not_found"
    );

    let bulk = app.post(
        "/api/messages/retry",
        &json!({"provider": "sms-mms", "failed_since": since}),
    );
    assert_eq!(bulk.status, 202, "{}", bulk.text);
    assert_eq!(bulk.json()["requeued"], 3);
    for (id, total) in ids.iter().zip([6, 4, 4]) {
        app.eventually("each failed again", || {
            let message = app.message(*id);
            let made = message["attempts"].as_array().map_or(0, Vec::len);
            (message["status"] == "failed" && made == total).then_some(())
        });
    }
    assert_eq!(numbers(ids[0]), [1, 2, 3, 4, 5, 6]);
    let nothing = app.post(
        "/api/messages/retry",
        &json!({"provider": "email", "failed_since": since}),
    );
    assert_eq!(nothing.json()["requeued"], 0);
    // One failed callback per round, each under its own webhook-id.
    let events: Vec<String> = callbacks_of(&app, ids[0])
        .iter()
        .map(|c| c["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    let id = ids[0];
    assert_eq!(
        events,
        [
            format!("msg_{id}_failed_0"),
            format!("msg_{id}_failed_1"),
            format!("msg_{id}_failed_2")
        ]
    );
}

#[test]
fn two_instances_never_send_one_callback_at_once_and_a_killed_ones_are_taken_over() {
    let Some(db) = postgres_database("two_instances_never_send_one_callback_at_once...") else {
        return;
    };
    // Each try takes 300 ms and fails, so callbacks stay due and both instances claim.
    let receiver = Receiver::start();
    struct Log(Arc<Mutex<Vec<(String, Instant)>>>);
    impl Respond for Log {
        fn respond(&self, request: &Request) -> ResponseTemplate {
            if let Ok(mut list) = self.0.lock() {
                list.push((header(request, "webhook-id").to_owned(), Instant::now()));
            }
            ResponseTemplate::new(500).set_delay(Duration::from_millis(300))
        }
    }
    let tries = Arc::new(Mutex::new(Vec::new()));
    receiver.runtime.block_on(
        Mock::given(method("POST"))
            .respond_with(Log(tries.clone()))
            .mount(&receiver.server),
    );
    let settings = format!(
        "[callbacks]\nurl = \"{}\"\nrequest_timeout_ms = 1000\n[providers.sms-mms]\nseed = 42\n",
        receiver.url()
    );
    let a = TestApp::spawn_on(&db, &settings);
    let b = TestApp::spawn_on(&db, &settings);
    let ids: Vec<i64> = (0..6)
        .map(|n| {
            let app = if n % 2 == 0 { &a } else { &b };
            app.accept("/api/messages/sms", &sms(n))
        })
        .collect();
    poll_until("every callback tried twice", DEADLINE, || {
        let tries = tries.lock().expect("tries");
        ids.iter()
            .all(|id| {
                tries
                    .iter()
                    .filter(|(w, _)| *w == format!("msg_{id}_sent_0"))
                    .count()
                    >= 2
            })
            .then_some(())
    });
    // Tries of one callback never overlap: each starts after the one before ended.
    let tries = tries.lock().expect("tries").clone();
    for id in &ids {
        let webhook_id = format!("msg_{id}_sent_0");
        let starts: Vec<Instant> = tries
            .iter()
            .filter(|(w, _)| *w == webhook_id)
            .map(|(_, at)| *at)
            .collect();
        for pair in starts.windows(2) {
            assert!(
                pair[1].duration_since(pair[0]) >= Duration::from_millis(300),
                "{webhook_id} sent twice at once"
            );
        }
    }
    // The killed instance's callbacks are taken over once their lease (1 s + 5 s) lapses.
    signal(a.pid(), "KILL");
    drop(a);
    let killed_at = Instant::now();
    let count_after = |id: &i64| {
        let webhook_id = format!("msg_{id}_sent_0");
        let tries = receiver.received();
        tries
            .iter()
            .filter(|r| header(r, "webhook-id") == webhook_id)
            .count()
    };
    let before: Vec<usize> = ids.iter().map(count_after).collect();
    b.eventually("every callback tried again by the survivor", || {
        ids.iter()
            .zip(&before)
            .all(|(id, n)| count_after(id) > *n)
            .then_some(())
    });
    assert!(killed_at.elapsed() < Duration::from_secs(15));
}
