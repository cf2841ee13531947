//! The condition engine: any condition either is refused at load or evaluates
//! on any label set, and each operator agrees with its negation.
#![no_main]

use alert_relay::alert::LabelSet;
use alert_relay::conditions::{Condition, ConditionSpec, Operator};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // "op|label|v1,v2,...|k=v;k=v"
    let mut parts = text.splitn(4, '|');
    let (Some(op), Some(label), Some(values), Some(labels)) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    let operator = match op.bytes().next().unwrap_or(0) % 6 {
        0 => Operator::In,
        1 => Operator::NotIn,
        2 => Operator::Exists,
        3 => Operator::DoesNotExist,
        4 => Operator::Matches,
        _ => Operator::NotMatches,
    };
    let values: Option<Vec<String>> =
        if values.is_empty() { None } else { Some(values.split(',').map(String::from).collect()) };
    let set: LabelSet =
        labels.split(';').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.into(), v.into())).collect();
    let spec = ConditionSpec { label: label.to_string(), operator, values };
    let Ok(condition) = Condition::try_new(spec.clone()) else { return };
    let result = condition.matches(&set);
    let negated = match operator {
        Operator::In => Operator::NotIn,
        Operator::NotIn => Operator::In,
        Operator::Exists => Operator::DoesNotExist,
        Operator::DoesNotExist => Operator::Exists,
        Operator::Matches => Operator::NotMatches,
        Operator::NotMatches => Operator::Matches,
    };
    let other = Condition::try_new(ConditionSpec { operator: negated, ..spec }).expect("the negation loads too");
    assert_ne!(result, other.matches(&set));
});
