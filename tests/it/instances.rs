//! Several instances on one PostgreSQL database (CONTRACT 4.5): they take traffic at once
//! and every message is dispatched by exactly one of them; when one is killed, another
//! finishes its messages once their lease lapses. Each test makes a database of its own on
//! the server `MESSAGING_TEST_POSTGRES_URL` names and drops it after; without that variable
//! the tests say SKIPPED (and fail under CI=true).

use std::collections::BTreeMap;

use diesel::{QueryableByName, RunQueryDsl};

use crate::helpers::*;

#[derive(QueryableByName, Debug)]
struct AttemptSummary {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    message_id: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    attempts: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    distinct_numbers: i64,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    highest: i32,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    successes: i64,
}

/// Per message: attempts, distinct attempt numbers, the highest, successes.
fn attempt_summary(db: &PgDatabase) -> BTreeMap<i64, AttemptSummary> {
    diesel::sql_query(
        "SELECT message_id, COUNT(*) AS attempts, COUNT(DISTINCT attempt) AS distinct_numbers,
                MAX(attempt) AS highest,
                COUNT(*) FILTER (WHERE outcome = 'success') AS successes
         FROM dispatch_attempts GROUP BY message_id",
    )
    .load::<AttemptSummary>(&mut db.connect())
    .expect("summary")
    .into_iter()
    .map(|s| (s.message_id, s))
    .collect()
}

#[derive(QueryableByName)]
struct LeaseEnd {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    lease_until: String,
}

/// When each queued message's lease ends.
fn lease_ends(db: &PgDatabase) -> BTreeMap<i64, String> {
    diesel::sql_query(
        "SELECT id, lease_until FROM messages WHERE status = 'queued' AND lease_until IS NOT NULL",
    )
    .load::<LeaseEnd>(&mut db.connect())
    .expect("leases")
    .into_iter()
    .map(|l| (l.id, l.lease_until))
    .collect()
}

const SHARED: &str = "[dispatch]\nlease_ms = 1000\nbackoff_initial_ms = 5\nbackoff_max_ms = 20\n\
    [outcomes]\nlatency_ms = 5\nerror_pct = 25.0\n\
    [providers.sms-mms]\nseed = 42\n[providers.email]\nseed = 7\n";

#[test]
fn two_instances_take_traffic_at_once_and_dispatch_each_message_exactly_once() {
    let Some(db) = postgres_database("two_instances_take_traffic_at_once...") else {
        return;
    };
    exactly_once_across_two_instances(&db, "", 2);
}

/// `database.writers = 1` (the README's advice for instances sharing a small server):
/// one lane holds every write, and the same guarantees hold.
#[test]
fn two_instances_with_one_writer_each_dispatch_each_message_exactly_once() {
    let Some(db) = postgres_database("two_instances_with_one_writer_each...") else {
        return;
    };
    exactly_once_across_two_instances(&db, "[database]\nwriters = 1\n", 1);
}

/// Two instances with `settings` added take 60 messages each at once; every message is
/// attempted by one of them, numbered without gaps, sent at most once, and each instance
/// reports `writers` write lanes at start.
fn exactly_once_across_two_instances(db: &PgDatabase, settings: &str, writers: u64) {
    let config = format!("{SHARED}{settings}");
    let a = TestApp::spawn_on(db, &config);
    let b = TestApp::spawn_on(db, &config);
    for app in [&a, &b] {
        let started = app.logs_with("sharing work");
        assert_eq!(started.len(), 1, "{started:?}");
        assert_eq!(started[0]["writers"], writers, "{started:?}");
    }
    let clients = [a.client(), b.client()];
    let threads: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(k, client)| {
            std::thread::spawn(move || {
                (0..60)
                    .map(|n| {
                        let (status, body) = client
                            .try_post("/api/messages/sms", &sms(k * 1000 + n))
                            .expect("answered");
                        assert_eq!(status, 202, "{body}");
                        body["id"].as_i64().expect("id")
                    })
                    .collect::<Vec<i64>>()
            })
        })
        .collect();
    let ids: Vec<i64> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("client"))
        .collect();
    assert_eq!(ids.len(), 120);
    for id in &ids {
        let status = finished(&a, *id)["status"].clone();
        assert!(status == "sent" || status == "failed", "{id}: {status}");
    }

    let summary = attempt_summary(db);
    assert_eq!(summary.len(), 120, "every message was attempted");
    for (id, s) in &summary {
        assert_eq!(
            s.attempts, s.distinct_numbers,
            "message {id}: an attempt number twice"
        );
        assert_eq!(
            s.attempts,
            i64::from(s.highest),
            "message {id}: a gap in attempts"
        );
        assert!(s.successes <= 1, "message {id}: sent twice");
    }
    // Each instance dispatched what it accepted.
    for app in [&a, &b] {
        let attempts =
            app.metric(r#"messaging_dispatch_attempts_total{channel="sms",provider="sms-mms"}"#);
        assert!(attempts >= 60.0, "{attempts}");
    }
    // The conversation total is a counter that both instances' new conversations bump at
    // once (one per number): none is lost and none counted twice.
    for app in [&a, &b] {
        let listed = app.get("/api/conversations?page_size=1").json();
        assert_eq!(listed["meta"]["total"], 120, "{listed}");
    }
    let total: i64 = summary.values().map(|s| s.attempts).sum();
    let both = a.metric(r#"messaging_dispatch_attempts_total{channel="sms",provider="sms-mms"}"#)
        + b.metric(r#"messaging_dispatch_attempts_total{channel="sms",provider="sms-mms"}"#);
    assert_eq!(both, total as f64, "no attempt made twice across instances");
    assert!(
        a.logs_with("claimed lapsed messages").is_empty(),
        "nothing lapsed"
    );
    assert!(
        b.logs_with("claimed lapsed messages").is_empty(),
        "nothing lapsed"
    );
}

#[test]
fn a_killed_instances_messages_are_finished_by_another_after_their_lease() {
    let Some(db) = postgres_database("a_killed_instances_messages...") else {
        return;
    };
    // The doomed instance holds every attempt for a minute, so it dies with all in hand.
    let doomed = TestApp::spawn_on(
        &db,
        "[dispatch]\nlease_ms = 1000\n[outcomes]\nlatency_ms = 60000\n",
    );
    let survivor = TestApp::spawn_on(&db, "[dispatch]\nlease_ms = 1000\n");
    let ids: Vec<i64> = (0..20)
        .map(|n| doomed.accept("/api/messages/sms", &sms(n)))
        .collect();
    // Alive, the doomed instance renews its leases, and nothing is taken from it.
    let first = lease_ends(&db);
    assert_eq!(first.len(), 20);
    survivor.eventually("every lease renewed", || {
        let now = lease_ends(&db);
        first
            .iter()
            .all(|(id, until)| now.get(id) > Some(until))
            .then_some(())
    });
    assert!(survivor.logs_with("claimed lapsed messages").is_empty());

    signal(doomed.pid(), "KILL");
    doomed.wait_for_exit();
    for id in &ids {
        assert_eq!(finished(&survivor, *id)["status"], "sent");
    }
    let claimed: u64 = survivor
        .logs_with("claimed lapsed messages")
        .iter()
        .map(|l| l["count"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(claimed, 20);
    for (id, s) in attempt_summary(&db) {
        assert_eq!((s.attempts, s.successes), (1, 1), "message {id}");
    }
}
