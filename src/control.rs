//! The control plane, and the one application service the HTTP layer talks
//! to: which receivers are in force (provisioned from the config file, plus
//! API-managed ones kept in the spool), every change to them, intake, dead
//! letters, diagnosis. Every change is validated whole, then applied at once;
//! changes are serialised, and readers always see one complete configuration.
//! Handlers call one method here and serialize its typed answer.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::clock::unix_secs;
use crate::config::{
    validate_payload, validate_receiver, Config, ConfigErrors, PayloadSpec, Receiver, ReceiverSpec, Source,
};
use crate::delivery::sender::Target;
use crate::delivery::{DeadLetterError, DispatchError, Dispatcher, Dropped};
use crate::diagnose::{self, shown_body, ExplainInput, Explanation, TestAlert, TestReport};
use crate::format::PRESETS;
use crate::intake::{self, IntakeError, LastSeen};
use crate::metrics::Metrics;
use crate::notify_log::NotifyLog;
use crate::spool::{DeliveryMeta, Op, Spool, SpoolError};
use crate::sync::{lock, read, write};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no receiver named {0:?}")]
    NotFound(String),
    #[error("no delivery {0}")]
    NoDelivery(u64),
    #[error("receiver {name:?} is provisioned by {file}: change it there and reload")]
    Provisioned { name: String, file: String },
    /// The request does not fit the current state (409).
    #[error("{0}")]
    Conflict(String),
    #[error("invalid receiver")]
    Invalid(Vec<String>),
    /// `If-Match` named a version that is not the current one (412): someone
    /// else changed the receiver meanwhile. Holds the receiver as it is now.
    #[error("receiver {name:?} was changed meanwhile (your version {given}, now {current})")]
    Stale { name: String, given: String, current: String, now: Option<Box<ReceiverView>> },
    /// The spool cannot be read or written now: nothing changed.
    #[error("storage: {0}")]
    Storage(#[from] SpoolError),
}

impl From<DeadLetterError> for ControlError {
    fn from(e: DeadLetterError) -> ControlError {
        match e {
            DeadLetterError::NotFound(id) => ControlError::NoDelivery(id),
            DeadLetterError::Spool(e) => ControlError::Storage(e),
            other @ (DeadLetterError::Pending(_) | DeadLetterError::NoReceiver(_) | DeadLetterError::Template(_)) => {
                ControlError::Conflict(other.to_string())
            }
        }
    }
}

impl From<DispatchError> for ControlError {
    fn from(e: DispatchError) -> ControlError {
        match e {
            DispatchError::Spool(e) => ControlError::Storage(e),
            other @ DispatchError::Target { .. } => ControlError::Invalid(vec![other.to_string()]),
        }
    }
}

/// A receiver as the admin API shows it: its settings (secrets redacted) and
/// its state.
#[derive(Debug, Clone, Serialize)]
pub struct ReceiverView {
    /// Changes whenever any setting does (the toggle too): the `ETag`, and what
    /// `If-Match` compares.
    pub version: String,
    #[serde(flatten)]
    pub spec: ReceiverSpec,
    pub provisioned: bool,
    /// The config file's path, or `api`.
    pub source: String,
    pub pending: usize,
    pub dead_letters: usize,
    pub delivered: u64,
    pub failed: u64,
    /// While disabled: alerts dropped for it since it was turned off (they
    /// are not kept for later). Absent while enabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped_while_disabled: Option<u64>,
}

