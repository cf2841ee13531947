//! The webhook payload parser: any bytes give a payload or an error naming a
//! field, never a panic; the one-pass scan reads a body exactly as the serde
//! path does (or leaves it to it); what parses serializes to JSON that parses
//! again to the same notification.
#![no_main]

use alert_relay::alert::Notification;
use libfuzzer_sys::fuzz_target;

fn fields(n: &Notification) -> Vec<String> {
    n.alerts.iter().map(|a| format!("{:?} {:?} {:?}", a.status, a.labels, a.annotations)).collect()
}

fuzz_target!(|data: &[u8]| {
    let parsed = Notification::parse(data);
    let reference = Notification::parse_with_serde(data);
    match (&parsed, &reference) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b);
            assert_eq!(fields(a), fields(b));
        }
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        _ => panic!("parse and the serde path disagree: {parsed:?} vs {reference:?}"),
    }
    let Ok(n) = parsed else { return };
    let again = serde_json::to_vec(&n).expect("a parsed notification serializes");
    let back = Notification::parse(&again).expect("what the relay forwards parses again");
    assert_eq!(back, n);
});
