//! `GET /api/conversations` (most recent first) and
//! `GET /api/conversations/{id}/messages` (oldest first), both paged as
//! `{"items": [...], "meta": {"page", "page_size", "total"}}`.

use actix_web::{web, HttpRequest, HttpResponse};
use messaging_actors::store::{Page, PageRequest};
use serde::Serialize;
use serde_json::json;

use super::error::ApiError;
use super::{parse_id, store_unavailable, AppState};

const DEFAULT_PAGE_SIZE: u32 = 50;
const MAX_PAGE_SIZE: u32 = 100;
/// Far beyond any real listing; keeps the offset arithmetic small.
const MAX_PAGE: u32 = 1_000_000;

/// `page` (from 1) and `page_size` (1..=100) from the query string; other keys ignored.
fn page_request(req: &HttpRequest) -> Result<PageRequest, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(req.query_string())
        .map_err(|_| ApiError::validation("query", "is not a valid query string"))?;
    let number = |name: &str, default: u32, max: u32| -> Result<u32, ApiError> {
        match pairs.iter().rev().find(|(k, _)| k == name) {
            None => Ok(default),
            Some((_, raw)) => raw
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| {
                    ApiError::validation(name, format!("must be an integer from 1 to {max}"))
                }),
        }
    };
    Ok(PageRequest {
        page: number("page", 1, MAX_PAGE)?,
        page_size: number("page_size", DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?,
    })
}

fn paged<T: Serialize>(page: Page<T>, request: PageRequest) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "items": page.items,
        "meta": {"page": request.page, "page_size": request.page_size, "total": page.total},
    }))
}

pub async fn list_conversations(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let request = page_request(&req)?;
    let page = state
        .store
        .list_conversations(request)
        .await
        .map_err(|e| store_unavailable(&state.log, e))?;
    Ok(paged(page, request))
}

pub async fn list_conversation_messages(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id, "conversation")?;
    let request = page_request(&req)?;
    let page = state
        .store
        .list_conversation_messages(id, request)
        .await
        .map_err(|e| store_unavailable(&state.log, e))?
        .ok_or_else(|| ApiError::NotFound(format!("conversation {id}")))?;
    Ok(paged(page, request))
}
