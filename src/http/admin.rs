//! The admin API: receivers, Send Test Message, explain, deliveries, reload.
//! Each handler parses, calls one method of `Control`, serializes its answer.

use std::future::{ready, Ready};

use actix_web::http::header::AUTHORIZATION;
use actix_web::http::StatusCode;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, Shared};
use crate::alert::{LabelSet, Notification, Status};
use crate::config::ReceiverSpec;
use crate::control::{ControlError, DeliveryQuery, PreviewRequest};
use crate::diagnose::{ExplainInput, TestAlert};

/// Proof that the request carried the admin token. Every admin handler takes
/// one, so none can forget the check.
pub struct Admin;

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = Ready<Result<Admin, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        ready(authorize(req))
    }
}

fn authorize(req: &HttpRequest) -> Result<Admin, ApiError> {
    let shared = req
        .app_data::<web::Data<Shared>>()
        .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "no application state"))?;
    let config = shared.control.config();
    let Some(expected) = &config.admin.authorization else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "the admin API is off: set admin.token or admin.token_file in the configuration",
        ));
    };
    let given = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes()).unwrap_or_default();
    if expected.matches(given) {
        Ok(Admin)
    } else {
        log::warn!("admin API: {} {} refused: missing or wrong token", req.method(), req.path());
        Err(ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong admin token (Authorization: Bearer ...)"))
    }
}

fn bad_request(error: impl Into<String>, details: Vec<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, error).with_details(details)
}

/// The one mapping of the control plane's errors to answers.
impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> ApiError {
        let status = match &e {
            ControlError::NotFound(_) | ControlError::NoDelivery(_) => StatusCode::NOT_FOUND,
            ControlError::Provisioned { .. } | ControlError::Conflict(_) => StatusCode::CONFLICT,
            ControlError::Stale { .. } => StatusCode::PRECONDITION_FAILED,
            ControlError::Invalid(_) => StatusCode::BAD_REQUEST,
            ControlError::Storage(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        match e {
            ControlError::Invalid(list) => ApiError::new(status, "invalid receiver").with_details(list),
            ControlError::Stale { ref now, .. } => {
                let current = now.as_ref().map(|v| serde_json::to_value(v).unwrap_or_default());
                ApiError::new(status, e.to_string()).with_current(current.unwrap_or(Value::Null))
            }
            ControlError::Storage(inner) => {
                log::error!("admin API: {inner}");
                ApiError::new(
                    status,
                    "the spool cannot be read or written now (disk full or I/O error); nothing changed. It recovers \
                     by itself once the disk accepts writes (see alert_relay_spool_healthy); then try again",
                )
                .retry_after(5)
            }
            other => ApiError::new(status, other.to_string()),
        }
    }
}

/// Parses a JSON body, naming the offending field on error.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let message = match inner.rfind(" at line ") {
            Some(i) => inner[..i].to_string(),
            None => inner,
        };
        bad_request(format!("invalid body: {path}: {message}"), vec![format!("{path}: {message}")])
    })
}

// ---------------------------------------------------------------------------
// Receivers.

pub async fn list_receivers(_: Admin, shared: web::Data<Shared>) -> HttpResponse {
    // `orphaned`: deliveries kept for receivers that are not in force (removed
    // from the file); they resume when the receiver is back.
    HttpResponse::Ok().json(json!({ "receivers": shared.control.receivers(), "orphaned": shared.control.orphans() }))
}

/// The receiver as JSON with its version as `ETag`.
fn with_etag(mut response: actix_web::HttpResponseBuilder, view: &crate::control::ReceiverView) -> HttpResponse {
    response.insert_header((actix_web::http::header::ETAG, format!("\"{}\"", view.version))).json(view)
}

/// The version an `If-Match` header names (quotes and a weak `W/` dropped).
fn if_match(req: &HttpRequest) -> Option<String> {
    let value = req.headers().get(actix_web::http::header::IF_MATCH)?.to_str().ok()?.trim();
    Some(value.trim_start_matches("W/").trim_matches('"').to_string())
}

