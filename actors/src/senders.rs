//! The real providers (CONTRACT section 8): one HTTP request per attempt to Twilio's
//! Messages resource or SendGrid's v3 mail send, and the reading of each answer into an
//! attempt's outcome (section 8.2's table). The `ProviderActor` keeps everything else
//! (queue, breaker, retries, records); for a simulated provider the seeded `OutcomeStream`
//! stands where this module stands for a real one.
//!
//! The client is reqwest over rustls with bundled webpki roots: no system OpenSSL, one
//! connection pool per provider, `request_timeout` per request.

use std::fmt;
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::outcome::Outcome;
use crate::store::MessageView;

/// A secret read from the environment: shown as `***` wherever it might be printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Which public API a real provider speaks, with what it needs to.
#[derive(Debug, Clone)]
pub enum Api {
    Twilio {
        account_sid: String,
        auth_token: Secret,
        /// Sent as `StatusCallback`, so Twilio reports delivery to us.
        status_callback: Option<String>,
    },
    SendGrid {
        api_key: Secret,
        /// The subject of an email whose request had none.
        default_subject: String,
    },
}

impl Api {
    pub fn kind(&self) -> &'static str {
        match self {
            Api::Twilio { .. } => "twilio",
            Api::SendGrid { .. } => "sendgrid",
        }
    }
}

/// A real provider: its API, where it is, and its client.
#[derive(Debug, Clone)]
pub struct HttpSender {
    api: Api,
    base_url: String,
    client: reqwest::Client,
}

/// What one real attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub outcome: Outcome,
    /// The provider's own code (Twilio's `code`), else the HTTP status, `timeout` or
    /// `connection`; `None` on success.
    pub error_code: Option<String>,
    /// Twilio's `sid` or SendGrid's `X-Message-Id`, on success.
    pub provider_message_id: Option<String>,
    /// How long the provider asked us to wait, after a 429.
    pub retry_after: Option<Duration>,
    /// A 401 or 403: our credentials were refused.
    pub credentials_refused: bool,
}

impl HttpSender {
    /// A client of its own (its own pool), every request bounded by `request_timeout`.
    pub fn new(
        api: Api,
        base_url: &str,
        request_timeout: Duration,
    ) -> Result<HttpSender, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(request_timeout)
            .connect_timeout(request_timeout)
            .user_agent(concat!("messaging-service/", env!("CARGO_PKG_VERSION")))
            // A redirect is an answer (an error, not the API's): followed, the credentials
            // and the message could go wherever a `Location` says.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(HttpSender {
            api,
            base_url: base_url.trim_end_matches('/').to_owned(),
            client,
        })
    }

    pub fn kind(&self) -> &'static str {
        self.api.kind()
    }

    /// Sends `message` once and reads the answer.
    pub async fn send(&self, message: &MessageView) -> Answer {
        let request = match &self.api {
            Api::Twilio {
                account_sid,
                auth_token,
                status_callback,
            } => {
                let mut form: Vec<(&str, &str)> = vec![
                    ("To", &message.to),
                    ("From", &message.from),
                    ("Body", &message.body),
                ];
                for url in message.attachments.iter().flatten() {
                    form.push(("MediaUrl", url));
                }
                if let Some(callback) = status_callback {
                    form.push(("StatusCallback", callback));
                }
                self.client
                    .post(format!(
                        "{}/2010-04-01/Accounts/{account_sid}/Messages.json",
                        self.base_url
                    ))
                    .basic_auth(account_sid, Some(auth_token.expose()))
                    .form(&form)
            }
            Api::SendGrid {
                api_key,
                default_subject,
            } => self
                .client
                .post(format!("{}/v3/mail/send", self.base_url))
                .bearer_auth(api_key.expose())
                .json(&sendgrid_mail(message, default_subject)),
        };
        match request.send().await {
            Ok(response) => {
                let status = response.status();
                let headers = response.headers().clone();
                let body = read_capped(response).await;
                read_answer(&self.api, status, &headers, &body, SystemTime::now())
            }
            Err(e) => Answer {
                outcome: if e.is_timeout() {
                    Outcome::Timeout
                } else {
                    Outcome::Error
                },
                error_code: Some(
                    if e.is_timeout() {
                        "timeout"
                    } else {
                        "connection"
                    }
                    .into(),
                ),
                provider_message_id: None,
                retry_after: None,
                credentials_refused: false,
            },
        }
    }
}

/// SendGrid's v3 mail send body. SendGrid takes inline content only, so attachment URLs
/// are appended to the HTML body as links.
fn sendgrid_mail(message: &MessageView, default_subject: &str) -> Value {
    let mut html = message.body.clone();
    for url in message.attachments.iter().flatten() {
        let escaped = url
            .replace('&', "&amp;")
            .replace('"', "&quot;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        html.push_str(&format!("<p><a href=\"{escaped}\">{escaped}</a></p>"));
    }
    json!({
        "personalizations": [{"to": [{"email": message.to}]}],
        "from": {"email": message.from},
        "subject": message.subject.as_deref().unwrap_or(default_subject),
        "content": [{"type": "text/html", "value": html}],
    })
}

