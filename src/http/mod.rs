//! The HTTP interface: webhook intake, admin API, web console, health, metrics.

mod admin;
mod console;
mod error;
mod health;
mod webhook;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix_web::web;

pub use error::ApiError;

use crate::control::Control;
use crate::metrics::Metrics;

/// What every handler shares.
pub struct Shared {
    pub control: Arc<Control>,
    pub metrics: Arc<Metrics>,
    pub shutting_down: AtomicBool,
}

impl Shared {
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }
}

/// Largest admin API request body.
const ADMIN_BODY_BYTES: usize = 1024 * 1024;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::PayloadConfig::new(ADMIN_BODY_BYTES))
        .route("/", web::get().to(console::index))
        .route("/console/app.js", web::get().to(console::app))
        .route("/console/style.css", web::get().to(console::style))
        .route("/webhook", web::post().to(webhook::receive))
        .route("/metrics", web::get().to(health::metrics))
        .route("/-/healthy", web::get().to(health::healthy))
        .route("/-/ready", web::get().to(health::ready))
        .route("/-/reload", web::post().to(admin::reload))
        .service(
            web::scope("/api/v1")
                .route("/receivers", web::get().to(admin::list_receivers))
                .route("/receivers/{name}", web::get().to(admin::get_receiver))
                .route("/receivers/{name}", web::put().to(admin::put_receiver))
                .route("/receivers/{name}", web::delete().to(admin::delete_receiver))
                .route("/receivers/{name}/enable", web::post().to(admin::enable))
                .route("/receivers/{name}/disable", web::post().to(admin::disable))
                .route("/receivers/{name}/test", web::post().to(admin::test_saved))
                .route("/test", web::post().to(admin::test_unsaved))
                .route("/explain", web::post().to(admin::explain))
                .route("/formats", web::get().to(admin::list_formats))
                .route("/formats/{name}", web::get().to(admin::get_format))
                .route("/preview", web::post().to(admin::preview))
                .route("/deliveries", web::get().to(admin::list_deliveries))
                .route("/deliveries/{id}/retry", web::post().to(admin::retry_delivery))
                .route("/deliveries/{id}", web::delete().to(admin::delete_delivery)),
        )
        .default_service(web::to(health::not_found));
}

/// Set on each connection of a TLS listener: whether the client presented a
/// certificate (verified by the handshake: an invalid one never gets here).
#[derive(Debug, Clone, Copy)]
pub struct ClientCert(pub bool);

/// Marks a new connection with `ClientCert`.
pub fn on_connect(conn: &dyn std::any::Any, data: &mut actix_web::dev::Extensions) {
    type Tls = actix_tls::accept::rustls_0_23::TlsStream<actix_web::rt::net::TcpStream>;
    if let Some(stream) = conn.downcast_ref::<Tls>() {
        data.insert(ClientCert(stream.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty())));
    }
}

/// With `server.tls.client_ca_file` and exempt paths, the handshake lets
/// clients without a certificate in; every other path refuses them here (403).
pub async fn client_cert_gate(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
    files: Arc<crate::config::ListenerFiles>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    let presented = req.conn_data::<ClientCert>().is_some_and(|c| c.0);
    if !presented && files.needs_client_cert(req.path()) {
        let refused = ApiError::new(
            actix_web::http::StatusCode::FORBIDDEN,
            format!("{} needs a client certificate (server.tls.client_ca_file)", req.path()),
        );
        return Err(refused.into());
    }
    next.call(req).await
}

/// Gives every request body `timeout` from the moment its head is in: a client
/// that sends headers and then stalls is answered (408) and its connection
/// freed, instead of holding a slot for ever.
pub async fn body_deadline(
    mut req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
    timeout: std::time::Duration,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    use actix_web::HttpMessage;
    // A request that announces no body (GET /metrics, health, console) needs
    // no timer: its head was bounded by request_head_timeout.
    use actix_web::http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
    let headers = req.headers();
    let length = headers.get(CONTENT_LENGTH).map(|v| v.to_str().ok().and_then(|t| t.trim().parse::<u64>().ok()));
    // No Content-Length and no Transfer-Encoding, or a length of 0: no body.
    let announces_body = headers.contains_key(TRANSFER_ENCODING) || !matches!(length, None | Some(Some(0)));
    if !announces_body {
        return next.call(req).await;
    }
    let inner = req.take_payload();
    let timed = BodyDeadline { inner, sleep: Box::pin(tokio::time::sleep(timeout)), timeout, expired: false };
    type Boxed =
        std::pin::Pin<Box<dyn futures_core::Stream<Item = Result<web::Bytes, actix_web::error::PayloadError>>>>;
    let boxed: Boxed = Box::pin(timed);
    req.set_payload(actix_web::dev::Payload::from(boxed));
    next.call(req).await
}

struct BodyDeadline {
    inner: actix_web::dev::Payload,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    timeout: std::time::Duration,
    expired: bool,
}

/// The error a body past its deadline ends with.
pub fn is_body_timeout(e: &actix_web::Error) -> bool {
    matches!(
        e.as_error::<actix_web::error::PayloadError>(),
        Some(actix_web::error::PayloadError::Io(io)) if io.kind() == std::io::ErrorKind::TimedOut
    )
}

impl futures_core::Stream for BodyDeadline {
    type Item = Result<web::Bytes, actix_web::error::PayloadError>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::future::Future;
        use std::task::Poll;
        let this = self.get_mut();
        if this.expired {
            return Poll::Ready(None);
        }
        if let Poll::Ready(item) = std::pin::Pin::new(&mut this.inner).poll_next(cx) {
            return Poll::Ready(item);
        }
        if this.sleep.as_mut().poll(cx).is_ready() {
            this.expired = true;
            let message = format!("request body not received within {:?}", this.timeout);
            let timed_out = std::io::Error::new(std::io::ErrorKind::TimedOut, message);
            return Poll::Ready(Some(Err(actix_web::error::PayloadError::Io(timed_out))));
        }
        Poll::Pending
    }
}
