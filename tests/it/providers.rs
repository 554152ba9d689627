//! Real providers (CONTRACT section 8) against local fakes that speak Twilio's Messages
//! resource and SendGrid's v3 mail send as their documentation describes them (wiremock):
//! the requests each receives, every row of the answer table, breaker isolation, delivery
//! receipts and Twilio's inbound messages with their signatures, sender spacing, and logs
//! that hold no secret.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use diesel::RunQueryDsl as _;
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::Signer as _;
use serde_json::{json, Value};
use wiremock::matchers::{body_string_contains, header, method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::helpers::*;

const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "twilio-test-auth-token-7d1f";
const API_KEY: &str = "SG.sendgrid-test-api-key-93be";
const PUBLIC_URL: &str = "https://messaging.example";
/// SendGrid's published test key pair (its SDKs' tests): events signed in the test with
/// the private half verify with the public half configured in the service.
const SENDGRID_PUBLIC_KEY: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEDr2LjtURuePQzplybdC+u4CwrqDqBaWjcMMsTbhdbcwHBcepxo7yAQGhHPTnlvFYPAZFceEu/1FwCM/QmGUhA==";
const SENDGRID_PRIVATE_KEY: &str = "MHcCAQEEIEQmZgBEh9DcU9zMl34czK3xov4AYvm9P3r7rNB2dNXtoAoGCCqGSM49AwEHoUQDQgAEEDr2LjtURuePQzplybdC+u4CwrqDqBaWjcMMsTbhdbcwHBcepxo7yAQGhHPTnlvFYPAZFceEu/1FwCM/QmGUhA==";

fn secrets() -> [(&'static str, &'static str); 2] {
    [("TEST_TWILIO_TOKEN", TOKEN), ("TEST_SENDGRID_KEY", API_KEY)]
}

/// A local fake API on a runtime of its own (the tests themselves are synchronous).
struct Fake {
    runtime: tokio::runtime::Runtime,
    server: MockServer,
}

impl Fake {
    fn start() -> Fake {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let server = runtime.block_on(MockServer::start());
        Fake { runtime, server }
    }

    fn uri(&self) -> String {
        self.server.uri()
    }

    fn mount(&self, mock: Mock) {
        self.runtime.block_on(mock.mount(&self.server));
    }

    fn received(&self) -> Vec<Request> {
        self.runtime
            .block_on(self.server.received_requests())
            .unwrap_or_default()
    }
}

fn messages_path() -> String {
    format!("/2010-04-01/Accounts/{ACCOUNT}/Messages.json")
}

/// Twilio's 201 for a created message, with a new `sid` each time.
struct TwilioCreated(AtomicU64);

impl Respond for TwilioCreated {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let n = self.0.fetch_add(1, Ordering::Relaxed);
        let form = form_of(request);
        let field = |name: &str| {
            form.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let sid = format!("SM{n:032x}");
        ResponseTemplate::new(201).set_body_json(json!({
            "account_sid": ACCOUNT, "api_version": "2010-04-01", "body": field("Body"),
            "direction": "outbound-api", "error_code": null, "error_message": null,
            "from": field("From"), "to": field("To"), "num_media": "0", "num_segments": "1",
            "sid": sid, "status": "queued",
            "uri": format!("/2010-04-01/Accounts/{ACCOUNT}/Messages/{sid}.json"),
        }))
    }
}

/// `TwilioCreated`, answered after a delay.
struct TwilioCreatedAfter(Duration);

impl Respond for TwilioCreatedAfter {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        TwilioCreated(AtomicU64::new(0))
            .respond(request)
            .set_delay(self.0)
    }
}

/// Twilio's error body (its REST API's documented shape).
fn twilio_error(status: u16, code: u32, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({
        "code": code, "message": message, "status": status,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
    }))
}

/// SendGrid's 202: no body, the message's id in `X-Message-Id`.
struct SendGridAccepted(AtomicU64);

impl Respond for SendGridAccepted {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let n = self.0.fetch_add(1, Ordering::Relaxed);
        ResponseTemplate::new(202).insert_header("X-Message-Id", format!("sgmsg{n:06}"))
    }
}

fn form_of(request: &Request) -> Vec<(String, String)> {
    serde_urlencoded::from_bytes(&request.body).expect("a form body")
}

fn twilio_created() -> Mock {
    Mock::given(method("POST"))
        .and(path(messages_path()))
        .respond_with(TwilioCreated(AtomicU64::new(0)))
}

fn sendgrid_accepted() -> Mock {
    Mock::given(method("POST"))
        .and(path("/v3/mail/send"))
        .respond_with(SendGridAccepted(AtomicU64::new(0)))
}

/// Simulator odds that would fail every attempt: a real kind ignores them (CONTRACT 8).
const ODDS_A_REAL_KIND_IGNORES: &str = "[outcomes]\nerror_pct = 100.0\n";

fn settings(twilio: &str, sendgrid: &str, extra: &str) -> String {
    format!(
        "[server]\npublic_url = \"{PUBLIC_URL}\"\n\
         [dispatch]\nmax_attempts = 3\nbackoff_initial_ms = 10\nbackoff_max_ms = 20\n\
         [providers.sms-mms]\nkind = \"twilio\"\nbase_url = \"{twilio}\"\naccount_sid = \"{ACCOUNT}\"\n\
         auth_token_env = \"TEST_TWILIO_TOKEN\"\nrequest_timeout_ms = 500\n\
         status_callback_url = \"{PUBLIC_URL}/api/webhooks/twilio/status\"\n\
         [providers.email]\nkind = \"sendgrid\"\nbase_url = \"{sendgrid}\"\n\
         api_key_env = \"TEST_SENDGRID_KEY\"\nevent_webhook_public_key = \"{SENDGRID_PUBLIC_KEY}\"\n\
         {extra}"
    )
}

/// `settings` with Twilio alone: email stays on the simulator.
fn twilio_only(twilio: &str) -> String {
    settings(twilio, "http://unused", "")
        .split("[providers.email]")
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// `events` posted to SendGrid's event webhook, signed now with SendGrid's key.
fn post_signed_events(app: &TestApp, events: &str) -> Response {
    let timestamp = unix_now().to_string();
    let signature = sign_sendgrid(&timestamp, events);
    app.request(
        "POST",
        "/api/webhooks/sendgrid/events",
        &[
            ("Content-Type", "application/json"),
            ("X-Twilio-Email-Event-Webhook-Signature", &signature),
            ("X-Twilio-Email-Event-Webhook-Timestamp", &timestamp),
        ],
        Some(events.as_bytes()),
    )
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
        })
}

fn sms_to(n: usize) -> Value {
    let mut body = sms(n);
    body["to"] = json!(format!("+1804555{n:04}"));
    body
}

