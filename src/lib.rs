//! alert-relay: a durable Alertmanager webhook relay.
//!
//! `Relay::start_with` builds the whole service from a `Config`; `main` and the
//! integration tests both use it. The parts, and the one direction their
//! dependencies point, are in README.md ("Architecture").

#![forbid(unsafe_code)]

pub mod alert;
pub mod clock;
pub mod conditions;
pub mod config;
pub mod control;
pub mod delivery;
pub mod diagnose;
pub mod format;
pub mod http;
pub mod intake;
pub mod metrics;
pub mod notify_log;
pub mod reasons;
pub mod retry;
pub mod route;
pub mod spool;
pub mod sync;
pub mod tls;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{web, HttpServer};

use crate::config::{Config, ConfigErrors, Source};
use crate::control::Control;
use crate::http::Shared;
use crate::metrics::Metrics;
use crate::spool::{Spool, SpoolGauges};

/// What the command line can change about a start.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Start with an empty queue when the spool that existed is missing, empty
    /// or unreadable (the broken file is kept aside).
    pub reset_spool: bool,
}

/// The longest a stop waits for attempts in flight: under Kubernetes' default
/// 30 s termination grace period. An attempt cut short is sent again after the
/// restart, with the same Idempotency-Key.
const MAX_SHUTDOWN_GRACE: Duration = Duration::from_secs(25);
/// How often the config file is checked for changes.
const FILE_CHECK_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Spool(#[from] spool::OpenError),
    #[error(transparent)]
    Dispatch(#[from] delivery::DispatchError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("server.tls: {0}")]
    Tls(#[from] tls::TlsError),
}

/// A running relay: HTTP server, dispatcher and spool.
pub struct Relay {
    addr: SocketAddr,
    shared: web::Data<Shared>,
    handle: ServerHandle,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Relay {
    /// Opens the spool, resumes its deliveries and starts serving, with the
    /// source that reloads read. Call inside a multi-threaded Tokio runtime;
    /// the workers run on it.
    pub async fn start_from(source: Source, config: Config) -> Result<Relay, StartError> {
        Relay::start_with(source, config, Options::default()).await
    }

    /// As `start_from`, with the command line's options.
    pub async fn start_with(source: Source, config: Config, options: Options) -> Result<Relay, StartError> {
        let metrics = Arc::new(Metrics::new());
        let gauges = SpoolGauges {
            commit_duration: metrics.spool_commit_duration.clone(),
            commit_requests: metrics.spool_commit_requests.clone(),
            deferred_commits: metrics.spool_deferred_commits.clone(),
            healthy: metrics.spool_healthy.clone(),
        };
        let spool = Arc::new(Spool::open(&config.spool.dir, options.reset_spool, gauges)?);
        let listen = config.server.listen.clone();
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        let per_worker = config.server.max_connections.div_ceil(workers).max(1);
        let (head_timeout, body_timeout) = (config.server.request_head_timeout, config.server.request_body_timeout);
        let idle_timeout = config.server.idle_timeout;
        let spool_dir = config.spool.dir.display().to_string();
        let listen_error = |source| StartError::Listen { addr: listen.clone(), source };
        let listener = std::net::TcpListener::bind(&listen).map_err(listen_error)?;
        let addr = listener.local_addr().map_err(listen_error)?;
        let tls = config.server.tls.clone().map(tls::server::ListenerTls::load).transpose()?;
        let rustls_config = tls.as_ref().map(|t| t.server_config()).transpose()?;
        let gate = tls.as_ref().map(|t| Arc::new(t.files().clone()));
        let control = Control::start(source, config, spool, metrics.clone()).await?;
        Control::watch_file(&control, FILE_CHECK_INTERVAL);
        let receivers = control.receiver_count();
        let reload_metrics = metrics.clone();
        let shared = web::Data::new(Shared { control, metrics, shutting_down: AtomicBool::new(false) });
        let data = shared.clone();
        let server = HttpServer::new(move || {
            let gate = gate.clone();
            actix_web::App::new()
                .app_data(data.clone())
                .wrap(actix_web::middleware::Condition::new(
                    gate.as_ref().is_some_and(|g| !g.exempt_paths.is_empty()),
                    actix_web::middleware::from_fn(move |req, next| {
                        let files = gate.clone().expect("the gate is on only with server.tls");
                        http::client_cert_gate(req, next, files)
                    }),
                ))
                .wrap(actix_web::middleware::from_fn(move |req, next| http::body_deadline(req, next, body_timeout)))
                .configure(http::routes)
        })
        .workers(workers)
        .max_connections(per_worker)
        .client_request_timeout(head_timeout)
        .keep_alive(idle_timeout)
        .on_connect(http::on_connect)
        .disable_signals()
        .shutdown_timeout(5);
        let server = match rustls_config {
            Some(rustls_config) => server.listen_rustls_0_23(listener, rustls_config),
            None => server.listen(listener),
        }
        .map_err(listen_error)?
        .run();
        if let Some(tls) = tls {
            watch_listener_tls(tls, reload_metrics);
        }
        let handle = server.handle();
        let server = tokio::spawn(server);
        log::info!(
            "alert-relay {} listening on {addr}, spool in {spool_dir}, {receivers} receivers",
            env!("CARGO_PKG_VERSION")
        );
        Ok(Relay { addr, shared, handle, server })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Re-reads the configuration (SIGHUP); the running one stays on error.
    pub async fn reload(&self) -> Result<usize, ConfigErrors> {
        self.shared.control.reload().await
    }

    /// Graceful stop: `/webhook` answers 503 from now on, attempts in flight get
    /// until the longest receiver timeout (25 s at most) to finish, the rest
    /// stays in the spool.
    pub async fn shutdown(self) {
        self.shared.shutting_down.store(true, Ordering::Relaxed);
        let pending = self.shared.control.stop(MAX_SHUTDOWN_GRACE).await;
        self.handle.stop(true).await;
        if let Ok(Err(e)) = self.server.await {
            log::error!("HTTP server: {e}");
        }
        log::info!("stopped; {pending} deliveries left pending in the spool");
    }
}

/// Re-reads the listener's certificate files when they change. A bad new pair
/// is reported like a bad reload (logged, `alert_relay_tls_last_reload_successful` 0)
/// and the pair in use stays.
fn watch_listener_tls(tls: Arc<tls::server::ListenerTls>, metrics: Arc<Metrics>) {
    let weak = Arc::downgrade(&tls);
    drop(tls);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(FILE_CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(tls) = weak.upgrade() else { return };
            match tls.reload_if_changed() {
                Ok(false) => {}
                Ok(true) => {
                    log::info!("server.tls: certificate files changed; new connections use the new ones");
                    metrics.tls_reload_successful.set(1);
                }
                Err(e) => {
                    log::error!("server.tls: {e}; keeping the certificate in use");
                    metrics.tls_reload_successful.set(0);
                }
            }
        }
    });
}
