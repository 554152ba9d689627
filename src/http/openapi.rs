//! The OpenAPI 3 document of the API, served at `GET /api/openapi.json`. It only lists:
//! every path comes from the `#[utoipa::path]` beside its handler and every body from the
//! wire types the handlers (de)serialise (`wire.rs`), so the document follows the code; CI
//! runs schemathesis against the live server to hold the two together.

use std::sync::OnceLock;

use actix_web::HttpResponse;
use utoipa::{Modify, OpenApi};

use super::{conversations, health, messages, provider_webhooks, providers, webhooks};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "messaging-service",
        description = "Routes outbound SMS, MMS and email to the provider dedicated to each \
                       channel; receives inbound messages through provider webhooks."
    ),
    paths(
        messages::send_sms,
        messages::send_email,
        messages::get_message,
        messages::retry_message,
        messages::retry_failed,
        webhooks::receive_sms_webhook,
        webhooks::receive_email_webhook,
        provider_webhooks::receive_twilio_message,
        provider_webhooks::receive_twilio_status,
        provider_webhooks::receive_sendgrid_events,
        conversations::list_conversations,
        conversations::list_conversation_messages,
        providers::list_providers,
        providers::set_breaker,
        health::healthz,
        health::readyz,
        health::metrics,
        openapi_json,
    ),
    modifiers(&BearerKeys)
)]
pub struct ApiDoc;

/// Declares the API keys (CONTRACT section 9): `Authorization: Bearer KEY`. Each
/// operation names the scope it needs; with no keys configured the API is open.
struct BearerKeys;

impl Modify for BearerKeys {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key from `messaging-service keygen`; its scopes (send, read, \
                         admin) are listed on each operation.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document, built once.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "meta",
    responses((status = 200, description = "This OpenAPI 3 document", content_type = "application/json"))
)]
pub async fn openapi_json() -> HttpResponse {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    let text = DOCUMENT.get_or_init(|| ApiDoc::openapi().to_json().unwrap_or_default());
    HttpResponse::Ok()
        .content_type("application/json")
        .body(text.as_str())
}
