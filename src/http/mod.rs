//! The HTTP edge: the route table, two middlewares (Accept negotiation, request metrics),
//! and JSON 404/405 for unknown routes and methods. Handlers live one file per resource
//! and only translate between JSON and the core's messages.

mod body;
mod conversations;
mod error;
mod health;
mod messages;
mod openapi;
mod providers;
mod webhooks;

use std::fmt::Display;
use std::sync::Arc;
use std::time::Instant;

use actix::Addr;
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method};
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, ResponseError};
use messaging_actors::metrics::Metrics;
use messaging_actors::router::RouterActor;
use messaging_actors::store::Store;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use slog::{warn, Logger};

pub use error::ApiError;

/// What every handler shares.
pub struct AppState {
    pub router: Addr<RouterActor>,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub http_metrics: HttpMetrics,
    pub max_body_bytes: usize,
    pub log: Logger,
}

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
    cfg.service(only(
        "/api/messages/sms",
        Method::POST,
        web::post().to(messages::send_sms),
    ))
    .service(only(
        "/api/messages/email",
        Method::POST,
        web::post().to(messages::send_email),
    ))
    .service(only(
        "/api/messages/{id}",
        Method::GET,
        web::get().to(messages::get_message),
    ))
    .service(only(
        "/api/webhooks/sms",
        Method::POST,
        web::post().to(webhooks::receive_sms_webhook),
    ))
    .service(only(
        "/api/webhooks/email",
        Method::POST,
        web::post().to(webhooks::receive_email_webhook),
    ))
    .service(only(
        "/api/conversations",
        Method::GET,
        web::get().to(conversations::list_conversations),
    ))
    .service(only(
        "/api/conversations/{id}/messages",
        Method::GET,
        web::get().to(conversations::list_conversation_messages),
    ))
    .service(only(
        "/api/providers",
        Method::GET,
        web::get().to(providers::list_providers),
    ))
    .service(only(
        "/healthz",
        Method::GET,
        web::get().to(health::healthz),
    ))
    .service(only("/readyz", Method::GET, web::get().to(health::readyz)))
    .service(only(
        "/metrics",
        Method::GET,
        web::get().to(health::metrics),
    ))
    .service(only(
        "/api/openapi.json",
        Method::GET,
        web::get().to(openapi::openapi_json),
    ))
    .default_service(web::to(|req: HttpRequest| async move {
        ApiError::NotFound(format!("route {}", req.path())).error_response()
    }));
}

/// A resource that answers one method and gives a JSON 405 (with `Allow`) for the others.
fn only(path: &str, allow: Method, route: actix_web::Route) -> actix_web::Resource {
    let allow: &'static str = if allow == Method::GET { "GET" } else { "POST" };
    web::resource(path)
        .route(route)
        .default_service(web::to(move |req: HttpRequest| async move {
            ApiError::MethodNotAllowed {
                method: req.method().to_string(),
                allow,
            }
            .error_response()
        }))
}

/// Whether an `Accept` header admits `application/json` (absent means anything goes).
fn accepts_json(accept: Option<&str>) -> bool {
    let Some(accept) = accept else { return true };
    accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let refused = parts.any(|p| {
            p.strip_prefix("q=")
                .and_then(|q| q.parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        !refused && matches!(media.as_str(), "*/*" | "application/*" | "application/json")
    })
}

/// 406 for a client that will not take JSON. `/metrics` speaks Prometheus text instead.
pub async fn require_json_accept(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .map(|v| v.to_str().unwrap_or(""));
    if req.path() != "/metrics" && !accepts_json(accept) {
        let response = ApiError::NotAcceptable.error_response();
        return Ok(req.into_response(response).map_into_right_body());
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
}

/// Counts and times every request by its matched route pattern (never the raw path).
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
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
    Ok(response)
}

/// Ids are positive integers; anything else names nothing, so it is a 404.
fn parse_id(raw: &str, what: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id >= 1)
        .ok_or_else(|| ApiError::NotFound(format!("{what} {raw}")))
}

/// The database (or the actors in front of it) failed: log the cause once, answer 503.
fn store_unavailable(log: &Logger, cause: impl Display) -> ApiError {
    warn!(log, "database unavailable"; "error" => cause.to_string());
    ApiError::NotReady
}

#[cfg(test)]
mod tests {
    use super::accepts_json;

    #[test]
    fn accept_headers_that_admit_json() {
        for accept in [
            None,
            Some("*/*"),
            Some("application/json"),
            Some("application/*"),
            Some("text/html, application/json;q=0.5"),
            Some("Application/JSON; charset=utf-8"),
        ] {
            assert!(accepts_json(accept), "{accept:?}");
        }
    }

    #[test]
    fn accept_headers_that_exclude_json() {
        for accept in [
            Some("text/html"),
            Some("application/xml"),
            Some("application/json;q=0"),
            Some("text/plain, application/json; q=0.0"),
            Some(""),
        ] {
            assert!(!accepts_json(accept), "{accept:?}");
        }
    }
}
