//! The config loader: YAML files, and receivers as the admin API takes them
//! (JSON), give a config or errors, never a panic. The first byte picks which.
#![no_main]

use alert_relay::config::{validate_receiver, Config, ReceiverSpec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    if which % 2 == 0 {
        if let Err(e) = Config::from_yaml(text) {
            assert!(!e.0.is_empty(), "an error lists what is wrong");
        }
    } else if let Ok(spec) = serde_json::from_str::<ReceiverSpec>(text) {
        // No files under an API receiver: the fuzzer never reads the host.
        let config = Config::from_yaml("receivers: []").expect("an empty config is valid");
        let _ = validate_receiver(&spec, &config);
        let _ = spec.redacted();
    }
});
