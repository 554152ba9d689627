//! `GET /api/conversations` (most recent first) and
//! `GET /api/conversations/{id}/messages` (oldest first), both paged as
//! `{"items": [...], "meta": {"page", "page_size", "total"}}`.

use actix_web::{web, HttpRequest, HttpResponse};
use messaging_actors::store::PageRequest;

use super::error::ApiError;
use super::openapi::{ConversationPage, MessagePage, PageMeta, ReadErrors};
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

fn meta(request: PageRequest, total: i64) -> PageMeta {
    PageMeta {
        page: request.page,
        page_size: request.page_size,
        total,
    }
}

#[utoipa::path(
    get,
    path = "/api/conversations",
    tag = "conversations",
    params(
        ("page" = Option<u32>, Query, description = "From 1; default 1", minimum = 1),
        ("page_size" = Option<u32>, Query, description = "1 to 100; default 50",
            minimum = 1, maximum = 100),
    ),
    responses(
        (status = 200, description = "Conversations, most recent first", body = ConversationPage),
        ReadErrors,
    )
)]
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
    Ok(HttpResponse::Ok().json(ConversationPage {
        meta: meta(request, page.total),
        items: page.items.into_iter().map(Into::into).collect(),
    }))
}

#[utoipa::path(
    get,
    path = "/api/conversations/{id}/messages",
    tag = "conversations",
    params(
        ("id" = i64, Path, description = "The conversation id"),
        ("page" = Option<u32>, Query, description = "From 1; default 1", minimum = 1),
        ("page_size" = Option<u32>, Query, description = "1 to 100; default 50",
            minimum = 1, maximum = 100),
    ),
    responses(
        (status = 200, description = "The conversation's messages, oldest first",
            body = MessagePage),
        ReadErrors,
    )
)]
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
    Ok(HttpResponse::Ok().json(MessagePage {
        meta: meta(request, page.total),
        items: page.items.into_iter().map(Into::into).collect(),
    }))
}
