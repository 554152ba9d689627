//! The HTTP server: actix-server accepting on one socket, actix-http's HTTP/1 service on
//! each connection, the app on top, set up as actix-web's `HttpServer` sets them up. It is
//! assembled here rather than by `HttpServer` for one reason: `HttpServer` hands actix-http
//! the bare TCP stream, and the parser's own error answers need the socket wrapped (see
//! `head_errors`).

use std::net::SocketAddr;
use std::time::Duration;

use actix_http::{HttpService, Protocol};
use actix_server::{Server, ServerBuilder};
use actix_service::{fn_service, map_config, IntoServiceFactory as _, ServiceFactoryExt as _};
use actix_web::body::MessageBody;
use actix_web::dev::{AppConfig, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::rt::net::TcpStream;
use actix_web::App;

use super::connections::ConnectionWatch;
use super::head_errors::JsonHeadErrors;

/// What actix-web's `HttpServer` would set, as the service set it before.
pub struct ServerSettings {
    pub addr: SocketAddr,
    /// A first request head has this long to arrive (then the parser's 408).
    pub request_head_timeout: Duration,
    /// How long a graceful stop lets requests under way finish.
    pub shutdown_timeout_secs: u64,
}

/// `HttpServer`'s listen backlog.
const BACKLOG: i32 = 1024;
/// `HttpServer`'s wait for a client to close after the last answer of a closing connection.
const CLIENT_DISCONNECT: Duration = Duration::from_secs(1);

/// Binds `settings.addr` (as `HttpServer::bind` does: `SO_REUSEADDR`, the same backlog)
/// and answers the bound address with a server that is yet to run.
pub fn bind<F, T, B>(settings: &ServerSettings, app: F) -> std::io::Result<(SocketAddr, Server)>
where
    F: Fn() -> App<T> + Send + Clone + 'static,
    T: ServiceFactory<
            ServiceRequest,
            Config = (),
            Response = ServiceResponse<B>,
            Error = actix_web::Error,
            InitError = (),
        > + 'static,
    B: MessageBody + 'static,
{
    let listener = listener(settings.addr)?;
    let addr = listener.local_addr()?;
    let builder = ServerBuilder::default();
    let stopping = builder.graceful_shutdown_signal();
    let head_timeout = settings.request_head_timeout;
    let server = builder
        .disable_signals()
        .shutdown_timeout(settings.shutdown_timeout_secs)
        .listen("messaging-service", listener, move || {
            let stopping = stopping.clone();
            let http = HttpService::build()
                .graceful_shutdown_signal(move || {
                    let stopping = stopping.clone();
                    async move { stopping.notified().await }
                })
                .client_request_timeout(head_timeout)
                .client_disconnect_timeout(CLIENT_DISCONNECT)
                .h1_allow_half_closed(true)
                .local_addr(addr)
                .on_connect_ext(|io: &JsonHeadErrors, data: &mut _| {
                    ConnectionWatch::on_connect(io.get_ref(), data)
                })
                .finish(map_config(
                    app()
                        .into_factory()
                        .map_err(|e: actix_web::Error| e.error_response()),
                    // `AppConfig::new` is crate-private; this is the same constructor,
                    // marked exempt from semver (Cargo.lock pins the version).
                    move |()| AppConfig::__priv_test_new(false, addr.to_string(), addr),
                ));
            fn_service(|io: TcpStream| async move {
                let peer = io.peer_addr().ok();
                Ok::<_, actix_http::error::DispatchError>((
                    JsonHeadErrors::new(io),
                    Protocol::Http1,
                    peer,
                ))
            })
            .and_then(http)
        })?
        .run();
    Ok((addr, server))
}

fn listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}