/// Twilio's signature, computed here on its own: HMAC-SHA1 over the URL and the sorted
/// parameters, keyed with the auth token, base64.
fn sign_twilio(url: &str, form: &[(&str, &str)]) -> String {
    let mut sorted = form.to_vec();
    sorted.sort();
    let mut data = url.to_owned();
    for (k, v) in sorted {
        data.push_str(k);
        data.push_str(v);
    }
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(TOKEN.as_bytes()).expect("key");
    mac.update(data.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn post_form(
    app: &TestApp,
    route: &str,
    form: &[(&str, &str)],
    signature: Option<&str>,
) -> Response {
    let body = serde_urlencoded::to_string(form).expect("form");
    let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
    if let Some(signature) = signature {
        headers.push(("X-Twilio-Signature", signature));
    }
    app.request("POST", route, &headers, Some(body.as_bytes()))
}

/// `form` posted to `route` with Twilio's signature over it, as Twilio would send it.
fn post_signed(app: &TestApp, route: &str, form: &[(&str, &str)]) -> Response {
    let signature = sign_twilio(&format!("{PUBLIC_URL}{route}"), form);
    post_form(app, route, form, Some(&signature))
}

fn sign_sendgrid(timestamp: &str, body: &str) -> String {
    let der = base64::engine::general_purpose::STANDARD
        .decode(SENDGRID_PRIVATE_KEY)
        .expect("base64");
    let key = p256::SecretKey::from_sec1_der(&der).expect("SEC1 key");
    let signing = p256::ecdsa::SigningKey::from(key);
    let signature: p256::ecdsa::Signature = signing.sign(format!("{timestamp}{body}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes())
}

fn attempt_times(message: &Value) -> Vec<SystemTime> {
    message["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| {
            let at = a["at"].as_str().expect("at");
            let parsed = chrono::DateTime::parse_from_rfc3339(at).expect("rfc3339");
            SystemTime::UNIX_EPOCH + Duration::from_micros(parsed.timestamp_micros() as u64)
        })
        .collect()
}

#[test]
fn each_provider_receives_the_request_its_api_describes_and_its_id_is_kept() {
    let (twilio, sendgrid) = (Fake::start(), Fake::start());
    twilio.mount(twilio_created());
    sendgrid.mount(sendgrid_accepted());
    let app = TestApp::spawn_with_env(
        &settings(&twilio.uri(), &sendgrid.uri(), ODDS_A_REAL_KIND_IGNORES),
        &secrets(),
    );

    let sms_id = app.accept("/api/messages/sms", &sample_sms());
    let mut mms = sample_mms();
    mms["attachments"] = json!(["https://a.example/1.png", "https://a.example/2.png"]);
    let mms_id = app.accept("/api/messages/sms", &mms);
    let mail_id = app.accept("/api/messages/email", &sample_email());
    let mut titled = sample_email();
    titled["subject"] = json!("Your order");
    titled["attachments"] = json!(["https://a.example/invoice.pdf"]);
    let titled_id = app.accept("/api/messages/email", &titled);
    for id in [sms_id, mms_id, mail_id, titled_id] {
        let sent = finished(&app, id);
        assert_eq!(sent["status"], "sent", "{sent}");
        assert!(sent["provider_message_id"].is_string(), "{sent}");
        assert_eq!(sent["delivery_status"], Value::Null);
    }
    assert!(app.message(sms_id)["provider_message_id"]
        .as_str()
        .is_some_and(|sid| sid.starts_with("SM")));

    let requests = twilio.received();
    assert_eq!(requests.len(), 2);
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{ACCOUNT}:{TOKEN}"));
    for request in &requests {
        assert_eq!(request.url.path(), messages_path());
        assert_eq!(
            request
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok()),
            Some(format!("Basic {basic}").as_str())
        );
        assert!(request
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded")));
    }
    let value = |form: &[(String, String)], name: &str| -> Vec<String> {
        form.iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    };
    // The two messages are dispatched concurrently, so the fake may see them in either
    // order: tell them apart by their bodies.
    let forms: Vec<Vec<(String, String)>> = requests.iter().map(form_of).collect();
    let by_body = |body: &Value| {
        let body = body.as_str().expect("body");
        forms
            .iter()
            .find(|form| value(form, "Body") == [body])
            .unwrap_or_else(|| panic!("no request with body {body}: {forms:?}"))
            .clone()
    };
    let sms_form = by_body(&sample_sms()["body"]);
    let mms_form = by_body(&sample_mms()["body"]);
    assert_eq!(
        value(&sms_form, "To"),
        [sample_sms()["to"].as_str().expect("to")]
    );
    assert_eq!(
        value(&sms_form, "From"),
        [sample_sms()["from"].as_str().expect("from")]
    );
    assert_eq!(
        value(&sms_form, "Body"),
        [sample_sms()["body"].as_str().expect("body")]
    );
    assert_eq!(
        value(&sms_form, "StatusCallback"),
        [format!("{PUBLIC_URL}/api/webhooks/twilio/status")]
    );
    assert!(value(&sms_form, "MediaUrl").is_empty());
    assert_eq!(
        value(&mms_form, "MediaUrl"),
        ["https://a.example/1.png", "https://a.example/2.png"]
    );

    let mails = sendgrid.received();
    assert_eq!(mails.len(), 2);
    for mail in &mails {
        assert_eq!(mail.url.path(), "/v3/mail/send");
        assert_eq!(
            mail.headers
                .get("authorization")
                .and_then(|v| v.to_str().ok()),
            Some(format!("Bearer {API_KEY}").as_str())
        );
    }
    let bodies: Vec<Value> = mails
        .iter()
        .map(|m| serde_json::from_slice(&m.body).expect("json"))
        .collect();
    let by_subject = |subject: &str| {
        bodies
            .iter()
            .find(|b| b["subject"] == subject)
            .unwrap_or_else(|| panic!("no mail with subject {subject}: {bodies:?}"))
    };
    let first = by_subject("Message"); // the default subject
    let email = sample_email();
    assert_eq!(first["personalizations"][0]["to"][0]["email"], email["to"]);
    assert_eq!(first["from"]["email"], email["from"]);
    assert_eq!(first["content"][0]["type"], "text/html");
    let html = first["content"][0]["value"].as_str().expect("html");
    assert!(
        html.starts_with(email["body"].as_str().expect("body")),
        "{html}"
    );
    let second = by_subject("Your order");
    assert!(second["content"][0]["value"]
        .as_str()
        .is_some_and(|html| html.contains("href=\"https://a.example/invoice.pdf\"")));
    assert!(app.message(mail_id)["provider_message_id"]
        .as_str()
        .is_some_and(|id| id.starts_with("sgmsg")));

    let providers = app.get("/api/providers").json();
    let kinds: Vec<(&str, &str)> = providers["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or(""),
                p["kind"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(kinds, [("email", "sendgrid"), ("sms-mms", "twilio")]);
    // A real kind draws no outcomes: the default seeds and odds it inherited are not shown.
    for provider in providers["items"].as_array().expect("items") {
        assert_eq!(provider["seeded"], false, "{provider}");
        assert_eq!(
            provider["outcomes"],
            json!({"timeout_pct": 0.0, "error_pct": 0.0, "ratelimit_pct": 0.0})
        );
    }
    assert!(app.logs_with("channel served by a simulator").is_empty());
}

#[test]
fn every_answer_of_the_table_leads_to_its_outcome_and_no_secret_is_logged() {
    let twilio = Fake::start();
    let fail_then = |to: usize, responses: Vec<ResponseTemplate>| {
        for (i, response) in responses.into_iter().enumerate() {
            twilio.mount(
                Mock::given(method("POST"))
                    .and(path(messages_path()))
                    .and(body_string_contains(format!("To=%2B1804555{to:04}")))
                    .respond_with(response)
                    .up_to_n_times(1)
                    .with_priority(u8::try_from(i + 1).unwrap_or(u8::MAX)),
            );
        }
    };
    fail_then(
        1,
        vec![twilio_error(429, 20429, "Too Many Requests").insert_header("Retry-After", "1")],
    );
    fail_then(
        2,
        vec![twilio_error(400, 21211, "Invalid 'To' Phone Number")],
    );
    // Twilio's 503 carries its error body; a redirect (a proxy's, say) is not followed:
    // followed, the credentials and the message would go where `Location` says.
    let elsewhere = format!("{}/elsewhere", twilio.uri());
    fail_then(
        3,
        vec![
            twilio_error(503, 20503, "Service Unavailable"),
            ResponseTemplate::new(307).insert_header("Location", elsewhere.as_str()),
        ],
    );
    fail_then(
        5,
        vec![ResponseTemplate::new(201)
            .set_delay(Duration::from_secs(2))
            .set_body_json(json!({"sid": "SMlate"}))],
    );
    twilio.mount(
        Mock::given(method("POST"))
            .and(path(messages_path()))
            .and(body_string_contains("To=%2B18045550004"))
            .respond_with(twilio_error(401, 20003, "Authenticate"))
            .with_priority(1),
    );
    twilio.mount(twilio_created().with_priority(100));
    // Nothing listens on the SendGrid side: connection refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let refused = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let app = TestApp::spawn_with_env(&settings(&twilio.uri(), &refused, ""), &secrets());

    let ids: Vec<i64> = (1..=5)
        .map(|n| app.accept("/api/messages/sms", &sms_to(n)))
        .collect();
    let mail = app.accept("/api/messages/email", &sample_email());
    let outcomes_and_codes = |id: i64| {
        let message = finished(&app, id);
        let codes: Vec<Value> = message["attempts"]
            .as_array()
            .expect("attempts")
            .iter()
            .map(|a| a["error_code"].clone())
            .collect();
        (message["status"].clone(), outcomes(&message), codes)
    };

    // 429 with Retry-After: 1 -> rate_limited, the next attempt no sooner, then sent.
    let (status, outcomes_1, codes) = outcomes_and_codes(ids[0]);
    assert_eq!(
        (status, outcomes_1),
        (
            json!("sent"),
            vec!["rate_limited".to_owned(), "success".to_owned()]
        )
    );
    assert_eq!(codes[0], "20429");
    let times = attempt_times(&app.message(ids[0]));
    let gap = times[1].duration_since(times[0]).unwrap_or_default();
    assert!(
        gap >= Duration::from_millis(950),
        "retried after {gap:?}, asked 1 s"
    );

    // 400 with Twilio's 21211 -> rejected, failed at once.
    let (status, outcomes_2, codes) = outcomes_and_codes(ids[1]);
    assert_eq!(
        (status, outcomes_2),
        (json!("failed"), vec!["rejected".to_owned()])
    );
    assert_eq!(codes, [json!("21211")]);

    // 503, 307 -> errors retried with backoff (the provider's code, else the status),
    // then sent; nothing went to the redirect's `Location`.
    let (status, outcomes_3, codes) = outcomes_and_codes(ids[2]);
    assert_eq!(status, "sent");
    assert_eq!(outcomes_3, ["error", "error", "success"]);
    assert_eq!(codes[..2], [json!("20503"), json!("307")]);
    assert!(twilio
        .received()
        .iter()
        .all(|request| request.url.path() == messages_path()));

    // 401 on every attempt -> errors until failed; the credentials line once.
    let (status, outcomes_4, codes) = outcomes_and_codes(ids[3]);
    assert_eq!(status, "failed");
    assert_eq!(outcomes_4, ["error", "error", "error"]);
    assert_eq!(codes[0], "20003");
    assert_eq!(app.logs_with("provider refused our credentials").len(), 1);

    // No answer within request_timeout_ms -> timeout, retried.
    let (status, outcomes_5, codes) = outcomes_and_codes(ids[4]);
    assert_eq!(status, "sent");
    assert_eq!(outcomes_5, ["timeout", "success"]);
    assert_eq!(codes[0], "timeout");

    // Connection refused -> error on every attempt.
    let (status, mail_outcomes, codes) = outcomes_and_codes(mail);
    assert_eq!(status, "failed");
    assert_eq!(mail_outcomes, ["error", "error", "error"]);
    assert_eq!(codes[0], "connection");

    let rejected = app.metric(
        r#"messaging_dispatch_outcomes_total{channel="sms",outcome="rejected",provider="sms-mms"}"#,
    );
    assert_eq!(rejected, 1.0);
    // A rejection is not a breaker failure: 2 + 3 + 1 failures of 11 recorded calls.
    let sms_mms = provider(&app, "sms-mms");
    assert_eq!(sms_mms["breaker"]["state"], "closed");

    let logs = app
        .all_logs()
        .iter()
        .map(Value::to_string)
        .collect::<String>();
    for secret in [TOKEN, API_KEY] {
        assert!(!logs.contains(secret), "a secret in the log");
    }
    assert!(!app.get("/api/providers").text.contains(TOKEN));
}

#[test]
fn sendgrids_rate_limit_reset_is_waited_out() {
    let sendgrid = Fake::start();
    let reset = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() + 2)
        .unwrap_or_default();
    sendgrid.mount(
        Mock::given(method("POST"))
            .and(path("/v3/mail/send"))
            .respond_with(
                ResponseTemplate::new(429)
                    .insert_header("X-RateLimit-Limit", "600")
                    .insert_header("X-RateLimit-Remaining", "0")
                    .insert_header("X-RateLimit-Reset", reset.to_string().as_str())
                    .set_body_json(
                        json!({"errors": [{"field": null, "message": "too many requests"}]}),
                    ),
            )
            .up_to_n_times(1)
            .with_priority(1),
    );
    sendgrid.mount(sendgrid_accepted());
    let twilio = Fake::start();
    let app = TestApp::spawn_with_env(&settings(&twilio.uri(), &sendgrid.uri(), ""), &secrets());
    let id = app.accept("/api/messages/email", &sample_email());
    let sent = finished(&app, id);
    assert_eq!(outcomes(&sent), ["rate_limited", "success"]);
    let times = attempt_times(&sent);
    let second = times[1]
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    assert!(
        second >= reset - 1,
        "sent at {second}, the limit reset at {reset}"
    );
}

#[test]
fn a_failing_twilio_opens_only_its_breaker_while_sendgrid_keeps_sending() {
    let (twilio, sendgrid) = (Fake::start(), Fake::start());
    twilio.mount(
        Mock::given(method("POST"))
            .and(path(messages_path()))
            .respond_with(twilio_error(503, 20503, "Service Unavailable")),
    );
    sendgrid.mount(sendgrid_accepted());
    let extra =
        "[providers.sms-mms.breaker]\nwindow_size = 4\nminimum_calls = 4\nopen_ms = 60000\n";
    let app = TestApp::spawn_with_env(&settings(&twilio.uri(), &sendgrid.uri(), extra), &secrets());
    for n in 0..4 {
        app.accept("/api/messages/sms", &sms_to(n));
    }
    app.eventually("the sms-mms breaker open", || {
        (provider(&app, "sms-mms")["breaker"]["state"] == "open").then_some(())
    });
    let mails: Vec<i64> = (0..5)
        .map(|n| app.accept("/api/messages/email", &email(n)))
        .collect();
    for id in mails {
        assert_eq!(finished(&app, id)["status"], "sent");
    }
    let email_provider = provider(&app, "email");
    assert_eq!(email_provider["breaker"]["state"], "closed");
    assert_eq!(email_provider["breaker"]["failure_rate"], 0.0);
    assert_eq!(provider(&app, "sms-mms")["breaker"]["state"], "open");
}

/// Both real kinds against fakes that accept everything, and a receiver of status
/// callbacks that answers 200 (a test may mount more on it); the fakes stay up with it.
fn app_with_receipts() -> (Fake, Fake, Fake, TestApp) {
    let (twilio, sendgrid, hooks) = (Fake::start(), Fake::start(), Fake::start());
    twilio.mount(twilio_created());
    sendgrid.mount(sendgrid_accepted());
    hooks.mount(Mock::given(method("POST")).respond_with(ResponseTemplate::new(200)));
    let app = TestApp::spawn_with_env(&settings(&twilio.uri(), &sendgrid.uri(), ""), &secrets());
    (twilio, sendgrid, hooks, app)
}

/// The provider's id of message `id`, once it is sent.
fn sid_of(app: &TestApp, id: i64) -> String {
    finished(app, id)["provider_message_id"]
        .as_str()
        .expect("sid")
        .to_owned()
}

/// A callback tells of the event that made it. A `delivered` callback still being retried
/// when a later receipt says `undelivered` goes out saying `delivered`, with no error code
/// (it read the message as it was when sent: `undelivered`, and the bounce's code), and
/// the `undelivered` callback follows with its own.
#[test]
fn a_delivered_callback_retried_after_a_later_bounce_still_says_delivered() {
    let (_twilio, _sendgrid, hooks, app) = app_with_receipts();
    let mut body = sms_to(0);
    body["status_callback"] = json!(format!("{}/hooks", hooks.uri()));
    let id = app.accept("/api/messages/sms", &body);
    let sid = sid_of(&app, id);
    let (delivered_id, undelivered_id) = (
        format!("msg_{id}_delivered_0"),
        format!("msg_{id}_undelivered_0"),
    );
    // The delivered callback fails until the bounce is recorded, so the try that
    // delivers it is made after the bounce, whatever the timing.
    struct UntilBounced(Arc<AtomicBool>);
    impl Respond for UntilBounced {
        fn respond(&self, _: &Request) -> ResponseTemplate {
            ResponseTemplate::new(if self.0.load(Ordering::SeqCst) {
                200
            } else {
                503
            })
        }
    }
    let bounced_yet = Arc::new(AtomicBool::new(false));
    hooks.mount(
        Mock::given(method("POST"))
            .and(header("webhook-id", delivered_id.as_str()))
            .respond_with(UntilBounced(bounced_yet.clone()))
            .with_priority(1),
    );
    let tries = |webhook_id: &str| -> Vec<Value> {
        hooks
            .received()
            .iter()
            .filter(|r| {
                r.headers.get("webhook-id").and_then(|v| v.to_str().ok()) == Some(webhook_id)
            })
            .filter_map(|r| serde_json::from_slice(&r.body).ok())
            .collect()
    };
    let route = "/api/webhooks/twilio/status";
    let delivered = [
        ("MessageSid", sid.as_str()),
        ("MessageStatus", "delivered"),
        ("AccountSid", ACCOUNT),
    ];
    assert_eq!(post_signed(&app, route, &delivered).status, 200);
    app.eventually("the delivered callback's failed try", || {
        (!tries(&delivered_id).is_empty()).then_some(())
    });
    let bounced = [
        ("MessageSid", sid.as_str()),
        ("MessageStatus", "undelivered"),
        ("ErrorCode", "30003"),
        ("AccountSid", ACCOUNT),
    ];
    assert_eq!(post_signed(&app, route, &bounced).status, 200);
    assert_eq!(app.message(id)["delivery_status"], "undelivered");
    bounced_yet.store(true, Ordering::SeqCst);
    let retried = app.eventually("the delivered callback delivered", || {
        (app.message(id)["callbacks"]
            .as_array()?
            .iter()
            .any(|c| c["id"] == delivered_id.as_str() && c["state"] == "delivered"))
        .then(|| tries(&delivered_id).pop())
        .flatten()
    });
    assert_eq!(retried["data"]["delivery_status"], "delivered", "{retried}");
    assert_eq!(retried["data"]["error_code"], Value::Null, "{retried}");
    let undelivered = app.eventually("the undelivered callback", || tries(&undelivered_id).pop());
    assert_eq!(undelivered["data"]["delivery_status"], "undelivered");
    assert_eq!(undelivered["data"]["error_code"], "30003");
}

#[test]
fn receipts_set_the_delivery_status_and_a_bad_signature_changes_nothing() {
    let (_twilio, _sendgrid, hooks, app) = app_with_receipts();
    let sms_ids: Vec<i64> = (0..2)
        .map(|n| {
            let mut body = sms_to(n);
            body["status_callback"] = json!(format!("{}/hooks", hooks.uri()));
            app.accept("/api/messages/sms", &body)
        })
        .collect();
    let mail_ids: Vec<i64> = (0..2)
        .map(|n| app.accept("/api/messages/email", &email(n)))
        .collect();
    let sid = |id: i64| sid_of(&app, id);
    let (delivered_sid, failed_sid) = (sid(sms_ids[0]), sid(sms_ids[1]));

    let route = "/api/webhooks/twilio/status";
    let url = format!("{PUBLIC_URL}{route}");
    let delivered = [
        ("MessageSid", delivered_sid.as_str()),
        ("MessageStatus", "delivered"),
        ("AccountSid", ACCOUNT),
    ];
    // Wrong and missing signatures first: refused, nothing changes.
    let forged = post_form(&app, route, &delivered, Some("bm90IGEgc2lnbmF0dXJl"));
    assert_eq!(forged.error_code(401), "invalid_signature");
    assert_eq!(
        post_form(&app, route, &delivered, None).error_code(401),
        "invalid_signature"
    );
    let tampered = [
        ("MessageSid", delivered_sid.as_str()),
        ("MessageStatus", "undelivered"),
    ];
    let signed_for_other = sign_twilio(&url, &delivered);
    assert_eq!(
        post_form(&app, route, &tampered, Some(&signed_for_other)).error_code(401),
        "invalid_signature"
    );
    assert_eq!(app.message(sms_ids[0])["delivery_status"], Value::Null);
    app.eventually(
        "the signature's refusal logged with its method and path",
        || {
            app.logs_with("request refused")
                .iter()
                .any(|l| l["reason"] == "signature" && l["method"] == "POST" && l["path"] == route)
                .then_some(())
        },
    );

    let ok = post_signed(&app, route, &delivered);
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(app.message(sms_ids[0])["delivery_status"], "delivered");
    let undelivered = [
        ("MessageSid", failed_sid.as_str()),
        ("MessageStatus", "undelivered"),
        ("ErrorCode", "30003"),
    ];
    // Configured at Twilio with the default port written out: Twilio signs that URL.
    let with_port =
        PUBLIC_URL.replace("https://messaging.example", "https://messaging.example:443");
    let other_port = PUBLIC_URL.replace(
        "https://messaging.example",
        "https://messaging.example:8443",
    );
    let on_other_port = sign_twilio(&format!("{other_port}{route}"), &undelivered);
    assert_eq!(
        post_form(&app, route, &undelivered, Some(&on_other_port)).error_code(401),
        "invalid_signature"
    );
    let on_443 = sign_twilio(&format!("{with_port}{route}"), &undelivered);
    let ok = post_form(&app, route, &undelivered, Some(&on_443));
    assert_eq!(ok.status, 200, "{}", ok.text);
    let message = app.message(sms_ids[1]);
    assert_eq!(message["delivery_status"], "undelivered");
    assert_eq!(message["delivery_error_code"], "30003");
    // Its callback carries the receipt's code (the attempt itself succeeded, without one).
    let webhook_id = format!("msg_{}_undelivered_0", sms_ids[1]);
    let callback: Value = app.eventually("the undelivered callback", || {
        hooks.received().iter().find_map(|request| {
            let id = request.headers.get("webhook-id")?.to_str().ok()?;
            (id == webhook_id)
                .then(|| serde_json::from_slice(&request.body).ok())
                .flatten()
        })
    });
    assert_eq!(callback["data"]["error_code"], "30003", "{callback}");
    // Statuses on the way and unknown sids are accepted and change nothing.
    let unknown = [("MessageSid", "SMunknown"), ("MessageStatus", "delivered")];
    assert_eq!(post_signed(&app, route, &unknown).status, 200);
    let sending = [
        ("MessageSid", failed_sid.as_str()),
        ("MessageStatus", "sending"),
    ];
    assert_eq!(post_signed(&app, route, &sending).status, 200);
    assert_eq!(app.message(sms_ids[1])["delivery_status"], "undelivered");

    // SendGrid's event webhook, signed with ECDSA.
    let (first, second) = (sid(mail_ids[0]), sid(mail_ids[1]));
    let events = json!([
        {"email": "contact@gmail.com", "event": "processed", "sg_message_id": format!("{first}.filter0001.1"), "timestamp": 1700000000},
        {"email": "contact@gmail.com", "event": "delivered", "sg_message_id": format!("{first}.filter0001.2"), "timestamp": 1700000001},
        {"email": "b1@example.com", "event": "bounce", "status": "5.0.0", "sg_message_id": format!("{second}.filter0002.1"), "timestamp": 1700000002},
    ])
    .to_string();
    let now = unix_now();
    let timestamp = now.to_string();
    let timestamp = timestamp.as_str();
    let post_events = |signature: &str, stamp: &str| {
        app.request(
            "POST",
            "/api/webhooks/sendgrid/events",
            &[
                ("Content-Type", "application/json"),
                ("X-Twilio-Email-Event-Webhook-Signature", signature),
                ("X-Twilio-Email-Event-Webhook-Timestamp", stamp),
            ],
            Some(events.as_bytes()),
        )
    };
    let good = sign_sendgrid(timestamp, &events);
    let later = (now + 1).to_string();
    assert_eq!(
        post_events(&good, &later).error_code(401),
        "invalid_signature"
    );
    // Signed by SendGrid's key, but two days ago: a replay, stale.
    let old_stamp = (now - 2 * 24 * 3600).to_string();
    let replayed = sign_sendgrid(&old_stamp, &events);
    assert_eq!(
        post_events(&replayed, &old_stamp).error_code(401),
        "invalid_signature"
    );
    assert_eq!(
        post_events("", timestamp).error_code(401),
        "invalid_signature"
    );
    assert_eq!(app.message(mail_ids[0])["delivery_status"], Value::Null);
    let ok = post_events(&good, timestamp);
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(app.message(mail_ids[0])["delivery_status"], "delivered");
    let bounced = app.message(mail_ids[1]);
    assert_eq!(bounced["delivery_status"], "undelivered");
    assert_eq!(bounced["delivery_error_code"], "5.0.0");
}

#[test]
fn provider_webhooks_keep_the_apis_body_rules() {
    let app = TestApp::spawn_with_env(
        &settings("http://127.0.0.1:9", "http://127.0.0.1:9", ""),
        &secrets(),
    );
    let route = "/api/webhooks/twilio/status";
    // Over `server.max_body_bytes` (262,144 by default): the contract's 413, in JSON.
    let padding = "x".repeat(300_000);
    let large = [
        ("MessageSid", "SM1"),
        ("MessageStatus", "delivered"),
        ("Padding", padding.as_str()),
    ];
    let too_large = post_signed(&app, route, &large);
    assert_eq!(too_large.error_code(413), "payload_too_large");
    // A NUL is refused as everywhere else, not passed to the database.
    for (field, nul) in [("MessageSid", "SM\u{0}1"), ("ErrorCode", "300\u{0}03")] {
        let mut form = vec![("MessageSid", "SM1"), ("MessageStatus", "undelivered")];
        form.retain(|(k, _)| *k != field);
        form.push((field, nul));
        let refused = post_signed(&app, route, &form);
        assert_eq!(refused.error_code(400), "validation_failed", "{field}");
        assert_eq!(refused.json()["error"]["field"], field, "{}", refused.text);
    }

    let post_events = |content_type: &str, events: &str| {
        let timestamp = unix_now().to_string();
        let timestamp = timestamp.as_str();
        let signature = sign_sendgrid(timestamp, events);
        app.request(
            "POST",
            "/api/webhooks/sendgrid/events",
            &[
                ("Content-Type", content_type),
                ("X-Twilio-Email-Event-Webhook-Signature", &signature),
                ("X-Twilio-Email-Event-Webhook-Timestamp", timestamp),
            ],
            Some(events.as_bytes()),
        )
    };
    let events = json!([{"event": "delivered", "sg_message_id": "abc.filter0001.1"}]).to_string();
    assert_eq!(
        post_events("text/plain", &events).error_code(415),
        "unsupported_media_type"
    );
    assert_eq!(post_events("application/json", &events).status, 200);
    let nul =
        json!([{"event": "bounce", "sg_message_id": "abc.filter0001.1", "status": "5.0.\u{0}0"}])
            .to_string();
    let refused = post_events("application/json", &nul);
    assert_eq!(refused.error_code(400), "validation_failed");
    assert_eq!(
        refused.json()["error"]["field"],
        "status",
        "{}",
        refused.text
    );
}

#[test]
fn twilios_inbound_messages_are_stored_once_and_answered_in_twiml() {
    let twilio = Fake::start();
    let app = TestApp::spawn_with_env(&settings(&twilio.uri(), &twilio.uri(), ""), &secrets());
    let route = "/api/webhooks/twilio";
    let url = format!("{PUBLIC_URL}{route}");
    let form = [
        ("MessageSid", "SMinbound0001"),
        ("AccountSid", ACCOUNT),
        ("From", "+18045551234"),
        ("To", "+12016661234"),
        ("Body", "a photo"),
        ("NumMedia", "1"),
        ("MediaUrl0", "https://api.twilio.example/media/ME1"),
        ("MediaContentType0", "image/jpeg"),
    ];
    assert_eq!(
        post_form(&app, route, &form, None).error_code(401),
        "invalid_signature"
    );
    let signature = sign_twilio(&url, &form);
    for _ in 0..2 {
        let answer = post_form(&app, route, &form, Some(&signature));
        assert_eq!(answer.status, 200, "{}", answer.text);
        assert_eq!(answer.header("Content-Type"), Some("text/xml"));
        assert_eq!(answer.text, "<Response/>");
    }
    let conversations = app.get("/api/conversations").json();
    assert_eq!(conversations["meta"]["total"], 1);
    let id = conversations["items"][0]["id"].as_i64().expect("id");
    let messages = app.get(&format!("/api/conversations/{id}/messages")).json();
    assert_eq!(messages["meta"]["total"], 1, "stored once");
    let stored = &messages["items"][0];
    assert_eq!(stored["direction"], "inbound");
    assert_eq!(stored["channel"], "mms");
    assert_eq!(stored["status"], "received");
    assert_eq!(
        stored["attachments"],
        json!(["https://api.twilio.example/media/ME1"])
    );
    assert_eq!(stored["provider_message_id"], "SMinbound0001");

    // As the SMS webhook: an SMS without a body is refused, an MMS may have none.
    let empty_sms = [
        ("MessageSid", "SMinbound0002"),
        ("From", "+18045551234"),
        ("To", "+12016661234"),
        ("Body", " "),
        ("NumMedia", "0"),
    ];
    let refused = post_signed(&app, route, &empty_sms);
    assert_eq!(refused.error_code(400), "validation_failed");
    assert_eq!(refused.json()["error"]["field"], "Body", "{}", refused.text);
    let media_only = [
        ("MessageSid", "SMinbound0003"),
        ("From", "+18045551234"),
        ("To", "+12016661234"),
        ("Body", ""),
        ("NumMedia", "1"),
        ("MediaUrl0", "https://api.twilio.example/media/ME2"),
    ];
    let taken = post_signed(&app, route, &media_only);
    assert_eq!(taken.status, 200, "{}", taken.text);
}

#[test]
fn messages_from_one_sender_leave_spaced_and_in_order() {
    let (_twilio, arrivals, app) = paced_app("sender_interval_ms = 400\n");
    let (ids, other_id) = one_sender_then_another(&app, 3);
    for id in ids.iter().chain([&other_id]) {
        assert_eq!(finished(&app, *id)["status"], "sent");
    }
    let arrivals = arrivals.lock().expect("arrivals").clone();
    let of = |to: &str| {
        arrivals
            .iter()
            .find(|(t, _)| t == to)
            .map(|(_, at)| *at)
            .expect(to)
    };
    let (a, b, c) = (of("+18045550000"), of("+18045550001"), of("+18045550002"));
    assert!(a < b && b < c, "in order");
    for (earlier, later) in [(a, b), (b, c)] {
        let gap = later.duration_since(earlier);
        assert!(
            gap >= Duration::from_millis(350),
            "spaced {gap:?}, asked 400 ms"
        );
    }
    assert!(
        of("+18045550009") < c,
        "another sender does not wait behind the first"
    );
}

/// When each request reached the fake, by `To`.
type ArrivalLog = Arc<Mutex<Vec<(String, Instant)>>>;

/// Notes each request in an `ArrivalLog` and answers Twilio's 201.
struct Arrivals(ArrivalLog, TwilioCreated);

impl Respond for Arrivals {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let to = form_of(request)
            .into_iter()
            .find(|(k, _)| k == "To")
            .map(|(_, v)| v)
            .unwrap_or_default();
        if let Ok(mut list) = self.0.lock() {
            list.push((to, Instant::now()));
        }
        self.1.respond(request)
    }
}

/// A Twilio fake that notes arrivals, and an app on it with `extra` real-provider keys.
fn paced_app(extra: &str) -> (Fake, ArrivalLog, TestApp) {
    let twilio = Fake::start();
    let arrivals = ArrivalLog::default();
    twilio.mount(
        Mock::given(method("POST"))
            .and(path(messages_path()))
            .and(header("content-type", "application/x-www-form-urlencoded"))
            .respond_with(Arrivals(arrivals.clone(), TwilioCreated(AtomicU64::new(0)))),
    );
    let config = settings(&twilio.uri(), &twilio.uri(), "").replace(
        "request_timeout_ms = 500\n",
        &format!("request_timeout_ms = 500\n{extra}"),
    );
    let app = TestApp::spawn_with_env(&config, &secrets());
    (twilio, arrivals, app)
}

/// `n` SMS from one sender (to `+1804555000k`), then one from another (to
/// `+18045550009`): their ids.
fn one_sender_then_another(app: &TestApp, n: usize) -> (Vec<i64>, i64) {
    let ids = (0..n)
        .map(|k| app.accept("/api/messages/sms", &sms_to(k)))
        .collect();
    let mut other = sms_to(9);
    other["from"] = json!("+12025550199");
    (ids, app.accept("/api/messages/sms", &other))
}

fn arrived(arrivals: &Mutex<Vec<(String, Instant)>>) -> Vec<String> {
    arrivals
        .lock()
        .expect("arrivals")
        .iter()
        .map(|(to, _)| to.clone())
        .collect()
}

#[test]
fn a_waiting_sender_holds_no_place_in_flight() {
    // Two places in flight, and one sender with five messages a second apart: its
    // messages waiting for their turn must not hold those places from another sender.
    let (_twilio, arrivals, app) = paced_app("sender_interval_ms = 1000\nmax_in_flight = 2\n");
    let (ids, other_id) = one_sender_then_another(&app, 5);
    assert_eq!(finished(&app, other_id)["status"], "sent");
    assert_eq!(finished(&app, ids[4])["status"], "sent");
    let order = arrived(&arrivals);
    // Held behind the first sender's waiting messages, it would have left fourth or later.
    let place = order.iter().position(|to| to == "+18045550009");
    assert!(
        place.is_some_and(|place| place <= 2),
        "the other sender waited behind the first: {order:?}"
    );
    let first_sender: Vec<String> = order
        .into_iter()
        .filter(|to| to != "+18045550009")
        .collect();
    let expected: Vec<String> = (0..5).map(|n| format!("+1804555{n:04}")).collect();
    assert_eq!(
        first_sender, expected,
        "one sender's messages keep their order"
    );
}

#[test]
fn a_forced_open_breaker_stops_a_senders_waiting_messages() {
    let (_twilio, arrivals, app) = paced_app("sender_interval_ms = 1000\n");
    let ids: Vec<i64> = (0..4)
        .map(|n| app.accept("/api/messages/sms", &sms_to(n)))
        .collect();
    assert_eq!(finished(&app, ids[0])["status"], "sent");
    let forced = app.post(
        "/api/providers/sms-mms/breaker",
        &json!({"state": "forced_open"}),
    );
    assert_eq!(forced.status, 200, "{}", forced.text);
    // The next waiting message's turn comes within a second, and the breaker turns it
    // away. (Had the waiting messages held permits, as before, none would be refused.)
    let rejections = r#"messaging_breaker_rejections_total{provider="sms-mms"}"#;
    app.eventually("a waiting message meets the forced breaker", || {
        (app.metric(rejections) >= 1.0).then_some(())
    });
    // At most the one that may have left just before the force.
    let sent_while_forced = arrived(&arrivals).len();
    assert!(sent_while_forced <= 2, "{:?}", arrived(&arrivals));
    assert_eq!(
        app.get(&format!("/api/messages/{}", ids[3])).json()["status"],
        "queued"
    );
    let closed = app.post(
        "/api/providers/sms-mms/breaker",
        &json!({"state": "closed"}),
    );
    assert_eq!(closed.status, 200, "{}", closed.text);
    for id in &ids {
        assert_eq!(finished(&app, *id)["status"], "sent");
    }
    let expected: Vec<String> = (0..4).map(|n| format!("+1804555{n:04}")).collect();
    assert_eq!(arrived(&arrivals), expected);
}

#[test]
fn a_graceful_stop_lets_a_request_under_way_finish_and_records_it() {
    // Twilio answers after 300 ms; the stop comes while the request is on its way.
    let twilio = Fake::start();
    twilio.mount(
        Mock::given(method("POST"))
            .and(path(messages_path()))
            .respond_with(TwilioCreatedAfter(Duration::from_millis(300))),
    );
    let config = settings(&twilio.uri(), &twilio.uri(), "");
    let dir = Arc::new(TestDir::new());
    let app = TestApp::spawn_in_with_env(dir.clone(), &config, &secrets());
    let id = app.accept("/api/messages/sms", &sample_sms());
    app.eventually("the request at Twilio", || {
        (!twilio.received().is_empty()).then_some(())
    });
    assert_eq!(app.stop().code(), Some(0));
    // Recorded before the exit: the next start has nothing to send again.
    let again = TestApp::spawn_in_with_env(dir, &config, &secrets());
    let resumed = again.eventually("resumed", || {
        again.logs_with("resumed queued messages").first().cloned()
    });
    assert_eq!(resumed["count"], 0, "the message was left queued");
    let message = again.message(id);
    assert_eq!(message["status"], "sent", "{message}");
    assert_eq!(message["attempts"].as_array().map(Vec::len), Some(1));
    assert_eq!(twilio.received().len(), 1, "sent twice");
}

/// A message whose first answer from Twilio failed, taken over by another instance while
/// this one waits `backoff_ms` for its retry (as after a pause of this one longer than
/// its lease of `lease_ms`).
fn taken_over_while_waiting(
    db: &PgDatabase,
    backoff_ms: u64,
    lease_ms: u64,
) -> (Fake, TestApp, i64) {
    let twilio = Fake::start();
    twilio.mount(
        Mock::given(method("POST"))
            .and(path(messages_path()))
            .respond_with(twilio_error(503, 20503, "Service Unavailable"))
            .up_to_n_times(1)
            .with_priority(1),
    );
    twilio.mount(twilio_created().with_priority(2));
    let config = settings(&twilio.uri(), &twilio.uri(), "").replace(
        "backoff_initial_ms = 10\nbackoff_max_ms = 20\n",
        &format!(
            "backoff_initial_ms = {backoff_ms}\nbackoff_max_ms = {backoff_ms}\n\
             lease_ms = {lease_ms}\n"
        ),
    );
    let app = TestApp::spawn_on_with_env(db, &config, &secrets());
    let id = app.accept("/api/messages/sms", &sample_sms());
    app.eventually("the first attempt recorded", || {
        (app.message(id)["attempts"].as_array().map(Vec::len) == Some(1)).then_some(())
    });
    diesel::sql_query(format!(
        "UPDATE messages SET lease_owner = 'another-instance', \
         lease_until = '9999-12-31T00:00:00.000000Z' WHERE id = {id}"
    ))
    .execute(&mut db.connect())
    .expect("take over");
    (twilio, app, id)
}

/// Waits for this instance to leave message `id` to the one that took it over, checks
/// Twilio got it once, and answers the message as this instance reads it.
fn left_to_the_new_owner(twilio: &Fake, app: &TestApp, id: i64) -> Value {
    app.eventually("the message left to its new owner", || {
        app.logs_with("message left to the instance that holds its lease")
            .iter()
            .any(|line| line["message_id"] == id)
            .then_some(())
    });
    assert_eq!(twilio.received().len(), 1, "sent again after the takeover");
    app.message(id)
}

#[test]
fn a_message_taken_over_by_another_instance_is_not_sent_again_here() {
    let Some(db) = postgres_database("a_message_taken_over_by_another_instance...") else {
        return;
    };
    // The retry would go 3 s later; renewals every 300 ms.
    let (twilio, app, id) = taken_over_while_waiting(&db, 3000, 900);
    let message = left_to_the_new_owner(&twilio, &app, id);
    assert_eq!(message["status"], "queued", "{message}");
}

#[test]
fn a_channel_still_on_the_simulator_is_named_at_start() {
    let twilio = Fake::start();
    let only_twilio = twilio_only(&twilio.uri());
    let app = TestApp::spawn_with_env(&only_twilio, &secrets());
    let warnings = app.logs_with("channel served by a simulator");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0]["channel"], "email");
    assert_eq!(warnings[0]["provider"], "email");
    assert_eq!(provider(&app, "email")["kind"], "simulated");
}

/// The contract's own Twilio table names no `public_url`: such a service starts and sends,
/// and checks Twilio's signatures against the URL each request names, as Twilio's helper
/// libraries rebuild it.
#[test]
fn a_twilio_provider_without_a_public_url_sends_and_checks_the_url_it_was_called_at() {
    let twilio = Fake::start();
    twilio.mount(twilio_created());
    let only_twilio = twilio_only(&twilio.uri())
        .replace(&format!("[server]\npublic_url = \"{PUBLIC_URL}\"\n"), "");
    assert!(!only_twilio.contains("public_url"), "{only_twilio}");
    let app = TestApp::spawn_with_env(&only_twilio, &secrets());
    let warned = app.logs_with("twilio signatures checked against each request's own url");
    assert_eq!(warned.len(), 1, "{warned:?}");
    let id = app.accept("/api/messages/sms", &sms_to(1));
    let sent = finished(&app, id);
    assert_eq!(sent["status"], "sent", "{sent}");
    let route = "/api/webhooks/twilio/status";
    let sid = sid_of(&app, id);
    let delivered = [("MessageSid", sid.as_str()), ("MessageStatus", "delivered")];
    let elsewhere = sign_twilio(&format!("{PUBLIC_URL}{route}"), &delivered);
    assert_eq!(
        post_form(&app, route, &delivered, Some(&elsewhere)).error_code(401),
        "invalid_signature"
    );
    assert_eq!(app.message(id)["delivery_status"], Value::Null);
    let here = sign_twilio(&format!("{}{route}", app.base), &delivered);
    let ok = post_form(&app, route, &delivered, Some(&here));
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(app.message(id)["delivery_status"], "delivered");
}

/// SendGrid posts its events "when the batch size reaches 768 kilobytes": under the
/// default body limit such a batch gets 413 and its receipts are lost once SendGrid gives
/// up, so start-up says so; with the limit the README advises, a batch that size is taken.
#[test]
fn sendgrids_largest_batches_need_the_advised_body_limit_and_are_taken_with_it() {
    let (_twilio, sendgrid) = (Fake::start(), Fake::start());
    sendgrid.mount(sendgrid_accepted());
    let with_default = settings("http://unused", &sendgrid.uri(), "");
    let app = TestApp::spawn_with_env(&with_default, &secrets());
    let warnings = app.logs_with("body limit below sendgrid's batches");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0]["provider"], "email");
    assert_eq!(warnings[0]["max_body_bytes"], 262_144);
    assert_eq!(warnings[0]["advised"], 1_048_576);
    drop(app);

    let advised = with_default.replace("[server]\n", "[server]\nmax_body_bytes = 1048576\n");
    let app = TestApp::spawn_with_env(&advised, &secrets());
    assert!(app
        .logs_with("body limit below sendgrid's batches")
        .is_empty());
    let id = app.accept("/api/messages/email", &email(0));
    let sid = sid_of(&app, id);
    // Engagement events for other messages fill the batch to SendGrid's size; the one
    // receipt for ours comes last.
    let mut events: Vec<Value> = (0..3_200)
        .map(|n| {
            json!({"email": format!("reader{n}@example.com"), "event": "open",
                "sg_message_id": format!("other{n}.filter0001.1"), "timestamp": 1700000000,
                "useragent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)",
                "ip": "192.0.2.1", "sg_event_id": format!("{n:0>22}")})
        })
        .collect();
    events.push(json!({"email": "contact@gmail.com", "event": "delivered",
        "sg_message_id": format!("{sid}.filter0001.2"), "timestamp": 1700000001}));
    let body = Value::Array(events).to_string();
    assert!(body.len() > 768 * 1024, "{} bytes", body.len());
    let answer = post_signed_events(&app, &body);
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(app.message(id)["delivery_status"], "delivered");
}

