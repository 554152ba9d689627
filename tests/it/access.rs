//! Access control (CONTRACT sections 9 and 11): API keys with scopes and rates, signed
//! inbound webhooks (checked here by an implementation of Standard Webhooks of the test's
//! own), `keygen`, and the operator's breaker controls, on one instance and two.

use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use serde_json::{json, Value};

use crate::helpers::*;

const SENDER: &str = "msk_sender-secret-8c1b";
const READER: &str = "msk_reader-secret-2f9a";
const ADMIN: &str = "msk_admin-secret-5d7e";
const EVERYTHING: &str = "msk_everything-secret-0a4c";
const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn key(name: &str, secret: &str, scopes: &str, extra: &str) -> String {
    format!(
        "[auth.keys.{name}]\nsha256 = \"{}\"\nscopes = [{scopes}]\n{extra}",
        sha256_hex(secret)
    )
}

/// Four keys: one per scope and one with all three (and a rate of 60 a minute).
fn keyed_settings(extra: &str) -> String {
    [
        key("sender", SENDER, "\"send\"", ""),
        key("reader", READER, "\"read\"", ""),
        key("admin", ADMIN, "\"admin\"", ""),
        key(
            "everything",
            EVERYTHING,
            "\"send\", \"read\", \"admin\"",
            "rate_limit_per_min = 60\n",
        ),
        extra.to_owned(),
    ]
    .concat()
}

fn bearer(secret: &str) -> String {
    format!("Bearer {secret}")
}

fn with_key(
    app: &TestApp,
    method: &str,
    path: &str,
    secret: &str,
    body: Option<&Value>,
) -> Response {
    let auth = bearer(secret);
    let mut headers = vec![("Authorization", auth.as_str())];
    if body.is_some() {
        headers.push(("Content-Type", "application/json"));
    }
    let text = body.map(Value::to_string);
    app.request(method, path, &headers, text.as_deref().map(str::as_bytes))
}

