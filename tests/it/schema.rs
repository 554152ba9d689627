//! The published OpenAPI document against the live server: every documented path is
//! served, and schemathesis (from PyPI) finds no 5xx, no response that breaks the schema,
//! no undocumented status and no crash.

use std::process::Command;

use crate::helpers::*;

#[test]
fn every_documented_operation_is_served() {
    let app = TestApp::spawn("");
    let doc = app.get("/api/openapi.json");
    assert_eq!(doc.status, 200);
    let doc = doc.json();
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    let paths = doc["paths"].as_object().expect("paths");
    assert_eq!(paths.len(), 18);
    for (path, operations) in paths {
        let concrete = path.replace("{id}", "1");
        for method in operations.as_object().expect("operations").keys() {
            let method = method.to_uppercase();
            let body = (method == "POST").then_some(b"{}".as_slice());
            let headers = [("Content-Type", "application/json")];
            let response = app.request(&method, &concrete, &headers, body);
            let text = &response.text;
            assert_ne!(
                response.status, 405,
                "{method} {path} is documented but not served"
            );
            assert!(
                !(response.status == 404 && text.contains("route")),
                "{method} {path} is documented but not routed"
            );
        }
    }
}

const SEND_AT_HOOK: &str = r#"
import datetime
import schemathesis

LIMIT = datetime.timedelta(days=35)


@schemathesis.hook
def filter_body(context, body):
    if not isinstance(body, dict) or not isinstance(body.get("send_at"), str):
        return True
    try:
        at = datetime.datetime.fromisoformat(body["send_at"].replace("Z", "+00:00"))
        return at <= datetime.datetime.now(datetime.timezone.utc) + LIMIT
    except (ValueError, TypeError, OverflowError):
        return True
"#;

const SCHEMATHESIS_KEY: &str = "msk_schemathesis-key-4e21";

#[test]
fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    // The document and its checks do not depend on the database: once, on SQLite, is
    // enough (it is the suite's slowest test).
    if sqlite_only("schemathesis_finds_no_server_error...")
        || !have("schemathesis", "schemathesis_finds_no_server_error...")
    {
        return;
    }
    // With a key of every scope, as a real deployment runs (CONTRACT section 9).
    let app = TestApp::spawn(&format!(
        "[auth.keys.schemathesis]\nsha256 = \"{}\"\nscopes = [\"send\", \"read\", \"admin\"]\n",
        sha256_hex(SCHEMATHESIS_KEY)
    ));
    // A schema-valid request may rightly get 422: schemathesis reuses short
    // Idempotency-Keys with other bodies, which the contract answers idempotency_conflict.
    // No NUL in what it generates: CONTRACT 12 refuses one in any field, those the API
    // does not read included, and no JSON Schema can say that of fields it does not name
    // (`additionalProperties` stays open: unknown fields are otherwise ignored).
    std::fs::write(
        app.dir.path().join("schemathesis.toml"),
        "[generation]\n\
         allow-x00 = false\n\
         [checks.positive_data_acceptance]\n\
         expected-statuses = [\"2xx\", \"401\", \"403\", \"404\", \"409\", \"422\", \"429\", \"5xx\"]\n",
    )
    .expect("write schemathesis.toml");
    // One rule no schema can say: `send_at` at most 35 days ahead. Bodies beyond it are
    // left out of generation (they are answered 400, as the contract says); every other
    // schema-valid body must be accepted.
    std::fs::write(app.dir.path().join("send_at_hooks.py"), SEND_AT_HOOK).expect("write the hook");
    let output = Command::new("schemathesis")
        .arg("run")
        .arg(format!("{}/api/openapi.json", app.base))
        // Every check, positive_data_acceptance included: the schema's patterns and shapes
        // (sms and mms apart) say what the parsers accept.
        .args(["--checks", "all"])
        .args(["-H", &format!("Authorization: Bearer {SCHEMATHESIS_KEY}")])
        .args([
            "--max-examples",
            "100",
            "--seed",
            "17",
            "--request-timeout",
            "10",
        ])
        .env("SCHEMATHESIS_HOOKS", "send_at_hooks")
        .env("PYTHONPATH", app.dir.path())
        // It keeps a cache in its working directory: the test's own, not the checkout.
        .current_dir(app.dir.path())
        .output()
        .expect("run schemathesis");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "schemathesis failed:\n{report}");
    let crashed = app.logs_with("<not json>");
    assert!(crashed.is_empty(), "non-JSON output: {crashed:?}");
    assert_eq!(app.get("/healthz").status, 200, "still serving");
}
