//! Access control (CONTRACT section 9): API keys with scopes and a rate each, checked by a
//! middleware in front of every `/api/*` route, and the Standard Webhooks signature of the
//! inbound webhooks. With no keys configured the API stays open. A refusal is counted in
//! `messaging_auth_failures_total{reason}` and logged once as `request refused`, with the
//! key's name when known and never a secret, hash or signature.

use std::num::NonZeroU32;
use std::sync::Arc;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderMap, AUTHORIZATION};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, ResponseError};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use prometheus::{IntCounterVec, Opts, Registry};
use sha2::{Digest, Sha256};
use slog::{warn, Logger};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::AppState;
use crate::settings::{ApiKeySettings, Scope, Settings};

/// Why a request was refused: the `reason` label.
pub const REASONS: [&str; 5] = ["missing", "unknown_key", "scope", "rate", "signature"];

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Health, readiness, metrics, the OpenAPI document, and the webhooks (which carry
    /// signatures of their own).
    Open,
    Needs(Scope),
    /// No route answers this method and path: a valid key of any scope passes, and the
    /// router answers 404 or 405 (CONTRACT 3.4), since there is no route's scope to lack.
    AnyKey,
}

/// Health, readiness, metrics and the OpenAPI document: no key needed (nor a lookup of
/// the route). The webhooks are open too, but only those that exist: see
/// `required_access`.
fn is_open_path(path: &str) -> bool {
    !path.starts_with("/api/") || path == "/api/openapi.json"
}

/// The scope each route needs, by the pattern the router matched (`None`: no route):
/// reads need `read`, sending needs `send`, the operator controls `admin`. A route not
/// named here needs `admin`, so a new route is closed until someone decides otherwise.
/// A method the matched route does not answer, or a path no route matches, needs a key
/// of any scope, then gets the router's 405 or 404: there is no route's scope to lack.
pub fn required_access(method: &Method, path: &str, pattern: Option<&str>) -> Access {
    if is_open_path(path) {
        return Access::Open;
    }
    let Some(pattern) = pattern else {
        return Access::AnyKey;
    };
    // The provider webhooks (CONTRACT 9), which their own signatures guard; a path under
    // `/api/webhooks/` that no route serves is like any other unserved path.
    if pattern.starts_with("/api/webhooks/") {
        return Access::Open;
    }
    let reading = matches!(*method, Method::GET | Method::HEAD);
    let posting = *method == Method::POST;
    let (scope, answered) = match pattern {
        "/api/messages/sms"
        | "/api/messages/email"
        | "/api/messages/retry"
        | "/api/messages/{id}/retry" => (Scope::Send, posting),
        "/api/messages/{id}"
        | "/api/conversations"
        | "/api/conversations/{id}/messages"
        | "/api/providers" => (Scope::Read, reading),
        "/api/providers/{name}/breaker" => (Scope::Admin, posting),
        _ => (Scope::Admin, true),
    };
    if answered {
        Access::Needs(scope)
    } else {
        Access::AnyKey
    }
}

struct ApiKey {
    name: String,
    sha256: [u8; 32],
    scopes: Vec<Scope>,
    limiter: Option<DefaultDirectRateLimiter>,
}

/// The configured keys, the webhook secret, and the refusal counter.
pub struct Auth {
    keys: Vec<ApiKey>,
    webhook: Option<standardwebhooks::Webhook>,
    /// The same secret's bytes, for bodies the library cannot sign (see `signs_bytes`).
    webhook_key: Vec<u8>,
    pub failures: IntCounterVec,
}

fn sha256(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

fn decode_hex(hex: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = hex
            .get(i * 2..i * 2 + 2)
            .and_then(|pair| u8::from_str_radix(pair, 16).ok())
            .unwrap_or_default();
    }
    out
}

