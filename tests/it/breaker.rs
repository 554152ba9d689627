//! End-to-end test of breaker isolation (spec user story 2, SC-002; CONTRACT 4.4): the
//! sms-mms provider fails every call, its breaker opens after ten failures while email
//! keeps sending with its breaker closed; waiting SMS are neither attempted nor failed, and
//! all go out once the provider is healthy again.

use std::sync::Arc;

use serde_json::json;

use crate::helpers::*;

const FAILING: &str = "[dispatch]\nmax_attempts = 50\nbackoff_initial_ms = 1\nbackoff_max_ms = 5\n\
    [breaker]\nwindow_size = 20\nminimum_calls = 10\nfailure_rate_threshold = 0.5\n\
    open_ms = 3000\nhalf_open_calls = 3\n\
    [providers.sms-mms]\nseed = 42\nerror_pct = 100.0\n[providers.email]\nseed = 7\n";

fn transitions(app: &TestApp, provider: &str, from: &str, to: &str) -> f64 {
    app.metric(&format!(
        r#"messaging_breaker_transitions_total{{from="{from}",provider="{provider}",to="{to}"}}"#
    ))
}

fn email_breaker_untouched(app: &TestApp) {
    for (from, to) in [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("half_open", "closed"),
    ] {
        assert_eq!(
            transitions(app, "email", from, to),
            0.0,
            "email {from}->{to}"
        );
    }
    assert_eq!(
        app.metric(r#"messaging_breaker_state{provider="email",state="closed"}"#),
        1.0
    );
    assert_eq!(provider(app, "email")["breaker"]["state"], "closed");
}

#[test]
fn email_keeps_dispatching_while_the_sms_breaker_is_open_and_waiting_sms_go_out_later() {
    let dir = Arc::new(TestDir::new());
    let app = TestApp::spawn_in(dir.clone(), FAILING);
    let mut sms_ids = Vec::new();
    let mut email_ids = Vec::new();
    for n in 0..10 {
        sms_ids.push(app.accept("/api/messages/sms", &sms(n)));
        email_ids.push(app.accept("/api/messages/email", &email(n)));
    }

    let sms_mms = app.eventually("the sms-mms breaker to open", || {
        let p = provider(&app, "sms-mms");
        (p["breaker"]["state"] == "open").then_some(p)
    });
    assert_eq!(sms_mms["pending"], 10, "nothing dropped or failed");
    // Ten consecutive failures, then no more attempts.
    let attempts =
        app.metric(r#"messaging_dispatch_attempts_total{channel="sms",provider="sms-mms"}"#);
    let errors = app.metric(
        r#"messaging_dispatch_outcomes_total{channel="sms",outcome="error",provider="sms-mms"}"#,
    );
    assert_eq!((attempts, errors), (10.0, 10.0));
    assert_eq!(transitions(&app, "sms-mms", "closed", "open"), 1.0);
    assert_eq!(
        app.metric(r#"messaging_breaker_state{provider="sms-mms",state="open"}"#),
        1.0
    );
    let opened = app.eventually("the transition log line", || {
        app.logs_with("breaker transition").into_iter().next()
    });
    assert_eq!(opened["level"], "warning");
    assert_eq!(
        (&opened["provider"], &opened["from"], &opened["to"]),
        (&json!("sms-mms"), &json!("closed"), &json!("open"))
    );

    // Email is untouched: every message sent, its breaker closed throughout.
    for id in &email_ids {
        let message = finished(&app, *id);
        assert_eq!(message["status"], "sent", "{message}");
        assert_eq!(message["provider"], "email");
    }
    email_breaker_untouched(&app);

    // SMS sent while the breaker is open wait, queued, with no attempt made.
    let later: Vec<i64> = (10..15)
        .map(|n| app.accept("/api/messages/sms", &sms(n)))
        .collect();
    for id in &later {
        let message = app.message(*id);
        assert_eq!(message["status"], "queued");
        assert_eq!(message["attempts"], json!([]));
    }
    assert!(app.metric(r#"messaging_breaker_rejections_total{provider="sms-mms"}"#) >= 1.0);
    assert_eq!(
        app.metric(r#"messaging_breaker_rejections_total{provider="email"}"#),
        0.0
    );

    // After open_ms the three trial calls run; they fail, so it opens again.
    app.eventually("the trials' verdict", || {
        (transitions(&app, "sms-mms", "half_open", "open") >= 1.0).then_some(())
    });
    assert_eq!(transitions(&app, "sms-mms", "open", "half_open"), 1.0);
    assert_eq!(transitions(&app, "sms-mms", "half_open", "closed"), 0.0);
    assert_eq!(
        app.metric(r#"messaging_dispatch_attempts_total{channel="sms",provider="sms-mms"}"#),
        13.0,
        "exactly half_open_calls trials"
    );
    email_breaker_untouched(&app);
    for id in sms_ids.iter().chain(&later) {
        assert_eq!(app.message(*id)["status"], "queued");
    }
    assert!(app.stop().success());

    // The provider is healthy again: every waiting SMS goes out.
    let app = TestApp::spawn_in(dir, SEEDED);
    assert_eq!(app.logs_with("resumed queued messages")[0]["count"], 15);
    for id in sms_ids.iter().chain(&later) {
        let message = finished(&app, *id);
        assert_eq!(message["status"], "sent", "{message}");
    }
    assert_eq!(provider(&app, "sms-mms")["breaker"]["state"], "closed");
    assert_eq!(provider(&app, "sms-mms")["pending"], 0);
}

#[test]
fn providers_report_their_breaker() {
    let app = TestApp::spawn(
        "[dispatch]\nmax_attempts = 5\nbackoff_initial_ms = 1\nbackoff_max_ms = 1\n\
         [breaker]\nminimum_calls = 20\n\
         [providers.sms-mms]\nseed = \"entropy\"\nerror_pct = 100.0\n[providers.email]\nseed = 7\n",
    );
    let p = provider(&app, "sms-mms");
    assert_eq!(
        p["breaker"],
        json!({"state": "closed", "failure_rate": 0.0, "recorded_calls": 0})
    );
    assert_eq!(p["seeded"], false);
    assert_eq!(provider(&app, "email")["seeded"], true);
    let id = app.accept("/api/messages/sms", &sms(0));
    assert_eq!(finished(&app, id)["status"], "failed");
    assert_eq!(
        provider(&app, "sms-mms")["breaker"],
        json!({"state": "closed", "failure_rate": 1.0, "recorded_calls": 5}),
        "five failures recorded, below minimum_calls"
    );
}
