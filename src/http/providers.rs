//! `GET /api/providers`: each provider's name, channels, seeding, breaker, outcome
//! percentages and pending messages, as its own actor reports them.

use super::error::ApiError;
use super::wire::{ErrorBody, ProvidersBody};
use super::{actor_unavailable, AppState};
use actix_web::{web, HttpResponse};
use messaging_actors::router::ListProviders;

#[utoipa::path(
    get,
    path = "/api/providers",
    tag = "providers",
    responses(
        (status = 200, description = "Every provider, by name", body = ProvidersBody),
        (status = 406, description = "`not_acceptable`", body = ErrorBody),
        (status = 503, description = "`not_ready`", body = ErrorBody),
    )
)]
pub async fn list_providers(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let statuses = state
        .router
        .send(ListProviders)
        .await
        .map_err(|e| actor_unavailable(&state.log, e))?;
    Ok(HttpResponse::Ok().json(ProvidersBody {
        items: statuses.into_iter().map(Into::into).collect(),
    }))
}
