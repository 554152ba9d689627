//! The benchmark's baseline: a bare actix-web server with the service's request shape and
//! none of its work. It parses the SMS JSON and answers 202 with a body of the same shape,
//! storing and dispatching nothing, so `bench/run` can show what the real service costs
//! on top of HTTP and JSON alone.
//!
//! It doubles as the benchmark's local stand-in for the providers and for a callback
//! receiver, answering as their documentation says and doing nothing else, so that the
//! figures with real provider kinds and callbacks measure the service, not a slow fake:
//! Twilio's `POST /2010-04-01/Accounts/{sid}/Messages.json` gets 201 with a Message
//! resource (a new `sid` each time), SendGrid's `POST /v3/mail/send` gets 202 with its
//! `X-Message-Id` header, and `POST /callbacks` gets 204.
//!
//! `cargo run --release --example baseline -- 127.0.0.1:0` prints the bound address.

use std::sync::atomic::{AtomicI64, Ordering};

use actix_web::{web, App, HttpResponse, HttpServer};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct SmsRequest {
    from: String,
    to: String,
    #[serde(rename = "type")]
    kind: String,
    body: String,
    #[serde(rename = "attachments")]
    _attachments: Option<Vec<String>>,
    #[serde(rename = "timestamp")]
    _timestamp: String,
}

#[derive(Serialize)]
struct Accepted {
    id: i64,
    status: &'static str,
    channel: String,
    provider: &'static str,
    conversation_id: i64,
}

static NEXT_ID: AtomicI64 = AtomicI64::new(1);

async fn send_sms(request: web::Json<SmsRequest>) -> HttpResponse {
    let valid = !request.from.is_empty() && !request.to.is_empty() && !request.body.is_empty();
    if !valid {
        return HttpResponse::BadRequest().finish();
    }
    HttpResponse::Accepted().json(Accepted {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        status: "queued",
        channel: request.into_inner().kind,
        provider: "sms-mms",
        conversation_id: 1,
    })
}

/// Twilio's 201 for a created message: the fields of its Message resource that a client
/// reads (`sid`, `status`), with the form's own `To`, `From` and `Body`.
async fn twilio_message(account: web::Path<String>, form: web::Bytes) -> HttpResponse {
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(&form).unwrap_or_default();
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    };
    let sid = format!("SM{n:032x}");
    HttpResponse::Created().json(serde_json::json!({
        "account_sid": account.as_str(), "api_version": "2010-04-01", "body": field("Body"),
        "direction": "outbound-api", "error_code": null, "error_message": null,
        "from": field("From"), "to": field("To"), "num_segments": "1",
        "sid": sid, "status": "queued",
        "uri": format!("/2010-04-01/Accounts/{}/Messages/{sid}.json", account.as_str()),
    }))
}

/// SendGrid's 202: no body, the message's id in `X-Message-Id`.
async fn sendgrid_send() -> HttpResponse {
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    HttpResponse::Accepted()
        .insert_header(("X-Message-Id", format!("bench{n:012}")))
        .finish()
}

/// A callback receiver that takes everything.
async fn callback_received() -> HttpResponse {
    HttpResponse::NoContent().finish()
}

fn main() -> std::io::Result<()> {
    let bind = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8081".into());
    actix_web::rt::System::new().block_on(async move {
        let server = HttpServer::new(|| {
            App::new()
                .route("/api/messages/sms", web::post().to(send_sms))
                .route(
                    "/2010-04-01/Accounts/{account}/Messages.json",
                    web::post().to(twilio_message),
                )
                .route("/v3/mail/send", web::post().to(sendgrid_send))
                .route("/callbacks", web::post().to(callback_received))
        })
        .bind(&bind)?;
        for addr in server.addrs() {
            println!("{{\"msg\":\"listening\",\"addr\":\"{addr}\"}}");
        }
        server.run().await
    })
}
