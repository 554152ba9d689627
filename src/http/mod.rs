//! The HTTP edge: the route table, the middlewares (Accept negotiation; request metrics
//! and the connection watch's marks), and JSON 404/405 for unknown routes and methods.
//! Handlers live one file per resource and only translate between JSON and the core's
//! messages.

mod auth;
mod body;
mod budget;
mod connections;
mod conversations;
mod error;
mod head_errors;
mod health;
mod messages;
mod openapi;
mod provider_webhooks;
mod providers;
mod server;
mod webhooks;
mod wire;

use std::sync::Arc;
use std::time::Instant;

use actix::Addr;
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpRequest, ResponseError};
use messaging_actors::admission::Backlog;
use messaging_actors::metrics::Metrics;
use messaging_actors::router::RouterActor;
use messaging_actors::store::{Store, StoreError};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use slog::{warn, Logger};

pub use auth::{authenticate, Auth};
use connections::ConnectionWatch;
pub use error::ApiError;
pub use provider_webhooks::{sendgrid_public_key, WebhookKeys};
pub use server::{bind, ServerSettings};

/// What every handler shares.
pub struct AppState {
    pub router: Addr<RouterActor>,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub http_metrics: HttpMetrics,
    /// Read into its gauges at each scrape of `/metrics`.
    pub backlog: Arc<Backlog>,
    pub max_body_bytes: usize,
    pub webhook_keys: WebhookKeys,
    pub auth: Arc<Auth>,
    /// `[callbacks] url`: where final statuses go when a request names no callback.
    pub default_callback: Option<String>,
    /// Bytes of large answers in flight.
    pub read_budget: budget::ReadBudget,
    pub log: Logger,
}

/// The twin of the router that runs on this HTTP worker's thread, for accepting
/// messages; `AppState::router` (on an arbiter of its own) does everything else.
pub struct WorkerRouter(pub Addr<RouterActor>);

/// The two HTTP series of CONTRACT section 5, on the service's registry.
pub struct HttpMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl HttpMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new("messaging_http_requests_total", "HTTP requests answered."),
            &["method", "route", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "messaging_http_request_duration_seconds",
                "Time to answer an HTTP request.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["route"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(HttpMetrics { requests, duration })
    }
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(post("/api/messages/sms", messages::send_sms))
        .service(post("/api/messages/email", messages::send_email))
        // Before `/api/messages/{id}`, which would otherwise take the path and answer 405.
        .service(post("/api/messages/retry", messages::retry_failed))
        .service(post("/api/messages/{id}/retry", messages::retry_message))
        .service(get("/api/messages/{id}", messages::get_message))
        .service(post("/api/webhooks/sms", webhooks::receive_sms_webhook))
        .service(post("/api/webhooks/email", webhooks::receive_email_webhook))
        .service(post(
            "/api/webhooks/twilio",
            provider_webhooks::receive_twilio_message,
        ))
        .service(post(
            "/api/webhooks/twilio/status",
            provider_webhooks::receive_twilio_status,
        ))
        .service(post(
            "/api/webhooks/sendgrid/events",
            provider_webhooks::receive_sendgrid_events,
        ))
        .service(get("/api/conversations", conversations::list_conversations))
        .service(get(
            "/api/conversations/{id}/messages",
            conversations::list_conversation_messages,
        ))
        .service(get("/api/providers", providers::list_providers))
        .service(post(
            "/api/providers/{name}/breaker",
            providers::set_breaker,
        ))
        .service(get("/healthz", health::healthz))
        .service(get("/readyz", health::readyz))
        .service(get("/metrics", health::metrics))
        .service(get("/api/openapi.json", openapi::openapi_json))
        .default_service(web::to(|req: HttpRequest| async move {
            ApiError::NotFound(format!("route {}", req.path())).error_response()
        }));
}

/// A resource that answers POST, and a JSON 405 (with `Allow`) for any other method.
fn post<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(web::post().to(handler))
        .default_service(web::to(|req: HttpRequest| method_not_allowed(req, "POST")))
}

/// A resource that answers GET, and HEAD as GET without the body (actix-http drops the
/// body of an answer to HEAD and keeps its length); a JSON 405 for any other method.
fn get<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args> + Clone,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(web::get().to(handler.clone()))
        .route(web::head().to(handler))
        .default_service(web::to(|req: HttpRequest| {
            method_not_allowed(req, "GET, HEAD")
        }))
}

async fn method_not_allowed(req: HttpRequest, allow: &'static str) -> actix_web::HttpResponse {
    ApiError::MethodNotAllowed {
        method: req.method().to_string(),
        allow,
    }
    .error_response()
}

