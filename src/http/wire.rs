//! The API's wire types: every request body the handlers parse and every response body
//! they write, one type each, which both (de)serialise and describe themselves to the
//! OpenAPI document (`openapi.rs` only lists them). Requests are made of the domain's
//! checked newtypes (`PhoneNumber`, `EmailAddress`, `AttachmentUrl`, `Timestamp`, ...), so
//! parsing a body is validating it, and the schema's patterns say what the parser accepts.

use actix_web::HttpRequest;
use messaging_actors::breaker::Override;
use messaging_actors::domain::valid_idempotency_key;
use messaging_actors::domain::{
    Attachments, CallbackUrl, Channel, EmailAddress, MediaAttachments, MessageContent,
    NonEmptyText, PhoneNumber, ProviderId, Subject, Text, Timestamp, MAX_URL_LEN,
};
use messaging_actors::provider::ProviderStatus;
use messaging_actors::router::DeliveryOptions;
use messaging_actors::store::{
    AttemptView, CallbackView, ConversationView, MessageView, PageRequest,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, IntoResponses, ToSchema};

use super::error::ApiError;

// ---- parsing ----

/// Deserialises `object` into `T`, naming the field at fault the way the contract does
/// (`from`, `attachments[2]`): serde_path_to_error keeps the path, and a missing field is
/// named by serde's own message. It reads the object in place: every request is parsed
/// two or three times (content, delivery options, a webhook's id), and a copy each time
/// showed in perf.
pub fn parse<T: DeserializeOwned>(object: &Map<String, Value>) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(object).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next());
        match missing {
            Some(field) => {
                let field = if path == "." {
                    field.to_owned()
                } else {
                    format!("{path}.{field}")
                };
                ApiError::validation(&field, "is required")
            }
            None => ApiError::validation(&path, plain(&message)),
        }
    })
}

/// serde's type errors as a sentence about the value ("must be a string"), the domain's
/// own errors as they are.
fn plain(message: &str) -> String {
    let Some(expected) = message
        .strip_prefix("invalid type: ")
        .and_then(|rest| rest.split_once(", expected ").map(|(_, e)| e))
    else {
        return message.to_owned();
    };
    let expected = match expected {
        "a string" | "a borrowed string" => "a string",
        // Not "or null": where null is allowed (an SMS's, an email's) it never errs, and
        // an MMS's must hold URLs.
        "a sequence" => "an array of URLs",
        other => other,
    };
    format!("must be {expected}")
}

/// The `type` of an SMS request picks its shape.
fn sms_kind(object: &Map<String, Value>) -> Result<Channel, ApiError> {
    match object.get("type") {
        None | Some(Value::Null) => Err(ApiError::validation("type", "is required")),
        Some(Value::String(kind)) if kind == "sms" => Ok(Channel::Sms),
        Some(Value::String(kind)) if kind == "mms" => Ok(Channel::Mms),
        Some(_) => Err(ApiError::validation("type", "must be \"sms\" or \"mms\"")),
    }
}

// ---- query strings and headers ----

/// Far beyond any real listing; keeps the offset arithmetic small.
const MAX_PAGE: u32 = 1_000_000;
const MAX_PAGE_SIZE: u32 = 100;
const DEFAULT_PAGE_SIZE: u32 = 50;

/// The paging of a listing: `page` from 1, `page_size` 1 to 100; other keys ignored, the
/// last of a repeated key counts.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// From 1; default 1.
    #[param(minimum = 1, maximum = 1_000_000)]
    pub page: Option<u32>,
    /// 1 to 100; default 50.
    #[param(minimum = 1, maximum = 100)]
    pub page_size: Option<u32>,
}

impl PageQuery {
    pub fn from_query(query: &str) -> Result<PageQuery, ApiError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
            .map_err(|_| ApiError::validation("query", "is not a valid query string"))?;
        let number = |name: &str, default: u32, max: u32| -> Result<u32, ApiError> {
            match pairs.iter().rev().find(|(k, _)| k == name) {
                None => Ok(default),
                // Digits only: Rust's parser alone would also take `+2`.
                Some((_, raw)) => Some(raw)
                    .filter(|raw| raw.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|raw| raw.parse::<u32>().ok())
                    .filter(|n| (1..=max).contains(n))
                    .ok_or_else(|| {
                        ApiError::validation(name, format!("must be an integer from 1 to {max}"))
                    }),
            }
        };
        Ok(PageQuery {
            page: Some(number("page", 1, MAX_PAGE)?),
            page_size: Some(number("page_size", DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?),
        })
    }
}

