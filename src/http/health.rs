//! Liveness (`/healthz`), readiness (`/readyz`: the database takes a write and the actors run)
//! and the Prometheus scrape endpoint (`/metrics`).

use std::time::Duration;

use actix_web::{web, HttpResponse};

use super::error::ApiError;
use super::wire::{ErrorBody, StatusBody};
use super::AppState;

/// A readiness probe that waits longer than this is itself a "not ready" (a little longer
/// than the database's own lock wait, so a lock shows as the database's answer).
const READY_TIMEOUT: Duration = Duration::from_secs(3);

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "meta",
    responses(
        (status = 200, description = "The process runs", body = StatusBody),
        (status = 406, description = "`not_acceptable`", body = ErrorBody),
    )
)]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(StatusBody { status: "ok" })
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "meta",
    responses(
        (status = 200, description = "The database takes writes and the actors run",
            body = StatusBody),
        (status = 406, description = "`not_acceptable`", body = ErrorBody),
        (status = 503, description = "`not_ready`", body = ErrorBody),
    )
)]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let store = state.store.probe();
    let router = state.router.send(messaging_actors::router::Ping);
    match tokio::time::timeout(READY_TIMEOUT, async { (store.await, router.await) }).await {
        Ok((Ok(()), Ok(()))) => Ok(HttpResponse::Ok().json(StatusBody { status: "ready" })),
        _ => Err(ApiError::NotReady),
    }
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "meta",
    responses((status = 200, description = "Prometheus text exposition format",
        content_type = "text/plain", body = String))
)]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    state.metrics.observe_backlog(&state.backlog);
    match state.metrics.encode() {
        Ok(text) => HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4; charset=utf-8")
            .body(text),
        Err(e) => {
            slog::error!(state.log, "metrics encoding failed"; "error" => e.to_string());
            HttpResponse::InternalServerError().finish()
        }
    }
}