#[test]
fn every_refusal_of_section_9_comes_from_a_real_request_and_no_secret_is_logged() {
    let app = TestApp::spawn(&keyed_settings(""));
    assert_eq!(app.logs_with("webhooks are open").len(), 1);
    assert!(app.logs_with("api is open").is_empty());

    let missing = app.post("/api/messages/sms", &sample_sms());
    assert_eq!(missing.error_code(401), "unauthorized");
    assert_eq!(missing.header("WWW-Authenticate"), Some("Bearer"));
    // The key comes first: an Accept that excludes JSON is no way around it.
    let html = app.request(
        "GET",
        "/api/conversations",
        &[("Accept", "text/html")],
        None,
    );
    assert_eq!(html.error_code(401), "unauthorized");
    let unknown = with_key(&app, "GET", "/api/conversations", "msk_not-a-key", None);
    assert_eq!(unknown.error_code(401), "unauthorized");
    let malformed = app.request(
        "GET",
        "/api/conversations",
        &[("Authorization", READER)],
        None,
    );
    assert_eq!(malformed.error_code(401), "unauthorized");
    let scope = with_key(
        &app,
        "POST",
        "/api/messages/sms",
        READER,
        Some(&sample_sms()),
    );
    assert_eq!(scope.error_code(403), "forbidden");
    let sent = with_key(
        &app,
        "POST",
        "/api/messages/sms",
        SENDER,
        Some(&sample_sms()),
    );
    assert_eq!(sent.status, 202, "{}", sent.text);
    assert_eq!(
        with_key(&app, "GET", "/api/conversations", READER, None).status,
        200
    );

    // Open without a key: health, readiness, metrics, the document, the webhooks.
    for path in ["/healthz", "/readyz", "/metrics", "/api/openapi.json"] {
        assert_eq!(app.get(path).status, 200, "{path}");
    }
    assert_eq!(
        app.post("/api/webhooks/sms", &sample_sms_webhook()).status,
        202
    );

    // The rate: 60 a minute as a token bucket, so 60 at once, then one a second.
    let mut refused = None;
    for _ in 0..61 {
        let response = with_key(&app, "GET", "/api/conversations", EVERYTHING, None);
        if response.status == 429 {
            refused = Some(response);
            break;
        }
        assert_eq!(response.status, 200);
    }
    let refused = refused.expect("the 61st request in a moment is over the rate");
    assert_eq!(refused.error_code(429), "rate_limited");
    let retry_after: u64 = refused
        .header("Retry-After")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let refused_at = Instant::now();
    poll_until("the rate lets a request through again", DEADLINE, || {
        (with_key(&app, "GET", "/api/conversations", EVERYTHING, None).status == 200).then_some(())
    });
    assert!(
        refused_at.elapsed() <= Duration::from_secs(retry_after) + Duration::from_millis(500),
        "let through {:?} after a Retry-After of {retry_after} s",
        refused_at.elapsed()
    );

    for (reason, at_least) in [
        ("missing", 3.0),
        ("unknown_key", 1.0),
        ("scope", 1.0),
        ("rate", 1.0),
        ("signature", 0.0),
    ] {
        let series = format!(r#"messaging_auth_failures_total{{reason="{reason}"}}"#);
        let count = app.metric(&series);
        assert!(count >= at_least, "{series} = {count}");
    }
    // actix-http takes any token as a method: a refusal logs at most 256 bytes of it.
    let method = "X".repeat(10_000);
    let refused = app.request(&method, "/api/conversations", &[], None);
    assert_eq!(refused.error_code(401), "unauthorized");
    let refusals = app.logs_with("request refused");
    assert!(
        refusals
            .iter()
            .any(|l| l["reason"] == "scope" && l["key"] == "reader"),
        "{refusals:?}"
    );
    let logged = app.eventually("the long method's refusal logged", || {
        app.logs_with("request refused").iter().find_map(|l| {
            l["method"]
                .as_str()
                .filter(|m| m.starts_with("XXX"))
                .map(str::to_owned)
        })
    });
    assert!(logged.len() < 300, "{} bytes", logged.len());
    let logs: String = app.all_logs().iter().map(Value::to_string).collect();
    for secret in [SENDER, READER, ADMIN, EVERYTHING, "msk_not-a-key"] {
        assert!(!logs.contains(secret), "a secret in the log");
        assert!(
            !logs.contains(&sha256_hex(secret)),
            "a key's hash in the log"
        );
    }
}

/// The scope each documented operation needs; a route missing here fails the test.
fn expected_scope(method: &str, path: &str) -> Option<&'static str> {
    match (method, path) {
        (
            "POST",
            "/api/messages/sms"
            | "/api/messages/email"
            | "/api/messages/retry"
            | "/api/messages/{id}/retry",
        ) => Some("send"),
        (
            "GET",
            "/api/messages/{id}"
            | "/api/conversations"
            | "/api/conversations/{id}/messages"
            | "/api/providers",
        ) => Some("read"),
        ("POST", "/api/providers/{name}/breaker") => Some("admin"),
        ("GET", "/healthz" | "/readyz" | "/metrics" | "/api/openapi.json") => None,
        (
            "POST",
            "/api/webhooks/sms"
            | "/api/webhooks/email"
            | "/api/webhooks/twilio"
            | "/api/webhooks/twilio/status"
            | "/api/webhooks/sendgrid/events",
        ) => None,
        _ => panic!("{method} {path} has no scope in this table: decide which it needs"),
    }
}

#[test]
fn with_keys_a_wrong_method_or_unknown_route_is_405_or_404_to_any_key() {
    let app = TestApp::spawn(&keyed_settings(""));
    for secret in [READER, SENDER, ADMIN] {
        let wrong_method = with_key(&app, "DELETE", "/api/conversations", secret, None);
        assert_eq!(wrong_method.error_code(405), "method_not_allowed");
        let get_a_post_route = with_key(&app, "GET", "/api/messages/sms", secret, None);
        assert_eq!(get_a_post_route.error_code(405), "method_not_allowed");
        let unknown = with_key(&app, "POST", "/api/nothing-here", secret, Some(&json!({})));
        assert_eq!(unknown.error_code(404), "not_found");
    }
    // Without a valid key, nothing about the routes is told.
    let anonymous = app.request("DELETE", "/api/conversations", &[], None);
    assert_eq!(anonymous.error_code(401), "unauthorized");
    let unknown_key = with_key(&app, "GET", "/api/nothing-here", "msk_not-a-key", None);
    assert_eq!(unknown_key.error_code(401), "unauthorized");
}

