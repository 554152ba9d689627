//! The benchmark's baseline: a bare actix-web server with the service's request shape and
//! none of its work. It parses the SMS JSON and answers 202 with a body of the same shape,
//! storing and dispatching nothing, so `bench/run` can show what the real service costs
//! on top of HTTP and JSON alone.
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

fn main() -> std::io::Result<()> {
    let bind = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8081".into());
    actix_web::rt::System::new().block_on(async move {
        let server =
            HttpServer::new(|| App::new().route("/api/messages/sms", web::post().to(send_sms)))
                .bind(&bind)?;
        for addr in server.addrs() {
            println!("{{\"msg\":\"listening\",\"addr\":\"{addr}\"}}");
        }
        server.run().await
    })
}
