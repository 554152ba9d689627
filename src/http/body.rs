//! Reading a request body as the contract wants it: JSON content type (else 415), at most
//! `server.max_body_bytes` (else 413, checked before and while reading), a JSON object
//! (else 400 `invalid_json`); then typed access to fields, each failure naming its field.

use actix_web::{web, HttpMessage as _, HttpRequest};
use futures_util::StreamExt as _;
use messaging_actors::domain::{self, InvalidValue, Timestamp, MAX_ATTACHMENTS};
use serde_json::{Map, Value};

use super::error::ApiError;

/// How long a client may take to send its whole body.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn is_json_content_type(req: &HttpRequest) -> bool {
    matches!(req.mime_type(), Ok(Some(mime))
        if mime.type_() == "application" && mime.subtype() == "json" && mime.suffix().is_none())
}

/// The body as a JSON object, or the contract's error for why not.
pub async fn read_object(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Map<String, Value>, ApiError> {
    if !is_json_content_type(req) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
    let read = async {
        while let Some(chunk) = payload.next().await {
            let chunk =
                chunk.map_err(|_| ApiError::InvalidJson("the body could not be read".into()))?;
            if body.len() + chunk.len() > limit {
                return Err(ApiError::PayloadTooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(())
    };
    // actix-web bounds the wait for a request head, not for its body: a client that
    // stalls mid-body would otherwise hold its handler forever.
    tokio::time::timeout(BODY_TIMEOUT, read)
        .await
        .map_err(|_| {
            ApiError::InvalidJson(format!(
                "the body did not arrive within {} seconds",
                BODY_TIMEOUT.as_secs()
            ))
        })??;
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::InvalidJson(
            "the body must be a JSON object".into(),
        )),
        Err(e) => Err(ApiError::InvalidJson(format!(
            "the body is not valid JSON: {e}"
        ))),
    }
}

fn invalid(field: &str, why: InvalidValue) -> ApiError {
    ApiError::validation(field, why.to_string())
}

/// PostgreSQL cannot store a NUL character in text, and no client means to send one: the
/// same 400 on both backends rather than a 503 on one and a 202 on the other.
fn no_nul<'s>(field: &str, value: &'s str) -> Result<&'s str, ApiError> {
    if value.contains('\0') {
        return Err(ApiError::validation(
            field,
            "must not contain a NUL character",
        ));
    }
    Ok(value)
}

/// Typed, field-named access to a request object.
pub struct Fields<'a>(pub &'a Map<String, Value>);

impl Fields<'_> {
    /// A required string (may be empty).
    pub fn string(&self, field: &str) -> Result<&str, ApiError> {
        match self.0.get(field) {
            Some(Value::String(s)) => no_nul(field, s),
            None | Some(Value::Null) => Err(ApiError::validation(field, "is required")),
            Some(_) => Err(ApiError::validation(field, "must be a string")),
        }
    }

    /// An optional string: missing and `null` are both `None`.
    pub fn optional_string(&self, field: &str) -> Result<Option<&str>, ApiError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => no_nul(field, s).map(Some),
            Some(_) => Err(ApiError::validation(field, "must be a string")),
        }
    }

    pub fn non_empty(&self, field: &str) -> Result<&str, ApiError> {
        let value = self.string(field)?;
        if value.trim().is_empty() {
            return Err(invalid(field, InvalidValue::Empty));
        }
        Ok(value)
    }

    pub fn phone(&self, field: &str) -> Result<String, ApiError> {
        domain::parse_phone_number(self.string(field)?).map_err(|e| invalid(field, e))
    }

    pub fn email(&self, field: &str) -> Result<String, ApiError> {
        domain::parse_email_address(self.string(field)?).map_err(|e| invalid(field, e))
    }

    pub fn timestamp(&self, field: &str) -> Result<Timestamp, ApiError> {
        Timestamp::parse_rfc3339(self.string(field)?).map_err(|e| invalid(field, e))
    }

    /// `attachments`: `null`/missing, or an array of at most ten http(s) URLs.
    pub fn attachments(&self) -> Result<Option<Vec<String>>, ApiError> {
        const FIELD: &str = "attachments";
        let items = match self.0.get(FIELD) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Array(items)) => items,
            Some(_) => {
                return Err(ApiError::validation(
                    FIELD,
                    "must be an array of URLs or null",
                ))
            }
        };
        if items.len() > MAX_ATTACHMENTS {
            return Err(invalid(FIELD, InvalidValue::TooManyAttachments));
        }
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let field = format!("{FIELD}[{i}]");
                match item {
                    Value::String(url) => {
                        domain::parse_attachment_url(url).map_err(|e| invalid(&field, e))
                    }
                    _ => Err(ApiError::validation(&field, "must be a string URL")),
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}