pub async fn get_receiver(
    _: Admin,
    shared: web::Data<Shared>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(with_etag(HttpResponse::Ok(), &shared.control.receiver(&name)?))
}

/// What `GET` adds to a receiver's settings: a receiver fetched, edited and
/// sent back is accepted as it is.
const VIEW_ONLY: [&str; 8] =
    ["version", "provisioned", "source", "pending", "dead_letters", "delivered", "failed", "skipped_while_disabled"];

/// A receiver spec from a body whose `name`, if given, must match `name`.
fn spec_from(name: &str, mut value: Value) -> Result<ReceiverSpec, ApiError> {
    let Value::Object(map) = &mut value else {
        return Err(bad_request("invalid body: expected a JSON object", vec!["body".into()]));
    };
    for key in VIEW_ONLY {
        map.remove(key);
    }
    match map.get("name") {
        None => {
            map.insert("name".into(), json!(name));
        }
        Some(Value::String(given)) if given == name => {}
        Some(other) => {
            return Err(bad_request(
                format!("name: {other} differs from the name in the path {name:?}"),
                vec!["name: differs from the path".into()],
            ))
        }
    }
    parse(&serde_json::to_vec(&value).unwrap_or_default())
}

pub async fn put_receiver(
    _: Admin,
    req: HttpRequest,
    shared: web::Data<Shared>,
    name: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let spec = spec_from(&name, parse(&body)?)?;
    let (created, view) = shared.control.put(spec, if_match(&req).as_deref()).await?;
    log::info!("admin API: receiver {name} {}", if created { "created" } else { "replaced" });
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(with_etag(HttpResponse::build(status), &view))
}

pub async fn delete_receiver(
    _: Admin,
    req: HttpRequest,
    shared: web::Data<Shared>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let dropped = shared.control.delete(&name, if_match(&req).as_deref()).await?;
    log::info!("admin API: receiver {name} deleted");
    Ok(HttpResponse::Ok().json(json!({
        "deleted": name.as_str(),
        "dropped_pending": dropped.pending,
        "dropped_dead_letters": dropped.dead,
    })))
}

async fn toggle(req: &HttpRequest, shared: &Shared, name: &str, on: bool) -> Result<HttpResponse, ApiError> {
    let view = shared.control.set_enabled(name, on, if_match(req).as_deref()).await?;
    Ok(with_etag(HttpResponse::Ok(), &view))
}

pub async fn enable(
    _: Admin,
    req: HttpRequest,
    shared: web::Data<Shared>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    toggle(&req, &shared, &name, true).await
}

pub async fn disable(
    _: Admin,
    req: HttpRequest,
    shared: web::Data<Shared>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    toggle(&req, &shared, &name, false).await
}

// ---------------------------------------------------------------------------
// Send Test Message.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnsavedTest {
    receiver: Value,
    #[serde(default)]
    labels: LabelSet,
    #[serde(default)]
    annotations: LabelSet,
    #[serde(default)]
    status: Option<Status>,
}

pub async fn test_saved(
    _: Admin,
    shared: web::Data<Shared>,
    name: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let test: TestAlert = if body.is_empty() { TestAlert::default() } else { parse(&body)? };
    Ok(HttpResponse::Ok().json(shared.control.test_saved(&name, &test).await?))
}

pub async fn test_unsaved(_: Admin, shared: web::Data<Shared>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let request: UnsavedTest = parse(&body)?;
    let name = request.receiver.get("name").and_then(Value::as_str).unwrap_or("unsaved").to_string();
    let spec = spec_from(&name, request.receiver)?;
    let test = TestAlert { labels: request.labels, annotations: request.annotations, status: request.status };
    Ok(HttpResponse::Ok().json(shared.control.test_unsaved(spec, &test).await?))
}

// ---------------------------------------------------------------------------
// Explain.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExplainLabels {
    labels: LabelSet,
    #[serde(default)]
    status: Option<Status>,
}

