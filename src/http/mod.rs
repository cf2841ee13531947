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
                .route("/deliveries", web::get().to(admin::list_deliveries))
                .route("/deliveries/{id}/retry", web::post().to(admin::retry_delivery))
                .route("/deliveries/{id}", web::delete().to(admin::delete_delivery)),
        )
        .default_service(web::to(health::not_found));
}