impl From<PageQuery> for PageRequest {
    fn from(query: PageQuery) -> Self {
        PageRequest {
            page: query.page.unwrap_or(1),
            page_size: query.page_size.unwrap_or(DEFAULT_PAGE_SIZE),
        }
    }
}

/// `Idempotency-Key`: the same key with the same body returns the first answer.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IdempotencyKeyHeader {
    /// 1 to 255 visible ASCII characters; a repeat returns the first answer.
    #[param(
        rename = "Idempotency-Key",
        pattern = r"^[!-~]{1,255}$",
        min_length = 1,
        max_length = 255
    )]
    pub key: Option<String>,
}

impl IdempotencyKeyHeader {
    pub fn from_request(req: &HttpRequest) -> Result<IdempotencyKeyHeader, ApiError> {
        let Some(value) = req.headers().get("Idempotency-Key") else {
            return Ok(IdempotencyKeyHeader { key: None });
        };
        match value.to_str() {
            Ok(key) if valid_idempotency_key(key) => Ok(IdempotencyKeyHeader {
                key: Some(key.to_owned()),
            }),
            _ => Err(ApiError::validation(
                "Idempotency-Key",
                "must be 1 to 255 visible ASCII characters",
            )),
        }
    }
}

// ---- requests ----

/// An SMS: text, and optionally attachments.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct TextSms {
    /// E.164, e.g. +12016661234.
    #[schema(value_type = String, pattern = r"^\+[1-9][0-9]{1,14}$", example = "+12016661234")]
    pub from: PhoneNumber,
    #[schema(value_type = String, pattern = r"^\+[1-9][0-9]{1,14}$", example = "+18045551234")]
    pub to: PhoneNumber,
    /// Not empty, not only whitespace.
    #[schema(value_type = String, pattern = r"^[^\x00]*[^\s\x00][^\x00]*$", example = "Hello!")]
    pub body: NonEmptyText,
    /// Up to 10 http(s) URLs, or null.
    #[schema(value_type = Option<Vec<AttachmentUrlSchema>>, max_items = 10)]
    #[serde(default)]
    pub attachments: Option<Attachments>,
    /// RFC 3339, years 0000 to 9999 in UTC.
    #[schema(value_type = String, format = DateTime, example = "2024-11-01T14:00:00Z")]
    pub timestamp: Timestamp,
}

/// An MMS: one to ten attachments, and optionally text.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct MediaSms {
    #[schema(value_type = String, pattern = r"^\+[1-9][0-9]{1,14}$", example = "+12016661234")]
    pub from: PhoneNumber,
    #[schema(value_type = String, pattern = r"^\+[1-9][0-9]{1,14}$", example = "+18045551234")]
    pub to: PhoneNumber,
    /// May be empty or absent.
    #[schema(value_type = Option<String>, pattern = r"^[^\x00]*$")]
    #[serde(default)]
    pub body: Option<Text>,
    #[schema(value_type = Vec<AttachmentUrlSchema>, min_items = 1, max_items = 10)]
    pub attachments: MediaAttachments,
    #[schema(value_type = String, format = DateTime, example = "2024-11-01T14:00:00Z")]
    pub timestamp: Timestamp,
}

/// `POST /api/messages/sms`: `type` says which of the two shapes it is.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SmsRequest {
    Sms(TextSms),
    Mms(MediaSms),
}

impl SmsRequest {
    pub fn from_object(object: &Map<String, Value>) -> Result<Self, ApiError> {
        match sms_kind(object)? {
            Channel::Mms => parse(object).map(SmsRequest::Mms),
            _ => parse(object).map(SmsRequest::Sms),
        }
    }
}

impl From<SmsRequest> for MessageContent {
    fn from(request: SmsRequest) -> Self {
        match request {
            SmsRequest::Sms(sms) => MessageContent {
                channel: Channel::Sms,
                from: sms.from.into(),
                to: sms.to.into(),
                body: sms.body.into(),
                attachments: sms.attachments.map(Into::into),
                timestamp: sms.timestamp,
                subject: None,
            },
            SmsRequest::Mms(mms) => MessageContent {
                channel: Channel::Mms,
                from: mms.from.into(),
                to: mms.to.into(),
                body: mms.body.map(String::from).unwrap_or_default(),
                attachments: Some(mms.attachments.into()),
                timestamp: mms.timestamp,
                subject: None,
            },
        }
    }
}

