//! Inbound messages from providers: `POST /api/webhooks/sms` and `/api/webhooks/email`.
//! A repeated provider id answers with the first message and stores nothing new.

use super::body::{parse_object, read_json_body};
use super::error::ApiError;
use super::wire::{BodyErrors, EmailWebhook, ReceivedBody, SmsWebhook, WebhookErrors};
use super::{store_unavailable, AppState};
use actix_web::{web, HttpRequest, HttpResponse};
use messaging_actors::domain::MessageContent;
use messaging_actors::store::{InboundStored, NewInbound};
use serde_json::{Map, Value};

/// A webhook body as the message it carries and the provider's id for it.
type Parse = fn(&Map<String, Value>) -> Result<(MessageContent, String), ApiError>;

/// Stores an inbound message unless its provider id was seen before (then the first
/// message answers), counting the new ones; every inbound webhook ends here.
pub(super) async fn store_inbound(
    state: &AppState,
    content: MessageContent,
    provider_message_id: String,
) -> Result<(i64, i64), ApiError> {
    let channel = content.channel;
    let stored = state
        .store
        .insert_inbound(NewInbound {
            content,
            provider_message_id,
        })
        .await
        .map_err(|e| store_unavailable(&state.log, e))?;
    Ok(match stored {
        InboundStored::Created {
            id,
            conversation_id,
        } => {
            state
                .metrics
                .webhooks_received
                .with_label_values(&[channel.as_str()])
                .inc();
            (id, conversation_id)
        }
        InboundStored::Duplicate {
            id,
            conversation_id,
        } => (id, conversation_id),
    })
}

async fn receive(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
    parse: Parse,
) -> Result<HttpResponse, ApiError> {
    let body = read_json_body(req, payload, state.max_body_bytes).await?;
    if let Err(e) = state.auth.verify_webhook(req.headers(), &body) {
        state.auth.refused(&state.log, "signature", req);
        return Err(e);
    }
    let object = parse_object(&body)?;
    let (content, provider_message_id) = parse(&object)?;
    let (id, conversation_id) = store_inbound(state, content, provider_message_id).await?;
    Ok(HttpResponse::Accepted().json(ReceivedBody {
        id,
        status: "received",
        conversation_id,
    }))
}

#[utoipa::path(
    post,
    path = "/api/webhooks/sms",
    tag = "webhooks",
    request_body(content = SmsWebhook, content_type = "application/json"),
    responses(
        (status = 202, description = "Stored, or the first message with this provider id",
            body = ReceivedBody),
        BodyErrors,
        WebhookErrors,
    )
)]
pub async fn receive_sms_webhook(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    receive(&state, &req, payload, |object| {
        let hook = SmsWebhook::from_object(object)?;
        Ok((hook.message.into(), hook.id.messaging_provider_id.into()))
    })
    .await
}

#[utoipa::path(
    post,
    path = "/api/webhooks/email",
    tag = "webhooks",
    request_body(content = EmailWebhook, content_type = "application/json"),
    responses(
        (status = 202, description = "Stored, or the first message with this provider id",
            body = ReceivedBody),
        BodyErrors,
        WebhookErrors,
    )
)]
pub async fn receive_email_webhook(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    receive(&state, &req, payload, |object| {
        let hook = EmailWebhook::from_object(object)?;
        Ok((hook.message.into(), hook.id.xillio_id.into()))
    })
    .await
}
