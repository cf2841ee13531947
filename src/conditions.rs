//! Notification conditions: the label tests a receiver's alerts must pass.

use std::collections::HashSet;
use std::fmt;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::alert::{Label, LabelSet};

/// The operators of KubeSphere's "Notification conditions", plus regex matching.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
    Matches,
    NotMatches,
}

impl Operator {
    /// How the console (and KubeSphere's settings page) says it.
    pub fn wording(self) -> &'static str {
        match self {
            Operator::In => "Includes values",
            Operator::NotIn => "Does not include values",
            Operator::Exists => "Exists",
            Operator::DoesNotExist => "Does not exist",
            Operator::Matches => "Regex match",
            Operator::NotMatches => "Regex does not match",
        }
    }
}

/// A condition as written in the config file or sent to the admin API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionSpec {
    pub label: String,
    pub operator: Operator,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConditionError {
    #[error("label: must not be empty")]
    EmptyLabel,
    #[error("values: \"{}\" needs at least one value", .0.wording())]
    NoValues(Operator),
    #[error("values: \"{}\" takes no values", .0.wording())]
    UnexpectedValues(Operator),
    #[error("values: \"{}\" takes exactly one regex, got {}", .0.wording(), .1)]
    OneRegex(Operator, usize),
    #[error("values[0]: invalid regex {pattern:?}: {message}")]
    BadRegex { pattern: String, message: String },
}

/// The values of `In` / `NotIn`: a short list is scanned (faster than hashing
/// the label value), a long one is hashed.
#[derive(Debug, Clone)]
enum ValueSet {
    Few(Vec<String>),
    Many(HashSet<String>),
}

/// Up to this many values are scanned rather than hashed.
const SCAN_LIMIT: usize = 8;

impl ValueSet {
    fn new(mut values: Vec<String>) -> ValueSet {
        values.sort();
        values.dedup();
        if values.len() <= SCAN_LIMIT {
            ValueSet::Few(values)
        } else {
            ValueSet::Many(values.into_iter().collect())
        }
    }

    fn contains(&self, value: &str) -> bool {
        match self {
            ValueSet::Few(values) => values.iter().any(|v| v == value),
            ValueSet::Many(values) => values.contains(value),
        }
    }
}

#[derive(Debug, Clone)]
enum Test {
    In(ValueSet),
    NotIn(ValueSet),
    Exists,
    DoesNotExist,
    Matches(Regex),
    NotMatches(Regex),
}

/// A validated condition: it can only be built from a spec that makes sense.
#[derive(Debug, Clone)]
pub struct Condition {
    spec: ConditionSpec,
    test: Test,
}

impl Condition {
    pub fn try_new(spec: ConditionSpec) -> Result<Condition, ConditionError> {
        if spec.label.is_empty() {
            return Err(ConditionError::EmptyLabel);
        }
        let op = spec.operator;
        let values = spec.values.clone().unwrap_or_default();
        let test = match op {
            Operator::In | Operator::NotIn => {
                if values.is_empty() {
                    return Err(ConditionError::NoValues(op));
                }
                let set = ValueSet::new(values);
                if op == Operator::In {
                    Test::In(set)
                } else {
                    Test::NotIn(set)
                }
            }
            Operator::Exists | Operator::DoesNotExist => {
                // `values: []` as Kubernetes label selectors accept it.
                if !values.is_empty() {
                    return Err(ConditionError::UnexpectedValues(op));
                }
                if op == Operator::Exists {
                    Test::Exists
                } else {
                    Test::DoesNotExist
                }
            }
            Operator::Matches | Operator::NotMatches => {
                if values.len() != 1 {
                    return Err(ConditionError::OneRegex(op, values.len()));
                }
                let pattern = &values[0];
                // Anchored like Alertmanager's matchers.
                let re = Regex::new(&format!("^(?:{pattern})$")).map_err(|e| ConditionError::BadRegex {
                    pattern: pattern.clone(),
                    message: e.to_string().lines().last().unwrap_or_default().trim_start_matches("error: ").to_string(),
                })?;
                if op == Operator::Matches {
                    Test::Matches(re)
                } else {
                    Test::NotMatches(re)
                }
            }
        };
        Ok(Condition { spec, test })
    }