impl Auth {
    /// Settings were validated: hashes are 64 hex digits, rates at least 1, the secret a
    /// Standard Webhooks one.
    pub fn new(settings: &Settings, registry: &Registry) -> Result<Auth, prometheus::Error> {
        let keys = settings
            .auth
            .keys
            .iter()
            .map(|(name, key): (&String, &ApiKeySettings)| ApiKey {
                name: name.clone(),
                sha256: decode_hex(&key.sha256.to_ascii_lowercase()),
                scopes: key.scopes.clone(),
                limiter: key
                    .rate_limit_per_min
                    .and_then(NonZeroU32::new)
                    .map(|rate| RateLimiter::direct(Quota::per_minute(rate))),
            })
            .collect();
        // Decoded once, as `standardwebhooks::Webhook::new` decodes it: the library's
        // check and `signs_bytes` use the same key.
        let webhook_key = settings.webhooks.secret.as_ref().and_then(|secret| {
            use base64::Engine as _;
            let encoded = secret.expose();
            let encoded = encoded.strip_prefix("whsec_").unwrap_or(encoded);
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok()
        });
        let webhook = webhook_key
            .clone()
            .and_then(|key| standardwebhooks::Webhook::from_bytes(key).ok());
        let webhook_key = webhook_key.unwrap_or_default();
        let failures = IntCounterVec::new(
            Opts::new(
                "messaging_auth_failures_total",
                "Requests refused by access control, by reason.",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(failures.clone()))?;
        for reason in REASONS {
            failures.with_label_values(&[reason]);
        }
        Ok(Auth {
            keys,
            webhook,
            webhook_key,
            failures,
        })
    }

    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn webhooks_are_signed(&self) -> bool {
        self.webhook.is_some()
    }

    /// The key the request carries, if it needs one: `Ok(None)` when the route is open.
    /// `pattern` is the route the router matched, `None` for none.
    fn check(
        &self,
        method: &Method,
        path: &str,
        pattern: impl FnOnce() -> Option<String>,
        headers: &HeaderMap,
    ) -> Result<Option<&str>, Refusal> {
        // Neither costs a lookup of the route: no keys, or a path that needs none.
        if self.is_open() || is_open_path(path) {
            return Ok(None);
        }
        let scope = match required_access(method, path, pattern().as_deref()) {
            Access::Open => return Ok(None),
            Access::Needs(scope) => Some(scope),
            Access::AnyKey => None,
        };
        let presented = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|token| !token.is_empty())
            .ok_or(Refusal::missing())?;
        let digest = sha256(presented);
        // Every key is compared, in constant time, whichever matches.
        let mut found = None;
        for key in &self.keys {
            if bool::from(key.sha256.ct_eq(&digest)) {
                found = Some(key);
            }
        }
        let key = found.ok_or(Refusal {
            reason: "unknown_key",
            key: None,
            error: ApiError::Unauthorized,
        })?;
        if scope.is_some_and(|scope| !key.scopes.contains(&scope)) {
            return Err(Refusal {
                reason: "scope",
                key: Some(key.name.clone()),
                error: ApiError::Forbidden,
            });
        }
        if let Some(limiter) = &key.limiter {
            if let Err(not_until) = limiter.check() {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                return Err(Refusal {
                    reason: "rate",
                    key: Some(key.name.clone()),
                    error: ApiError::RateLimited {
                        retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
                    },
                });
            }
        }
        Ok(Some(&key.name))
    }

    /// Checks a Standard Webhooks signature (`webhook-id`, `webhook-timestamp`,
    /// `webhook-signature`, 5 minutes of tolerance) when a secret is configured.
    pub fn verify_webhook(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), ApiError> {
        let Some(webhook) = &self.webhook else {
            return Ok(());
        };
        if !recent_timestamp(headers) {
            return Err(ApiError::InvalidSignature);
        }
        let mut converted = http1::HeaderMap::new();
        for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
            if let Some(value) = headers
                .get(name)
                .and_then(|v| http1::HeaderValue::from_bytes(v.as_bytes()).ok())
            {
                converted.insert(name, value);
            }
        }
        match webhook.verify(body, &converted) {
            Ok(()) => Ok(()),
            Err(standardwebhooks::WebhookError::InvalidPayload)
                if self.signs_bytes(headers, body) =>
            {
                Ok(())
            }
            Err(_) => Err(ApiError::InvalidSignature),
        }
    }

    /// Standard Webhooks signs the bytes `id.timestamp.body`; the library takes only a
    /// body that is UTF-8 text. A correctly signed body that is not is checked here, so
    /// that it is refused for what it is (400 `invalid_json`), not as a bad signature.
    fn signs_bytes(&self, headers: &HeaderMap, body: &[u8]) -> bool {
        use base64::Engine as _;
        use hmac::Mac as _;
        let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
        // The timestamp as the library signs it: the number, not the header's spelling.
        let (Some(id), Some(timestamp), Some(signatures)) = (
            header("webhook-id"),
            header("webhook-timestamp").and_then(|t| t.parse::<i64>().ok()),
            header("webhook-signature"),
        ) else {
            return false;
        };
        let Ok(mut mac) = hmac::Hmac::<Sha256>::new_from_slice(&self.webhook_key) else {
            return false;
        };
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        let expected =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        signatures
            .split(' ')
            .filter_map(|entry| entry.strip_prefix("v1,"))
            .any(|signature| bool::from(signature.as_bytes().ct_eq(expected.as_bytes())))
    }

    /// Counts and logs a refusal that happened elsewhere (a webhook's signature), with the
    /// same fields as the middleware's but the key, which a signed request has none of.
    pub fn refused(&self, log: &Logger, reason: &'static str, req: &HttpRequest) {
        self.failures.with_label_values(&[reason]).inc();
        warn!(log, "request refused";
            "reason" => reason, "method" => path_for_logs(req.method().as_str()).as_ref(),
            "path" => path_for_logs(req.path()).as_ref());
    }
}

/// The most of a refused request's path (or method) a log line keeps. Refusals need no
/// key, and the log queue counts lines, not bytes: a flood of requests with 100 KB paths
/// or methods (actix-http takes any token as a method) would otherwise fill memory with
/// them while stdout drains.
const LOGGED_PATH_BYTES: usize = 256;