/// Which deliveries to list.
#[derive(Debug, Default)]
pub struct DeliveryQuery {
    pub receiver: Option<String>,
    /// `Some(true)`: dead letters only; `Some(false)`: pending only.
    pub dead: Option<bool>,
    pub limit: usize,
    /// Only deliveries with a smaller id: the `next` of the previous page.
    pub before: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct DeliveryView {
    pub id: u64,
    pub receiver: String,
    /// Its receiver is not in force (removed from the file): kept until it is back.
    pub orphaned: bool,
    pub state: &'static str,
    pub group_key: String,
    pub alerts: u32,
    pub attempts: u32,
    pub created: String,
    pub first_attempt: Option<String>,
    pub next_attempt: Option<String>,
    pub last_error: Option<String>,
    pub dead_reason: Option<&'static str>,
    /// Size of the body as sent, after the receiver's format (absent for a
    /// template error: nothing was rendered).
    pub body_bytes: Option<u64>,
}

/// Deliveries newest first; `next` is the `before` of the next page.
#[derive(Debug, Serialize)]
pub struct DeliveryPage {
    pub deliveries: Vec<DeliveryView>,
    pub next: Option<u64>,
}

pub struct Control {
    source: Source,
    config: RwLock<Arc<Config>>,
    /// API-managed receivers by name, as stored.
    api: Mutex<BTreeMap<String, ReceiverSpec>>,
    /// Held by whoever changes the configuration.
    changes: tokio::sync::Mutex<()>,
    dispatcher: Arc<Dispatcher>,
    spool: Arc<Spool>,
    metrics: Arc<Metrics>,
    notify_log: NotifyLog,
    /// What the live preview renders by default.
    last_seen: LastSeen,
}

/// A body format as `GET /api/v1/formats` lists it.
#[derive(Debug, Serialize)]
pub struct FormatInfo {
    pub name: &'static str,
    pub content_type: Option<&'static str>,
    /// The target's limits the preset keeps to.
    pub limits: &'static str,
    /// The preset's template (only when one format is asked for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<&'static str>,
}

/// What `POST /api/v1/preview` renders.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviewRequest {
    /// A saved receiver's format…
    #[serde(default)]
    pub receiver: Option<String>,
    /// …or one being edited (the form's `payload`).
    #[serde(default)]
    pub payload: Option<PayloadSpec>,
    /// The notification: a sample's name (`firing`, `mixed`, `resolved`,
    /// `grafana`, `large`, or `last`: the receiver's last real one)…
    #[serde(default)]
    pub sample: Option<String>,
    /// …or a whole webhook payload.
    #[serde(default)]
    pub notification: Option<serde_json::Value>,
}

/// A rendered body.
#[derive(Debug, Serialize)]
pub struct Preview {
    pub format: &'static str,
    pub content_type: String,
    /// Which notification was rendered.
    pub sample: String,
    pub body: String,
    pub body_bytes: usize,
}

