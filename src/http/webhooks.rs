//! Inbound messages from providers: `POST /api/webhooks/sms` and `/api/webhooks/email`.
//! A repeated provider id answers with the first message and stores nothing new.

use super::body::{read_object, Fields};
use super::error::ApiError;
use super::messages::{email_content, sms_content};
use super::openapi::{EmailWebhookRequest, ReceivedBody, SmsWebhookRequest, WebhookErrors};
use super::{store_unavailable, AppState};
use actix_web::{web, HttpRequest, HttpResponse};
use messaging_actors::domain::MessageContent;
use messaging_actors::store::{InboundStored, NewInbound};

/// Provider ids are opaque; bound them like idempotency keys.
const MAX_PROVIDER_ID_LEN: usize = 255;

async fn receive(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
    id_field: &str,
    parse: fn(&Fields<'_>) -> Result<MessageContent, ApiError>,
) -> Result<HttpResponse, ApiError> {
    let object = read_object(req, payload, state.max_body_bytes).await?;
    let fields = Fields(&object);
    let content = parse(&fields)?;
    let provider_message_id = fields.non_empty(id_field)?;
    if provider_message_id.len() > MAX_PROVIDER_ID_LEN {
        return Err(ApiError::validation(id_field, "must be at most 255 bytes"));
    }
    let channel = content.channel;
    let stored = state
        .store
        .insert_inbound(NewInbound {
            content,
            provider_message_id: provider_message_id.to_owned(),
        })
        .await
        .map_err(|e| store_unavailable(&state.log, e))?;
    let (id, conversation_id) = match stored {
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
    };
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
    request_body(content = SmsWebhookRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Stored, or the first message with this provider id",
            body = ReceivedBody),
        WebhookErrors,
    )
)]
pub async fn receive_sms_webhook(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    receive(&state, &req, payload, "messaging_provider_id", sms_content).await
}

#[utoipa::path(
    post,
    path = "/api/webhooks/email",
    tag = "webhooks",
    request_body(content = EmailWebhookRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Stored, or the first message with this provider id",
            body = ReceivedBody),
        WebhookErrors,
    )
)]
pub async fn receive_email_webhook(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    receive(&state, &req, payload, "xillio_id", email_content).await
}
