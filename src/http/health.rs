use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};

use super::{ApiError, Shared};

pub async fn healthy() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain; charset=utf-8").body("OK\n")
}

/// Ready once the config is loaded and the spool open (both before the listener
/// exists); not ready while shutting down or while the spool cannot write.
pub async fn ready(shared: web::Data<Shared>) -> Result<HttpResponse, ApiError> {
    if shared.is_shutting_down() {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down"));
    }
    if let Some(problem) = shared.control.spool_problem() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("spool cannot write ({problem}); it retries by itself, free disk space if it is full"),
        ));
    }
    Ok(HttpResponse::Ok().content_type("text/plain; charset=utf-8").body("OK\n"))
}

pub async fn metrics(shared: web::Data<Shared>) -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(shared.metrics.render())
}

pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(StatusCode::NOT_FOUND, format!("no route for {} {}", req.method(), req.path())))
}