impl Control {
    /// Loads the API-managed receivers from the spool and starts the dispatcher
    /// with them and the file's.
    pub async fn start(
        source: Source,
        config: Config,
        spool: Arc<Spool>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Control>, DispatchError> {
        let mut api = BTreeMap::new();
        for (name, json) in spool.receivers()? {
            match serde_json::from_slice::<ReceiverSpec>(&json) {
                Ok(spec) => {
                    api.insert(name, spec);
                }
                Err(e) => log::error!("spool: API receiver {name} is unreadable and ignored: {e}"),
            }
        }
        let (receivers, errors) = effective(&config, &api);
        for e in errors {
            log::error!("API receiver ignored: {e}");
        }
        let dispatcher = Dispatcher::start(spool.clone(), metrics.clone(), receivers).await?;
        let (notify_log, expired) = NotifyLog::load(spool.notified()?, crate::clock::now_ms());
        spool.commit_later(expired);
        metrics.reload_successful.set(1);
        metrics.reload_timestamp.set(unix_secs());
        Ok(Arc::new(Control {
            source,
            config: RwLock::new(Arc::new(config)),
            api: Mutex::new(api),
            changes: tokio::sync::Mutex::new(()),
            dispatcher,
            spool,
            metrics,
            notify_log,
            last_seen: LastSeen::default(),
        }))
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        read(&self.config).clone()
    }

    /// Where provisioned receivers come from, for messages.
    pub fn source_name(&self) -> String {
        match &self.source {
            Source::File(p) => p.display().to_string(),
            Source::Embedded => "the embedded default configuration".into(),
        }
    }

    fn is_provisioned(&self, name: &str) -> bool {
        self.config().receivers.iter().any(|r| r.name == name)
    }

    fn in_force(&self, name: &str) -> Option<Arc<Receiver>> {
        self.dispatcher.receivers().iter().find(|r| r.name == name).cloned()
    }

    fn view(&self, receiver: &Receiver) -> ReceiverView {
        let name = receiver.name.as_str();
        let provisioned = self.is_provisioned(name);
        let (pending, dead_letters) = self.dispatcher.counts(name);
        let (delivered, failed) =
            self.dispatcher.metrics(name).map_or((0, 0), |m| (m.delivered.get(), m.failed_total()));
        ReceiverView {
            version: version_of(&receiver.spec),
            spec: receiver.spec.redacted(),
            provisioned,
            source: if provisioned { self.source_name() } else { "api".into() },
            pending,
            dead_letters,
            delivered,
            failed,
            skipped_while_disabled: self.dispatcher.skipped_while_disabled(name),
        }
    }

    /// Every receiver in force, in configuration order.
    pub fn receivers(&self) -> Vec<ReceiverView> {
        self.dispatcher.receivers().iter().map(|r| self.view(r)).collect()
    }

    /// One receiver in force.
    pub fn receiver(&self, name: &str) -> Result<ReceiverView, ControlError> {
        self.in_force(name).map(|r| self.view(&r)).ok_or_else(|| ControlError::NotFound(name.into()))
    }

    /// Pending deliveries kept for receivers not in force, by receiver.
    pub fn orphans(&self) -> BTreeMap<String, usize> {
        self.dispatcher.orphans()
    }

    /// Receivers in force.
    pub fn receiver_count(&self) -> usize {
        self.dispatcher.receivers().len()
    }

    /// Why the spool does not accept writes now, if it does not.
    pub fn spool_problem(&self) -> Option<String> {
        self.spool.problem()
    }

    /// Accepts one webhook body (see `intake`).
    pub async fn accept(&self, body: &[u8]) -> Result<usize, IntakeError> {
        let max_pending = self.config().spool.max_pending;
        intake::accept(
            body,
            max_pending,
            &self.spool,
            &self.dispatcher,
            &self.metrics,
            &self.notify_log,
            &self.last_seen,
        )
        .await
    }

    /// Re-reads the configuration source. On any error the running
    /// configuration stays and the errors are returned.
    pub async fn reload(&self) -> Result<usize, ConfigErrors> {
        let _guard = self.changes.lock().await;
        let result = self.try_reload().await;
        match &result {
            Ok(n) => {
                self.metrics.reload_successful.set(1);
                self.metrics.reload_timestamp.set(unix_secs());
                log::info!("configuration reloaded from {}: {n} receivers in force", self.source_name());
            }
            Err(errors) => {
                self.metrics.reload_successful.set(0);
                for e in &errors.0 {
                    log::error!("reload of {} failed, keeping the running configuration: {e}", self.source_name());
                }
            }
        }
        result
    }

    async fn try_reload(&self) -> Result<usize, ConfigErrors> {
        let config = Config::load(&self.source)?;
        let api = lock(&self.api).clone();
        let (receivers, errors) = effective(&config, &api);
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let old = self.config();
        if old.server.listen != config.server.listen
            || old.server.tls != config.server.tls
            || old.spool.dir != config.spool.dir
        {
            // The listener's certificate files are re-read when they change;
            // which files, and whether there is TLS at all, is fixed at start.
            log::warn!("server.listen, server.tls and spool.dir take effect at the next restart");
        }
        let count = receivers.len();
        self.dispatcher.apply(receivers).await.map_err(|e| ConfigErrors(vec![e.to_string()]))?;
        *write(&self.config) = Arc::new(config);
        Ok(count)
    }

    /// Refuses a change made against another version than the current one.
    fn check_version(&self, name: &str, expected: Option<&str>) -> Result<(), ControlError> {
        let Some(given) = expected else { return Ok(()) };
        let current = self.in_force(name);
        let now = current.as_ref().map(|r| version_of(&r.spec));
        let matches = match (given, &now) {
            ("*", Some(_)) => true,
            (given, Some(now)) => given == now,
            (_, None) => false,
        };
        if matches {
            return Ok(());
        }
        Err(ControlError::Stale {
            name: name.into(),
            given: given.into(),
            current: now.unwrap_or_else(|| "none (it does not exist)".into()),
            now: current.map(|r| Box::new(self.view(&r))),
        })
    }

    fn refuse_provisioned(&self, name: &str) -> Result<(), ControlError> {
        if self.is_provisioned(name) {
            return Err(ControlError::Provisioned { name: name.into(), file: self.source_name() });
        }
        Ok(())
    }

    /// Creates or replaces an API-managed receiver; true when created.
    /// `expected`: the version the change was made against (`If-Match`).
    pub async fn put(
        &self,
        mut spec: ReceiverSpec,
        expected: Option<&str>,
    ) -> Result<(bool, ReceiverView), ControlError> {
        let _guard = self.changes.lock().await;
        let name = spec.name.clone();
        self.refuse_provisioned(&name)?;
        self.check_version(&name, expected)?;
        let stored = lock(&self.api).get(&name).cloned();
        if let Some(old) = &stored {
            spec.keep_secrets_of(old).map_err(ControlError::Invalid)?;
        }
        let receiver = check(&spec, &self.config())?;
        self.store(&name, Some((spec, receiver.clone()))).await?;
        Ok((stored.is_none(), self.view(&receiver)))
    }

    /// Deletes an API-managed receiver and what it still had in the spool.
    pub async fn delete(&self, name: &str, expected: Option<&str>) -> Result<Dropped, ControlError> {
        let _guard = self.changes.lock().await;
        self.refuse_provisioned(name)?;
        self.check_version(name, expected)?;
        if !lock(&self.api).contains_key(name) {
            return Err(ControlError::NotFound(name.into()));
        }
        self.store(name, None).await?;
        self.last_seen.forget(name);
        Ok(self.dispatcher.discard(name).await?)
    }

    /// The console's toggle, for API-managed receivers.
    pub async fn set_enabled(
        &self,
        name: &str,
        enabled: bool,
        expected: Option<&str>,
    ) -> Result<ReceiverView, ControlError> {
        let _guard = self.changes.lock().await;
        self.refuse_provisioned(name)?;
        self.check_version(name, expected)?;
        let mut spec = lock(&self.api).get(name).cloned().ok_or_else(|| ControlError::NotFound(name.into()))?;
        spec.enabled = enabled;
        let receiver = check(&spec, &self.config())?;
        self.store(name, Some((spec, receiver.clone()))).await?;
        log::info!("receiver {name} {}", if enabled { "enabled" } else { "disabled" });
        Ok(self.view(&receiver))
    }

    /// Persists (or deletes) one API receiver, already checked, then applies
    /// the set in force with that one changed: the others keep their validated
    /// receiver (and so their HTTP client and its connections).
    async fn store(&self, name: &str, change: Option<(ReceiverSpec, Arc<Receiver>)>) -> Result<(), ControlError> {
        let op = match &change {
            Some((spec, _)) => Op::PutReceiver {
                name: name.into(),
                // A spec of strings, maps and numbers always serializes.
                spec: serde_json::to_vec(spec).unwrap_or_default(),
            },
            None => Op::DeleteReceiver { name: name.into() },
        };
        let mut api = lock(&self.api).clone();
        match &change {
            Some((spec, _)) => api.insert(name.into(), spec.clone()),
            None => api.remove(name),
        };
        let receivers = with_change(&self.dispatcher.receivers(), &api, name, change.map(|(_, r)| r));
        self.spool.commit(vec![op]).await?;
        *lock(&self.api) = api;
        Ok(self.dispatcher.apply(receivers).await?)
    }

    /// Send Test Message for a receiver in force.
    pub async fn test_saved(&self, name: &str, test: &TestAlert) -> Result<TestReport, ControlError> {
        let target = self.dispatcher.target(name).ok_or_else(|| ControlError::NotFound(name.into()))?;
        Ok(diagnose::send_test(&target, test).await)
    }

    /// Send Test Message for a receiver not saved yet (the form before OK). A
    /// `<redacted>` secret is that saved receiver's, for its own server only.
    pub async fn test_unsaved(&self, mut spec: ReceiverSpec, test: &TestAlert) -> Result<TestReport, ControlError> {
        if let Some(saved) = self.in_force(&spec.name) {
            spec.keep_secrets_of(&saved.spec).map_err(ControlError::Invalid)?;
        }
        let receiver = check(&spec, &self.config())?;
        let target = Target::new(receiver).map_err(|e| ControlError::Invalid(vec![e.to_string()]))?;
        Ok(diagnose::send_test(&target, test).await)
    }

    /// Every receiver's verdict on the alerts given.
    pub fn explain(&self, input: ExplainInput) -> Explanation {
        diagnose::explain(input, &self.dispatcher.receivers())
    }

    /// Every body format: alertmanager, template, then the presets.
    pub fn formats(&self) -> Vec<FormatInfo> {
        let mut list = vec![
            FormatInfo {
                name: "alertmanager",
                content_type: Some("application/json"),
                limits: "Alertmanager's webhook JSON, byte for byte",
                template: None,
            },
            FormatInfo { name: "template", content_type: None, limits: "your own MiniJinja template", template: None },
        ];
        list.extend(PRESETS.iter().map(|p| FormatInfo {
            name: p.name,
            content_type: Some(p.content_type),
            limits: p.limits,
            template: None,
        }));
        list
    }

    /// One preset with its template (the console's "Start from preset").
    pub fn format(&self, name: &str) -> Option<FormatInfo> {
        let p = crate::format::presets::preset(name)?;
        Some(FormatInfo {
            name: p.name,
            content_type: Some(p.content_type),
            limits: p.limits,
            template: Some(p.template),
        })
    }

    /// Renders a receiver's format (saved, or as being edited) for a sample
    /// or given notification. The notification is rendered as given: the
    /// receiver's conditions are explain's business.
    pub fn preview(&self, request: PreviewRequest) -> Result<Preview, ControlError> {
        let config = self.config();
        let payload = match (&request.payload, &request.receiver) {
            (Some(spec), _) => validate_payload(spec, &config).map_err(ControlError::Invalid)?,
            (None, Some(name)) => self
                .dispatcher
                .target(name)
                .ok_or_else(|| ControlError::NotFound(name.clone()))?
                .receiver
                .payload
                .clone(),
            (None, None) => return Err(ControlError::Invalid(vec!["give receiver or payload".into()])),
        };
        let receiver = request.receiver.clone().unwrap_or_else(|| "preview".into());
        let (sample, notification) = match (&request.notification, request.sample.as_deref()) {
            (Some(given), _) => ("given".to_string(), given.to_string().into_bytes()),
            (None, Some("last")) | (None, None) => match self.last_seen.get(&receiver) {
                Some(last) => ("last".to_string(), last.to_vec()),
                None if request.sample.is_some() => {
                    return Err(ControlError::Invalid(vec![format!(
                        "sample: receiver {receiver:?} has had no notification since the relay started"
                    )]))
                }
                None => ("firing".to_string(), sample("firing").unwrap_or_default().into_bytes()),
            },
            (None, Some(name)) => match sample(name) {
                Some(text) => (name.to_string(), text.into_bytes()),
                None => {
                    return Err(ControlError::Invalid(vec![format!(
                        "sample: {name:?} is not one of firing, mixed, resolved, grafana, large, last"
                    )]))
                }
            },
        };
        let body = payload
            .render(&notification, &receiver)
            .map_err(|e| ControlError::Invalid(vec![format!("payload.template: {e}")]))?;
        Ok(Preview {
            format: payload.format.as_str(),
            content_type: payload.content_type.clone(),
            sample,
            body: shown_body(&body),
            body_bytes: body.len(),
        })
    }

    /// Pending deliveries and dead letters, newest first, a page.
    pub async fn list_deliveries(&self, query: DeliveryQuery) -> Result<DeliveryPage, ControlError> {
        let spool = self.spool.clone();
        let limit = query.limit.clamp(1, 500);
        let (receiver, dead) = (query.receiver.clone(), query.dead);
        let page = tokio::task::spawn_blocking(move || {
            spool.list(query.before, limit + 1, |m| {
                receiver.as_ref().is_none_or(|r| &m.receiver == r) && dead.is_none_or(|d| m.dead.is_some() == d)
            })
        })
        .await
        .map_err(|e| SpoolError::Unavailable(format!("listing stopped: {e}")))??;
        let next = (page.len() > limit).then(|| page[limit - 1].0);
        let receivers = self.dispatcher.receivers();
        let deliveries = page
            .iter()
            .take(limit)
            .map(|(id, m)| delivery_view(*id, m, receivers.iter().any(|r| r.name == m.receiver)))
            .collect();
        Ok(DeliveryPage { deliveries, next })
    }

    pub async fn retry_dead(&self, id: u64) -> Result<(), ControlError> {
        let _guard = self.changes.lock().await;
        Ok(self.dispatcher.retry_dead(id).await?)
    }

    pub async fn delete_dead(&self, id: u64) -> Result<(), ControlError> {
        let _guard = self.changes.lock().await;
        Ok(self.dispatcher.delete_dead(id).await?)
    }

    /// Stops the workers: attempts in flight get until the longest receiver
    /// timeout (+1 s, at most `max_grace`) to finish. Returns what stays pending.
    pub async fn stop(&self, max_grace: Duration) -> usize {
        let longest = self.dispatcher.receivers().iter().map(|r| r.timeout).max().unwrap_or_default();
        self.dispatcher.shutdown((longest + Duration::from_secs(1)).min(max_grace)).await;
        self.dispatcher.pending()
    }

    /// Reloads whenever the config file's content changes (a Kubernetes
    /// ConfigMap is swapped through a symlink, so the content is compared, not
    /// the modification time). Ends when `control` is dropped elsewhere.
    pub fn watch_file(control: &Arc<Control>, every: Duration) {
        let Source::File(path) = control.source.clone() else { return };
        let weak = Arc::downgrade(control);
        let mut seen = std::fs::read(&path).ok();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(control) = weak.upgrade() else { return };
                let now = std::fs::read(&path).ok();
                if now.is_some() && now != seen {
                    seen = now;
                    log::info!("{} changed on disk; reloading", path.display());
                    let _ = control.reload().await;
                }
            }
        });
    }
}

