//! `GET /api/providers`: each provider's name, kind, channels, seeding, breaker, outcome
//! percentages and pending messages, as its own actor reports them; and
//! `POST /api/providers/{name}/breaker`, the operator's breaker control (CONTRACT 11).

use super::body::read_object;
use super::error::ApiError;
use super::wire::{
    parse, AuthErrors, BodyErrors, BreakerOverrideRequest, ErrorBody, ProviderBody, ProvidersBody,
};
use super::{actor_unavailable, store_unavailable, AppState};
use actix_web::{web, HttpRequest, HttpResponse};
use messaging_actors::router::{ListProviders, OverrideBreaker};

#[utoipa::path(
    get,
    path = "/api/providers",
    security(("bearer" = ["read"])),
    tag = "providers",
    responses(
        AuthErrors,
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

#[utoipa::path(
    post,
    path = "/api/providers/{name}/breaker",
    security(("bearer" = ["admin"])),
    tag = "providers",
    params(("name" = String, Path, description = "The provider")),
    request_body(content = BreakerOverrideRequest, content_type = "application/json"),
    responses(
        AuthErrors,
        (status = 200, description = "Applied here, stored for every instance", body = ProviderBody),
        BodyErrors,
        (status = 404, description = "`not_found`: no such provider", body = ErrorBody),
        (status = 503, description = "`not_ready`", body = ErrorBody),
    )
)]
pub async fn set_breaker(
    state: web::Data<AppState>,
    req: HttpRequest,
    name: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let object = read_object(&req, payload, state.max_body_bytes).await?;
    let name = name.into_inner();
    let known = state
        .router
        .send(ListProviders)
        .await
        .map_err(|e| actor_unavailable(&state.log, e))?
        .iter()
        .any(|p| p.name == name);
    // An unknown provider is 404 whatever the body asks of it (CONTRACT 11); the state
    // asked for is read after.
    if !known {
        return Err(ApiError::NotFound(format!("provider {name}")));
    }
    let request: BreakerOverrideRequest = parse(&object)?;
    let to = request.state.into();
    // Stored first: should this instance die now, the others still learn the setting.
    let stamp = state
        .store
        .set_breaker_override(
            name.clone(),
            messaging_actors::breaker::Override::as_str(to),
        )
        .await
        .map_err(|e| store_unavailable(&state.log, e))?;
    let status = state
        .router
        .send(OverrideBreaker {
            provider: name.clone(),
            to,
            stamp,
        })
        .await
        .map_err(|e| actor_unavailable(&state.log, e))?
        .ok_or_else(|| ApiError::NotFound(format!("provider {name}")))?;
    Ok(HttpResponse::Ok().json(ProviderBody::from(status)))
}