/// A provider's answer is outside data: a sid or an error code with a NUL in it (which
/// PostgreSQL's text refuses) or of 60 KB must not keep the attempt's record from being
/// written, and with it the message from finishing.
#[test]
fn a_nul_or_a_huge_code_in_a_providers_answer_is_stored_cleaned() {
    let twilio = Fake::start();
    let long = "9".repeat(60_000);
    for (to, response) in [
        (
            1,
            ResponseTemplate::new(201).set_body_json(json!({"sid": "SM\u{0}nul"})),
        ),
        (
            2,
            ResponseTemplate::new(400).set_body_json(json!({"code": format!("2\u{0}{long}")})),
        ),
    ] {
        twilio.mount(
            Mock::given(method("POST"))
                .and(path(messages_path()))
                .and(body_string_contains(format!("To=%2B1804555{to:04}")))
                .respond_with(response),
        );
    }
    let only_twilio = twilio_only(&twilio.uri());
    let app = TestApp::spawn_with_env(&only_twilio, &secrets());
    let sent = finished(&app, app.accept("/api/messages/sms", &sms_to(1)));
    assert_eq!(sent["status"], "sent", "{sent}");
    assert_eq!(sent["provider_message_id"], "SMnul");
    let failed = finished(&app, app.accept("/api/messages/sms", &sms_to(2)));
    assert_eq!(failed["status"], "failed", "{failed}");
    let code = failed["attempts"][0]["error_code"].as_str().expect("code");
    assert_eq!(code.len(), 256);
    assert!(code.starts_with("29"), "{code}");
}