/// Validates a spec and builds its HTTP client, so that applying it cannot fail.
fn check(spec: &ReceiverSpec, config: &Config) -> Result<Arc<Receiver>, ControlError> {
    let receiver = Arc::new(validate_receiver(spec, config).map_err(ControlError::Invalid)?);
    Target::new(receiver.clone()).map_err(|e| ControlError::Invalid(vec![e.to_string()]))?;
    Ok(receiver)
}

/// The receivers in force with one API receiver changed: the file's first, in
/// their order, then the API's by name (the order `effective` gives on start).
fn with_change(
    current: &[Arc<Receiver>],
    api: &BTreeMap<String, ReceiverSpec>,
    name: &str,
    changed: Option<Arc<Receiver>>,
) -> Vec<Arc<Receiver>> {
    let mut receivers: Vec<Arc<Receiver>> =
        current.iter().filter(|r| r.name != name && !api.contains_key(&r.name)).cloned().collect();
    let mut managed: BTreeMap<&str, Arc<Receiver>> = current
        .iter()
        .filter(|r| r.name != name && api.contains_key(&r.name))
        .map(|r| (r.name.as_str(), r.clone()))
        .collect();
    if let Some(receiver) = changed {
        managed.insert(name, receiver);
    }
    receivers.extend(managed.into_values());
    receivers
}

