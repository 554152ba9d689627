//! What the tests send and what they wait for: the assessment's sample bodies, numbered
//! messages (one conversation per number), and the waits and readings on messages and
//! providers that every module needs.

use serde_json::{json, Value};

use super::TestApp;

/// Settings that name both providers' default seeds and nothing else: fault-free
/// providers with fixed outcome streams, said explicitly.
pub const SEEDED: &str = "[providers.sms-mms]\nseed = 42\n[providers.email]\nseed = 7\n";

/// The assessment's sample outbound SMS (its script sends the six `sample_*` bodies in the
/// order they stand here).
pub fn sample_sms() -> Value {
    json!({"from": "+12016661234", "to": "+18045551234", "type": "sms",
           "body": "Hello! This is a test SMS message.", "attachments": null,
           "timestamp": "2024-11-01T14:00:00Z"})
}

/// The sample outbound MMS, to the same number as `sample_sms`.
pub fn sample_mms() -> Value {
    json!({"from": "+12016661234", "to": "+18045551234", "type": "mms",
           "body": "Hello! This is a test MMS message with attachment.",
           "attachments": ["https://example.com/image.jpg"],
           "timestamp": "2024-11-01T14:00:00Z"})
}

/// The sample outbound email.
pub fn sample_email() -> Value {
    json!({"from": "user@usehatchapp.com", "to": "contact@gmail.com",
           "body": "Hello! This is a test email message with <b>HTML</b> formatting.",
           "attachments": ["https://example.com/document.pdf"],
           "timestamp": "2024-11-01T14:00:00Z"})
}

/// The sample inbound SMS (`messaging_provider_id` `message-1`), a reply to `sample_sms`.
pub fn sample_sms_webhook() -> Value {
    json!({"from": "+18045551234", "to": "+12016661234", "type": "sms",
           "messaging_provider_id": "message-1", "body": "This is an incoming SMS message",
           "attachments": null, "timestamp": "2024-11-01T14:00:00Z"})
}

/// The sample inbound MMS (`message-2`).
pub fn sample_mms_webhook() -> Value {
    json!({"from": "+18045551234", "to": "+12016661234", "type": "mms",
           "messaging_provider_id": "message-2", "body": "This is an incoming MMS message",
           "attachments": ["https://example.com/received-image.jpg"],
           "timestamp": "2024-11-01T14:00:00Z"})
}

/// The sample inbound email (`xillio_id` `message-3`), a reply to `sample_email`.
pub fn sample_email_webhook() -> Value {
    json!({"from": "contact@gmail.com", "to": "user@usehatchapp.com", "xillio_id": "message-3",
           "body": "<html><body>This is an incoming email with <b>HTML</b> content</body></html>",
           "attachments": ["https://example.com/received-document.pdf"],
           "timestamp": "2024-11-01T14:00:00Z"})
}

/// Outbound SMS number `n`: from `+12016661234` to `+1804555` and `n` (at least four
/// digits, so a conversation of its own per `n`; valid E.164 for any `n` below 10^8),
/// body `message {n}`.
pub fn sms(n: usize) -> Value {
    json!({"from": "+12016661234", "to": format!("+1804555{n:04}"), "type": "sms",
        "body": format!("message {n}"), "attachments": null,
        "timestamp": "2024-11-01T14:00:00Z"})
}

/// `sms(n)` sent as an MMS: the same conversation, one attachment.
pub fn mms(n: usize) -> Value {
    let mut body = sms(n);
    body["type"] = json!("mms");
    body["attachments"] = json!(["https://example.com/p.png"]);
    body
}

/// Outbound email number `n`, to `contact{n}@gmail.com` (a conversation of its own per
/// `n`), with an HTML body.
pub fn email(n: usize) -> Value {
    json!({"from": "user@usehatchapp.com", "to": format!("contact{n}@gmail.com"),
        "body": format!("<p>message {n}</p>"), "attachments": [],
        "timestamp": "2024-11-01T14:00:00Z"})
}

/// Waits until message `id` leaves `queued` (`sent` or `failed`); returns it with its
/// attempts.
pub fn finished(app: &TestApp, id: i64) -> Value {
    app.eventually(&format!("message {id} to finish"), || {
        let message = app.message(id);
        (message["status"] != "queued").then_some(message)
    })
}

/// The string `field` of every element of the JSON array `list`, in order (`""` where it
/// is not a string).
pub fn texts(list: &Value, field: &str) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not an array: {list}"))
        .iter()
        .map(|item| item[field].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The outcome of each of a message's attempts, in order.
pub fn outcomes(message: &Value) -> Vec<String> {
    texts(&message["attempts"], "outcome")
}

/// Provider `name` as `GET /api/providers` lists it (breaker, seeding, pending count).
pub fn provider(app: &TestApp, name: &str) -> Value {
    let providers = app.get("/api/providers").json();
    providers["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("provider {name} is not listed: {providers}"))
}

/// The SHA-256 of an API key, in hex: what `[auth.keys.NAME] sha256` holds.
pub fn sha256_hex(text: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Standard Webhooks, written here on its own: HMAC-SHA256 over `id.timestamp.body`, keyed
/// with the base64 part of `whsec_...`, as `v1,BASE64`.
pub fn standard_webhooks_signature(
    secret: &str,
    id: &str,
    timestamp: i64,
    body: impl AsRef<[u8]>,
) -> String {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use hmac::Mac as _;
    let key = STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .expect("base64 secret");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).expect("key");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body.as_ref());
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}
