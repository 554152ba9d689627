//! Outbound messages: `POST /api/messages/sms`, `POST /api/messages/email`, and
//! `GET /api/messages/{id}`. Parsing and validation happen here; acceptance (provider tag,
//! storage) is the `RouterActor`'s.

use super::body::{read_object, read_optional_object};
use super::budget::{read_within, BudgetedBody, Room};
use super::error::ApiError;
use super::wire::{
    parse, AcceptedBody, AuthErrors, BodyErrors, DeliveryFields, EmailRequest, ErrorBody,
    IdempotencyKeyHeader, MessageDetail, OutboundErrors, ReadErrors, RequeuedBody,
    RetryFailedRequest, SendEmail, SendSms, SmsRequest,
};
use super::{actor_unavailable, parse_id, store_unavailable, AppState};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::TryFutureExt;
use messaging_actors::domain::{Direction, IdempotencyKey, MessageContent};
use messaging_actors::router::{AcceptOutbound, RequeueFailed, RouteError};
use messaging_actors::store::{Bounded, RequeueTarget, Requeued};
use serde_json::{Map, Value};

/// What a client refused for a full backlog is told to wait: providers finish thousands
/// of messages a second, so a second frees room unless they are failing or slow.
const OVERLOADED_RETRY_AFTER_SECS: u64 = 1;

/// SMS and MMS share a route; `type` picks the shape.
pub fn sms_content(object: &Map<String, Value>) -> Result<MessageContent, ApiError> {
    SmsRequest::from_object(object).map(Into::into)
}

pub fn email_content(object: &Map<String, Value>) -> Result<MessageContent, ApiError> {
    EmailRequest::from_object(object).map(Into::into)
}

async fn accept(
    state: &AppState,
    router: &super::WorkerRouter,
    req: &HttpRequest,
    payload: web::Payload,
    parse: fn(&Map<String, Value>) -> Result<MessageContent, ApiError>,
) -> Result<HttpResponse, ApiError> {
    let object = read_object(req, payload, state.max_body_bytes).await?;
    let content = parse(&object)?;
    // The fingerprint holds what the request says, not the configured default callback:
    // the same body stays the same request across a change of `[callbacks] url`.
    let mut options = DeliveryFields::options(&object)?;
    let send_at = options.send_at.map(|at| at.to_storage());
    let fingerprint = |callback: Option<&str>| {
        let mut extra = Vec::new();
        if let Some(url) = callback {
            extra.push(("status_callback", url));
        }
        if let Some(at) = &send_at {
            extra.push(("send_at", at.as_str()));
        }
        content.fingerprint_with(Direction::Outbound, &extra)
    };
    let idempotency = IdempotencyKeyHeader::from_request(req)?.key.map(|key| {
        let callback = options.status_callback.as_deref();
        let earlier = fingerprint(callback.or(state.default_callback.as_deref()));
        IdempotencyKey::new(key, &fingerprint(callback), earlier)
    });
    if options.status_callback.is_none() {
        options.status_callback = state.default_callback.clone();
    }
    let accepted = router
        .0
        .send(AcceptOutbound {
            content,
            idempotency,
            options,
        })
        .await
        .map_err(|e| actor_unavailable(&state.log, e))?
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
    security(("bearer" = ["send"])),
    tag = "messages",
    request_body(content = SendSms, content_type = "application/json"),
    params(IdempotencyKeyHeader),
    responses(
        AuthErrors,
        (status = 202, description = "Committed and tagged with its provider; dispatch follows",
            body = AcceptedBody,
            headers(("Location" = String, description = "/api/messages/{id}"))),
        BodyErrors,
        OutboundErrors,
    )
)]
pub async fn send_sms(
    state: web::Data<AppState>,
    router: web::Data<super::WorkerRouter>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    accept(&state, &router, &req, payload, sms_content).await
}

#[utoipa::path(
    post,
    path = "/api/messages/email",
    security(("bearer" = ["send"])),
    tag = "messages",
    request_body(content = SendEmail, content_type = "application/json"),
    params(IdempotencyKeyHeader),
    responses(
        AuthErrors,
        (status = 202, description = "Committed and tagged with its provider; dispatch follows",
            body = AcceptedBody,
            headers(("Location" = String, description = "/api/messages/{id}"))),
        BodyErrors,
        OutboundErrors,
    )
)]
pub async fn send_email(
    state: web::Data<AppState>,
    router: web::Data<super::WorkerRouter>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    accept(&state, &router, &req, payload, email_content).await
}

#[utoipa::path(
    get,
    path = "/api/messages/{id}",
    security(("bearer" = ["read"])),
    tag = "messages",
    params(("id" = i64, Path, description = "The message id")),
    responses(
        AuthErrors,
        (status = 200, description = "The message and its dispatch attempts", body = MessageDetail),
        ReadErrors,
    )
)]
pub async fn get_message(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id, "message")?;
    let (detail, room) = message_detail(&state, id).await?;
    let body = serde_json::to_vec(&detail).map_err(|_| ApiError::NotReady)?;
    // The body keeps its room until it is written out.
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(BudgetedBody::new(body, room)))
}

