use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

/// Every error answer: `{"error": "...", "details": [...]}` with its status.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status}: {error}")]
pub struct ApiError {
    pub status: StatusCode,
    pub error: String,
    pub details: Vec<String>,
    pub retry_after_secs: Option<u32>,
    /// With 412: the resource as it is now.
    pub current: Option<Box<serde_json::Value>>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    details: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    current: Option<&'a serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: impl Into<String>) -> ApiError {
        ApiError { status, error: error.into(), details: Vec::new(), retry_after_secs: None, current: None }
    }

    pub fn with_details(mut self, details: Vec<String>) -> ApiError {
        self.details = details;
        self
    }

    pub fn with_current(mut self, current: serde_json::Value) -> ApiError {
        self.current = Some(Box::new(current));
        self
    }

    pub fn retry_after(mut self, secs: u32) -> ApiError {
        self.retry_after_secs = Some(secs);
        self
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if let Some(secs) = self.retry_after_secs {
            response.insert_header((header::RETRY_AFTER, HeaderValue::from(secs)));
        }
        response.json(Body { error: &self.error, details: &self.details, current: self.current.as_deref() })
    }
}
