//! The OpenAPI 3 document of the API, served at `GET /api/openapi.json`, and the typed
//! bodies it describes. Handlers serialise these very types, and every path comes from the
//! `#[utoipa::path]` beside its handler, so the document follows the code; CI runs
//! schemathesis against the live server to hold the two together.

use std::sync::OnceLock;

use actix_web::HttpResponse;
use messaging_actors::provider::ProviderStatus;
use messaging_actors::store::{AttemptView, ConversationView, MessageView};
use serde::Serialize;
use utoipa::{IntoResponses, OpenApi, ToSchema};

use super::{conversations, health, messages, providers, webhooks};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "messaging-service",
        description = "Routes outbound SMS, MMS and email to the provider dedicated to each \
                       channel; receives inbound messages through provider webhooks."
    ),
    paths(
        messages::send_sms,
        messages::send_email,
        messages::get_message,
        webhooks::receive_sms_webhook,
        webhooks::receive_email_webhook,
        conversations::list_conversations,
        conversations::list_conversation_messages,
        providers::list_providers,
        health::healthz,
        health::readyz,
        health::metrics,
        openapi_json,
    )
)]
pub struct ApiDoc;

/// The document, built once.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "meta",
    responses((status = 200, description = "This OpenAPI 3 document", content_type = "application/json"))
)]
pub async fn openapi_json() -> HttpResponse {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    let text = DOCUMENT.get_or_init(|| ApiDoc::openapi().to_json().unwrap_or_default());
    HttpResponse::Ok()
        .content_type("application/json")
        .body(text.as_str())
}

// ---- request bodies (documentation: the handlers read them field by field) ----

#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
#[expect(
    dead_code,
    reason = "documents the request's `type`; body.rs parses it"
)]
pub enum SmsKind {
    Sms,
    Mms,
}

/// An absolute http or https URL.
#[derive(ToSchema)]
#[schema(value_type = String, pattern = r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s/?#]+", example = "https://example.com/image.jpg")]
#[expect(dead_code, reason = "documents an attachment; domain.rs validates it")]
pub struct AttachmentUrl(String);

/// `POST /api/messages/sms` and, with `messaging_provider_id`, the SMS webhook.
#[derive(ToSchema)]
#[expect(dead_code, reason = "documents the request body; body.rs parses it")]
pub struct SmsRequest {
    /// E.164, e.g. +12016661234.
    #[schema(example = "+12016661234", pattern = r"^\+[1-9][0-9]{1,14}$")]
    from: String,
    #[schema(example = "+18045551234", pattern = r"^\+[1-9][0-9]{1,14}$")]
    to: String,
    #[schema(rename = "type")]
    kind: SmsKind,
    /// Required and non-empty for `sms`; may be empty or absent for `mms`.
    body: Option<String>,
    /// Up to 10 http(s) URLs; at least one for `mms`.
    #[schema(max_items = 10, inline)]
    attachments: Option<Vec<AttachmentUrl>>,
    /// RFC 3339.
    #[schema(example = "2024-11-01T14:00:00Z", format = DateTime)]
    timestamp: String,
}

#[derive(ToSchema)]
#[expect(dead_code, reason = "documents the request body; body.rs parses it")]
pub struct EmailRequest {
    #[schema(example = "user@usehatchapp.com", format = Email)]
    from: String,
    #[schema(example = "contact@gmail.com", format = Email)]
    to: String,
    /// Non-empty; HTML allowed.
    #[schema(min_length = 1)]
    body: String,
    #[schema(max_items = 10, inline)]
    attachments: Option<Vec<AttachmentUrl>>,
    #[schema(example = "2024-11-01T14:00:00Z", format = DateTime)]
    timestamp: String,
}

#[derive(ToSchema)]
#[expect(dead_code, reason = "documents the request body; body.rs parses it")]
pub struct SmsWebhookRequest {
    #[schema(example = "+18045551234", pattern = r"^\+[1-9][0-9]{1,14}$")]
    from: String,
    #[schema(example = "+12016661234", pattern = r"^\+[1-9][0-9]{1,14}$")]
    to: String,
    #[schema(rename = "type")]
    kind: SmsKind,
    /// The provider's id; a repeat is answered with the first message.
    #[schema(example = "message-1", min_length = 1, max_length = 255)]
    messaging_provider_id: String,
    body: Option<String>,
    #[schema(max_items = 10, inline)]
    attachments: Option<Vec<AttachmentUrl>>,
    #[schema(example = "2024-11-01T14:00:00Z", format = DateTime)]
    timestamp: String,
}