/// Bytes of body and attachments a message's first room counts on; a larger one reads
/// again with room for what it holds (see budget.rs).
const DETAIL_GUESS: i64 = 16 * 1024;

/// The message as `GET /api/messages/{id}` shows it, within room from the read budget.
async fn message_detail(state: &AppState, id: i64) -> Result<(MessageDetail, Room), ApiError> {
    let ((message, attempts, callbacks), room) =
        read_within(&state.read_budget, DETAIL_GUESS, |fits, room| {
            state
                .store
                .get_message_detail(id, fits, room)
                .map_err(|e| store_unavailable(&state.log, e))
        })
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("message {id}")))?;
    let detail = MessageDetail {
        message,
        attempts,
        callbacks,
    };
    Ok((detail, room))
}

/// The message as a retry answers it, outside the read budget: the retry is already
/// committed, and a `503 overloaded` after it would have the client try again and be
/// told `409`. One message per request that writes, it is not a way to read in bulk.
async fn retried_detail(state: &AppState, id: i64) -> Result<MessageDetail, ApiError> {
    let read = state.store.get_message_detail(id, None, ()).await;
    match read.map_err(|e| store_unavailable(&state.log, e))?.0 {
        Some(Bounded::Loaded((message, attempts, callbacks))) => Ok(MessageDetail {
            message,
            attempts,
            callbacks,
        }),
        _ => Err(ApiError::NotFound(format!("message {id}"))),
    }
}

#[utoipa::path(
    post,
    path = "/api/messages/{id}/retry",
    security(("bearer" = ["send"])),
    tag = "messages",
    params(("id" = i64, Path, description = "A failed outbound message")),
    responses(
        AuthErrors,
        (status = 202, description = "Queued again; its attempt numbers continue", body = MessageDetail),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`not_retryable`: the message is not a failed outbound one", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: a body over `server.max_body_bytes` (the route needs none)", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: a body that is not JSON", body = ErrorBody),
        (status = 400, description = "`invalid_json`: a body that is not a JSON object (the route needs none)", body = ErrorBody),
        (status = 503, description = "`not_ready`", body = ErrorBody),
    )
)]
pub async fn retry_message(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    read_optional_object(&req, payload, state.max_body_bytes).await?;
    let id = parse_id(&id, "message")?;
    match requeue(&state, RequeueTarget::One(id)).await? {
        Requeued::Messages(_) | Requeued::Many(_) => {
            Ok(HttpResponse::Accepted().json(retried_detail(&state, id).await?))
        }
        Requeued::NotFound => Err(ApiError::NotFound(format!("message {id}"))),
        Requeued::NotRetryable => {
            let status = retried_detail(&state, id).await?.message.status;
            Err(ApiError::NotRetryable { status })
        }
    }
}

#[utoipa::path(
    post,
    path = "/api/messages/retry",
    security(("bearer" = ["send"])),
    tag = "messages",
    request_body(content = RetryFailedRequest, content_type = "application/json"),
    responses(
        AuthErrors,
        (status = 202, description = "How many failed messages were queued again", body = RequeuedBody),
        BodyErrors,
        (status = 503, description = "`not_ready`", body = ErrorBody),
    )
)]
pub async fn retry_failed(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let object = read_object(&req, payload, state.max_body_bytes).await?;
    let request: RetryFailedRequest = parse(&object)?;
    let target = RequeueTarget::Provider {
        name: request.provider.into(),
        since: request.failed_since,
    };
    let requeued = match requeue(&state, target).await? {
        Requeued::Many(count) => count,
        Requeued::Messages(messages) => messages.len(),
        Requeued::NotFound | Requeued::NotRetryable => 0,
    };
    Ok(HttpResponse::Accepted().json(RequeuedBody { requeued }))
}

