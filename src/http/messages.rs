//! Outbound messages: `POST /api/messages/sms`, `POST /api/messages/email`, and
//! `GET /api/messages/{id}`. Parsing and validation happen here; acceptance (provider tag,
//! storage) is the `RouterActor`'s.

use super::body::{read_object, Fields};
use super::error::ApiError;
use super::openapi::{
    AcceptedBody, EmailRequest, MessageDetail, OutboundErrors, ReadErrors, SmsRequest,
};
use super::{parse_id, store_unavailable, AppState};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use messaging_actors::domain::{
    valid_idempotency_key, Channel, Direction, IdempotencyKey, MessageContent,
};
use messaging_actors::router::{AcceptOutbound, RouteError};

/// What a client refused for a full backlog is told to wait: providers finish thousands
/// of messages a second, so a second frees room unless they are failing or slow.
const OVERLOADED_RETRY_AFTER_SECS: u64 = 1;

/// SMS and MMS share a shape: E.164 numbers, `type`, and a body (SMS) or attachments (MMS).
pub fn sms_content(fields: &Fields<'_>) -> Result<MessageContent, ApiError> {
    let from = fields.phone("from")?;
    let to = fields.phone("to")?;
    let channel = match fields.string("type")? {
        "sms" => Channel::Sms,
        "mms" => Channel::Mms,
        _ => return Err(ApiError::validation("type", "must be \"sms\" or \"mms\"")),
    };
    let body = match channel {
        Channel::Mms => fields.optional_string("body")?.unwrap_or_default(),
        _ => fields.non_empty("body")?,
    };
    let attachments = fields.attachments()?;
    if channel == Channel::Mms && attachments.as_ref().is_none_or(Vec::is_empty) {
        return Err(ApiError::validation(
            "attachments",
            "must hold at least one URL for an mms",
        ));
    }
    Ok(MessageContent {
        channel,
        from,
        to,
        body: body.to_owned(),
        attachments,
        timestamp: fields.timestamp("timestamp")?,
    })
}

pub fn email_content(fields: &Fields<'_>) -> Result<MessageContent, ApiError> {
    let from = fields.email("from")?;
    let to = fields.email("to")?;
    let body = fields.non_empty("body")?.to_owned();
    let attachments = fields.attachments()?;
    Ok(MessageContent {
        channel: Channel::Email,
        from,
        to,
        body,
        attachments,
        timestamp: fields.timestamp("timestamp")?,
    })
}

fn idempotency_key(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(value) = req.headers().get("Idempotency-Key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key) if valid_idempotency_key(key) => Ok(Some(key.to_owned())),
        _ => Err(ApiError::validation(
            "Idempotency-Key",
            "must be 1 to 255 visible ASCII characters",
        )),
    }
}

async fn accept(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
    parse: fn(&Fields<'_>) -> Result<MessageContent, ApiError>,
) -> Result<HttpResponse, ApiError> {
    let object = read_object(req, payload, state.max_body_bytes).await?;
    let content = parse(&Fields(&object))?;
    let idempotency = idempotency_key(req)?.map(|key| IdempotencyKey {
        key,
        fingerprint: content.fingerprint(Direction::Outbound),
    });
    let accepted = state
        .router
        .send(AcceptOutbound {
            content,
            idempotency,
        })
        .await
        .map_err(|e| store_unavailable(&state.log, e))?
        .map_err(|e| match e {
            RouteError::NoProvider { channel, .. } => ApiError::NoProvider { channel },
            RouteError::IdempotencyConflict => ApiError::IdempotencyConflict,
            RouteError::Overloaded { .. } => ApiError::Overloaded {
                retry_after_secs: OVERLOADED_RETRY_AFTER_SECS,
            },
            RouteError::Store(e) => store_unavailable(&state.log, e),
        })?;
    Ok(HttpResponse::Accepted()
        .insert_header((header::LOCATION, format!("/api/messages/{}", accepted.id)))
        .json(AcceptedBody {
            id: accepted.id,
            status: "queued",
            channel: accepted.channel,
            provider: accepted.provider,
            conversation_id: accepted.conversation_id,
        }))
}

#[utoipa::path(
    post,
    path = "/api/messages/sms",
    tag = "messages",
    request_body(content = SmsRequest, content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header,
        description = "1 to 255 visible ASCII characters; a repeat returns the first answer")),
    responses(
        (status = 202, description = "Committed and tagged with its provider; dispatch follows",
            body = AcceptedBody,
            headers(("Location" = String, description = "/api/messages/{id}"))),
        OutboundErrors,
    )
)]
pub async fn send_sms(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    accept(&state, &req, payload, sms_content).await
}

#[utoipa::path(
    post,
    path = "/api/messages/email",
    tag = "messages",
    request_body(content = EmailRequest, content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header,
        description = "1 to 255 visible ASCII characters; a repeat returns the first answer")),
    responses(
        (status = 202, description = "Committed and tagged with its provider; dispatch follows",
            body = AcceptedBody,
            headers(("Location" = String, description = "/api/messages/{id}"))),
        OutboundErrors,
    )
)]
pub async fn send_email(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    accept(&state, &req, payload, email_content).await
}

#[utoipa::path(
    get,
    path = "/api/messages/{id}",
    tag = "messages",
    params(("id" = i64, Path, description = "The message id")),
    responses(
        (status = 200, description = "The message and its dispatch attempts", body = MessageDetail),
        ReadErrors,
    )
)]
pub async fn get_message(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id, "message")?;
    let (message, attempts) = state
        .store
        .get_message(id)
        .await
        .map_err(|e| store_unavailable(&state.log, e))?
        .ok_or_else(|| ApiError::NotFound(format!("message {id}")))?;
    Ok(HttpResponse::Ok().json(MessageDetail {
        message: message.into(),
        attempts: attempts.into_iter().map(Into::into).collect(),
    }))
}