#[derive(ToSchema)]
#[expect(dead_code, reason = "documents the request body; body.rs parses it")]
pub struct EmailWebhookRequest {
    #[schema(format = Email)]
    from: String,
    #[schema(format = Email)]
    to: String,
    #[schema(example = "message-3", min_length = 1, max_length = 255)]
    xillio_id: String,
    #[schema(min_length = 1)]
    body: String,
    #[schema(max_items = 10, inline)]
    attachments: Option<Vec<AttachmentUrl>>,
    #[schema(format = DateTime)]
    timestamp: String,
}

// ---- response bodies ----

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
pub struct ConversationBody {
    pub id: i64,
    /// The unordered pair, smaller address first; emails lower-cased.
    pub participants: [String; 2],
    pub message_count: i64,
    pub last_message_at: String,
}

impl From<ConversationView> for ConversationBody {
    fn from(c: ConversationView) -> Self {
        ConversationBody {
            id: c.id,
            participants: c.participants,
            message_count: c.message_count,
            last_message_at: c.last_message_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ConversationPage {
    pub items: Vec<ConversationBody>,
    pub meta: PageMeta,
}

#[derive(Serialize, ToSchema)]
pub struct MessageBody {
    pub id: i64,
    pub conversation_id: i64,
    #[schema(example = "outbound")]
    pub direction: String,
    #[schema(example = "sms")]
    pub channel: String,
    pub from: String,
    pub to: String,
    pub body: String,
    pub attachments: Option<Vec<String>>,
    pub timestamp: String,
    /// `queued`, `sent`, `failed` or `received`.
    #[schema(example = "sent")]
    pub status: String,
    /// Null for inbound messages and for outbound ones no provider served.
    pub provider: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<MessageView> for MessageBody {
    fn from(m: MessageView) -> Self {
        MessageBody {
            id: m.id,
            conversation_id: m.conversation_id,
            direction: m.direction,
            channel: m.channel,
            from: m.from,
            to: m.to,
            body: m.body,
            attachments: m.attachments,
            timestamp: m.timestamp,
            status: m.status,
            provider: m.provider,
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct MessagePage {
    pub items: Vec<MessageBody>,
    pub meta: PageMeta,
}

#[derive(Serialize, ToSchema)]
pub struct AttemptBody {
    pub attempt: i32,
    pub provider: String,
    /// `success`, `rate_limited`, `error` or `timeout`.
    pub outcome: String,
    pub latency_ms: i64,
    /// `500`, `429`, `timeout`, or null on success.
    pub error_code: Option<String>,
    pub at: String,
}

impl From<AttemptView> for AttemptBody {
    fn from(a: AttemptView) -> Self {
        AttemptBody {
            attempt: a.attempt,
            provider: a.provider,
            outcome: a.outcome,
            latency_ms: a.latency_ms,
            error_code: a.error_code,
            at: a.at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct MessageDetail {
    #[serde(flatten)]
    pub message: MessageBody,
    pub attempts: Vec<AttemptBody>,
}

#[derive(Serialize, ToSchema)]
pub struct BreakerBody {
    /// `closed`, `open` or `half_open`.
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

#[derive(Serialize, ToSchema)]
pub struct ProviderBody {
    pub name: String,
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

#[derive(Serialize, ToSchema)]
pub struct ProvidersBody {
    pub items: Vec<ProviderBody>,
}

// ---- error responses shared by many paths ----

/// Errors any outbound POST can answer with.
#[derive(IntoResponses)]
#[expect(dead_code, reason = "documents responses; ApiError writes them")]
pub enum OutboundErrors {
    #[response(
        status = 400,
        description = "`invalid_json` or `validation_failed` (with `field`)"
    )]
    BadRequest(ErrorBody),
    #[response(status = 406, description = "`not_acceptable`: Accept excludes JSON")]
    NotAcceptable(ErrorBody),
    #[response(status = 413, description = "`payload_too_large`")]
    TooLarge(ErrorBody),
    #[response(status = 415, description = "`unsupported_media_type`")]
    UnsupportedMediaType(ErrorBody),
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

/// Errors a webhook POST can answer with.
#[derive(IntoResponses)]
#[expect(dead_code, reason = "documents responses; ApiError writes them")]
pub enum WebhookErrors {
    #[response(
        status = 400,
        description = "`invalid_json` or `validation_failed` (with `field`)"
    )]
    BadRequest(ErrorBody),
    #[response(status = 406, description = "`not_acceptable`: Accept excludes JSON")]
    NotAcceptable(ErrorBody),
    #[response(status = 413, description = "`payload_too_large`")]
    TooLarge(ErrorBody),
    #[response(status = 415, description = "`unsupported_media_type`")]
    UnsupportedMediaType(ErrorBody),
    #[response(
        status = 503,
        description = "`not_ready`: the database cannot take the write"
    )]
    Unavailable(ErrorBody),
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