/// Whether the request's `Accept` admits `application/json`, read with actix-web's typed
/// header: the most specific range that matches JSON decides, by its quality, so
/// `*/*;q=0.5, application/json;q=0` refuses it. No header means anything goes; a header
/// that does not parse admits nothing.
fn accepts_json(req: &impl HttpMessage) -> bool {
    use actix_web::http::header::{Accept, Header as _, Quality};
    use actix_web::mime;
    if !req.headers().contains_key(header::ACCEPT) {
        return true;
    }
    let Ok(Accept(ranges)) = Accept::parse(req) else {
        return false;
    };
    let specificity = |range: &mime::Mime| match (range.type_(), range.subtype()) {
        (mime::APPLICATION, mime::JSON) if range.suffix().is_none() => Some(2),
        (mime::APPLICATION, mime::STAR) => Some(1),
        (mime::STAR, mime::STAR) => Some(0),
        _ => None,
    };
    ranges
        .iter()
        .filter_map(|range| specificity(&range.item).map(|s| (s, range.quality)))
        .max_by_key(|(s, _)| *s)
        .is_some_and(|(_, quality)| quality > Quality::ZERO)
}

/// 406 for a client that will not take JSON. `/metrics` speaks Prometheus text instead.
pub async fn require_json_accept(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    // Prometheus text, and Twilio's webhooks (answered in TwiML), speak other types.
    // Matched on the path the router sees, as the keys are (see `auth::authenticate`).
    let path = req.match_info().as_str();
    let other_types = path == "/metrics" || path.starts_with("/api/webhooks/twilio");
    if !other_types && !accepts_json(&req) {
        let response = ApiError::NotAcceptable.error_response();
        return Ok(req.into_response(response).map_into_right_body());
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
}

/// Counts and times every request by its matched route pattern (never the raw path), and
/// marks it under way for its connection's watch until its answer is written.
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody + Unpin>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = match *req.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let under_way = req
        .conn_data::<ConnectionWatch>()
        .map(ConnectionWatch::start);
    let response = next.call(req).await?;
    if let Some(state) = state {
        let route = response.request().match_pattern();
        let route = route.as_deref().unwrap_or("unmatched");
        let status = response.status();
        state
            .http_metrics
            .requests
            .with_label_values(&[method, route, status.as_str()])
            .inc();
        state
            .http_metrics
            .duration
            .with_label_values(&[route])
            .observe(started.elapsed().as_secs_f64());
    }
    Ok(response.map_body(|_, body| connections::WatchedBody::new(body, under_way)))
}

/// Ids are positive integers written in digits; anything else names nothing, so it is a
/// 404 (Rust's parser alone would also take `+1`).
fn parse_id(raw: &str, what: &str) -> Result<i64, ApiError> {
    Some(raw)
        .filter(|raw| raw.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|raw| raw.parse::<i64>().ok())
        .filter(|id| *id >= 1)
        .ok_or_else(|| ApiError::NotFound(format!("{what} {raw}")))
}

/// The database failed: log the cause once, with its kind, and answer 503.
fn store_unavailable(log: &Logger, cause: StoreError) -> ApiError {
    warn!(log, "database unavailable"; "kind" => cause.kind(), "error" => cause.to_string());
    ApiError::NotReady
}

/// The actor that was to do the work is gone (a stop under way): not a database fault.
fn actor_unavailable(log: &Logger, cause: actix::MailboxError) -> ApiError {
    warn!(log, "actor unavailable"; "error" => cause.to_string());
    ApiError::NotReady
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::accepts_json;

    fn accepts(accept: Option<&str>) -> bool {
        let request = match accept {
            Some(value) => TestRequest::default().insert_header(("Accept", value)),
            None => TestRequest::default(),
        };
        accepts_json(&request.to_http_request())
    }

    #[test]
    fn accept_headers_that_admit_json() {
        for accept in [
            None,
            Some("*/*"),
            Some("application/json"),
            Some("application/*"),
            Some("text/html, application/json;q=0.5"),
            Some("Application/JSON; charset=utf-8"),
            Some("*/*;q=0, application/json"),
            Some("application/*;q=0, application/json;q=0.1"),
        ] {
            assert!(accepts(accept), "{accept:?}");
        }
    }

    #[test]
    fn accept_headers_that_exclude_json() {
        for accept in [
            Some("text/html"),
            Some("application/xml"),
            Some("application/json;q=0"),
            Some("text/plain, application/json; q=0.0"),
            Some("*/*;q=0.5, application/json;q=0"),
            Some("application/json;Q=0"),
            Some("application/*;q=0"),
            Some(""),
        ] {
            assert!(!accepts(accept), "{accept:?}");
        }
    }
}
