//! The HTTP interface: webhook intake, health, metrics.

mod error;
mod health;
mod webhook;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix_web::web;

pub use error::ApiError;

use crate::config::Config;
use crate::delivery::Dispatcher;
use crate::metrics::Metrics;

/// What every handler shares.
pub struct Shared {
    pub config: Arc<Config>,
    pub dispatcher: Arc<Dispatcher>,
    pub metrics: Arc<Metrics>,
    pub shutting_down: AtomicBool,
}

impl Shared {
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/webhook", web::post().to(webhook::receive))
        .route("/metrics", web::get().to(health::metrics))
        .route("/-/healthy", web::get().to(health::healthy))
        .route("/-/ready", web::get().to(health::ready))
        .default_service(web::to(health::not_found));
}
