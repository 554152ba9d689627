//! The operator's stack: a real Prometheus scrapes the live service and answers PromQL
//! with per-provider series; the alert rules and Prometheus config pass promtool; the
//! compose file matches the Compose Specification (no Docker engine needed); and every
//! query of the Grafana dashboard names only series the service exports.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};

use crate::helpers::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Runs `tool` with `args`, fails the test unless it succeeds, and returns its output.
fn run(tool: &str, args: &[&str]) -> String {
    let output = Command::new(tool).args(args).output().expect("run tool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{tool} {args:?} failed:\n{text}");
    text
}

#[test]
fn alert_rules_and_prometheus_config_pass_promtool() {
    if !have("promtool", "alert_rules_and_prometheus_config...") {
        return;
    }
    let rules = format!("{ROOT}/monitoring/alerts.yml");
    assert!(run("promtool", &["check", "rules", &rules]).contains("SUCCESS: 3 rules found"));
    // The rules' own unit tests: a breaker that keeps probing (open, half-open, open ...)
    // pages; one that recovered does not.
    run(
        "promtool",
        &[
            "test",
            "rules",
            &format!("{ROOT}/monitoring/alerts.test.yml"),
        ],
    );
    run(
        "promtool",
        &[
            "check",
            "config",
            &format!("{ROOT}/monitoring/prometheus.yml"),
        ],
    );
}

#[test]
fn the_compose_file_matches_the_compose_specification() {
    if !have("check-jsonschema", "the_compose_file_matches...") {
        return;
    }
    let compose = format!("{ROOT}/docker-compose.yml");
    run(
        "check-jsonschema",
        &["--builtin-schema", "vendor.compose-spec", &compose],
    );
}

/// Metric names a PromQL expression mentions (identifiers starting `messaging_`).
fn metric_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("messaging_"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_dashboard_and_alert_query_names_a_series_the_service_exports() {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(format!(
            "{ROOT}/monitoring/grafana/dashboards/messaging.json"
        ))
        .expect("read dashboard"),
    )
    .expect("dashboard JSON");
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(exprs.len() >= 8);
    let alerts = std::fs::read_to_string(format!("{ROOT}/monitoring/alerts.yml")).expect("rules");
    exprs.extend(
        alerts
            .lines()
            .filter_map(|l| l.trim().strip_prefix("expr:"))
            .map(str::to_owned),
    );

    let app = TestApp::spawn("");
    app.post("/api/messages/sms", &sample_sms());
    let exported = app.get("/metrics").text;
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "no metric in {expr}");
        for name in names {
            assert!(
                exported.contains(&format!("\n{name}{{"))
                    || exported.contains(&format!("\n{name} ")),
                "{name} (in `{expr}`) is not exported"
            );
        }
    }
}

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

#[test]
fn a_real_prometheus_scrapes_per_provider_dispatch_attempts() {
    if !have("prometheus", "a_real_prometheus_scrapes...") {
        return;
    }
    let app = TestApp::spawn("");
    assert_eq!(app.post("/api/messages/sms", &sample_sms()).status, 202);
    assert_eq!(app.post("/api/messages/email", &sample_email()).status, 202);
    let target = app.base.trim_start_matches("http://").to_owned();
    let config = app.dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: messaging\n    \
             static_configs:\n      - targets: [\"{target}\"]\n"
        ),
    )
    .expect("write prometheus config");
    let port = free_port();
    let _prometheus = Prometheus(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                app.dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    let agent = ureq::AgentBuilder::new()
        .timeout(std::time::Duration::from_secs(5))
        .build();
    let query = "sum by (provider) (messaging_dispatch_attempts_total)";
    let result = app.eventually("Prometheus to answer with both providers", || {
        let body: Value = agent
            .get(&format!("http://127.0.0.1:{port}/api/v1/query"))
            .query("query", query)
            .call()
            .ok()?
            .into_json()
            .ok()?;
        let series = body["data"]["result"].as_array()?.clone();
        let nonzero = series
            .iter()
            .filter(|s| s["value"][1].as_str().is_some_and(|v| v != "0"))
            .count();
        (series.len() == 2 && nonzero == 2).then_some(series)
    });
    let mut providers: Vec<Value> = result
        .iter()
        .map(|s| s["metric"]["provider"].clone())
        .collect();
    providers.sort_by_key(Value::to_string);
    assert_eq!(providers, [json!("email"), json!("sms-mms")]);
}
