//! The webhook payload parser: any bytes give a payload or an error naming a
//! field, never a panic; what parses serializes to JSON that parses again to
//! the same notification.
#![no_main]

use alert_relay::alert::Notification;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(n) = Notification::parse(data) else { return };
    let again = serde_json::to_vec(&n).expect("a parsed notification serializes");
    let back = Notification::parse(&again).expect("what the relay forwards parses again");
    assert_eq!(back, n);
});