    pub fn spec(&self) -> &ConditionSpec {
        &self.spec
    }

    pub fn matches(&self, labels: &LabelSet) -> bool {
        let value = labels.get(self.spec.label.as_str()).map(Label::as_str);
        match &self.test {
            Test::In(set) => value.is_some_and(|v| set.contains(v)),
            Test::NotIn(set) => value.is_none_or(|v| !set.contains(v)),
            Test::Exists => value.is_some(),
            Test::DoesNotExist => value.is_none(),
            Test::Matches(re) => re.is_match(value.unwrap_or("")),
            Test::NotMatches(re) => !re.is_match(value.unwrap_or("")),
        }
    }
}

/// In the console's words: `severity Includes values critical, warning`.
impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.spec.label, self.spec.operator.wording())?;
        match self.spec.values.as_deref() {
            Some(values) if !values.is_empty() => write!(f, " {}", values.join(", ")),
            _ => Ok(()),
        }
    }
}

/// Index of the first condition the labels fail, if any (conditions are ANDed).
pub fn first_failing(conditions: &[Condition], labels: &LabelSet) -> Option<usize> {
    conditions.iter().position(|c| !c.matches(labels))
}

/// Indexes of every condition the labels fail.
pub fn failing(conditions: &[Condition], labels: &LabelSet) -> Vec<usize> {
    conditions.iter().enumerate().filter(|(_, c)| !c.matches(labels)).map(|(i, _)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cond(label: &str, operator: Operator, values: Option<&[&str]>) -> Condition {
        Condition::try_new(ConditionSpec {
            label: label.into(),
            operator,
            values: values.map(|v| v.iter().map(|s| s.to_string()).collect()),
        })
        .unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> LabelSet {
        pairs.iter().map(|(k, v)| (Label::from(*k), Label::from(*v))).collect()
    }

    #[test]
    fn operators_on_present_empty_and_missing_labels() {
        let present = labels(&[("severity", "critical")]);
        let empty = labels(&[("severity", "")]);
        let missing = labels(&[("other", "x")]);
        let cases: Vec<(Condition, [bool; 3])> = vec![
            (cond("severity", Operator::In, Some(&["critical", "warning"])), [true, false, false]),
            (cond("severity", Operator::In, Some(&[""])), [false, true, false]),
            (cond("severity", Operator::NotIn, Some(&["critical"])), [false, true, true]),
            (cond("severity", Operator::NotIn, Some(&[""])), [true, false, true]),
            (cond("severity", Operator::Exists, None), [true, true, false]),
            (cond("severity", Operator::DoesNotExist, None), [false, false, true]),
            (cond("severity", Operator::Matches, Some(&["crit.*"])), [true, false, false]),
            (cond("severity", Operator::Matches, Some(&[".*"])), [true, true, true]),
            (cond("severity", Operator::Matches, Some(&[""])), [false, true, true]),
            (cond("severity", Operator::NotMatches, Some(&["crit.*"])), [false, true, true]),
            (cond("severity", Operator::NotMatches, Some(&[".+"])), [false, true, true]),
        ];
        for (c, [p, e, m]) in cases {
            assert_eq!(c.matches(&present), p, "{c} on present");
            assert_eq!(c.matches(&empty), e, "{c} on empty");
            assert_eq!(c.matches(&missing), m, "{c} on missing");
        }
    }

    #[test]
    fn long_value_lists_match_like_short_ones() {
        let many: Vec<String> = (0..50).map(|i| format!("ns-{i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let c = cond("namespace", Operator::In, Some(&refs));
        assert!(c.matches(&labels(&[("namespace", "ns-49")])));
        assert!(!c.matches(&labels(&[("namespace", "ns-50")])));
        let c = cond("namespace", Operator::NotIn, Some(&refs));
        assert!(!c.matches(&labels(&[("namespace", "ns-0")])));
        assert!(c.matches(&labels(&[])));
    }

    #[test]
    fn regex_is_anchored() {
        let c = cond("pod", Operator::Matches, Some(&["api"]));
        assert!(c.matches(&labels(&[("pod", "api")])));
        assert!(!c.matches(&labels(&[("pod", "api-7d9f")])));
        assert!(!c.matches(&labels(&[("pod", "my-api")])));
        // Alternation must not escape the anchors.
        let c = cond("pod", Operator::Matches, Some(&["a|b"]));
        assert!(!c.matches(&labels(&[("pod", "xa")])));
    }

    #[test]
    fn invalid_specs_are_refused() {
        let spec = |op, values: Option<Vec<&str>>| ConditionSpec {
            label: "l".into(),
            operator: op,
            values: values.map(|v| v.into_iter().map(String::from).collect()),
        };
        assert_eq!(Condition::try_new(spec(Operator::In, None)).unwrap_err(), ConditionError::NoValues(Operator::In));
        assert_eq!(
            Condition::try_new(spec(Operator::NotIn, Some(vec![]))).unwrap_err(),
            ConditionError::NoValues(Operator::NotIn)
        );
        assert_eq!(
            Condition::try_new(spec(Operator::Exists, Some(vec!["x"]))).unwrap_err(),
            ConditionError::UnexpectedValues(Operator::Exists)
        );
        // An empty list is no values, as Kubernetes' label selectors take it.
        let exists = Condition::try_new(spec(Operator::Exists, Some(vec![]))).unwrap();
        assert_eq!(exists.to_string(), "l Exists", "no values, nothing after the wording");
        assert!(Condition::try_new(spec(Operator::DoesNotExist, Some(vec![]))).is_ok());
        let shown = Condition::try_new(spec(Operator::In, Some(vec!["a", "b"]))).unwrap().to_string();
        assert_eq!(shown, "l Includes values a, b");
        assert_eq!(
            Condition::try_new(spec(Operator::Matches, Some(vec!["a", "b"]))).unwrap_err(),
            ConditionError::OneRegex(Operator::Matches, 2)
        );
        let err = Condition::try_new(spec(Operator::NotMatches, Some(vec!["(unclosed"]))).unwrap_err();
        assert!(err.to_string().starts_with("values[0]: invalid regex \"(unclosed\""), "{err}");
        let mut empty_label = spec(Operator::Exists, None);
        empty_label.label.clear();
        assert_eq!(Condition::try_new(empty_label).unwrap_err(), ConditionError::EmptyLabel);
    }

    #[test]
    fn conditions_are_anded_and_first_failure_is_named() {
        let cs = vec![cond("severity", Operator::In, Some(&["critical"])), cond("namespace", Operator::Exists, None)];
        assert_eq!(first_failing(&cs, &labels(&[("severity", "critical"), ("namespace", "")])), None);
        assert_eq!(first_failing(&cs, &labels(&[("severity", "critical")])), Some(1));
        assert_eq!(first_failing(&cs, &labels(&[("namespace", "x")])), Some(0));
        assert_eq!(first_failing(&[], &labels(&[])), None);
        // Every failing one, in order, for the test message's `blocked_by`.
        assert_eq!(failing(&cs, &labels(&[])), [0, 1]);
        assert_eq!(failing(&cs, &labels(&[("namespace", "x")])), [0]);
        assert_eq!(failing(&cs, &labels(&[("severity", "critical")])), [1]);
        assert!(failing(&cs, &labels(&[("severity", "critical"), ("namespace", "")])).is_empty());
    }

    proptest! {
        #[test]
        fn not_in_is_the_negation_of_in(
            values in proptest::collection::vec("[a-c]{0,2}", 1..4),
            label in proptest::option::of("[a-c]{0,2}"),
        ) {
            let vals: Vec<&str> = values.iter().map(String::as_str).collect();
            let set = match &label { Some(v) => labels(&[("k", v)]), None => labels(&[]) };
            let is_in = cond("k", Operator::In, Some(&vals)).matches(&set);
            let not_in = cond("k", Operator::NotIn, Some(&vals)).matches(&set);
            prop_assert_ne!(is_in, not_in);
        }

        #[test]
        fn not_matches_is_the_negation_of_matches(
            pattern in "[a-c.*|]{0,4}",
            label in proptest::option::of("[a-c]{0,3}"),
        ) {
            let spec = |op| ConditionSpec { label: "k".into(), operator: op, values: Some(vec![pattern.clone()]) };
            let compiles = regex::Regex::new(&pattern).is_ok();
            let (m, n) = (Condition::try_new(spec(Operator::Matches)), Condition::try_new(spec(Operator::NotMatches)));
            // A pattern is refused exactly when it is not a regex, by both.
            prop_assert_eq!(m.is_ok(), compiles);
            prop_assert_eq!(n.is_ok(), compiles);
            if let (Ok(m), Ok(n)) = (m, n) {
                let set = match &label { Some(v) => labels(&[("k", v)]), None => labels(&[]) };
                prop_assert_ne!(m.matches(&set), n.matches(&set));
            }
        }

        #[test]
        fn exists_is_the_negation_of_does_not_exist(label in proptest::option::of("[a-c]{0,2}")) {
            let set = match &label { Some(v) => labels(&[("k", v)]), None => labels(&[]) };
            prop_assert_ne!(
                cond("k", Operator::Exists, None).matches(&set),
                cond("k", Operator::DoesNotExist, None).matches(&set)
            );
        }
    }

    /// The obviously correct evaluator the engine is checked against: a
    /// straight reading of DESIGN.md's table, no precompiled sets or regexes.
    fn reference(label: &str, operator: Operator, values: &[String], set: &LabelSet) -> bool {
        let value = set.get(label).map(Label::as_str);
        let anchored = || regex::Regex::new(&format!("^(?:{})$", values[0])).unwrap();
        match operator {
            Operator::In => value.is_some_and(|v| values.iter().any(|x| x == v)),
            Operator::NotIn => !value.is_some_and(|v| values.iter().any(|x| x == v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
            Operator::Matches => anchored().is_match(value.unwrap_or("")),
            Operator::NotMatches => !anchored().is_match(value.unwrap_or("")),
        }
    }

    fn operator() -> impl Strategy<Value = Operator> {
        proptest::sample::select(vec![
            Operator::In,
            Operator::NotIn,
            Operator::Exists,
            Operator::DoesNotExist,
            Operator::Matches,
            Operator::NotMatches,
        ])
    }

    proptest! {
        /// Every operator agrees with the reference on generated label sets:
        /// missing and empty labels, and value lists long enough (up to 20) to
        /// take the hashed path past 8 values.
        #[test]
        fn conditions_agree_with_the_reference_model(
            op in operator(),
            label in "[a-c]{1,2}",
            values in proptest::collection::vec("[a-c]{0,2}", 1..20),
            pattern in "[a-c.*|?]{0,5}",
            set in proptest::collection::btree_map("[a-c]{1,2}", "[a-c]{0,2}", 0..6),
        ) {
            let set: LabelSet = set.iter().map(|(k, v)| (Label::from(k), Label::from(v))).collect();
            let values = match op {
                Operator::Exists | Operator::DoesNotExist => None,
                Operator::Matches | Operator::NotMatches => Some(vec![pattern]),
                Operator::In | Operator::NotIn => Some(values),
            };
            let spec = ConditionSpec { label: label.clone(), operator: op, values: values.clone() };
            let Ok(condition) = Condition::try_new(spec) else {
                // Only a pattern that is no regex may be refused.
                prop_assert!(matches!(op, Operator::Matches | Operator::NotMatches));
                return Ok(());
            };
            let values = values.unwrap_or_default();
            prop_assert_eq!(condition.matches(&set), reference(&label, op, &values, &set), "{:?} {:?} on {:?}", op, values, set);
        }
    }
}