/// The file's receivers, then the API's (by name) that the file does not shadow.
fn effective(config: &Config, api: &BTreeMap<String, ReceiverSpec>) -> (Vec<Arc<Receiver>>, Vec<String>) {
    let mut receivers = config.receivers.clone();
    let mut errors = Vec::new();
    for (name, spec) in api {
        if config.receivers.iter().any(|r| &r.name == name) {
            log::warn!("API receiver {name} is shadowed by the provisioned receiver of the same name");
            continue;
        }
        match validate_receiver(spec, config) {
            Ok(r) => receivers.push(Arc::new(r)),
            Err(list) => errors.extend(list.into_iter().map(|e| format!("receiver {name}: {e}"))),
        }
    }
    (receivers, errors)
}

/// A receiver's version: a digest of its stored settings (secrets included,
/// so that a changed secret is a new version, though never shown).
fn version_of(spec: &ReceiverSpec) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    serde_json::to_string(spec).unwrap_or_default().hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn delivery_view(id: u64, meta: &DeliveryMeta, in_force: bool) -> DeliveryView {
    DeliveryView {
        id,
        receiver: meta.receiver.clone(),
        orphaned: !in_force,
        state: if meta.dead.is_some() { "dead" } else { "pending" },
        group_key: meta.group_key.clone(),
        alerts: meta.alerts,
        attempts: meta.attempts,
        created: rfc3339(meta.created_ms),
        first_attempt: meta.first_attempt_ms.map(rfc3339),
        next_attempt: if meta.dead.is_none() { Some(rfc3339(meta.next_due_ms)) } else { None },
        last_error: meta.last_error.clone(),
        dead_reason: meta.dead.map(|d| d.as_str()),
        body_bytes: meta.body_bytes,
    }
}

/// A sample notification by name.
fn sample(name: &str) -> Option<String> {
    crate::format::sample(name).map(str::to_string)
}
