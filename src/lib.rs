//! alert-relay: a durable Alertmanager webhook relay.
//!
//! `Relay::start` builds the whole service from a `Config`; `main` and the
//! integration tests both use it.

#![forbid(unsafe_code)]

pub mod alert;
pub mod conditions;
pub mod config;
pub mod delivery;
pub mod http;
pub mod metrics;
pub mod route;
pub mod spool;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::dev::ServerHandle;
use actix_web::{web, HttpServer};

use crate::config::Config;
use crate::delivery::Dispatcher;
use crate::http::Shared;
use crate::metrics::Metrics;
use crate::spool::Spool;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
    #[error("{0}")]
    Dispatcher(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

/// A running relay: HTTP server, dispatcher and spool.
pub struct Relay {
    addr: SocketAddr,
    shared: web::Data<Shared>,
    handle: ServerHandle,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Relay {
    /// Opens the spool, resumes its deliveries and starts serving. Call inside a
    /// multi-threaded Tokio runtime; the workers run on it.
    pub async fn start(config: Config) -> Result<Relay, StartError> {
        let metrics = Arc::new(Metrics::new());
        metrics.reload_successful.set(1);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        metrics.reload_timestamp.set(now.as_secs_f64());
        let spool = Arc::new(Spool::open(
            &config.spool.dir,
            metrics.spool_commit_duration.clone(),
        )?);
        let dispatcher = Dispatcher::start(spool, metrics.clone(), config.receivers.clone())
            .await
            .map_err(StartError::Dispatcher)?;
        let listen = config.server.listen.clone();
        let listen_error = |source| StartError::Listen {
            addr: listen.clone(),
            source,
        };
        let listener = std::net::TcpListener::bind(&config.server.listen).map_err(listen_error)?;
        let addr = listener.local_addr().map_err(listen_error)?;
        let receivers = config.receivers.len();
        let spool_dir = config.spool.dir.display().to_string();
        let shared = web::Data::new(Shared {
            config: Arc::new(config),
            dispatcher,
            metrics,
            shutting_down: AtomicBool::new(false),
        });
        let data = shared.clone();
        let server = HttpServer::new(move || {
            actix_web::App::new()
                .app_data(data.clone())
                .configure(http::routes)
        })
        .disable_signals()
        .shutdown_timeout(5)
        .listen(listener)
        .map_err(listen_error)?
        .run();
        let handle = server.handle();
        let server = tokio::spawn(server);
        log::info!(
            "alert-relay {} listening on {addr}, spool in {spool_dir}, {receivers} receivers",
            env!("CARGO_PKG_VERSION")
        );
        Ok(Relay {
            addr,
            shared,
            handle,
            server,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Graceful stop: `/webhook` answers 503 from now on, attempts in flight get
    /// until the longest receiver timeout to finish, the rest stays in the spool.
    pub async fn shutdown(self) {
        self.shared.shutting_down.store(true, Ordering::Relaxed);
        let grace = self
            .shared
            .config
            .receivers
            .iter()
            .map(|r| r.timeout)
            .max()
            .unwrap_or_default()
            + Duration::from_secs(1);
        self.shared.dispatcher.shutdown(grace).await;
        self.handle.stop(true).await;
        if let Ok(Err(e)) = self.server.await {
            log::error!("HTTP server: {e}");
        }
        log::info!(
            "stopped; {} deliveries left pending in the spool",
            self.shared.dispatcher.pending()
        );
    }
}