/// `POST /api/messages/email`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct EmailRequest {
    #[schema(value_type = String, format = Email, example = "user@usehatchapp.com")]
    pub from: EmailAddress,
    #[schema(value_type = String, format = Email, example = "contact@gmail.com")]
    pub to: EmailAddress,
    /// HTML allowed; not empty, not only whitespace.
    #[schema(value_type = String, pattern = r"^[^\x00]*[^\s\x00][^\x00]*$")]
    pub body: NonEmptyText,
    #[schema(value_type = Option<Vec<AttachmentUrlSchema>>, max_items = 10)]
    #[serde(default)]
    pub attachments: Option<Attachments>,
    #[schema(value_type = String, format = DateTime, example = "2024-11-01T14:00:00Z")]
    pub timestamp: Timestamp,
    /// Optional; the provider's `default_subject` otherwise.
    #[schema(value_type = Option<String>, min_length = 1, max_length = 998, pattern = r"^[^\x00-\x08\x0a-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x08\x0a-\x1f\x7f-\x9f]*$")]
    #[serde(default)]
    pub subject: Option<Subject>,
}

impl EmailRequest {
    pub fn from_object(object: &Map<String, Value>) -> Result<Self, ApiError> {
        parse(object)
    }
}

impl From<EmailRequest> for MessageContent {
    fn from(email: EmailRequest) -> Self {
        MessageContent {
            channel: Channel::Email,
            from: email.from.into(),
            to: email.to.into(),
            body: email.body.into(),
            attachments: email.attachments.map(Into::into),
            timestamp: email.timestamp,
            subject: email.subject.map(Into::into),
        }
    }
}

/// The schema of an attachment (`AttachmentUrl` on the wire): an absolute http or https
/// URL whose host is a DNS name. Written by hand because a pattern and a length bound
/// together are beyond the derive's attributes for a newtype.
pub struct AttachmentUrlSchema;

/// What `parse_attachment_url` accepts, narrowed to what a schema can say: no user info,
/// port or IP address (all accepted, none generated).
const ATTACHMENT_URL_PATTERN: &str = r"^[Hh][Tt][Tt][Pp][Ss]?://([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(/[A-Za-z0-9._~!$&'()*+,;=:@/-]*)?$";

impl utoipa::PartialSchema for AttachmentUrlSchema {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(
                "An absolute http or https URL whose host is a DNS name.",
            ))
            .pattern(Some(ATTACHMENT_URL_PATTERN))
            .max_length(Some(MAX_URL_LEN))
            .examples([serde_json::json!("https://example.com/image.jpg")])
            .into()
    }
}

impl ToSchema for AttachmentUrlSchema {}

/// How a sender wants to hear of its message, and when it should leave (section 10).
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
pub struct DeliveryFields {
    /// POSTed each final status (`sent`, `failed`, `delivered`, `undelivered`); else
    /// `[callbacks] url`.
    #[schema(value_type = Option<String>, max_length = 2048, pattern = r"^[Hh][Tt][Tt][Pp][Ss]?://([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(:[0-9]{1,4})?(/[A-Za-z0-9._~!$&'()*+,;=:@/-]*)?$", example = "https://client.example/hooks/messages")]
    #[serde(default)]
    pub status_callback: Option<CallbackUrl>,
    /// Not before this time (RFC 3339); past means now; at most 35 days ahead.
    #[schema(value_type = Option<String>, format = DateTime, example = "2024-11-01T14:00:00Z")]
    #[serde(default)]
    pub send_at: Option<Timestamp>,
}

/// How far ahead `send_at` may be.
const MAX_SEND_AHEAD: std::time::Duration = std::time::Duration::from_secs(35 * 24 * 3600);

impl DeliveryFields {
    /// The request's own options: its callback, if any; `send_at` no more than 35 days
    /// ahead.
    pub fn options(object: &Map<String, Value>) -> Result<DeliveryOptions, ApiError> {
        let fields: DeliveryFields = parse(object)?;
        if let Some(at) = fields.send_at {
            if at > Timestamp::after(MAX_SEND_AHEAD) {
                return Err(ApiError::validation(
                    "send_at",
                    "must be at most 35 days ahead",
                ));
            }
        }
        Ok(DeliveryOptions {
            status_callback: fields.status_callback.map(String::from),
            send_at: fields.send_at,
        })
    }
}

/// `POST /api/messages/sms`: the message, and how to follow it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SendSms {
    #[serde(flatten)]
    pub message: SmsRequest,
    #[serde(flatten)]
    pub delivery: DeliveryFields,
}

/// `POST /api/messages/email`: the message, and how to follow it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SendEmail {
    #[serde(flatten)]
    pub message: EmailRequest,
    #[serde(flatten)]
    pub delivery: DeliveryFields,
}