/// The same takeover, but the retry falls due long before this instance's next lease
/// renewal (as when a frozen instance wakes and its overdue timers fire first): the read
/// before sending sees the other instance's lease, and nothing is sent twice.
#[test]
fn a_retry_due_before_the_renewal_is_not_sent_once_another_instance_holds_it() {
    let Some(db) = postgres_database("a_retry_due_before_the_renewal...") else {
        return;
    };
    // The retry 1 s after the first answer; renewals every 20 s.
    let (twilio, app, id) = taken_over_while_waiting(&db, 1000, 60_000);
    let message = left_to_the_new_owner(&twilio, &app, id);
    assert_eq!(message["status"], "queued", "{message}");
    assert_eq!(message["attempts"].as_array().map(Vec::len), Some(1));
}

/// A receipt can overtake the record of the attempt it follows (here Twilio's status
/// callback comes while Twilio's own answer, which names the sid, is still on its way):
/// it is kept aside and given to its message once the record has landed.
#[test]
fn a_receipt_that_comes_before_its_attempts_record_is_applied_once_it_lands() {
    let twilio = Fake::start();
    twilio.mount(
        Mock::given(method("POST"))
            .and(path(messages_path()))
            .respond_with(
                ResponseTemplate::new(201)
                    .set_delay(Duration::from_millis(1500))
                    .set_body_json(json!({"sid": "SMearly", "status": "queued"})),
            ),
    );
    let config = twilio_only(&twilio.uri())
        .replace("max_attempts = 3\n", "max_attempts = 3\nlease_ms = 900\n")
        .replace("request_timeout_ms = 500", "request_timeout_ms = 5000");
    let app = TestApp::spawn_with_env(&config, &secrets());
    let id = app.accept("/api/messages/sms", &sample_sms());
    poll_until("the request to reach Twilio", DEADLINE, || {
        (!twilio.received().is_empty()).then_some(())
    });
    let route = "/api/webhooks/twilio/status";
    let undelivered = [
        ("MessageSid", "SMearly"),
        ("MessageStatus", "undelivered"),
        ("ErrorCode", "30003"),
        ("AccountSid", ACCOUNT),
    ];
    assert_eq!(post_signed(&app, route, &undelivered).status, 200);
    assert_eq!(
        app.message(id)["status"],
        "queued",
        "answered before the receipt"
    );
    let message = app.eventually("the early receipt applied", || {
        let message = app.message(id);
        (message["delivery_status"] == "undelivered").then_some(message)
    });
    assert_eq!(message["status"], "sent");
    assert_eq!(message["provider_message_id"], "SMearly");
    assert_eq!(message["delivery_error_code"], "30003");
    assert_eq!(app.logs_with("early receipts applied").len(), 1);
}

