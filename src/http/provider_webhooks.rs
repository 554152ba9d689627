//! The real providers' webhooks (CONTRACT 8.3): Twilio's status callback and inbound
//! messages (form-encoded, signed with `X-Twilio-Signature`), and SendGrid's event webhook
//! (a JSON array, signed with ECDSA when a verification key is configured). Receipts set an
//! outbound message's `delivery_status`; inbound messages are stored as in 3.2.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use messaging_actors::domain::{
    AttachmentUrl, Channel, MessageContent, NonEmptyText, PhoneNumber, ProviderId, Text, Timestamp,
    MAX_ATTACHMENTS,
};
use messaging_actors::senders::Secret;
use messaging_actors::store::{DeliveryReceipt, DeliveryStatus, ReceiptSource};
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey as _;
use serde::Deserialize;
use subtle::ConstantTimeEq as _;
use utoipa::ToSchema;

use super::body::{read_form_body, read_json_body};
use super::error::ApiError;
use super::webhooks::store_inbound;
use super::wire::ErrorBody;
use super::{store_unavailable, AppState};

/// What verifies the providers' webhooks, from the settings.
#[derive(Clone, Default)]
pub struct WebhookKeys {
    /// The service's public base URL, which Twilio signs against; without it, the URL
    /// each request names.
    pub public_url: Option<String>,
    /// Each Twilio provider's auth token: a request signed with any of them is Twilio's.
    pub twilio_tokens: Vec<Secret>,
    /// Each SendGrid provider's verification key; none configured means events are open.
    pub sendgrid_keys: Vec<VerifyingKey>,
}

/// SendGrid shows its verification key as base64 of a DER SubjectPublicKeyInfo.
pub fn sendgrid_public_key(base64: &str) -> Option<VerifyingKey> {
    let der = base64::engine::general_purpose::STANDARD
        .decode(base64.trim())
        .ok()?;
    VerifyingKey::from_public_key_der(&der).ok()
}