/// Section 8.2: what an answer means.
fn read_answer(
    api: &Api,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> Answer {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let provider_code = json
        .as_ref()
        .and_then(|v| v.get("code"))
        .and_then(|c| match c {
            Value::Number(n) => Some(n.to_string()),
            Value::String(s) => stored_text(s),
            _ => None,
        });
    let error_code = || {
        Some(
            provider_code
                .clone()
                .unwrap_or_else(|| status.as_u16().to_string()),
        )
    };
    let answer = |outcome, error_code| Answer {
        outcome,
        error_code,
        provider_message_id: None,
        retry_after: None,
        credentials_refused: false,
    };
    if status.is_success() {
        let provider_message_id = match api {
            Api::Twilio { .. } => json
                .as_ref()
                .and_then(|v| v.get("sid"))
                .and_then(Value::as_str)
                .and_then(stored_text),
            Api::SendGrid { .. } => headers
                .get("X-Message-Id")
                .and_then(|v| v.to_str().ok())
                .and_then(stored_text),
        };
        return Answer {
            provider_message_id,
            ..answer(Outcome::Success, None)
        };
    }
    match status.as_u16() {
        429 => Answer {
            retry_after: retry_after(headers, now),
            ..answer(Outcome::RateLimited, error_code())
        },
        401 | 403 => Answer {
            credentials_refused: true,
            ..answer(Outcome::Error, error_code())
        },
        400..=499 => answer(Outcome::Rejected, error_code()),
        _ => answer(Outcome::Error, error_code()),
    }
}

/// The longest provider's code or message id stored. Twilio's sids are 34 characters,
/// SendGrid's message ids about 22, their codes a few digits.
const MAX_STORED_TEXT: usize = 256;

/// A code or id from a provider's answer as it can be stored: without NUL, which
/// PostgreSQL's text refuses (the attempt's record would then be refused on every retry,
/// and the message never leave `queued`), and at most `MAX_STORED_TEXT` characters, so
/// an answer cannot put 64 KB into every attempt's row. Nothing left is no id at all.
fn stored_text(text: &str) -> Option<String> {
    let kept: String = text
        .chars()
        .filter(|&c| c != '\0')
        .take(MAX_STORED_TEXT)
        .collect();
    (!kept.is_empty()).then_some(kept)
}

/// The most of an answer's body that is read. The APIs' own answers are a few KB (Twilio's
/// message resource, SendGrid's error list); a larger one (a proxy's page, a misbehaving
/// server) is cut here rather than held whole, and the status still decides.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// An answer's body up to `MAX_ANSWER_BYTES`; one that cannot be read ends where it
/// broke off (the status still decides).
async fn read_capped(mut response: reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = MAX_ANSWER_BYTES - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() == MAX_ANSWER_BYTES {
            break;
        }
    }
    body
}