/// A receipt names messages of its own provider's channels only: a SendGrid event (which
/// may come unsigned, where no key is configured) carrying an SMS's Twilio sid changes
/// nothing, and is not kept aside for later either.
#[test]
fn a_sendgrid_event_naming_an_sms_sid_changes_nothing() {
    let (_twilio, _sendgrid, _hooks, app) = app_with_receipts();
    let id = app.accept("/api/messages/sms", &sample_sms());
    let sid = sid_of(&app, id);
    let events = json!([
        {"email": "x@example.com", "event": "bounce", "status": "5.0.0",
         "sg_message_id": format!("{sid}.filter0001.1"), "timestamp": 1700000000},
    ])
    .to_string();
    let answer = post_signed_events(&app, &events);
    assert_eq!(answer.status, 200, "{}", answer.text);
    // A Twilio receipt for another message, posted after it, has landed: so has the event.
    let other = app.accept("/api/messages/sms", &sms_to(7));
    let other_sid = sid_of(&app, other);
    let delivered = [
        ("MessageSid", other_sid.as_str()),
        ("MessageStatus", "delivered"),
        ("AccountSid", ACCOUNT),
    ];
    assert_eq!(
        post_signed(&app, "/api/webhooks/twilio/status", &delivered).status,
        200
    );
    assert_eq!(app.message(other)["delivery_status"], "delivered");
    let message = app.message(id);
    assert_eq!(message["delivery_status"], Value::Null, "{message}");
    assert!(app.logs_with("early receipts applied").is_empty());
}