/// `POST /api/messages/retry`: every failed message of a provider since a time.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct RetryFailedRequest {
    #[schema(value_type = String, min_length = 1, max_length = 255, pattern = r"^[^\x00]*[^\s\x00][^\x00]*$", example = "sms-mms")]
    pub provider: ProviderId,
    #[schema(value_type = String, format = DateTime, example = "2024-11-01T00:00:00Z")]
    pub failed_since: Timestamp,
}

#[derive(Serialize, ToSchema)]
pub struct RequeuedBody {
    pub requeued: usize,
}

/// The provider's id of an inbound SMS or MMS.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct SmsProviderId {
    /// A repeat is answered with the first message.
    #[schema(value_type = String, min_length = 1, max_length = 255, pattern = r"^[^\x00]*[^\s\x00][^\x00]*$", example = "message-1")]
    pub messaging_provider_id: ProviderId,
}

/// The provider's id of an inbound email.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct EmailProviderId {
    #[schema(value_type = String, min_length = 1, max_length = 255, pattern = r"^[^\x00]*[^\s\x00][^\x00]*$", example = "message-3")]
    pub xillio_id: ProviderId,
}

/// `POST /api/webhooks/sms`: an SMS or MMS as sent, plus the provider's id.
#[derive(Debug, Serialize, ToSchema)]
pub struct SmsWebhook {
    #[serde(flatten)]
    pub message: SmsRequest,
    #[serde(flatten)]
    pub id: SmsProviderId,
}

impl SmsWebhook {
    pub fn from_object(object: &Map<String, Value>) -> Result<Self, ApiError> {
        Ok(SmsWebhook {
            message: SmsRequest::from_object(object)?,
            id: parse(object)?,
        })
    }
}

/// `POST /api/webhooks/email`: an email as sent, plus the provider's id.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmailWebhook {
    #[serde(flatten)]
    pub message: EmailRequest,
    #[serde(flatten)]
    pub id: EmailProviderId,
}

impl EmailWebhook {
    pub fn from_object(object: &Map<String, Value>) -> Result<Self, ApiError> {
        Ok(EmailWebhook {
            message: EmailRequest::from_object(object)?,
            id: parse(object)?,
        })
    }
}

// ---- responses ----

#[derive(Serialize, ToSchema)]
pub struct AcceptedBody {
    pub id: i64,
    #[schema(example = "queued")]
    pub status: &'static str,
    #[schema(example = "sms")]
    pub channel: String,
    #[schema(example = "sms-mms")]
    pub provider: String,
    pub conversation_id: i64,
}

#[derive(Serialize, ToSchema)]
pub struct ReceivedBody {
    pub id: i64,
    #[schema(example = "received")]
    pub status: &'static str,
    pub conversation_id: i64,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    #[schema(example = "validation_failed")]
    pub code: &'static str,
    pub message: String,
    /// The field at fault, where one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct StatusBody {
    #[schema(example = "ok")]
    pub status: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct PageMeta {
    pub page: u32,
    pub page_size: u32,
    pub total: i64,
}

#[derive(Serialize, ToSchema)]
pub struct ConversationPage {
    pub items: Vec<ConversationView>,
    pub meta: PageMeta,
}

#[derive(Serialize, ToSchema)]
pub struct MessagePage {
    pub items: Vec<MessageView>,
    pub meta: PageMeta,
}

#[derive(Serialize, ToSchema)]
pub struct MessageDetail {
    #[serde(flatten)]
    pub message: MessageView,
    pub attempts: Vec<AttemptView>,
    /// Its status callbacks, oldest first.
    pub callbacks: Vec<CallbackView>,
}

#[derive(Serialize, ToSchema)]
pub struct BreakerBody {
    /// `closed`, `open`, `half_open`, or an operator's `forced_open` or `disabled`.
    pub state: &'static str,
    pub failure_rate: f64,
    pub recorded_calls: u32,
}

#[derive(Serialize, ToSchema)]
pub struct OddsBody {
    pub timeout_pct: f64,
    pub error_pct: f64,
    pub ratelimit_pct: f64,
}

/// A provider as `/api/providers` shows it: the actor's status, grouped for readers.
#[derive(Serialize, ToSchema)]
pub struct ProviderBody {
    pub name: String,
    /// `simulated`, `twilio` or `sendgrid`.
    #[schema(example = "simulated")]
    pub kind: &'static str,
    pub channels: Vec<&'static str>,
    pub seeded: bool,
    pub breaker: BreakerBody,
    pub outcomes: OddsBody,
    pub pending: u64,
}

impl From<ProviderStatus> for ProviderBody {
    fn from(p: ProviderStatus) -> Self {
        ProviderBody {
            name: p.name,
            kind: p.kind,
            channels: p.channels.iter().map(|c| c.as_str()).collect(),
            seeded: p.seeded,
            breaker: BreakerBody {
                state: p.breaker_state.as_str(),
                failure_rate: p.failure_rate,
                recorded_calls: p.recorded_calls,
            },
            outcomes: OddsBody {
                timeout_pct: p.odds.timeout_pct,
                error_pct: p.odds.error_pct,
                ratelimit_pct: p.odds.ratelimit_pct,
            },
            pending: p.pending,
        }
    }
}

/// `POST /api/providers/{name}/breaker`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct BreakerOverrideRequest {
    pub state: BreakerOverride,
}