/// The longest wait a provider's answer can ask for: a day, as long as SendGrid's daily
/// limits last. A longer one (a proxy's mistake, a corrupt header) would keep the message
/// and its backlog slot for as long as it says.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// `Retry-After` as seconds or as an HTTP date, else SendGrid's `X-RateLimit-Reset` (the
/// Unix time the limit resets); at most `MAX_RETRY_AFTER`.
fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let until = |at: SystemTime| at.duration_since(now).unwrap_or_default();
    let asked = text(RETRY_AFTER.as_str()).and_then(|value| match value.parse::<u64>() {
        Ok(secs) => Some(Duration::from_secs(secs)),
        Err(_) => httpdate::parse_http_date(value).ok().map(until),
    });
    let asked = asked.or_else(|| {
        let reset = text("X-RateLimit-Reset")?.parse::<u64>().ok()?;
        // Past what a `SystemTime` holds is past the cap too.
        Some(
            SystemTime::UNIX_EPOCH
                .checked_add(Duration::from_secs(reset))
                .map_or(MAX_RETRY_AFTER, until),
        )
    })?;
    Some(asked.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn twilio() -> Api {
        Api::Twilio {
            account_sid: "AC1".into(),
            auth_token: Secret::new("t".into()),
            status_callback: None,
        }
    }

    fn sendgrid() -> Api {
        Api::SendGrid {
            api_key: Secret::new("k".into()),
            default_subject: "Message".into(),
        }
    }

    fn read(api: &Api, status: u16, headers: &[(&'static str, &str)], body: &str) -> Answer {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, HeaderValue::from_str(value).expect("header"));
        }
        let status = StatusCode::from_u16(status).expect("status");
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        read_answer(api, status, &map, body.as_bytes(), now)
    }

    #[test]
    fn each_row_of_the_table_becomes_its_outcome() {
        let created = read(
            &twilio(),
            201,
            &[],
            r#"{"sid": "SM123", "status": "queued"}"#,
        );
        assert_eq!(created.outcome, Outcome::Success);
        assert_eq!(created.provider_message_id.as_deref(), Some("SM123"));
        let accepted = read(&sendgrid(), 202, &[("X-Message-Id", "abc")], "");
        assert_eq!(accepted.provider_message_id.as_deref(), Some("abc"));

        let invalid = read(
            &twilio(),
            400,
            &[],
            r#"{"code": 21211, "message": "Invalid 'To'", "status": 400}"#,
        );
        assert_eq!(invalid.outcome, Outcome::Rejected);
        assert_eq!(invalid.error_code.as_deref(), Some("21211"));
        let not_found = read(&sendgrid(), 404, &[], "");
        assert_eq!(
            (not_found.outcome, not_found.error_code.as_deref()),
            (Outcome::Rejected, Some("404"))
        );

        for status in [500, 502, 503] {
            let answer = read(&twilio(), status, &[], "");
            assert_eq!(answer.outcome, Outcome::Error, "{status}");
            assert!(!answer.credentials_refused);
        }
        for status in [401, 403] {
            let answer = read(&sendgrid(), status, &[], r#"{"errors": []}"#);
            assert_eq!(answer.outcome, Outcome::Error, "{status}");
            assert!(answer.credentials_refused);
        }
        let limited = read(
            &twilio(),
            429,
            &[("Retry-After", "7")],
            r#"{"code": 20429}"#,
        );
        assert_eq!(limited.outcome, Outcome::RateLimited);
        assert_eq!(limited.error_code.as_deref(), Some("20429"));
        assert_eq!(limited.retry_after, Some(Duration::from_secs(7)));
    }

    #[test]
    fn an_answers_codes_and_ids_are_stored_without_nul_and_bounded() {
        let created = read(&twilio(), 201, &[], r#"{"sid": "SM\u0000123"}"#);
        assert_eq!(created.provider_message_id.as_deref(), Some("SM123"));
        let only_nul = read(&twilio(), 201, &[], r#"{"sid": "\u0000"}"#);
        assert_eq!(only_nul.provider_message_id, None);
        let long = "7".repeat(10_000);
        let rejected = read(
            &twilio(),
            400,
            &[],
            &format!(r#"{{"code": "2\u0000{long}"}}"#),
        );
        let code = rejected.error_code.expect("code");
        assert_eq!(code.chars().count(), MAX_STORED_TEXT);
        assert!(code.starts_with("27") && !code.contains('\0'), "{code}");
        let accepted = read(&sendgrid(), 202, &[("X-Message-Id", &long)], "");
        assert_eq!(
            accepted.provider_message_id.map(|id| id.len()),
            Some(MAX_STORED_TEXT)
        );
    }

    #[test]
    fn retry_after_reads_seconds_an_http_date_or_sendgrids_reset() {
        let at = |headers: &[(&'static str, &str)]| read(&sendgrid(), 429, headers, "").retry_after;
        assert_eq!(
            at(&[("Retry-After", "120")]),
            Some(Duration::from_secs(120))
        );
        // 1_700_000_000 is Tue, 14 Nov 2023 22:13:20 GMT.
        assert_eq!(
            at(&[("Retry-After", "Tue, 14 Nov 2023 22:13:50 GMT")]),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            at(&[("X-RateLimit-Reset", "1700000045")]),
            Some(Duration::from_secs(45))
        );
        assert_eq!(
            at(&[("Retry-After", "Mon, 13 Nov 2023 00:00:00 GMT")]),
            Some(Duration::ZERO)
        );
        assert_eq!(at(&[]), None);
        // However long an answer asks for, a day at most; past what a clock holds too
        // (that one panicked once, and took its provider's actor with it).
        for huge in ["31536000", "Sun, 14 Nov 2123 22:13:50 GMT"] {
            assert_eq!(at(&[("Retry-After", huge)]), Some(MAX_RETRY_AFTER));
        }
        for huge in ["1800000000", "18446744073709551615"] {
            assert_eq!(at(&[("X-RateLimit-Reset", huge)]), Some(MAX_RETRY_AFTER));
        }
    }

    /// However large a provider's answer, no more than `MAX_ANSWER_BYTES` of it is read.
    #[actix_rt::test]
    async fn a_huge_answer_is_read_only_in_part() {
        use std::io::{Read, Write};

        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        std::thread::spawn(move || {
            let Ok((mut socket, _)) = listener.accept() else {
                return;
            };
            let _ = socket.set_write_timeout(Some(std::time::Duration::from_secs(5)));
            let mut head = [0u8; 4096];
            let _ = socket.read(&mut head);
            let body = vec![b'x'; 8 * 1024 * 1024];
            let answer = format!(
                "HTTP/1.1 500 Internal Server Error\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            // The client stops reading early: a broken pipe is expected.
            let _ = socket.write_all(answer.as_bytes());
            let _ = socket.write_all(&body);
        });
        let response = reqwest::get(format!("http://{address}/"))
            .await
            .expect("an answer");
        assert_eq!(read_capped(response).await.len(), MAX_ANSWER_BYTES);
    }

    #[test]
    fn a_secret_never_prints() {
        let api = twilio();
        assert!(!format!("{api:?}").contains("\"t\""));
        assert_eq!(format!("{:?}", Secret::new("hunter2".into())), "***");
    }
}
