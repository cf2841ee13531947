//! `POST /webhook`: Alertmanager's notifications in, durable deliveries out.
//! HTTP's part only: auth, content type, body limits; the rest is
//! `Control::accept`.

use actix_web::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::{ApiError, Shared};
use crate::intake::IntakeError;

/// Seconds Alertmanager is asked to wait before retrying a 503.
const RETRY_AFTER_SECS: u32 = 5;

pub async fn receive(req: HttpRequest, body: web::Payload, shared: web::Data<Shared>) -> HttpResponse {
    let response = match handle(&req, body, &shared).await {
        Ok(count) => HttpResponse::Ok().json(json!({ "deliveries": count })),
        Err(e) => {
            log::warn!("webhook from {}: {} {}", peer(&req), e.status.as_u16(), e.error);
            actix_web::ResponseError::error_response(&e)
        }
    };
    shared.metrics.webhook_requests.with_label_values(&[response.status().as_str()]).inc();
    response
}

fn peer(req: &HttpRequest) -> String {
    req.peer_addr().map(|a| a.to_string()).unwrap_or_else(|| "unknown".into())
}

impl From<IntakeError> for ApiError {
    fn from(e: IntakeError) -> ApiError {
        match &e {
            IntakeError::Invalid(payload) => {
                ApiError::new(StatusCode::BAD_REQUEST, e.to_string()).with_details(vec![payload.field().to_string()])
            }
            IntakeError::Full(_) | IntakeError::Storage(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()).retry_after(RETRY_AFTER_SECS)
            }
        }
    }
}

async fn handle(req: &HttpRequest, body: web::Payload, shared: &Shared) -> Result<usize, ApiError> {
    let config = shared.control.config();
    if let Some(expected) = &config.server.webhook_auth {
        let given = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes()).unwrap_or_default();
        if !expected.matches(given) {
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong Authorization header"));
        }
    }
    let content_type = req.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type must be application/json, got {content_type:?}"),
        ));
    }
    if shared.is_shutting_down() {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down").retry_after(RETRY_AFTER_SECS));
    }
    let limit = config.server.max_body_bytes;
    let too_large =
        || ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("body is larger than max_body_bytes ({limit})"));
    let declared = req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    let bytes = match body.to_bytes_limited(limit).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) if super::is_body_timeout(&e) => {
            return Err(ApiError::new(StatusCode::REQUEST_TIMEOUT, format!("reading body: {e}")))
        }
        Ok(Err(e)) => return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("reading body: {e}"))),
        Err(_) => return Err(too_large()),
    };
    Ok(shared.control.accept(&bytes).await?)
}
