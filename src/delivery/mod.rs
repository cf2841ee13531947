//! Getting deliveries to their targets: the dispatcher and its workers, the HTTP
//! sender with auth and TLS, and the retry policy with attempt classification.

pub mod dispatcher;
pub mod retry;
pub mod sender;
pub mod tls;

pub use dispatcher::{DeadLetterError, Dispatcher, Dropped, NewDelivery};
