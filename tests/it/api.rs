//! End-to-end tests of the public API (CONTRACT section 3) against the real binary: the
//! assessment's sample client, validation, idempotency, webhook dedupe, paging, errors.

use serde_json::{json, Value};

use crate::helpers::*;

fn set(mut body: Value, field: &str, value: Value) -> Value {
    body[field] = value;
    body
}

fn without(mut body: Value, field: &str) -> Value {
    body.as_object_mut().expect("object").remove(field);
    body
}

#[test]
fn the_sample_client_gets_its_codes_and_conversation_one_holds_the_sms_thread() {
    let app = TestApp::spawn("");
    let sent = [
        ("/api/messages/sms", sample_sms()),
        ("/api/messages/sms", sample_mms()),
        ("/api/messages/email", sample_email()),
        ("/api/webhooks/sms", sample_sms_webhook()),
        ("/api/webhooks/sms", sample_mms_webhook()),
        ("/api/webhooks/email", sample_email_webhook()),
    ];
    for (path, body) in &sent {
        let response = app.post(path, body);
        assert_eq!(response.status, 202, "{path}: {}", response.text);
    }

    let conversations = app.get("/api/conversations");
    assert_eq!(conversations.status, 200);
    let conversations = conversations.json();
    assert_eq!(
        conversations["meta"],
        json!({"page": 1, "page_size": 50, "total": 2})
    );

    // The outbound two are dispatched by the (fault-free, seeded) sms-mms provider.
    let thread = app.eventually("both outbound messages sent", || {
        let thread = app.get("/api/conversations/1/messages");
        assert_eq!(thread.status, 200);
        let thread = thread.json();
        let sent = thread["items"]
            .as_array()?
            .iter()
            .filter(|m| m["status"] == "sent")
            .count();
        (sent == 2).then_some(thread)
    });
    let items = thread["items"].as_array().expect("items");
    let summary: Vec<(&str, &str, &str, &str)> = items
        .iter()
        .map(|m| {
            (
                m["direction"].as_str().unwrap_or_default(),
                m["channel"].as_str().unwrap_or_default(),
                m["from"].as_str().unwrap_or_default(),
                m["status"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("outbound", "sms", "+12016661234", "sent"),
            ("outbound", "mms", "+12016661234", "sent"),
            ("inbound", "sms", "+18045551234", "received"),
            ("inbound", "mms", "+18045551234", "received"),
        ]
    );
    assert_eq!(items[0]["provider"], "sms-mms");
    assert_eq!(
        items[1]["attachments"],
        json!(["https://example.com/image.jpg"])
    );
    assert_eq!(items[0]["attachments"], Value::Null);
    assert_eq!(items[0]["timestamp"], "2024-11-01T14:00:00Z");
    assert_eq!(thread["meta"]["total"], 4);
}

#[test]
fn outbound_messages_are_tagged_with_their_provider_and_located() {
    let app = TestApp::spawn("");
    for (path, body, channel, provider) in [
        ("/api/messages/sms", sample_sms(), "sms", "sms-mms"),
        ("/api/messages/sms", sample_mms(), "mms", "sms-mms"),
        ("/api/messages/email", sample_email(), "email", "email"),
    ] {
        let response = app.post(path, &body);
        assert_eq!(response.status, 202, "{}", response.text);
        let accepted = response.json();
        assert_eq!(accepted["status"], "queued");
        assert_eq!(accepted["channel"], channel);
        assert_eq!(accepted["provider"], provider);
        let id = accepted["id"].as_i64().expect("id");
        let location = format!("/api/messages/{id}");
        assert_eq!(response.header("Location"), Some(location.as_str()));

        let stored = app.get(&location);
        assert_eq!(stored.status, 200);
        let stored = stored.json();
        assert_eq!(stored["provider"], provider);
        assert_eq!(stored["channel"], channel);
        assert_eq!(stored["direction"], "outbound");
        for attempt in stored["attempts"].as_array().expect("attempts") {
            assert_eq!(attempt["provider"], provider);
        }
        assert_eq!(stored["conversation_id"], accepted["conversation_id"]);
    }
    for channel in ["sms", "mms", "email"] {
        let series = format!(r#"messaging_messages_accepted_total{{channel="{channel}"}}"#);
        assert_eq!(app.metric(&series), 1.0, "{series}");
    }
}

#[test]
fn every_invalid_field_gets_a_400_naming_it_and_nothing_is_stored() {
    let app = TestApp::spawn("");
    let sms = sample_sms();
    let mms = sample_mms();
    let email = sample_email();
    let hook = sample_sms_webhook();
    let mail_hook = sample_email_webhook();
    let cases: Vec<(&str, Value, &str)> = vec![
        ("/api/messages/sms", without(sms.clone(), "from"), "from"),
        (
            "/api/messages/sms",
            set(sms.clone(), "from", json!(12016661234_u64)),
            "from",
        ),
        (
            "/api/messages/sms",
            set(sms.clone(), "from", json!("2016661234")),
            "from",
        ),
        (
            "/api/messages/sms",
            set(sms.clone(), "to", json!("+1 804 555 1234")),
            "to",
        ),
        (
            "/api/messages/sms",
            set(sms.clone(), "to", json!(null)),
            "to",
        ),
        (
            "/api/messages/sms",
            set(sms.clone(), "type", json!("fax")),
            "type",
        ),
        ("/api/messages/sms", without(sms.clone(), "type"), "type"),
        (
            "/api/messages/sms",
            set(sms.clone(), "body", json!("")),
            "body",
        ),
        (
            "/api/messages/sms",
            set(sms.clone(), "body", json!("   ")),
            "body",
        ),
        ("/api/messages/sms", without(sms.clone(), "body"), "body"),
        (
            "/api/messages/sms",
            set(sms.clone(), "body", json!(42)),
            "body",
        ),
        (
            "/api/messages/sms",
            set(sms.clone(), "attachments", json!("x")),
            "attachments",
        ),
        (
            "/api/messages/sms",
            set(sms.clone(), "attachments", json!({})),
            "attachments",
        ),
        (
            "/api/messages/sms",
            set(
                sms.clone(),
                "attachments",
                json!(vec!["https://a.io/x"; 11]),
            ),
            "attachments",
        ),
        (
            "/api/messages/sms",
            set(sms.clone(), "attachments", json!(["ftp://a.io/x"])),
            "attachments[0]",
        ),
        (
            "/api/messages/sms",
            set(sms.clone(), "attachments", json!(["https://a.io/x", 7])),
            "attachments[1]",
        ),
        (
            "/api/messages/sms",
            set(mms.clone(), "attachments", json!(null)),
            "attachments",
        ),
        (
            "/api/messages/sms",
            set(mms.clone(), "attachments", json!([])),
            "attachments",
        ),
        (
            "/api/messages/sms",
            without(sms.clone(), "timestamp"),
            "timestamp",
        ),
        (
            "/api/messages/sms",
            set(sms.clone(), "timestamp", json!("yesterday")),
            "timestamp",
        ),
        (
            "/api/messages/sms",
            set(sms.clone(), "timestamp", json!(1730469600)),
            "timestamp",
        ),
        (
            "/api/messages/sms",
            set(sms.clone(), "timestamp", json!("9999-12-31T23:59:59-01:00")),
            "timestamp",
        ),
        (
            "/api/messages/sms",
            set(sms.clone(), "timestamp", json!("0000-01-01T00:00:00+01:00")),
            "timestamp",
        ),
        (
            "/api/messages/sms",
            set(
                sms.clone(),
                "attachments",
                json!(["http://example.com:99999/x"]),
            ),
            "attachments[0]",
        ),
        (
            "/api/messages/sms",
            set(sms.clone(), "attachments", json!(["http://-"])),
            "attachments[0]",
        ),
        (
            "/api/messages/sms",
            set(
                sms.clone(),
                "attachments",
                json!(["http://exa\u{202E}mple.com/x"]),
            ),
            "attachments[0]",
        ),
        (
            "/api/messages/email",
            set(email.clone(), "from", json!("user")),
            "from",
        ),
        (
            "/api/messages/email",
            set(email.clone(), "to", json!("+18045551234")),
            "to",
        ),
        (
            "/api/messages/email",
            set(email.clone(), "body", json!("")),
            "body",
        ),
        (
            "/api/messages/email",
            without(email.clone(), "timestamp"),
            "timestamp",
        ),
        (
            "/api/messages/email",
            set(email.clone(), "attachments", json!(["not a url"])),
            "attachments[0]",
        ),
        (
            "/api/webhooks/sms",
            without(hook.clone(), "messaging_provider_id"),
            "messaging_provider_id",
        ),
        (
            "/api/webhooks/sms",
            set(hook.clone(), "messaging_provider_id", json!(5)),
            "messaging_provider_id",
        ),
        (
            "/api/webhooks/sms",
            set(
                hook.clone(),
                "messaging_provider_id",
                json!("x".repeat(256)),
            ),
            "messaging_provider_id",
        ),
        (
            "/api/webhooks/sms",
            set(hook.clone(), "from", json!("nobody")),
            "from",
        ),
        (
            "/api/webhooks/email",
            without(mail_hook.clone(), "xillio_id"),
            "xillio_id",
        ),
        (
            "/api/webhooks/email",
            set(mail_hook.clone(), "to", json!("a@b")),
            "to",
        ),
    ];
    for (path, body, field) in cases {
        let response = app.post(path, &body);
        assert_eq!(
            response.error_code(400),
            "validation_failed",
            "{path} {body}: {}",
            response.text
        );
        let error = &response.json()["error"];
        assert_eq!(error["field"], field, "{path} {body}: {}", response.text);
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // An MMS's attachments may not be null: the message does not say they may.
    let mms_without = app.post(
        "/api/messages/sms",
        &set(sample_mms(), "attachments", Value::Null),
    );
    assert_eq!(mms_without.error_code(400), "validation_failed");
    assert_eq!(
        mms_without.json()["error"]["message"],
        "attachments must be an array of URLs"
    );

    let bad_key = app.post_with(
        "/api/messages/sms",
        &sms,
        &[("Idempotency-Key", "has space")],
    );
    assert_eq!(bad_key.error_code(400), "validation_failed");
    assert_eq!(bad_key.json()["error"]["field"], "Idempotency-Key");

    let json = [("Content-Type", "application/json")];
    for raw in ["not json", "[1, 2]", "\"text\"", "", "{\"from\": ", "null"] {
        let response = app.request("POST", "/api/messages/sms", &json, Some(raw.as_bytes()));
        assert_eq!(response.error_code(400), "invalid_json", "{raw:?}");
    }
    // The parser's limits hold in fields the API does not read too (README, errors).
    let valid = serde_json::to_string(&sms).expect("json");
    let with = |extra: String| format!("{},{extra}}}", &valid[..valid.len() - 1]);
    for raw in [
        with("\"meta\": 1e400".into()),
        // With the body's own object, 128 levels: the first the parser refuses.
        with(format!("\"meta\": {}{}", "[".repeat(127), "]".repeat(127))),
        with("\"meta\": \"\\ud800\"".into()),
    ] {
        let response = app.request("POST", "/api/messages/sms", &json, Some(raw.as_bytes()));
        assert_eq!(response.error_code(400), "invalid_json", "{raw:?}");
    }
    // CONTRACT 12: a NUL in any field, those the API does not read included, named as
    // the typed fields are.
    for (extra, field) in [
        (json!({"meta": "a\u{0}b"}), "meta"),
        (json!({"meta": {"tags": ["x", "\u{0}"]}}), "meta.tags[1]"),
        (json!({"me\u{0}ta": 1}), "me\u{0}ta"),
    ] {
        let mut body = sms.clone();
        for (name, value) in extra.as_object().expect("an object") {
            body[name] = value.clone();
        }
        let response = app.post("/api/messages/sms", &body);
        assert_eq!(response.error_code(400), "validation_failed", "{extra}");
        assert_eq!(response.json()["error"]["field"], field, "{extra}");
    }
    let in_body = app.post(
        "/api/messages/sms",
        &set(sms.clone(), "body", json!("a\u{0}")),
    );
    assert_eq!(in_body.error_code(400), "validation_failed");
    assert_eq!(in_body.json()["error"]["field"], "body");

    let conversations = app.get("/api/conversations").json();
    assert_eq!(conversations["meta"]["total"], 0, "nothing may be stored");
}

#[test]
fn an_mms_needs_attachments_but_not_a_body() {
    let app = TestApp::spawn("");
    let id = app.accept("/api/messages/sms", &without(sample_mms(), "body"));
    assert_eq!(app.message(id)["body"], "");
}

#[test]
fn a_repeated_idempotency_key_replays_the_first_answer_and_stores_nothing_new() {
    let app = TestApp::spawn("");
    let key = [("Idempotency-Key", "order-17")];
    let first = app.post_with("/api/messages/sms", &sample_sms(), &key);
    assert_eq!(first.status, 202);

    // The same request with keys reordered and spacing changed is the same request.
    let mut reordered = String::from("{");
    let fields = sample_sms();
    let mut pairs: Vec<_> = fields.as_object().expect("object").iter().collect();
    pairs.reverse();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            reordered.push_str(" ,\n ");
        }
        reordered.push_str(&format!("{} : {v}", json!(k)));
    }
    reordered.push('}');
    let headers = [("Content-Type", "application/json"), key[0]];
    let again = app.request(
        "POST",
        "/api/messages/sms",
        &headers,
        Some(reordered.as_bytes()),
    );
    assert_eq!(again.status, 202, "{}", again.text);
    assert_eq!(again.json(), first.json());
    assert_eq!(again.header("Location"), first.header("Location"));

    let conflict = app.post_with(
        "/api/messages/sms",
        &set(sample_sms(), "body", json!("something else")),
        &key,
    );
    assert_eq!(conflict.error_code(422), "idempotency_conflict");
    let on_other_route = app.post_with("/api/messages/email", &sample_email(), &key);
    assert_eq!(on_other_route.error_code(422), "idempotency_conflict");

    let thread = app.get("/api/conversations/1/messages").json();
    assert_eq!(thread["meta"]["total"], 1);
    assert_eq!(
        app.metric(r#"messaging_messages_accepted_total{channel="sms"}"#),
        1.0
    );

    let other_key = app.post_with(
        "/api/messages/sms",
        &sample_sms(),
        &[("Idempotency-Key", "order-18")],
    );
    assert_eq!(other_key.status, 202);
    assert_ne!(other_key.json()["id"], first.json()["id"]);
}

#[test]
fn a_repeated_webhook_provider_id_answers_with_the_first_message() {
    let app = TestApp::spawn("");
    let first = app.post("/api/webhooks/sms", &sample_sms_webhook());
    assert_eq!(first.status, 202);
    assert_eq!(first.json()["status"], "received");
    let again = app.post(
        "/api/webhooks/sms",
        &set(sample_sms_webhook(), "body", json!("a retried delivery")),
    );
    assert_eq!(again.status, 202);
    assert_eq!(again.json(), first.json());
    // SMS and MMS share the SMS webhook's id namespace.
    let as_mms = app.post(
        "/api/webhooks/sms",
        &set(
            sample_mms_webhook(),
            "messaging_provider_id",
            json!("message-1"),
        ),
    );
    assert_eq!(as_mms.json()["id"], first.json()["id"]);
    // The email webhook's ids are another provider's namespace.
    let email = app.post(
        "/api/webhooks/email",
        &set(sample_email_webhook(), "xillio_id", json!("message-1")),
    );
    assert_eq!(email.status, 202);
    assert_ne!(email.json()["id"], first.json()["id"]);

    assert_eq!(
        app.get("/api/conversations/1/messages").json()["meta"]["total"],
        1
    );
    for channel in ["sms", "email"] {
        let series = format!(r#"messaging_webhooks_received_total{{channel="{channel}"}}"#);
        assert_eq!(app.metric(&series), 1.0, "{series}");
    }
}

#[test]
fn conversations_group_the_unordered_pair_whatever_the_channel_or_case() {
    let app = TestApp::spawn("");
    let email = sample_email();
    let reply = json!({"from": "Contact@Gmail.com", "to": "USER@usehatchapp.com",
        "xillio_id": "r-1", "body": "reply", "attachments": [],
        "timestamp": "2024-11-01T15:00:00Z"});
    let a = app.post("/api/messages/email", &email).json();
    let b = app.post("/api/webhooks/email", &reply).json();
    let c = app.post("/api/messages/sms", &sample_sms()).json();
    assert_eq!(a["conversation_id"], b["conversation_id"]);
    assert_ne!(a["conversation_id"], c["conversation_id"]);
    let listed = app.get("/api/conversations").json();
    let first = &listed["items"][0];
    assert_eq!(first["id"], a["conversation_id"], "latest message first");
    assert_eq!(
        first["participants"],
        json!(["contact@gmail.com", "user@usehatchapp.com"])
    );
    assert_eq!(first["message_count"], 2);
    assert_eq!(first["last_message_at"], "2024-11-01T15:00:00Z");
}

#[test]
fn listings_page_with_items_and_meta() {
    let app = TestApp::spawn("");
    // Sent newest first: the thread must still list oldest first.
    for minute in (0..5).rev() {
        let body = set(
            sample_sms(),
            "timestamp",
            json!(format!("2024-11-01T14:0{minute}:00Z")),
        );
        assert_eq!(app.post("/api/messages/sms", &body).status, 202);
    }
    for n in 0..3 {
        let body = set(sample_sms(), "to", json!(format!("+1555000000{n}")));
        assert_eq!(app.post("/api/messages/sms", &body).status, 202);
    }

    let page = |query: &str| {
        app.get(&format!("/api/conversations/1/messages?{query}"))
            .json()
    };
    let first = page("page=1&page_size=2");
    assert_eq!(
        first["meta"],
        json!({"page": 1, "page_size": 2, "total": 5})
    );
    assert_eq!(
        texts(&first["items"], "timestamp"),
        ["2024-11-01T14:00:00Z", "2024-11-01T14:01:00Z"]
    );
    assert_eq!(
        page("page=3&page_size=2")["items"].as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(page("page=4&page_size=2")["items"], json!([]));

    let conversations = app.get("/api/conversations?page_size=3").json();
    assert_eq!(
        conversations["meta"],
        json!({"page": 1, "page_size": 3, "total": 4})
    );
    assert_eq!(conversations["items"].as_array().map(Vec::len), Some(3));
    let rest = app.get("/api/conversations?page=2&page_size=3").json();
    assert_eq!(rest["items"].as_array().map(Vec::len), Some(1));

    for (query, field) in [
        ("page_size=0", "page_size"),
        ("page_size=101", "page_size"),
        ("page=0", "page"),
        ("page=abc", "page"),
        ("page=-1", "page"),
        ("page=%2B2", "page"),
    ] {
        let response = app.get(&format!("/api/conversations?{query}"));
        assert_eq!(response.error_code(400), "validation_failed", "{query}");
        assert_eq!(response.json()["error"]["field"], field, "{query}");
    }
}

#[test]
fn unknown_ids_and_routes_are_json_404s_and_wrong_methods_json_405s() {
    let app = TestApp::spawn("");
    app.accept("/api/messages/sms", &sample_sms());
    assert_eq!(app.get("/api/messages/1").status, 200);
    assert_eq!(app.get("/api/conversations/1/messages").status, 200);
    for path in [
        "/api/messages/999",
        "/api/messages/abc",
        "/api/messages/0",
        // Message 1 and conversation 1 exist: an id is written in digits only.
        "/api/messages/+1",
        "/api/messages/%2B1",
        "/api/conversations/+1/messages",
        "/api/conversations/999/messages",
        "/api/conversations/x/messages",
        "/api/nothing-here",
        "/",
    ] {
        assert_eq!(app.get(path).error_code(404), "not_found", "{path}");
    }
    for (method, path, allow) in [
        ("GET", "/api/messages/sms", "POST"),
        ("PUT", "/api/messages/email", "POST"),
        ("DELETE", "/api/messages/1", "GET, HEAD"),
        ("POST", "/api/conversations", "GET, HEAD"),
        ("GET", "/api/webhooks/email", "POST"),
    ] {
        let response = app.request(method, path, &[], None);
        assert_eq!(
            response.error_code(405),
            "method_not_allowed",
            "{method} {path}"
        );
        assert_eq!(response.header("Allow"), Some(allow), "{method} {path}");
    }
}

#[test]
fn content_negotiation_and_size_errors_use_the_contract_codes() {
    let app = TestApp::spawn("[server]\nmax_body_bytes = 1024\n");
    let body = sample_sms().to_string();
    let not_acceptable = app.request(
        "POST",
        "/api/messages/sms",
        &[
            ("Content-Type", "application/json"),
            ("Accept", "text/html"),
        ],
        Some(body.as_bytes()),
    );
    assert_eq!(not_acceptable.error_code(406), "not_acceptable");
    let get = app.request(
        "GET",
        "/api/conversations",
        &[("Accept", "application/xml")],
        None,
    );
    assert_eq!(get.error_code(406), "not_acceptable");
    // The most specific range decides, whatever the case of its parameter.
    for accept in ["*/*;q=0.5, application/json;q=0", "application/json;Q=0"] {
        let refused = app.request("GET", "/api/conversations", &[("Accept", accept)], None);
        assert_eq!(refused.error_code(406), "not_acceptable", "{accept}");
    }
    assert_eq!(
        app.request("GET", "/healthz", &[("Accept", "application/json")], None)
            .status,
        200
    );

    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/jsonx"),
        Some("application/problem+json"),
        Some("application json"),
    ] {
        let headers: Vec<(&str, &str)> = content_type
            .map(|t| ("Content-Type", t))
            .into_iter()
            .collect();
        let response = app.request("POST", "/api/messages/sms", &headers, Some(body.as_bytes()));
        assert_eq!(
            response.error_code(415),
            "unsupported_media_type",
            "{content_type:?}"
        );
    }
    // RFC 9110's media type: any case, parameters after `;` with whitespace around it
    // (or none at all).
    let json_types = [
        "application/json; charset=utf-8",
        "Application/JSON;charset=UTF-8",
        "application/json ; charset=utf-8",
        "application/json\t;\tcharset=utf-8",
        "application/json;",
        "application/json;;",
    ];
    for content_type in json_types {
        let taken = app.request(
            "POST",
            "/api/messages/sms",
            &[("Content-Type", content_type)],
            Some(body.as_bytes()),
        );
        assert_eq!(taken.status, 202, "{content_type:?}: {}", taken.text);
    }

    let large = set(sample_sms(), "body", json!("x".repeat(2000)));
    let too_large = app.post("/api/messages/sms", &large);
    assert_eq!(too_large.error_code(413), "payload_too_large");
    assert_eq!(
        app.get("/api/conversations/1/messages").json()["meta"]["total"],
        json_types.len(),
        "one message for each JSON media type, none for the rest"
    );
}

#[test]
fn a_channel_without_a_provider_answers_500_logs_once_and_stores_the_message_failed() {
    let app = TestApp::spawn("[routing]\nemail = \"postmark\"\n");
    let warnings = app.logs_with("channel has no provider");
    assert_eq!(warnings.len(), 1, "one warning at start");
    assert_eq!(warnings[0]["channel"], "email");
    assert_eq!(warnings[0]["provider"], "postmark");
    // And the provider `email` is left serving nothing: likely a slip, so said too.
    let idle = app.logs_with("provider serves no channel");
    assert_eq!(idle.len(), 1, "{idle:?}");
    assert_eq!(idle[0]["provider"], "email");

    let response = app.post("/api/messages/email", &sample_email());
    assert_eq!(response.error_code(500), "no_provider");
    assert_eq!(
        response.json()["error"]["message"],
        "no provider is configured for channel email"
    );
    let lines = app.eventually("the no-provider log line", || {
        let lines = app.logs_with("no provider for channel");
        (!lines.is_empty()).then_some(lines)
    });
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["level"], "error");
    assert_eq!(lines[0]["channel"], "email");
    let id = lines[0]["message_id"].as_i64().expect("message_id");
    assert_eq!(
        app.metric(r#"messaging_routing_missing_provider_total{channel="email"}"#),
        1.0
    );
    let stored = app.message(id);
    assert_eq!(stored["status"], "failed");
    assert_eq!(stored["provider"], Value::Null);
    assert_eq!(
        app.metric(r#"messaging_messages_accepted_total{channel="email"}"#),
        0.0
    );

    // SMS is still served by its provider.
    assert_eq!(app.post("/api/messages/sms", &sample_sms()).status, 202);
    assert_eq!(app.logs_with("no provider for channel").len(), 1);
}

#[test]
fn health_readiness_and_metrics_answer() {
    let app = TestApp::spawn("");
    assert_eq!(app.get("/healthz").json(), json!({"status": "ok"}));
    assert_eq!(app.get("/readyz").status, 200);
    let metrics = app.get("/metrics");
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .header("Content-Type")
        .is_some_and(|t| t.starts_with("text/plain")));
    assert!(metrics.text.contains("messaging_invalid_routing_total 0"));
    app.get("/api/messages/12345");
    assert_eq!(
        app.metric(
            r#"messaging_http_requests_total{method="GET",route="/api/messages/{id}",status="404"}"#
        ),
        1.0
    );
    assert!(
        !app.get("/metrics").text.contains("12345"),
        "labels never hold raw paths"
    );
}

#[test]
fn a_nul_character_in_any_field_is_refused_naming_the_field_and_nothing_is_stored() {
    let app = TestApp::spawn("");
    for (path, field, body) in [
        ("/api/messages/sms", "body", sample_sms()),
        ("/api/messages/email", "body", sample_email()),
        (
            "/api/webhooks/sms",
            "messaging_provider_id",
            sample_sms_webhook(),
        ),
        ("/api/webhooks/email", "xillio_id", sample_email_webhook()),
    ] {
        let mut body = body;
        body[field] = serde_json::json!("a\u{0}b");
        let response = app.post(path, &body);
        assert_eq!(response.error_code(400), "validation_failed", "{path}");
        assert_eq!(response.json()["error"]["field"], field, "{path}");
    }
    let listed = app.get("/api/conversations").json();
    assert_eq!(listed["meta"]["total"], 0, "nothing stored");
}

#[test]
fn head_on_a_get_route_answers_as_get_without_a_body() {
    let app = TestApp::spawn("");
    for path in [
        "/healthz",
        "/api/conversations",
        "/api/openapi.json",
        "/metrics",
    ] {
        let get = app.get(path);
        let head = app.request("HEAD", path, &[], None);
        assert_eq!(head.status, get.status, "{path}");
        assert!(head.text.is_empty(), "{path}: {}", head.text);
        assert_eq!(
            head.header("Content-Type"),
            get.header("Content-Type"),
            "{path}"
        );
    }
    let missing = app.request("HEAD", "/api/messages/999", &[], None);
    assert_eq!(missing.status, 404);
    assert!(missing.text.is_empty());
}
