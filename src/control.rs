//! The control plane: which receivers are in force (provisioned from the config
//! file, plus API-managed ones kept in the spool), reloads and admin changes.
//! Every change is validated whole, then applied at once; changes are
//! serialised, and readers always see one complete configuration.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::{validate_receiver, Config, ConfigErrors, Receiver, ReceiverSpec, Source};
use crate::delivery::sender::Target;
use crate::delivery::{DeadLetterError, Dispatcher, Dropped};
use crate::metrics::Metrics;
use crate::spool::{Op, Spool};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no receiver named {0:?}")]
    NotFound(String),
    #[error("receiver {name:?} is provisioned by {file}: change it there and reload")]
    Provisioned { name: String, file: String },
    #[error("invalid receiver")]
    Invalid(Vec<String>),
    #[error("{0}")]
    Internal(String),
}

pub struct Control {
    source: Source,
    config: RwLock<Arc<Config>>,
    /// API-managed receivers by name, as stored.
    api: Mutex<BTreeMap<String, ReceiverSpec>>,
    /// Held by whoever changes the configuration.
    changes: tokio::sync::Mutex<()>,
    pub dispatcher: Arc<Dispatcher>,
    spool: Arc<Spool>,
    metrics: Arc<Metrics>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Control {
    /// Loads the API-managed receivers from the spool and starts the dispatcher
    /// with them and the file's.
    pub async fn start(
        source: Source,
        config: Config,
        spool: Arc<Spool>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Control>, String> {
        let mut api = BTreeMap::new();
        for (name, json) in spool.receivers().map_err(|e| e.to_string())? {
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
        metrics.reload_successful.set(1);
        metrics.reload_timestamp.set(unix_now());
        Ok(Arc::new(Control {
            source,
            config: RwLock::new(Arc::new(config)),
            api: Mutex::new(api),
            changes: tokio::sync::Mutex::new(()),
            dispatcher,
            spool,
            metrics,
        }))
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.config.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Where provisioned receivers come from, for messages.
    pub fn source_name(&self) -> String {
        match &self.source {
            Source::File(p) => p.display().to_string(),
            Source::Embedded => "the embedded default configuration".into(),
        }
    }

    pub fn is_provisioned(&self, name: &str) -> bool {
        self.config().receivers.iter().any(|r| r.name == name)
    }

    /// A receiver in force, by name.
    pub fn receiver(&self, name: &str) -> Option<Arc<Receiver>> {
        self.dispatcher.receivers().iter().find(|r| r.name == name).cloned()
    }

    /// Re-reads the configuration source. On any error the running
    /// configuration stays and the errors are returned.
    pub async fn reload(&self) -> Result<usize, ConfigErrors> {
        let _guard = self.changes.lock().await;
        let result = self.try_reload().await;
        match &result {
            Ok(n) => {
                self.metrics.reload_successful.set(1);
                self.metrics.reload_timestamp.set(unix_now());
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
        if old.server.listen != config.server.listen || old.spool.dir != config.spool.dir {
            log::warn!("server.listen and spool.dir take effect at the next restart");
        }
        let count = receivers.len();
        self.dispatcher.apply(receivers).await.map_err(|e| ConfigErrors(vec![e]))?;
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        Ok(count)
    }

    fn refuse_provisioned(&self, name: &str) -> Result<(), ControlError> {
        if self.is_provisioned(name) {
            return Err(ControlError::Provisioned { name: name.into(), file: self.source_name() });
        }
        Ok(())
    }

    /// Creates or replaces an API-managed receiver; true when created.
    pub async fn put(&self, mut spec: ReceiverSpec) -> Result<(bool, Arc<Receiver>), ControlError> {
        let _guard = self.changes.lock().await;
        let name = spec.name.clone();
        self.refuse_provisioned(&name)?;
        let stored = lock(&self.api).get(&name).cloned();
        if let Some(old) = &stored {
            spec.keep_secrets_of(old).map_err(ControlError::Invalid)?;
        }
        let receiver = check(&spec, &self.config())?;
        self.store(&name, Some((spec, receiver.clone()))).await?;
        Ok((stored.is_none(), receiver))
    }

    /// Deletes an API-managed receiver and what it still had in the spool.
    pub async fn delete(&self, name: &str) -> Result<Dropped, ControlError> {
        let _guard = self.changes.lock().await;
        self.refuse_provisioned(name)?;
        if !lock(&self.api).contains_key(name) {
            return Err(ControlError::NotFound(name.into()));
        }
        self.store(name, None).await?;
        self.dispatcher.discard(name).await.map_err(|e| ControlError::Internal(e.to_string()))
    }

    /// The console's toggle, for API-managed receivers.
    pub async fn set_enabled(&self, name: &str, enabled: bool) -> Result<Arc<Receiver>, ControlError> {
        let _guard = self.changes.lock().await;
        self.refuse_provisioned(name)?;
        let mut spec = lock(&self.api).get(name).cloned().ok_or_else(|| ControlError::NotFound(name.into()))?;
        spec.enabled = enabled;
        let receiver = check(&spec, &self.config())?;
        self.store(name, Some((spec, receiver.clone()))).await?;
        log::info!("receiver {name} {}", if enabled { "enabled" } else { "disabled" });
        Ok(receiver)
    }

    /// Persists (or deletes) one API receiver, already checked, then applies
    /// the set in force with that one changed: the others keep their validated
    /// receiver (and so their HTTP client and its connections).
    async fn store(&self, name: &str, change: Option<(ReceiverSpec, Arc<Receiver>)>) -> Result<(), ControlError> {
        let op = match &change {
            Some((spec, _)) => Op::PutReceiver {
                name: name.into(),
                spec: serde_json::to_vec(spec).map_err(|e| ControlError::Internal(e.to_string()))?,
            },
            None => Op::DeleteReceiver { name: name.into() },
        };
        let mut api = lock(&self.api).clone();
        let current = self.dispatcher.receivers();
        let mut receivers: Vec<Arc<Receiver>> =
            current.iter().filter(|r| r.name != name && !api.contains_key(&r.name)).cloned().collect();
        match change {
            Some((spec, receiver)) => {
                api.insert(name.into(), spec);
                // The API's receivers follow the file's, by name, as on start.
                let mut managed: BTreeMap<&str, Arc<Receiver>> = current
                    .iter()
                    .filter(|r| api.contains_key(&r.name))
                    .map(|r| (r.name.as_str(), r.clone()))
                    .collect();
                managed.insert(name, receiver);
                receivers.extend(managed.into_values());
            }
            None => {
                api.remove(name);
                receivers.extend(current.iter().filter(|r| r.name != name && api.contains_key(&r.name)).cloned());
            }
        }
        self.spool.commit(vec![op]).await.map_err(|e| ControlError::Internal(e.to_string()))?;
        *lock(&self.api) = api;
        self.dispatcher.apply(receivers).await.map_err(ControlError::Internal)
    }

    pub async fn retry_dead(&self, id: u64) -> Result<(), DeadLetterError> {
        let _guard = self.changes.lock().await;
        self.dispatcher.retry_dead(id).await
    }

    pub async fn delete_dead(&self, id: u64) -> Result<(), DeadLetterError> {
        let _guard = self.changes.lock().await;
        self.dispatcher.delete_dead(id).await
    }

    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    /// Why the spool does not accept writes now, if it does not.
    pub fn spool_problem(&self) -> Option<String> {
        self.spool.problem()
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
pub fn check(spec: &ReceiverSpec, config: &Config) -> Result<Arc<Receiver>, ControlError> {
    let receiver = Arc::new(validate_receiver(spec, config).map_err(ControlError::Invalid)?);
    Target::new(receiver.clone()).map_err(|e| ControlError::Invalid(vec![e]))?;
    Ok(receiver)
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

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}
