//! `GET /api/providers`: each provider's name, channels, seeding, breaker, outcome
//! percentages and pending messages, as its own actor reports them.

use actix_web::{web, HttpResponse};
use messaging_actors::router::ListProviders;
use serde_json::json;

use super::error::ApiError;
use super::{store_unavailable, AppState};

pub async fn list_providers(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let statuses = state
        .router
        .send(ListProviders)
        .await
        .map_err(|e| store_unavailable(&state.log, e))?;
    let items: Vec<_> = statuses
        .into_iter()
        .map(|p| {
            json!({
                "name": p.name,
                "channels": p.channels.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
                "seeded": p.seeded,
                "breaker": {
                    "state": p.breaker_state.as_str(),
                    "failure_rate": p.failure_rate,
                    "recorded_calls": p.recorded_calls,
                },
                "outcomes": {
                    "timeout_pct": p.odds.timeout_pct,
                    "error_pct": p.odds.error_pct,
                    "ratelimit_pct": p.odds.ratelimit_pct,
                },
                "pending": p.pending,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}