/// `path` (or a method), cut to `LOGGED_PATH_BYTES` (on a character boundary) with its
/// length said.
fn path_for_logs(path: &str) -> std::borrow::Cow<'_, str> {
    if path.len() <= LOGGED_PATH_BYTES {
        return path.into();
    }
    let mut end = LOGGED_PATH_BYTES;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &path[..end], path.len()).into()
}

/// Standard Webhooks' tolerance for `webhook-timestamp`, either way.
const WEBHOOK_TOLERANCE_SECS: i128 = 5 * 60;

/// Checked before the library's own check, which subtracts without checking: a timestamp
/// near `i64::MIN` would panic in a debug build and wrap past the tolerance in release.
fn recent_timestamp(headers: &HeaderMap) -> bool {
    let Some(timestamp) = headers
        .get("webhook-timestamp")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
    else {
        return false;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| i128::from(since.as_secs()));
    (now - i128::from(timestamp)).abs() <= WEBHOOK_TOLERANCE_SECS
}

struct Refusal {
    reason: &'static str,
    key: Option<String>,
    error: ApiError,
}

impl Refusal {
    fn missing() -> Refusal {
        Refusal {
            reason: "missing",
            key: None,
            error: ApiError::Unauthorized,
        }
    }
}

/// The middleware: every request passes here before its handler.
pub async fn authenticate(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body);
    };
    let auth: &Arc<Auth> = &state.auth;
    // The path as the router matches it (percent-decoded but for `/`, `+` and `%`): the raw
    // one would let `/%61pi/...` skip the keys and still reach the `/api/` handler.
    let path = req.match_info().as_str();
    let pattern = || req.resource_map().match_pattern(path);
    match auth.check(req.method(), path, pattern, req.headers()) {
        Ok(_) => next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body),
        Err(refusal) => {
            auth.failures.with_label_values(&[refusal.reason]).inc();
            warn!(state.log, "request refused";
                "reason" => refusal.reason, "key" => refusal.key.as_deref().unwrap_or(""),
                "method" => path_for_logs(req.method().as_str()).as_ref(), "path" => path_for_logs(req.path()).as_ref());
            let response = refusal.error.error_response();
            Ok(req.into_response(response).map_into_right_body())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_paths_log_keeps_its_first_256_bytes() {
        assert_eq!(path_for_logs("/api/conversations"), "/api/conversations");
        let long = format!("/api/{}", "é".repeat(200));
        let logged = path_for_logs(&long);
        assert!(logged.ends_with("... (405 bytes)"), "{logged}");
        assert!(logged.len() <= LOGGED_PATH_BYTES + 20, "{logged}");
        assert!(long.starts_with(logged.trim_end_matches("... (405 bytes)")));
    }

    #[test]
    fn routes_need_their_scope_and_new_ones_are_closed() {
        let (get, post) = (Method::GET, Method::POST);
        let access = |method: &Method, path: &str, pattern: Option<&str>| {
            required_access(method, path, pattern)
        };
        for path in ["/healthz", "/metrics", "/api/openapi.json"] {
            assert_eq!(access(&get, path, Some(path)), Access::Open, "{path}");
        }
        let webhook = "/api/webhooks/sms";
        assert_eq!(access(&post, webhook, Some(webhook)), Access::Open);
        assert_eq!(
            access(&post, "/api/webhooks/anything", None),
            Access::AnyKey,
            "only the webhooks that exist are open"
        );
        for (method, path, pattern, scope) in [
            (
                &get,
                "/api/conversations",
                "/api/conversations",
                Scope::Read,
            ),
            (
                &Method::HEAD,
                "/api/messages/1",
                "/api/messages/{id}",
                Scope::Read,
            ),
            (
                &get,
                "/api/conversations/7/messages",
                "/api/conversations/{id}/messages",
                Scope::Read,
            ),
            (&post, "/api/messages/sms", "/api/messages/sms", Scope::Send),
            (
                &post,
                "/api/messages/7/retry",
                "/api/messages/{id}/retry",
                Scope::Send,
            ),
            (
                &post,
                "/api/providers/a/breaker",
                "/api/providers/{name}/breaker",
                Scope::Admin,
            ),
            // A route nobody named here is closed.
            (
                &get,
                "/api/providers/a/secrets",
                "/api/providers/{name}/secrets",
                Scope::Admin,
            ),
        ] {
            assert_eq!(
                access(method, path, Some(pattern)),
                Access::Needs(scope),
                "{path}"
            );
        }
        // A route's other methods (405) and no route at all (404): any key.
        assert_eq!(
            access(
                &Method::DELETE,
                "/api/messages/1",
                Some("/api/messages/{id}")
            ),
            Access::AnyKey
        );
        assert_eq!(
            access(&get, "/api/messages/sms", Some("/api/messages/sms")),
            Access::AnyKey
        );
        assert_eq!(access(&post, "/api/anything-new", None), Access::AnyKey);
    }

    #[test]
    fn hex_hashes_decode_to_their_bytes() {
        let digest = sha256("password");
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
        );
        assert_eq!(decode_hex(&hex), digest);
    }
}
