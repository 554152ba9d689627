//! `ApiError`: every error the API answers with (CONTRACT 3.4), written as
//! `{"error": {"code", "message", "field"?}}` with the contract's status. Causes are
//! logged where they happen; only the contract's sentence reaches the client.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};

use super::wire::{ErrorBody, ErrorDetail};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidJson(String),
    #[error("{field} {message}")]
    Validation { field: String, message: String },
    #[error("{0} was not found")]
    NotFound(String),
    #[error("{method} is not allowed here; use {allow}")]
    MethodNotAllowed { method: String, allow: &'static str },
    #[error("this API only answers with application/json")]
    NotAcceptable,
    #[error("the body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("send the body as application/json")]
    UnsupportedMediaType,
    #[error("the body did not arrive within {seconds} seconds")]
    RequestTimeout { seconds: u64 },
    #[error("the Idempotency-Key was already used with a different request")]
    IdempotencyConflict,
    #[error("no provider is configured for channel {channel}")]
    NoProvider { channel: String },
    #[error("too many messages are waiting to be dispatched; retry later")]
    Overloaded { retry_after_secs: u64 },
    #[error("the database is not available; retry later")]
    NotReady,
    #[error("too many large pages are being read; retry later")]
    ReadsBusy,
    #[error("the webhook's signature is missing, wrong or stale")]
    InvalidSignature,
    #[error("send a valid API key as Authorization: Bearer KEY")]
    Unauthorized,
    #[error("this API key may not use this route")]
    Forbidden,
    #[error("this API key is over its rate; retry later")]
    RateLimited { retry_after_secs: u64 },
    #[error("only a failed outbound message can be retried; this one is {status}")]
    NotRetryable { status: String },
}

impl From<super::budget::Busy> for ApiError {
    fn from(_: super::budget::Busy) -> Self {
        ApiError::ReadsBusy
    }
}

impl ApiError {
    pub fn validation(field: &str, message: impl Into<String>) -> Self {
        ApiError::Validation {
            field: field.to_owned(),
            message: message.into(),
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidJson(_) => "invalid_json",
            ApiError::Validation { .. } => "validation_failed",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::NotAcceptable => "not_acceptable",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::RequestTimeout { .. } => "request_timeout",
            ApiError::IdempotencyConflict => "idempotency_conflict",
            ApiError::NoProvider { .. } => "no_provider",
            ApiError::Overloaded { .. } | ApiError::ReadsBusy => "overloaded",
            ApiError::NotReady => "not_ready",
            ApiError::InvalidSignature => "invalid_signature",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden => "forbidden",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::NotRetryable { .. } => "not_retryable",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::InvalidJson(_) | ApiError::Validation { .. } => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NotAcceptable => StatusCode::NOT_ACCEPTABLE,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::IdempotencyConflict => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NoProvider { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Overloaded { .. } | ApiError::NotReady | ApiError::ReadsBusy => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::InvalidSignature | ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::NotRetryable { .. } => StatusCode::CONFLICT,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let field = match self {
            ApiError::Validation { field, .. } => Some(field.clone()),
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.to_string(),
                field,
            },
        };
        let mut response = HttpResponse::build(self.status_code());
        match self {
            ApiError::MethodNotAllowed { allow, .. } => {
                response.insert_header((header::ALLOW, *allow));
            }
            ApiError::Overloaded { retry_after_secs } => {
                response.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
            }
            ApiError::NotReady | ApiError::ReadsBusy => {
                response.insert_header((header::RETRY_AFTER, "1"));
            }
            ApiError::Unauthorized => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            ApiError::RateLimited { retry_after_secs } => {
                response.insert_header((header::RETRY_AFTER, retry_after_secs.max(&1).to_string()));
            }
            _ => {}
        }
        response.json(body)
    }
}