/// `forced_open` admits nothing until set back (messages wait queued); `disabled` admits
/// everything and records nothing; `closed` returns to normal with a fresh window.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BreakerOverride {
    ForcedOpen,
    Disabled,
    Closed,
}

impl From<BreakerOverride> for Override {
    fn from(state: BreakerOverride) -> Self {
        match state {
            BreakerOverride::ForcedOpen => Override::ForcedOpen,
            BreakerOverride::Disabled => Override::Disabled,
            BreakerOverride::Closed => Override::Closed,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ProvidersBody {
    pub items: Vec<ProviderBody>,
}

// ---- error responses shared by many paths ----

/// Errors any POST with a JSON body can answer with, before its fields are looked at.
#[derive(IntoResponses)]
#[expect(dead_code, reason = "documents responses; ApiError writes them")]
pub enum BodyErrors {
    #[response(
        status = 400,
        description = "`invalid_json` or `validation_failed` (with `field`)"
    )]
    BadRequest(ErrorBody),
    #[response(status = 406, description = "`not_acceptable`: Accept excludes JSON")]
    NotAcceptable(ErrorBody),
    #[response(
        status = 408,
        description = "`request_timeout`: the body did not arrive within 10 s"
    )]
    RequestTimeout(ErrorBody),
    #[response(status = 413, description = "`payload_too_large`")]
    TooLarge(ErrorBody),
    #[response(status = 415, description = "`unsupported_media_type`")]
    UnsupportedMediaType(ErrorBody),
}

/// What an outbound POST can answer beyond `BodyErrors`.
#[derive(IntoResponses)]
#[expect(dead_code, reason = "documents responses; ApiError writes them")]
pub enum OutboundErrors {
    #[response(status = 422, description = "`idempotency_conflict`")]
    Conflict(ErrorBody),
    #[response(
        status = 500,
        description = "`no_provider`: the channel's route names no provider"
    )]
    NoProvider(ErrorBody),
    #[response(
        status = 503,
        description = "`overloaded` or `not_ready`; see Retry-After"
    )]
    Unavailable(ErrorBody),
}

/// What a webhook POST can answer beyond `BodyErrors`.
#[derive(IntoResponses)]
#[expect(dead_code, reason = "documents responses; ApiError writes them")]
pub enum WebhookErrors {
    #[response(
        status = 401,
        description = "`invalid_signature`: with `[webhooks] secret_env`, a missing, wrong or stale Standard Webhooks signature"
    )]
    InvalidSignature(ErrorBody),
    #[response(
        status = 503,
        description = "`not_ready`: the database cannot take the write"
    )]
    Unavailable(ErrorBody),
}

/// Errors any operation that needs an API key can answer with (CONTRACT section 9).
#[derive(IntoResponses)]
#[expect(dead_code, reason = "documents responses; ApiError writes them")]
pub enum AuthErrors {
    #[response(
        status = 401,
        description = "`unauthorized`: no key or an unknown one; see WWW-Authenticate"
    )]
    Unauthorized(ErrorBody),
    #[response(status = 403, description = "`forbidden`: the key lacks the scope")]
    Forbidden(ErrorBody),
    #[response(
        status = 429,
        description = "`rate_limited`: the key is over its rate; see Retry-After"
    )]
    RateLimited(ErrorBody),
}

/// Errors a read can answer with.
#[derive(IntoResponses)]
#[expect(dead_code, reason = "documents responses; ApiError writes them")]
pub enum ReadErrors {
    #[response(
        status = 400,
        description = "`validation_failed`: bad `page` or `page_size`"
    )]
    BadRequest(ErrorBody),
    #[response(status = 404, description = "`not_found`")]
    NotFound(ErrorBody),
    #[response(status = 406, description = "`not_acceptable`: Accept excludes JSON")]
    NotAcceptable(ErrorBody),
    #[response(status = 503, description = "`not_ready`")]
    Unavailable(ErrorBody),
}
