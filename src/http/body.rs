//! Reading a request body as the contract wants it: JSON content type (else 415), at
//! most `server.max_body_bytes` (else 413, checked before and while reading), within
//! 10 s (else 408 `request_timeout`), a JSON object (else 400 `invalid_json`) with no NUL
//! in any name or text (else 400 `validation_failed`); a POST that needs no body is held
//! to the same when it carries one.
//! `wire.rs` turns the object into a typed request. Twilio's webhooks read a form the
//! same way.

use actix_web::{web, HttpRequest};
use futures_util::StreamExt as _;
use serde_json::{Map, Value};

use super::error::ApiError;

/// How long a client may take to send its whole body.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The media type a request's `Content-Type` names, without its parameters, lowercased.
/// RFC 9110 (8.3.1) allows whitespace and empty parameters around each `;`
/// (`application/json ; charset=utf-8`, `application/json;;`), which the `mime` parser
/// behind `HttpRequest::mime_type` refuses; the parameters change nothing here (JSON is
/// UTF-8, a form is what Twilio sends).
fn media_type(req: &HttpRequest) -> Option<String> {
    let value = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)?
        .to_str()
        .ok()?;
    let essence = value.split(';').next()?.trim_matches([' ', '\t']);
    Some(essence.to_ascii_lowercase())
}

fn is_json_content_type(req: &HttpRequest) -> bool {
    media_type(req).is_some_and(|media| media == "application/json")
}

fn is_form_content_type(req: &HttpRequest) -> bool {
    media_type(req).is_some_and(|media| media == "application/x-www-form-urlencoded")
}

/// The body of a POST that needs none (a one-message retry): no body at all is fine, and
/// its route's OpenAPI description declares none (so a client following it sends no
/// Content-Type). A body it does carry is checked as any other (CONTRACT 3: JSON, else
/// 415; at most `limit`, else 413; an object, else 400), then not used.
pub async fn read_optional_object(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<Option<Map<String, Value>>, ApiError> {
    let headers = req.headers();
    let has_body = headers.contains_key(actix_web::http::header::TRANSFER_ENCODING)
        || headers
            .get(actix_web::http::header::CONTENT_LENGTH)
            .is_some_and(|len| len.as_bytes() != b"0");
    if !has_body {
        return Ok(None);
    }
    let body = read_json_body(req, payload, limit).await?;
    if body.is_empty() {
        return Ok(None);
    }
    parse_object(&body).map(Some)
}

/// The body as a JSON object, or the contract's error for why not.
pub async fn read_object(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<Map<String, Value>, ApiError> {
    let body = read_json_body(req, payload, limit).await?;
    parse_object(&body)
}

/// The raw bytes of a JSON body (for a signature over them), checked as `read_object`
/// checks them, before they are parsed.
pub async fn read_json_body(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<web::BytesMut, ApiError> {
    if !is_json_content_type(req) {
        return Err(ApiError::UnsupportedMediaType);
    }
    read_limited(req, payload, limit).await
}

/// The raw bytes of a form body (Twilio's webhooks sign the parsed form), under the same
/// bounds as a JSON one.
pub async fn read_form_body(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<web::BytesMut, ApiError> {
    if !is_form_content_type(req) {
        return Err(ApiError::UnsupportedMediaType);
    }
    read_limited(req, payload, limit).await
}

/// At most `limit` bytes (413 beyond, by the declared length or while reading), within
/// `BODY_TIMEOUT`.
async fn read_limited(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::BytesMut, ApiError> {
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
        .map_err(|_| ApiError::RequestTimeout {
            seconds: BODY_TIMEOUT.as_secs(),
        })??;
    Ok(body)
}

/// A JSON object, or `invalid_json`; `validation_failed` for a NUL anywhere in it.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        // CONTRACT 12: a NUL character in any field is refused, in a field the request
        // does not read as in one it does (named as the typed parse names a field). JSON
        // can hold one only as the escape `\u0000` (a raw control character is invalid),
        // so a body without that escape is not walked: nothing is built per request.
        Ok(Value::Object(map)) => match body
            .windows(6)
            .any(|w| w == b"\\u0000")
            .then(|| nul_in(&map, ""))
            .flatten()
        {
            Some(field) => Err(ApiError::validation(
                &field,
                "must not contain a NUL character",
            )),
            None => Ok(map),
        },
        Ok(_) => Err(ApiError::InvalidJson(
            "the body must be a JSON object".into(),
        )),
        Err(e) => Err(ApiError::InvalidJson(format!(
            "the body is not valid JSON: {e}"
        ))),
    }
}

/// The path of the first name or text in `object` that holds a NUL character.
fn nul_in(object: &Map<String, Value>, path: &str) -> Option<String> {
    object.iter().find_map(|(name, value)| {
        let path = if path.is_empty() {
            name.clone()
        } else {
            format!("{path}.{name}")
        };
        if name.contains('\0') {
            return Some(path);
        }
        nul_in_value(value, path)
    })
}

fn nul_in_value(value: &Value, path: String) -> Option<String> {
    match value {
        Value::String(text) => text.contains('\0').then_some(path),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| nul_in_value(item, format!("{path}[{i}]"))),
        Value::Object(object) => nul_in(object, &path),
        _ => None,
    }
}