/// Twilio's signature: HMAC-SHA1, keyed with the auth token, over the URL Twilio called
/// followed by every POST parameter sorted by name (then value), name and value
/// concatenated; base64.
pub fn twilio_signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    // HMAC takes a key of any length, so this cannot fail.
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(auth_token.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The URL as built, and the same with its scheme's default port written out or left
/// out: Twilio signs the URL exactly as it was configured at Twilio, where
/// `https://host:443/...` and `https://host/...` both reach us, and its own helper
/// libraries accept either form.
fn with_and_without_default_port(url: &str) -> Vec<String> {
    let mut forms = vec![url.to_owned()];
    let Some((scheme, rest)) = url.split_once("://") else {
        return forms;
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "https" => ":443",
        "http" => ":80",
        _ => return forms,
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let host_end = authority.rfind(']').map_or(0, |bracket| bracket + 1);
    let other = match authority.strip_suffix(default_port) {
        Some(host) if host.len() >= host_end => format!("{scheme}://{host}{tail}"),
        _ if !authority[host_end..].contains(':') => {
            format!("{scheme}://{authority}{default_port}{tail}")
        }
        _ => return forms,
    };
    forms.push(other);
    forms
}

/// Reads a form body (at most `max_body_bytes`) and checks Twilio's signature on it.
async fn signed_twilio_form(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<Vec<(String, String)>, ApiError> {
    let body = read_form_body(req, payload, state.max_body_bytes).await?;
    let params: Vec<(String, String)> = serde_urlencoded::from_bytes(&body)
        .map_err(|_| ApiError::InvalidJson("the body is not a valid form".into()))?;
    let signature = req
        .headers()
        .get("X-Twilio-Signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let keys = &state.webhook_keys;
    let base = match keys.public_url.as_deref() {
        Some(base) => base.trim_end_matches('/').to_owned(),
        // Without one, the URL the request itself names (its scheme and `Host`, or a
        // proxy's `Forwarded`/`X-Forwarded-*`), as Twilio's helper libraries rebuild it.
        None => {
            let info = req.connection_info();
            format!("{}://{}", info.scheme(), info.host())
        }
    };
    let query = match req.query_string() {
        "" => String::new(),
        q => format!("?{q}"),
    };
    let url = format!("{base}{}{query}", req.path());
    let valid = !signature.is_empty()
        && with_and_without_default_port(&url).iter().any(|url| {
            keys.twilio_tokens.iter().any(|token| {
                let expected = twilio_signature(token.expose(), url, &params);
                bool::from(expected.as_bytes().ct_eq(signature.as_bytes()))
            })
        });
    if !valid {
        state.auth.refused(&state.log, "signature", req);
        return Err(ApiError::InvalidSignature);
    }
    Ok(params)
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Twilio's status callback (the form fields this service reads).
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
#[expect(
    dead_code,
    reason = "documents the form; the handler reads it as pairs"
)]
pub struct TwilioStatusForm {
    #[schema(example = "SM0123456789abcdef0123456789abcdef")]
    message_sid: String,
    /// `delivered`, `undelivered` and `failed` are recorded; others are ignored.
    #[schema(example = "delivered")]
    message_status: String,
    error_code: Option<String>,
}

#[utoipa::path(
    post,
    path = "/api/webhooks/twilio/status",
    tag = "webhooks",
    request_body(content = TwilioStatusForm, content_type = "application/x-www-form-urlencoded"),
    params(("X-Twilio-Signature" = String, Header, description = "Twilio's HMAC-SHA1 signature")),
    responses(
        (status = 200, description = "Recorded, ignored, or for an unknown message"),
        (status = 400, description = "`invalid_json` or `validation_failed`", body = ErrorBody),
        (status = 401, description = "`invalid_signature`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 503, description = "`not_ready`", body = ErrorBody),
    )
)]
pub async fn receive_twilio_status(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let params = signed_twilio_form(&state, &req, payload).await?;
    let status = match param(&params, "MessageStatus") {
        Some("delivered") => DeliveryStatus::Delivered,
        Some("undelivered" | "failed") => DeliveryStatus::Undelivered,
        _ => return Ok(HttpResponse::Ok().finish()),
    };
    let Some(sid) = param(&params, "MessageSid").filter(|s| !s.is_empty()) else {
        return Err(ApiError::validation("MessageSid", "is required"));
    };
    let error_code = param(&params, "ErrorCode").filter(|c| !c.is_empty());
    without_nul("MessageSid", Some(sid))?;
    without_nul("ErrorCode", error_code)?;
    let receipt = DeliveryReceipt {
        source: ReceiptSource::Twilio,
        provider_message_id: sid.to_owned(),
        status,
        error_code: error_code.map(str::to_owned),
    };
    state
        .store
        .record_delivery(receipt)
        .await
        .map_err(|e| store_unavailable(&state.log, e))?;
    Ok(HttpResponse::Ok().finish())
}

/// Twilio's inbound message (the form fields this service reads).
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
#[expect(
    dead_code,
    reason = "documents the form; the handler reads it as pairs"
)]
pub struct TwilioMessageForm {
    message_sid: String,
    #[schema(example = "+18045551234")]
    from: String,
    #[schema(example = "+12016661234")]
    to: String,
    body: Option<String>,
    /// How many `MediaUrl0`, `MediaUrl1`, ... follow.
    num_media: Option<String>,
    media_url0: Option<String>,
}