/// A callback is read when it is sent. The `failed` callback of a message an operator
/// retried meanwhile still tells of the round that failed: its attempts and its code, not
/// the later round's that sent it.
#[test]
fn a_failed_callback_sent_after_a_retry_tells_of_the_round_that_failed() {
    let (twilio, hooks) = (Fake::start(), Fake::start());
    twilio.mount(
        Mock::given(method("POST"))
            .and(path(messages_path()))
            .respond_with(twilio_error(400, 21211, "Invalid 'To' Phone Number"))
            .up_to_n_times(1)
            .with_priority(1),
    );
    twilio.mount(twilio_created().with_priority(2));
    hooks.mount(
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(503))
            .with_priority(10),
    );
    let only_twilio = twilio_only(&twilio.uri());
    let app = TestApp::spawn_with_env(&only_twilio, &secrets());
    let mut body = sample_sms();
    body["status_callback"] = json!(format!("{}/hooks", hooks.uri()));
    let id = app.accept("/api/messages/sms", &body);
    let failed_id = format!("msg_{id}_failed_0");
    let tries = || -> Vec<Value> {
        hooks
            .received()
            .iter()
            .filter(|r| {
                r.headers.get("webhook-id").and_then(|v| v.to_str().ok())
                    == Some(failed_id.as_str())
            })
            .filter_map(|r| serde_json::from_slice(&r.body).ok())
            .collect()
    };
    app.eventually("the failed callback's first try", || {
        (!tries().is_empty()).then_some(())
    });
    let retried = app.post(&format!("/api/messages/{id}/retry"), &json!({}));
    assert_eq!(retried.status, 202, "{}", retried.text);
    let sent = finished(&app, id);
    assert_eq!(sent["status"], "sent", "{sent}");
    assert_eq!(sent["attempts"].as_array().map(Vec::len), Some(2));
    hooks.mount(
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200))
            .with_priority(1),
    );
    let told = app.eventually("the failed callback delivered", || {
        (app.message(id)["callbacks"]
            .as_array()?
            .iter()
            .any(|c| c["id"] == failed_id.as_str() && c["state"] == "delivered"))
        .then(|| tries().pop())
        .flatten()
    });
    assert_eq!(told["data"]["status"], "failed", "{told}");
    assert_eq!(told["data"]["attempts"], 1, "{told}");
    assert_eq!(told["data"]["error_code"], "21211", "{told}");
}