#[test]
fn every_route_of_the_api_table_needs_its_scope() {
    let app = TestApp::spawn(&keyed_settings(""));
    let doc = app.get("/api/openapi.json").json();
    assert!(doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer");
    let keys = [("send", SENDER), ("read", READER), ("admin", ADMIN)];
    let mut checked = 0;
    for (path, operations) in doc["paths"].as_object().expect("paths") {
        let concrete = path.replace("{id}", "1").replace("{name}", "sms-mms");
        for (method, operation) in operations.as_object().expect("operations") {
            let method = method.to_uppercase();
            let scope = expected_scope(&method, path);
            let documented: Vec<String> = operation["security"][0]["bearer"]
                .as_array()
                .map(|s| {
                    s.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(
                documented,
                scope.into_iter().map(str::to_owned).collect::<Vec<_>>(),
                "{method} {path}"
            );
            let body = (method == "POST").then(|| json!({}));
            let without_key = |path: &str| {
                app.request(
                    &method,
                    path,
                    &[("Content-Type", "application/json")],
                    body.as_ref()
                        .map(|b| b.to_string())
                        .as_deref()
                        .map(str::as_bytes),
                )
            };
            let without = without_key(&concrete);
            match scope {
                None => assert_ne!(without.status, 401, "{method} {path} is open"),
                Some(scope) => {
                    assert_eq!(without.status, 401, "{method} {path} without a key");
                    for (key_scope, secret) in keys {
                        let response = with_key(&app, &method, &concrete, secret, body.as_ref());
                        if key_scope == scope {
                            assert!(
                                !matches!(response.status, 401 | 403),
                                "{method} {path} with {key_scope}: {}",
                                response.status
                            );
                        } else {
                            assert_eq!(response.status, 403, "{method} {path} with {key_scope}");
                        }
                    }
                }
            }
            if let Some(scope) = scope {
                // Percent-encoded letters route to the same handler, so they need the
                // same key: the `a` of `api`, and the first letter after `/api/`.
                let rest = &concrete["/api/".len()..];
                let first = rest.chars().next().expect("a route after /api/");
                for encoded in [
                    format!("/%61pi/{rest}"),
                    format!("/api/%{:02X}{}", first as u32, &rest[first.len_utf8()..]),
                ] {
                    assert_eq!(
                        without_key(&encoded).status,
                        401,
                        "{method} {encoded} without a key"
                    );
                    for (key_scope, secret) in keys {
                        if key_scope != scope {
                            let response = with_key(&app, &method, &encoded, secret, body.as_ref());
                            assert_eq!(response.status, 403, "{method} {encoded} with {key_scope}");
                        }
                    }
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 16, "{checked} operations");
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

#[test]
fn signed_webhooks_are_taken_and_every_bad_signature_is_refused() {
    let app = TestApp::spawn_with_env(
        &keyed_settings("[webhooks]\nsecret_env = \"TEST_WEBHOOK_SECRET\"\n"),
        &[("TEST_WEBHOOK_SECRET", WEBHOOK_SECRET)],
    );
    assert!(app.logs_with("webhooks are open").is_empty());
    let body = sample_sms_webhook().to_string();
    let post = |id: &str, timestamp: String, signature: Option<String>, body: &str| {
        let mut headers = vec![
            ("Content-Type", "application/json".to_owned()),
            ("webhook-id", id.to_owned()),
            ("webhook-timestamp", timestamp),
        ];
        if let Some(signature) = signature {
            headers.push(("webhook-signature", signature));
        }
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        app.request("POST", "/api/webhooks/sms", &headers, Some(body.as_bytes()))
    };
    let now = unix_now();
    let signed = |id: &str, ts: i64, secret: &str, body: &str| {
        Some(standard_webhooks_signature(secret, id, ts, body))
    };
    let mut tampered = sample_sms_webhook();
    tampered["body"] = json!("not what was signed");
    let tampered = tampered.to_string();
    for (why, response) in [
        (
            "tampered body",
            post(
                "msg_1",
                now.to_string(),
                signed("msg_1", now, WEBHOOK_SECRET, &body),
                &tampered,
            ),
        ),
        (
            "stale timestamp",
            post(
                "msg_1",
                (now - 301).to_string(),
                signed("msg_1", now - 301, WEBHOOK_SECRET, &body),
                &body,
            ),
        ),
        (
            "future timestamp",
            post(
                "msg_1",
                // Far enough ahead that the server's clock, read later, cannot close in.
                (now + 400).to_string(),
                signed("msg_1", now + 400, WEBHOOK_SECRET, &body),
                &body,
            ),
        ),
        (
            // Signed as it is: only the tolerance can refuse it, without overflowing.
            "earliest timestamp",
            post(
                "msg_1",
                i64::MIN.to_string(),
                signed("msg_1", i64::MIN, WEBHOOK_SECRET, &body),
                &body,
            ),
        ),
        (
            "wrong secret",
            post(
                "msg_1",
                now.to_string(),
                signed("msg_1", now, "whsec_c29tZSBvdGhlciBzZWNyZXQ=", &body),
                &body,
            ),
        ),
        (
            "missing signature",
            post("msg_1", now.to_string(), None, &body),
        ),
        (
            "empty signature",
            post("msg_1", now.to_string(), Some("v1,".to_owned()), &body),
        ),
        (
            "truncated signature",
            post(
                "msg_1",
                now.to_string(),
                signed("msg_1", now, WEBHOOK_SECRET, &body).map(|s| s[..s.len() - 8].to_owned()),
                &body,
            ),
        ),
        (
            "another id",
            post(
                "msg_2",
                now.to_string(),
                signed("msg_1", now, WEBHOOK_SECRET, &body),
                &body,
            ),
        ),
    ] {
        assert_eq!(response.error_code(401), "invalid_signature", "{why}");
    }
    // A body that is not UTF-8, correctly signed: refused as the JSON it is not, not as
    // a bad signature (the library signs text only).
    let not_text = b"{\"from\":\"\xff\"}";
    let signature = standard_webhooks_signature(WEBHOOK_SECRET, "msg_3", now, not_text);
    let timestamp = now.to_string();
    let headers = [
        ("Content-Type", "application/json"),
        ("webhook-id", "msg_3"),
        ("webhook-timestamp", timestamp.as_str()),
        ("webhook-signature", signature.as_str()),
    ];
    let refused = app.request("POST", "/api/webhooks/sms", &headers, Some(not_text));
    assert_eq!(refused.error_code(400), "invalid_json", "{}", refused.text);
    let unsigned = app.post("/api/webhooks/email", &sample_email_webhook());
    assert_eq!(unsigned.error_code(401), "invalid_signature");
    assert_eq!(
        app.get("/api/conversations").status,
        401,
        "reads still need a key"
    );
    let stored = with_key(&app, "GET", "/api/conversations", READER, None).json();
    assert_eq!(stored["meta"]["total"], 0, "nothing refused was stored");

    let ok = post(
        "msg_1",
        now.to_string(),
        signed("msg_1", now, WEBHOOK_SECRET, &body),
        &body,
    );
    assert_eq!(ok.status, 202, "{}", ok.text);
    assert!(app.metric(r#"messaging_auth_failures_total{reason="signature"}"#) >= 6.0);
    app.eventually(
        "the signature's refusal logged with its method and path",
        || {
            app.logs_with("request refused")
                .iter()
                .any(|l| {
                    l["reason"] == "signature"
                        && l["method"] == "POST"
                        && l["path"] == "/api/webhooks/email"
                })
                .then_some(())
        },
    );
    let logs: String = app.all_logs().iter().map(Value::to_string).collect();
    assert!(!logs.contains(WEBHOOK_SECRET.trim_start_matches("whsec_")));
}

/// `keygen NAME`'s output: the key it printed, and the lines from `header` on (what an
/// operator pastes).
fn keygen(name: &str, header: &str) -> (String, String) {
    let output = std::process::Command::new(BIN)
        .args(["keygen", name])
        .output()
        .expect("run keygen");
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).expect("utf-8");
    let secret = text
        .lines()
        .find(|l| l.starts_with("msk_"))
        .expect("the key")
        .to_owned();
    let lines = text
        .lines()
        .skip_while(|l| !l.starts_with(header))
        .map(|l| format!("{l}\n"))
        .collect();
    (secret, lines)
}

#[test]
fn keygen_prints_a_key_once_and_its_lines_admit_it() {
    let (secret, lines) = keygen("billing", "[auth.keys.billing]");
    let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(secret.trim_start_matches("msk_"))
        .expect("base64url");
    assert!(decoded.len() >= 32, "{} bytes of randomness", decoded.len());
    assert!(lines.contains(&sha256_hex(&secret)));
    let again = std::process::Command::new(BIN)
        .args(["keygen", "billing"])
        .output()
        .expect("run");
    assert!(
        !String::from_utf8_lossy(&again.stdout).contains(&secret),
        "a new key each time"
    );

    let app = TestApp::spawn(&lines);
    let sent = with_key(
        &app,
        "POST",
        "/api/messages/sms",
        &secret,
        Some(&sample_sms()),
    );
    assert_eq!(sent.status, 202, "{}", sent.text);
    assert_eq!(
        with_key(&app, "GET", "/api/conversations", &secret, None).status,
        200
    );
    assert_eq!(app.get("/api/conversations").status, 401);
    app.stop();

    // A name with a dot is quoted, or the pasted lines would make nested tables.
    let (secret, lines) = keygen("billing.v2", "[auth.keys.\"billing.v2\"]");
    assert!(lines.contains(&sha256_hex(&secret)), "{lines}");
    let app = TestApp::spawn(&lines);
    let listed = with_key(&app, "GET", "/api/conversations", &secret, None);
    assert_eq!(listed.status, 200, "{}", listed.text);
    assert_eq!(app.get("/api/conversations").status, 401);
    let bad = std::process::Command::new(BIN)
        .args(["keygen", "no spaces"])
        .output()
        .expect("run");
    assert_eq!(bad.status.code(), Some(2));
}

fn breaker_state(app: &TestApp, provider_name: &str) -> Value {
    let providers = with_key(app, "GET", "/api/providers", READER, None).json();
    providers["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|p| p["name"] == provider_name)
        .expect("listed")
        .clone()
}

fn force(app: &TestApp, provider_name: &str, state: &str) -> Response {
    with_key(
        app,
        "POST",
        &format!("/api/providers/{provider_name}/breaker"),
        ADMIN,
        Some(&json!({"state": state})),
    )
}

#[test]
fn a_forced_open_breaker_holds_messages_until_closed_and_disabled_records_nothing() {
    let app = TestApp::spawn(&keyed_settings(
        "[providers.email]\nseed = 7\nerror_pct = 100.0\n[providers.email.breaker]\nminimum_calls = 2\nwindow_size = 2\n",
    ));
    for state in ["forced_open", "sideways"] {
        assert_eq!(
            force(&app, "nobody", state).error_code(404),
            "not_found",
            "an unknown provider, asked for {state}"
        );
    }
    assert_eq!(
        force(&app, "sms-mms", "sideways").error_code(400),
        "validation_failed"
    );
    assert_eq!(
        with_key(
            &app,
            "POST",
            "/api/providers/sms-mms/breaker",
            READER,
            Some(&json!({"state": "closed"}))
        )
        .status,
        403
    );

    let forced = force(&app, "sms-mms", "forced_open");
    assert_eq!(forced.status, 200, "{}", forced.text);
    assert_eq!(forced.json()["breaker"]["state"], "forced_open");
    let ids: Vec<i64> = (0..3)
        .map(|n| {
            with_key(&app, "POST", "/api/messages/sms", SENDER, Some(&sms(n))).json()["id"]
                .as_i64()
                .expect("id")
        })
        .collect();
    app.eventually("all three waiting behind the forced breaker", || {
        let provider = breaker_state(&app, "sms-mms");
        (provider["pending"] == 3).then_some(())
    });
    assert!(app.metric(r#"messaging_breaker_rejections_total{provider="sms-mms"}"#) >= 1.0);
    assert_eq!(
        app.metric(r#"messaging_dispatch_attempts_total{channel="sms",provider="sms-mms"}"#),
        0.0
    );
    for id in &ids {
        assert_eq!(
            with_key(&app, "GET", &format!("/api/messages/{id}"), READER, None).json()["status"],
            "queued"
        );
    }
    assert_eq!(
        app.metric(r#"messaging_breaker_state{provider="sms-mms",state="forced_open"}"#),
        1.0
    );

    assert_eq!(
        force(&app, "sms-mms", "closed").json()["breaker"]["state"],
        "closed"
    );
    for id in &ids {
        app.eventually("sent once the breaker closes", || {
            let message =
                with_key(&app, "GET", &format!("/api/messages/{id}"), READER, None).json();
            (message["status"] == "sent").then_some(())
        });
    }
    let transitions: Vec<(Value, Value)> = app
        .logs_with("breaker transition")
        .iter()
        .filter(|l| l["provider"] == "sms-mms")
        .map(|l| (l["from"].clone(), l["to"].clone()))
        .collect();
    assert_eq!(
        transitions,
        [
            (json!("closed"), json!("forced_open")),
            (json!("forced_open"), json!("closed"))
        ]
    );

    // Disabled: every attempt admitted, none recorded: a failing provider never opens.
    assert_eq!(
        force(&app, "email", "disabled").json()["breaker"]["state"],
        "disabled"
    );
    let mails: Vec<i64> = (0..4)
        .map(|n| {
            with_key(&app, "POST", "/api/messages/email", SENDER, Some(&email(n))).json()["id"]
                .as_i64()
                .expect("id")
        })
        .collect();
    for id in mails {
        app.eventually("failed after its attempts", || {
            let message =
                with_key(&app, "GET", &format!("/api/messages/{id}"), READER, None).json();
            (message["status"] == "failed").then_some(())
        });
    }
    let email_breaker = breaker_state(&app, "email");
    assert_eq!(email_breaker["breaker"]["state"], "disabled");
    assert_eq!(email_breaker["breaker"]["recorded_calls"], 0);
    assert_eq!(
        app.metric(
            r#"messaging_breaker_transitions_total{from="disabled",provider="email",to="open"}"#
        ),
        0.0
    );
}

#[test]
fn a_forced_state_set_through_one_instance_holds_on_the_other_within_a_renewal() {
    let Some(db) = postgres_database("a_forced_state_set_through_one_instance...") else {
        return;
    };
    // Renewals every 300 ms. The second instance's email provider fails every attempt.
    let settings = keyed_settings("[dispatch]\nlease_ms = 900\n");
    let a = TestApp::spawn_on(&db, &settings);
    let b = TestApp::spawn_on(
        &db,
        &keyed_settings(
            "[dispatch]\nlease_ms = 900\nmax_attempts = 1\n\
             [breaker]\nminimum_calls = 2\nopen_ms = 600000\n\
             [providers.email]\nerror_pct = 100.0\n",
        ),
    );
    assert_eq!(force(&a, "sms-mms", "forced_open").status, 200);
    let started = Instant::now();
    b.eventually("the other instance forced open", || {
        (breaker_state(&b, "sms-mms")["breaker"]["state"] == "forced_open").then_some(())
    });
    assert!(
        started.elapsed() < Duration::from_millis(900 / 3 + 1_000),
        "took {:?}",
        started.elapsed()
    );
    let waiting = with_key(&b, "POST", "/api/messages/sms", SENDER, Some(&sms(1))).json()["id"]
        .as_i64()
        .expect("id");
    b.eventually("waiting on the other instance", || {
        (breaker_state(&b, "sms-mms")["pending"] == 1).then_some(())
    });
    assert_eq!(
        b.metric(r#"messaging_dispatch_attempts_total{channel="sms",provider="sms-mms"}"#),
        0.0
    );
    assert_eq!(force(&a, "sms-mms", "closed").status, 200);
    b.eventually("sent once closed through the first instance", || {
        let message = with_key(&b, "GET", &format!("/api/messages/{waiting}"), READER, None).json();
        (message["status"] == "sent").then_some(())
    });

    // A breaker that opened on its own there, with nothing ever forced for its provider:
    // `closed` through the first instance closes it on the second too.
    for n in 0..2 {
        with_key(&b, "POST", "/api/messages/email", SENDER, Some(&email(n)));
    }
    b.eventually("the failing provider's breaker open", || {
        (breaker_state(&b, "email")["breaker"]["state"] == "open").then_some(())
    });
    assert_eq!(force(&a, "email", "closed").status, 200);
    b.eventually("closed on the other instance", || {
        let breaker = breaker_state(&b, "email");
        (breaker["breaker"]["state"] == "closed").then_some(breaker)
    });
}