/// One inbound message from Twilio's form, checked like a 3.2 webhook.
fn twilio_inbound(params: &[(String, String)]) -> Result<(MessageContent, String), ApiError> {
    let required =
        |name: &str| param(params, name).ok_or_else(|| ApiError::validation(name, "is required"));
    let checked = |name: &str, result: Result<String, messaging_actors::domain::InvalidValue>| {
        result.map_err(|e| ApiError::validation(name, e.to_string()))
    };
    let sid = checked(
        "MessageSid",
        ProviderId::try_from(required("MessageSid")?.to_owned()).map(String::from),
    )?;
    let from = checked(
        "From",
        PhoneNumber::try_from(required("From")?.to_owned()).map(String::from),
    )?;
    let to = checked(
        "To",
        PhoneNumber::try_from(required("To")?.to_owned()).map(String::from),
    )?;
    let body = checked(
        "Body",
        Text::try_from(param(params, "Body").unwrap_or_default().to_owned()).map(String::from),
    )?;
    let media = param(params, "NumMedia")
        .unwrap_or("0")
        .parse::<usize>()
        .ok()
        .filter(|n| *n <= MAX_ATTACHMENTS)
        .ok_or_else(|| ApiError::validation("NumMedia", "must be a number from 0 to 10"))?;
    let attachments = (0..media)
        .map(|i| {
            let name = format!("MediaUrl{i}");
            let url =
                param(params, &name).ok_or_else(|| ApiError::validation(&name, "is required"))?;
            checked(
                &name,
                AttachmentUrl::try_from(url.to_owned()).map(String::from),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    // As in section 3.2: an SMS needs a body; an MMS may carry its media alone.
    let body = if attachments.is_empty() {
        checked("Body", NonEmptyText::try_from(body).map(String::from))?
    } else {
        body
    };
    let content = MessageContent {
        channel: if attachments.is_empty() {
            Channel::Sms
        } else {
            Channel::Mms
        },
        from,
        to,
        body,
        attachments: (!attachments.is_empty()).then_some(attachments),
        timestamp: Timestamp::now(),
        subject: None,
    };
    Ok((content, sid))
}

#[utoipa::path(
    post,
    path = "/api/webhooks/twilio",
    tag = "webhooks",
    request_body(content = TwilioMessageForm, content_type = "application/x-www-form-urlencoded"),
    params(("X-Twilio-Signature" = String, Header, description = "Twilio's HMAC-SHA1 signature")),
    responses(
        (status = 200, description = "Stored (or a repeat of a stored MessageSid); TwiML `<Response/>`",
            content_type = "text/xml"),
        (status = 400, description = "`invalid_json` or `validation_failed`", body = ErrorBody),
        (status = 401, description = "`invalid_signature`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 503, description = "`not_ready`", body = ErrorBody),
    )
)]
pub async fn receive_twilio_message(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let params = signed_twilio_form(&state, &req, payload).await?;
    let (content, provider_message_id) = twilio_inbound(&params)?;
    store_inbound(&state, content, provider_message_id).await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/xml"))
        .body("<Response/>"))
}

/// 400 for a NUL in a receipt's field, as anywhere else in the API (section 12):
/// PostgreSQL's text cannot hold one, and the query would fail as the database's fault.
fn without_nul(field: &'static str, value: Option<&str>) -> Result<(), ApiError> {
    match value {
        Some(value) if value.contains('\0') => Err(ApiError::validation(
            field,
            "must not contain a NUL character",
        )),
        _ => Ok(()),
    }
}

/// One SendGrid event, as far as receipts need it.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SendGridEvent {
    /// `delivered`, `bounce` and `dropped` are recorded; others are ignored.
    #[schema(example = "delivered", pattern = r"^[^\x00]*$")]
    pub event: Option<String>,
    /// `<X-Message-Id>.<filter...>`: the part before the first dot names the message.
    #[schema(
        example = "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
        pattern = r"^[^\x00]*$"
    )]
    pub sg_message_id: Option<String>,
    /// The SMTP status of a bounce, e.g. `5.0.0`.
    #[schema(pattern = r"^[^\x00]*$")]
    pub status: Option<String>,
}

impl SendGridEvent {
    fn receipt(&self) -> Option<DeliveryReceipt> {
        let status = match self.event.as_deref()? {
            "delivered" => DeliveryStatus::Delivered,
            "bounce" | "dropped" => DeliveryStatus::Undelivered,
            _ => return None,
        };
        let id = self.sg_message_id.as_deref()?.split('.').next()?;
        (!id.is_empty()).then(|| DeliveryReceipt {
            source: ReceiptSource::SendGrid,
            provider_message_id: id.to_owned(),
            status,
            error_code: match status {
                DeliveryStatus::Delivered => None,
                DeliveryStatus::Undelivered => self.status.clone().or_else(|| self.event.clone()),
            },
        })
    }
}