/// One alert of Alertmanager's API v2 list (`amtool alert query -o json`):
/// only its labels matter here; every alert it lists is active (firing).
#[derive(Deserialize)]
struct ListedAlert {
    labels: LabelSet,
}

/// Explain takes a webhook payload (an object with `alerts`), one alert's
/// `labels` (and `status`), or Alertmanager's API v2 alert list (an array).
pub async fn explain(_: Admin, shared: web::Data<Shared>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let value: Value = parse(&body)?;
    let input = if value.is_array() {
        let listed: Vec<ListedAlert> = parse(&body)?;
        ExplainInput::Alerts(listed.into_iter().map(|a| (a.labels, None)).collect())
    } else if value.get("alerts").is_some() {
        let n = Notification::parse(&body)
            .map_err(|e| bad_request(format!("invalid payload: {e}"), vec![e.field().into()]))?;
        ExplainInput::Payload(n)
    } else {
        let given: ExplainLabels = parse(&body)?;
        ExplainInput::Alerts(vec![(given.labels, given.status)])
    };
    Ok(HttpResponse::Ok().json(shared.control.explain(input)))
}

// ---------------------------------------------------------------------------
// Body formats and the live preview.

pub async fn list_formats(_: Admin, shared: web::Data<Shared>) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "formats": shared.control.formats() }))
}

pub async fn get_format(
    _: Admin,
    shared: web::Data<Shared>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    match shared.control.format(&name) {
        Some(format) => Ok(HttpResponse::Ok().json(format)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no preset {name:?}: one of slack, msteams, discord, googlechat, dingtalk, feishu, wecom"),
        )),
    }
}

pub async fn preview(_: Admin, shared: web::Data<Shared>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let request: PreviewRequest = parse(&body)?;
    match shared.control.preview(request) {
        Ok(preview) => Ok(HttpResponse::Ok().json(preview)),
        Err(ControlError::Invalid(details)) => Err(bad_request("cannot render", details)),
        Err(e) => Err(e.into()),
    }
}

// ---------------------------------------------------------------------------
// Deliveries.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeliveryParams {
    receiver: Option<String>,
    state: Option<String>,
    limit: Option<usize>,
    /// Only deliveries with a smaller id: the `next` of the previous page.
    before: Option<u64>,
}

pub async fn list_deliveries(_: Admin, shared: web::Data<Shared>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let params = web::Query::<DeliveryParams>::from_query(req.query_string())
        .map_err(|e| bad_request(format!("invalid query: {e}"), vec!["query".into()]))?
        .into_inner();
    let dead = match params.state.as_deref() {
        None => None,
        Some("pending") => Some(false),
        Some("dead") => Some(true),
        Some(other) => {
            return Err(bad_request(format!("state: {other:?} is neither pending nor dead"), vec!["state".into()]))
        }
    };
    let query =
        DeliveryQuery { receiver: params.receiver, dead, limit: params.limit.unwrap_or(50), before: params.before };
    Ok(HttpResponse::Ok().json(shared.control.list_deliveries(query).await?))
}

fn delivery_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse().map_err(|_| bad_request(format!("id: {raw:?} is not a delivery id"), vec!["id".into()]))
}

pub async fn retry_delivery(
    _: Admin,
    shared: web::Data<Shared>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = delivery_id(&id)?;
    shared.control.retry_dead(id).await?;
    Ok(HttpResponse::Ok().json(json!({ "requeued": id })))
}

pub async fn delete_delivery(
    _: Admin,
    shared: web::Data<Shared>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = delivery_id(&id)?;
    shared.control.delete_dead(id).await?;
    Ok(HttpResponse::Ok().json(json!({ "deleted": id })))
}

// ---------------------------------------------------------------------------
// Reload.

pub async fn reload(_: Admin, shared: web::Data<Shared>) -> Result<HttpResponse, ApiError> {
    match shared.control.reload().await {
        Ok(receivers) => Ok(HttpResponse::Ok().json(json!({ "reloaded": true, "receivers": receivers }))),
        Err(errors) => Err(bad_request("configuration not reloaded; the running one stays", errors.0)),
    }
}