async fn requeue(state: &AppState, target: RequeueTarget) -> Result<Requeued, ApiError> {
    state
        .router
        .send(RequeueFailed(target))
        .await
        .map_err(|e| actor_unavailable(&state.log, e))?
        .map_err(|e| store_unavailable(&state.log, e))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{json, Map, Value};

    use super::*;

    const SMS_FIELDS: [&str; 6] = ["from", "to", "type", "body", "attachments", "timestamp"];
    const EMAIL_FIELDS: [&str; 5] = ["from", "to", "body", "attachments", "timestamp"];

    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            ".{0,12}".prop_map(Value::from),
            "\\+[0-9]{0,16}".prop_map(Value::from),
            "[a-z]{0,5}@[a-z]{0,5}(\\.[a-z]{0,3})?".prop_map(Value::from),
            "(https?|ftp)://[a-z. ]{0,8}/?".prop_map(Value::from),
            prop::sample::select(vec!["sms", "mms", "email", "", "SMS"]).prop_map(Value::from),
        ];
        leaf.prop_recursive(2, 24, 12, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..12).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn timestamp() -> impl Strategy<Value = String> {
        (
            1970u32..2100,
            1u32..=12,
            1u32..=28,
            0u32..24,
            0u32..60,
            0u32..60,
        )
            .prop_map(|(y, mo, d, h, mi, s)| {
                format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
            })
    }

    fn url() -> impl Strategy<Value = String> {
        "https?://[a-z]{1,10}\\.[a-z]{2,5}/[a-z0-9]{0,10}"
    }

    fn valid_sms() -> impl Strategy<Value = Map<String, Value>> {
        (
            "\\+[1-9][0-9]{1,14}",
            "\\+[1-9][0-9]{1,14}",
            "[a-zA-Z0-9 ]{0,20}[a-zA-Z0-9]",
            prop::option::of(prop::collection::vec(url(), 0..=10)),
            timestamp(),
        )
            .prop_map(|(from, to, body, attachments, timestamp)| {
                let object = json!({"from": from, "to": to, "type": "sms", "body": body,
                    "attachments": attachments, "timestamp": timestamp});
                object.as_object().cloned().unwrap_or_default()
            })
    }

    fn valid_email() -> impl Strategy<Value = Map<String, Value>> {
        (
            "[a-z]([a-z0-9+]{0,5}\\.)?[a-z0-9]{1,5}@[a-z]{1,8}\\.[a-z]{2,4}",
            "[a-z]{1,8}@[a-z]{1,8}\\.[a-z]{2,4}",
            "<p>[a-zA-Z0-9 ]{0,20}[a-z]</p>",
            prop::option::of(prop::collection::vec(url(), 0..=10)),
            timestamp(),
        )
            .prop_map(|(from, to, body, attachments, timestamp)| {
                let object = json!({"from": from, "to": to, "body": body,
                    "attachments": attachments, "timestamp": timestamp});
                object.as_object().cloned().unwrap_or_default()
            })
    }

    /// The field a validation error names, with any `[index]` suffix removed.
    fn field_of(result: Result<MessageContent, ApiError>) -> Option<String> {
        match result {
            Ok(_) => None,
            Err(ApiError::Validation { field, .. }) => {
                Some(field.split('[').next().unwrap_or_default().to_owned())
            }
            Err(other) => Some(format!("<not a validation error: {other:?}>")),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn any_object_is_parsed_or_refused_naming_a_known_field(
            object in prop::collection::btree_map(
                prop::sample::select(SMS_FIELDS.to_vec()).prop_map(str::to_owned),
                any_json(),
                0..7,
            )
        ) {
            let object: Map<String, Value> = object.into_iter().collect();
            if let Some(field) = field_of(sms_content(&object)) {
                prop_assert!(SMS_FIELDS.contains(&field.as_str()), "{field}");
            }
            if let Some(field) = field_of(email_content(&object)) {
                prop_assert!(EMAIL_FIELDS.contains(&field.as_str()), "{field}");
            }
        }

        #[test]
        fn valid_requests_are_parsed_exactly(sms in valid_sms(), email in valid_email()) {
            let parsed = sms_content(&sms);
            prop_assert!(parsed.is_ok(), "{parsed:?} for {sms:?}");
            let content = parsed.expect("checked");
            prop_assert_eq!(&json!(content.from), &sms["from"]);
            prop_assert_eq!(&json!(content.body), &sms["body"]);
            prop_assert_eq!(&json!(content.attachments), &sms["attachments"]);
            let parsed = email_content(&email);
            prop_assert!(parsed.is_ok(), "{parsed:?} for {email:?}");
        }

        /// One field replaced by anything: parsed, or refused naming that very field (or
        /// `attachments`, which an `mms` needs).
        #[test]
        fn a_bad_field_is_the_field_named(
            sms in valid_sms(),
            email in valid_email(),
            sms_field in prop::sample::select(SMS_FIELDS.to_vec()),
            email_field in prop::sample::select(EMAIL_FIELDS.to_vec()),
            value in any_json(),
        ) {
            let mut sms = sms;
            sms.insert(sms_field.to_owned(), value.clone());
            if let Some(named) = field_of(sms_content(&sms)) {
                let allowed = named == sms_field || (sms_field == "type" && named == "attachments");
                prop_assert!(allowed, "{sms_field} = {value} was refused as {named}");
            }
            let mut email = email;
            email.insert(email_field.to_owned(), value.clone());
            if let Some(named) = field_of(email_content(&email)) {
                prop_assert_eq!(named, email_field, "{} = {}", email_field, value);
            }
        }
    }
}