#[utoipa::path(
    post,
    path = "/api/webhooks/sendgrid/events",
    tag = "webhooks",
    request_body(content = Vec<SendGridEvent>, content_type = "application/json"),
    params(
        ("X-Twilio-Email-Event-Webhook-Signature" = Option<String>, Header,
            description = "ECDSA signature (base64 DER) over the timestamp and the body"),
        ("X-Twilio-Email-Event-Webhook-Timestamp" = Option<String>, Header),
    ),
    responses(
        (status = 200, description = "Receipts recorded; other events ignored"),
        (status = 400, description = "`invalid_json` or `validation_failed`", body = ErrorBody),
        (status = 401, description = "`invalid_signature`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 503, description = "`not_ready`", body = ErrorBody),
    )
)]
pub async fn receive_sendgrid_events(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_json_body(&req, payload, state.max_body_bytes).await?;
    let keys = &state.webhook_keys.sendgrid_keys;
    if !keys.is_empty() {
        let header = |name| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
        };
        let signature = base64::engine::general_purpose::STANDARD
            .decode(header("X-Twilio-Email-Event-Webhook-Signature"))
            .ok()
            .and_then(|der| Signature::from_der(&der).ok());
        let timestamp = header("X-Twilio-Email-Event-Webhook-Timestamp");
        let mut signed = timestamp.as_bytes().to_vec();
        signed.extend_from_slice(&body);
        let valid = sendgrid_timestamp_is_fresh(timestamp, Timestamp::now().unix_seconds())
            && signature.is_some_and(|signature| {
                keys.iter()
                    .any(|key| key.verify(&signed, &signature).is_ok())
            });
        if !valid {
            state.auth.refused(&state.log, "signature", &req);
            return Err(ApiError::InvalidSignature);
        }
    }
    let events: Vec<SendGridEvent> = serde_json::from_slice(&body).map_err(|e| {
        ApiError::InvalidJson(format!("the body must be a JSON array of events: {e}"))
    })?;
    // Every event's, as the schema says: SendGrid sends no NUL, so a batch with one is
    // not SendGrid's to begin with.
    for event in &events {
        without_nul("event", event.event.as_deref())?;
        without_nul("sg_message_id", event.sg_message_id.as_deref())?;
        without_nul("status", event.status.as_deref())?;
    }
    for receipt in events.iter().filter_map(SendGridEvent::receipt) {
        state
            .store
            .record_delivery(receipt)
            .await
            .map_err(|e| store_unavailable(&state.log, e))?;
    }
    Ok(HttpResponse::Ok().finish())
}

/// How old a SendGrid event batch's signed timestamp may be. SendGrid documents no
/// tolerance, and retries a batch for up to 24 hours; whether a retry is signed afresh is
/// not documented either, so a retried batch is taken for as long as SendGrid may send it
/// (and an hour of clock skew). Older, it is stale (CONTRACT 12): a replay, not SendGrid.
const SENDGRID_MAX_AGE_SECS: i64 = 25 * 60 * 60;
/// How far ahead of this machine's clock a timestamp may be (Standard Webhooks' window).
const SENDGRID_MAX_AHEAD_SECS: i64 = 5 * 60;

