//! Getting deliveries to their targets: per-receiver queues (the pure state
//! machine), the workers that make attempts, the dispatcher that wires them and
//! applies receiver sets, and the HTTP sender. The retry policy and TLS
//! configuration it uses live on the ground floor (`crate::retry`, `crate::tls`).

pub mod dispatcher;
pub mod oauth;
pub mod queue;
pub mod sender;
#[cfg(test)]
mod timing_tests;
mod worker;

pub use dispatcher::{DeadLetterError, DispatchError, Dispatcher, Dropped, NewDelivery};
