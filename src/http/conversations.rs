//! `GET /api/conversations` (most recent first) and
//! `GET /api/conversations/{id}/messages` (oldest first), both paged as
//! `{"items": [...], "meta": {"page", "page_size", "total"}}`.

use actix_web::{web, HttpRequest, HttpResponse};
use messaging_actors::store::PageRequest;

use futures_util::TryFutureExt;

use super::budget::{read_within, BudgetedBody};
use super::error::ApiError;
use super::wire::{AuthErrors, ConversationPage, MessagePage, PageMeta, PageQuery, ReadErrors};
use super::{parse_id, store_unavailable, AppState};

/// Bytes of body and attachments a page's first room counts on per message; a page that
/// holds more reads again with room for what it holds (see budget.rs).
const PAGE_GUESS_PER_MESSAGE: i64 = 1024;

fn page_request(req: &HttpRequest) -> Result<PageRequest, ApiError> {
    PageQuery::from_query(req.query_string()).map(Into::into)
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
    security(("bearer" = ["read"])),
    tag = "conversations",
    params(
        PageQuery,
    ),
    responses(
        AuthErrors,
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
        items: page.items,
    }))
}

#[utoipa::path(
    get,
    path = "/api/conversations/{id}/messages",
    security(("bearer" = ["read"])),
    tag = "conversations",
    params(
        ("id" = i64, Path, description = "The conversation id"),
        PageQuery,
    ),
    responses(
        AuthErrors,
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
    let guess = i64::from(request.page_size) * PAGE_GUESS_PER_MESSAGE;
    let (page, room) = read_within(&state.read_budget, guess, |fits, room| {
        state
            .store
            .list_conversation_messages(id, request, fits, room)
            .map_err(|e| store_unavailable(&state.log, e))
    })
    .await?
    .ok_or_else(|| ApiError::NotFound(format!("conversation {id}")))?;
    let body = serde_json::to_vec(&MessagePage {
        meta: meta(request, page.total),
        items: page.items,
    })
    .map_err(|_| ApiError::NotReady)?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(BudgetedBody::new(body, room)))
}