/// Whether SendGrid's `X-Twilio-Email-Event-Webhook-Timestamp` (Unix seconds) is recent.
fn sendgrid_timestamp_is_fresh(timestamp: &str, now: i64) -> bool {
    timestamp.parse::<i64>().is_ok_and(|at| {
        let age = i128::from(now) - i128::from(at);
        (-i128::from(SENDGRID_MAX_AHEAD_SECS)..=i128::from(SENDGRID_MAX_AGE_SECS)).contains(&age)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_twilio_url_is_tried_with_and_without_its_default_port() {
        for (url, other) in [
            (
                "https://example.com/api/x?a=1",
                Some("https://example.com:443/api/x?a=1"),
            ),
            (
                "https://example.com:443/api/x",
                Some("https://example.com/api/x"),
            ),
            (
                "http://example.com/api/x",
                Some("http://example.com:80/api/x"),
            ),
            (
                "http://example.com:80/api/x",
                Some("http://example.com/api/x"),
            ),
            ("https://[::1]/api/x", Some("https://[::1]:443/api/x")),
            ("https://[::1]:443/api/x", Some("https://[::1]/api/x")),
            ("https://example.com:8443/api/x", None),
            ("http://example.com:443/api/x", None),
        ] {
            let mut expected = vec![url.to_owned()];
            expected.extend(other.map(str::to_owned));
            assert_eq!(with_and_without_default_port(url), expected, "{url}");
        }
    }

    #[test]
    fn a_sendgrid_timestamp_is_fresh_for_a_day_and_five_minutes_ahead() {
        let now = 1_800_000_000;
        for (timestamp, fresh) in [
            ("1800000000", true),
            ("1799910000", true),  // 25 h ago
            ("1799909999", false), // a second more
            ("1800000300", true),
            ("1800000301", false),
            ("", false),
            ("1.8e9", false),
            ("-9223372036854775808", false),
            ("99999999999999999999", false),
        ] {
            assert_eq!(
                sendgrid_timestamp_is_fresh(timestamp, now),
                fresh,
                "{timestamp}"
            );
        }
    }

    /// Twilio's own worked example (its request-validation docs and SDK tests).
    #[test]
    fn the_twilio_signature_matches_twilios_published_vector() {
        let params: Vec<(String, String)> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ]
        .into_iter()
        .rev()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert_eq!(
            twilio_signature("12345", url, &params),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
        assert_ne!(
            twilio_signature("12346", url, &params),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
    }

    /// SendGrid's published verification vector (its SDKs' tests).
    #[test]
    fn a_sendgrid_signature_verifies_with_sendgrids_published_vector() {
        let key = sendgrid_public_key(
            "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEDr2LjtURuePQzplybdC+u4CwrqDqBaWjcMMsTbhdbcwHBcepxo7yAQGhHPTnlvFYPAZFceEu/1FwCM/QmGUhA==",
        )
        .expect("key");
        let signature = base64::engine::general_purpose::STANDARD
            .decode("MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xonZGi6BpSzoQsbVRamr2nlxFDWYNH2j/0=")
            .expect("base64");
        let signature = Signature::from_der(&signature).expect("der");
        let payload =
            r#"{"category":"example_payload","event":"test_event","message_id":"message_id"}"#;
        let signed = format!("1588788367{payload}");
        assert!(key.verify(signed.as_bytes(), &signature).is_ok());
        let tampered = format!("1588788368{payload}");
        assert!(key.verify(tampered.as_bytes(), &signature).is_err());
    }

    #[test]
    fn sendgrid_events_become_receipts_by_the_message_id_before_the_first_dot() {
        let event = |json: &str| {
            serde_json::from_str::<SendGridEvent>(json)
                .expect("event")
                .receipt()
        };
        let delivered = event(r#"{"event": "delivered", "sg_message_id": "abc.filter0001.1"}"#)
            .expect("receipt");
        assert_eq!(delivered.provider_message_id, "abc");
        assert_eq!(delivered.status, DeliveryStatus::Delivered);
        let bounced = event(r#"{"event": "bounce", "sg_message_id": "abc.x", "status": "5.0.0"}"#)
            .expect("receipt");
        assert_eq!(
            (bounced.status, bounced.error_code.as_deref()),
            (DeliveryStatus::Undelivered, Some("5.0.0"))
        );
        let dropped = event(r#"{"event": "dropped", "sg_message_id": "abc"}"#).expect("receipt");
        assert_eq!(dropped.error_code.as_deref(), Some("dropped"));
        assert_eq!(
            event(r#"{"event": "open", "sg_message_id": "abc.x"}"#),
            None
        );
        assert_eq!(event(r#"{"event": "delivered"}"#), None);
    }
}
