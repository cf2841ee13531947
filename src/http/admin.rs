//! The admin API: receivers, Send Test Message, explain, deliveries, reload.

use std::future::{ready, Ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::http::header::AUTHORIZATION;
use actix_web::http::StatusCode;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{ApiError, Shared};
use crate::alert::{Alert, LabelSet, Notification, Status};
use crate::config::{Receiver, ReceiverSpec};
use crate::control::{check, ControlError};
use crate::delivery::retry::Outcome;
use crate::delivery::sender::Target;
use crate::delivery::DeadLetterError;
use crate::route::{fates, verdict, Fate};
use crate::spool::DeliveryMeta;

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

fn control_error(e: ControlError) -> ApiError {
    let status = match &e {
        ControlError::NotFound(_) => StatusCode::NOT_FOUND,
        ControlError::Provisioned { .. } => StatusCode::CONFLICT,
        ControlError::Invalid(_) => StatusCode::BAD_REQUEST,
        ControlError::Internal(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    let details = match &e {
        ControlError::Invalid(list) => list.clone(),
        _ => Vec::new(),
    };
    if let ControlError::Internal(message) = &e {
        log::error!("admin API: {message}");
        return ApiError::new(
            status,
            "the change could not be stored (disk full or I/O error); nothing changed. The spool recovers by itself \
             once the disk accepts writes (see alert_relay_spool_healthy); then try again",
        )
        .retry_after(5);
    }
    ApiError::new(status, e.to_string()).with_details(details)
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

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

// ---------------------------------------------------------------------------
// Receivers.

fn receiver_view(shared: &Shared, receiver: &Receiver) -> Value {
    let name = receiver.name.as_str();
    let mut view = serde_json::to_value(receiver.spec.redacted()).unwrap_or_else(|_| json!({}));
    let provisioned = shared.control.is_provisioned(name);
    let (pending, dead) = shared.control.dispatcher.counts(name);
    let (delivered, failed) =
        shared.control.dispatcher.metrics(name).map_or((0, 0), |m| (m.delivered.get(), m.failed_total()));
    if let Value::Object(map) = &mut view {
        map.insert("provisioned".into(), json!(provisioned));
        map.insert("source".into(), json!(if provisioned { shared.control.source_name() } else { "api".into() }));
        map.insert("pending".into(), json!(pending));
        map.insert("dead_letters".into(), json!(dead));
        map.insert("delivered".into(), json!(delivered));
        map.insert("failed".into(), json!(failed));
    }
    view
}

pub async fn list_receivers(_: Admin, shared: web::Data<Shared>) -> HttpResponse {
    let receivers: Vec<Value> =
        shared.control.dispatcher.receivers().iter().map(|r| receiver_view(&shared, r)).collect();
    // Deliveries kept for receivers that are not in force (removed from the
    // file): they resume when the receiver is back.
    let orphaned = shared.control.dispatcher.orphans();
    HttpResponse::Ok().json(json!({ "receivers": receivers, "orphaned": orphaned }))
}

pub async fn get_receiver(
    _: Admin,
    shared: web::Data<Shared>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let receiver = shared.control.receiver(&name).ok_or_else(|| control_error(ControlError::NotFound(name.clone())))?;
    Ok(HttpResponse::Ok().json(receiver_view(&shared, &receiver)))
}

/// A receiver spec from a body whose `name`, if given, must match the path.
fn spec_from_body(name: &str, body: &[u8]) -> Result<ReceiverSpec, ApiError> {
    let mut value: Value = parse(body)?;
    let Value::Object(map) = &mut value else {
        return Err(bad_request("invalid body: expected a JSON object", vec!["body".into()]));
    };
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
    shared: web::Data<Shared>,
    name: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let spec = spec_from_body(&name, &body)?;
    let (created, receiver) = shared.control.put(spec).await.map_err(control_error)?;
    log::info!("admin API: receiver {name} {}", if created { "created" } else { "replaced" });
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(HttpResponse::build(status).json(receiver_view(&shared, &receiver)))
}

pub async fn delete_receiver(
    _: Admin,
    shared: web::Data<Shared>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let dropped = shared.control.delete(&name).await.map_err(control_error)?;
    log::info!("admin API: receiver {name} deleted");
    Ok(HttpResponse::Ok().json(json!({
        "deleted": name.as_str(),
        "dropped_pending": dropped.pending,
        "dropped_dead_letters": dropped.dead,
    })))
}

async fn toggle(shared: &Shared, name: &str, enabled: bool) -> Result<HttpResponse, ApiError> {
    let receiver = shared.control.set_enabled(name, enabled).await.map_err(control_error)?;
    Ok(HttpResponse::Ok().json(receiver_view(shared, &receiver)))
}

pub async fn enable(_: Admin, shared: web::Data<Shared>, name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    toggle(&shared, &name, true).await
}

pub async fn disable(_: Admin, shared: web::Data<Shared>, name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    toggle(&shared, &name, false).await
}

// ---------------------------------------------------------------------------
// Send Test Message.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TestAlert {
    /// Labels added to (or overriding) the test alert's own.
    #[serde(default)]
    labels: LabelSet,
    #[serde(default)]
    annotations: LabelSet,
    /// `resolved` tests what `send_resolved` does.
    #[serde(default)]
    status: Option<Status>,
}

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

/// A synthetic Alertmanager v4 notification with one alert.
fn test_notification(receiver: &str, test: &TestAlert) -> Notification {
    let mut labels: LabelSet =
        [("alertname".to_string(), "AlertRelayTestMessage".to_string()), ("severity".to_string(), "info".to_string())]
            .into();
    labels.extend(test.labels.clone());
    let mut annotations: LabelSet = [
        ("summary".to_string(), "Test message from alert-relay".to_string()),
        ("description".to_string(), "Sent by Send Test Message; no alert is firing.".to_string()),
    ]
    .into();
    annotations.extend(test.annotations.clone());
    let status = test.status.unwrap_or(Status::Firing);
    let now = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    let ends = if status == Status::Resolved { now.clone() } else { "0001-01-01T00:00:00Z".to_string() };
    let alert = Alert::new(
        status,
        labels.clone(),
        annotations.clone(),
        object(json!({
            "startsAt": now,
            "endsAt": ends,
            "generatorURL": "",
            "fingerprint": format!("{:016x}", fastrand::u64(..)),
        })),
    );
    Notification {
        status,
        alerts: vec![alert],
        common_labels: labels,
        common_annotations: annotations,
        truncated_alerts: 0,
        group_key: "{}:{alertname=\"AlertRelayTestMessage\"}".into(),
        extra: object(json!({
            "receiver": receiver,
            "groupLabels": { "alertname": "AlertRelayTestMessage" },
            "externalURL": "",
            "version": "4",
        })),
    }
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// What a stopped alert was stopped by, in words and as data.
fn stop_reason(receiver: &Receiver, labels: &LabelSet, fate: Fate) -> Value {
    match fate {
        Fate::Forwarded => Value::Null,
        Fate::Disabled => json!({
            "setting": "enabled",
            "detail": "the receiver is disabled: no alert is delivered until it is enabled",
        }),
        Fate::Resolved => json!({
            "setting": "send_resolved",
            "detail": "the alert is resolved and send_resolved is false",
        }),
        Fate::MaxAlerts => json!({
            "setting": "max_alerts",
            "detail": format!("more than max_alerts ({}) alerts passed; this one was cut", receiver.max_alerts),
        }),
        Fate::Condition(i) => {
            let condition = &receiver.conditions[i];
            let spec = condition.spec();
            let value = labels.get(&spec.label);
            let seen = match value {
                Some(v) => format!("label {} is {v:?}", spec.label),
                None => format!("label {} is missing", spec.label),
            };
            json!({
                "setting": "conditions",
                "condition": { "index": i, "label": spec.label, "operator": spec.operator, "values": spec.values },
                "value": value,
                "detail": format!("condition {i} ({condition}) fails: {seen}"),
            })
        }
    }
}

async fn send_test(target: &Target, test: &TestAlert) -> Value {
    let receiver = &target.receiver;
    let notification = test_notification(&receiver.name, test);
    let alert = &notification.alerts[0];
    let fate = verdict(receiver, alert);
    let body = serde_json::to_vec(&notification).unwrap_or_default();
    let key = format!("test-{:016x}", fastrand::u64(..));
    let attempt = target.send(&key, body).await;
    let delivered = attempt.outcome == Outcome::Delivered;
    let would_deliver = fate == Fate::Forwarded;
    let stopped_by = stop_reason(receiver, &alert.labels, fate);
    let explanation = if would_deliver {
        "Real alerts with these labels would be delivered to this receiver.".to_string()
    } else {
        format!(
            "The test message bypasses the receiver's settings, but real alerts with these labels would NOT be delivered: {}.",
            stopped_by["detail"].as_str().unwrap_or_default()
        )
    };
    log::info!(
        "test message to receiver {}: {}",
        receiver.name,
        attempt.error.as_deref().unwrap_or(if delivered { "delivered" } else { "failed" })
    );
    json!({
        "receiver": receiver.name,
        "delivered": delivered,
        "status": attempt.status,
        "latency_ms": (attempt.latency.as_secs_f64() * 1000.0 * 10.0).round() / 10.0,
        "error": attempt.error,
        "enabled": receiver.enabled,
        "conditions_pass": !matches!(fate, Fate::Condition(_)),
        "would_deliver": would_deliver,
        "stopped_by": stopped_by,
        "labels": alert.labels,
        "explanation": explanation,
    })
}

pub async fn test_saved(
    _: Admin,
    shared: web::Data<Shared>,
    name: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let test: TestAlert = if body.is_empty() { TestAlert::default() } else { parse(&body)? };
    let target =
        shared.control.dispatcher.target(&name).ok_or_else(|| control_error(ControlError::NotFound(name.clone())))?;
    Ok(HttpResponse::Ok().json(send_test(&target, &test).await))
}

pub async fn test_unsaved(_: Admin, shared: web::Data<Shared>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let request: UnsavedTest = parse(&body)?;
    let mut spec = request.receiver;
    if let Value::Object(map) = &mut spec {
        map.entry("name").or_insert_with(|| json!("unsaved"));
    }
    let mut spec: ReceiverSpec = parse(&serde_json::to_vec(&spec).unwrap_or_default())?;
    // A form loaded from a saved receiver shows its secrets redacted.
    // Only that receiver's secrets, and only for its own server.
    if let Some(saved) = shared.control.receiver(&spec.name) {
        spec.keep_secrets_of(&saved.spec).map_err(|e| bad_request("invalid receiver", e))?;
    }
    let receiver = check(&spec, &shared.control.config()).map_err(control_error)?;
    let target = Target::new(receiver).map_err(|e| bad_request(e.clone(), vec![e]))?;
    let test = TestAlert { labels: request.labels, annotations: request.annotations, status: request.status };
    Ok(HttpResponse::Ok().json(send_test(&target, &test).await))
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

pub async fn explain(_: Admin, shared: web::Data<Shared>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let value: Value = parse(&body)?;
    let notification = if value.get("alerts").is_some() {
        Notification::parse(&body).map_err(|e| bad_request(format!("invalid payload: {e}"), vec![e.field().into()]))?
    } else {
        let given: ExplainLabels = parse(&body)?;
        let test = TestAlert { labels: LabelSet::new(), annotations: LabelSet::new(), status: given.status };
        let mut n = test_notification("explain", &test);
        let alert = &n.alerts[0];
        n.alerts[0] = Alert::new(alert.status, given.labels, alert.annotations.clone(), Map::new());
        n
    };
    let receivers: Vec<Value> = shared
        .control
        .dispatcher
        .receivers()
        .iter()
        .map(|r| {
            let alerts: Vec<Value> = notification
                .alerts
                .iter()
                .zip(fates(&notification, r))
                .enumerate()
                .map(|(i, (alert, fate))| {
                    json!({
                        "index": i,
                        "delivered": fate == Fate::Forwarded,
                        "stopped_by": stop_reason(r, &alert.labels, fate),
                    })
                })
                .collect();
            let delivered = alerts.iter().any(|a| a["delivered"] == json!(true));
            json!({ "receiver": r.name, "enabled": r.enabled, "delivered": delivered, "alerts": alerts })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "receivers": receivers })))
}

// ---------------------------------------------------------------------------
// Deliveries.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryQuery {
    receiver: Option<String>,
    state: Option<String>,
    limit: Option<usize>,
    /// Only deliveries with a smaller id: the `next` of the previous page.
    before: Option<u64>,
}

fn delivery_view(id: u64, meta: &DeliveryMeta, in_force: bool) -> Value {
    json!({
        "id": id,
        "receiver": meta.receiver,
        "orphaned": !in_force,
        "state": if meta.dead.is_some() { "dead" } else { "pending" },
        "group_key": meta.group_key,
        "alerts": meta.alerts,
        "attempts": meta.attempts,
        "created": rfc3339(meta.created_ms),
        "first_attempt": meta.first_attempt_ms.map(rfc3339),
        "next_attempt": if meta.dead.is_none() { Some(rfc3339(meta.next_due_ms)) } else { None },
        "last_error": meta.last_error,
        "dead_reason": meta.dead.map(|d| d.as_str()),
    })
}

pub async fn list_deliveries(_: Admin, shared: web::Data<Shared>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let query = web::Query::<DeliveryQuery>::from_query(req.query_string())
        .map_err(|e| bad_request(format!("invalid query: {e}"), vec!["query".into()]))?
        .into_inner();
    let dead = match query.state.as_deref() {
        None => None,
        Some("pending") => Some(false),
        Some("dead") => Some(true),
        Some(other) => {
            return Err(bad_request(format!("state: {other:?} is neither pending nor dead"), vec!["state".into()]))
        }
    };
    let limit = query.limit.unwrap_or(50).clamp(1, 500);
    let receiver = query.receiver.clone();
    let spool_control = shared.control.clone();
    let page = web::block(move || {
        spool_control.spool().list(query.before, limit + 1, |m| {
            receiver.as_ref().is_none_or(|r| &m.receiver == r) && dead.is_none_or(|d| m.dead.is_some() == d)
        })
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(spool_unavailable)?;
    let next = (page.len() > limit).then(|| page[limit - 1].0);
    let receivers = shared.control.dispatcher.receivers();
    let deliveries: Vec<Value> = page
        .iter()
        .take(limit)
        .map(|(id, m)| delivery_view(*id, m, receivers.iter().any(|r| r.name == m.receiver)))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "deliveries": deliveries, "next": next })))
}

/// A storage error as the admin API answers it: no path, no internal type,
/// and what to do.
fn spool_unavailable(e: crate::spool::SpoolError) -> ApiError {
    log::error!("admin API: {e}");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the spool cannot be read or written now (disk full or I/O error); it recovers by itself once the disk \
         accepts writes (see alert_relay_spool_healthy), then try again",
    )
    .retry_after(5)
}

fn dead_letter_error(e: DeadLetterError) -> ApiError {
    let status = match e {
        DeadLetterError::NotFound(_) => StatusCode::NOT_FOUND,
        DeadLetterError::Pending(_) | DeadLetterError::NoReceiver(_) => StatusCode::CONFLICT,
        DeadLetterError::Spool(e) => return spool_unavailable(e),
    };
    ApiError::new(status, e.to_string())
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
    shared.control.retry_dead(id).await.map_err(dead_letter_error)?;
    Ok(HttpResponse::Ok().json(json!({ "requeued": id })))
}

pub async fn delete_delivery(
    _: Admin,
    shared: web::Data<Shared>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = delivery_id(&id)?;
    shared.control.delete_dead(id).await.map_err(dead_letter_error)?;
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
