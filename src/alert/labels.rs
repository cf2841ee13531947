//! A label or annotation set: pairs sorted by name, each name once.
//!
//! A sorted vector, not a B-tree: Alertmanager sends names sorted, so
//! reading a set is one comparison and a push per pair, and dropping it is
//! one free. (A B-tree's entry and insert cost about 230 instructions per
//! pair and its drop walked every node; the vector saves about 1.6 % of a
//! webhook's instructions, BENCHMARKS.md, "Session 10".) Lookups are binary
//! searches; sets are small (a few to a few dozen pairs). Iteration,
//! equality, serialization and the notification log's hash see the pairs in
//! the same order as a `BTreeMap` would.

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Label;

#[derive(Clone, Default, PartialEq, Eq)]
pub struct LabelSet(Vec<(Label, Label)>);

impl LabelSet {
    pub fn new() -> LabelSet {
        LabelSet(Vec::new())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn find(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(name))
    }

    /// The value of `name`, if the set has it.
    pub fn get(&self, name: &str) -> Option<&Label> {
        self.find(name).ok().map(|i| &self.0[i].1)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.find(name).is_ok()
    }

    /// Sets `name` to `value`; the value it had, if any.
    pub fn insert(&mut self, name: Label, value: Label) -> Option<Label> {
        match self.find(&name) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (name, value));
                None
            }
        }
    }

    /// Adds `name` unless the set has it already (then false, and the set is
    /// unchanged). A name past every one held, as in sorted input, is pushed.
    pub fn insert_new(&mut self, name: Label, value: Label) -> bool {
        if self.0.last().is_none_or(|(last, _)| *last < name) {
            self.0.push((name, value));
            return true;
        }
        match self.find(&name) {
            Ok(_) => false,
            Err(i) => {
                self.0.insert(i, (name, value));
                true
            }
        }
    }

    /// The pairs, sorted by name.
    pub fn iter(&self) -> Iter<'_> {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

pub type Iter<'a> =
    std::iter::Map<std::slice::Iter<'a, (Label, Label)>, fn(&'a (Label, Label)) -> (&'a Label, &'a Label)>;

impl<'a> IntoIterator for &'a LabelSet {
    type Item = (&'a Label, &'a Label);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl IntoIterator for LabelSet {
    type Item = (Label, Label);
    type IntoIter = std::vec::IntoIter<(Label, Label)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// A name given twice keeps its last value, as a `BTreeMap` collected.
impl Extend<(Label, Label)> for LabelSet {
    fn extend<I: IntoIterator<Item = (Label, Label)>>(&mut self, pairs: I) {
        for (name, value) in pairs {
            self.insert(name, value);
        }
    }
}

impl FromIterator<(Label, Label)> for LabelSet {
    fn from_iter<I: IntoIterator<Item = (Label, Label)>>(pairs: I) -> LabelSet {
        let mut set = LabelSet::new();
        set.extend(pairs);
        set
    }
}

impl<const N: usize> From<[(Label, Label); N]> for LabelSet {
    fn from(pairs: [(Label, Label); N]) -> LabelSet {
        pairs.into_iter().collect()
    }
}

impl fmt::Debug for LabelSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// A JSON object, names sorted.
impl Serialize for LabelSet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

/// From an object of string values; a name given twice keeps its last value,
/// as a `BTreeMap` read it (the webhook's parser refuses that instead).
impl<'de> Deserialize<'de> for LabelSet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<LabelSet, D::Error> {
        struct Pairs;
        impl<'de> Visitor<'de> for Pairs {
            type Value = LabelSet;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of string values")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LabelSet, A::Error> {
                let mut set = LabelSet::new();
                while let Some((name, value)) = map.next_entry::<Label, Label>()? {
                    set.insert(name, value);
                }
                Ok(set)
            }
        }
        deserializer.deserialize_map(Pairs)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn pairs() -> impl Strategy<Value = Vec<(String, String)>> {
        // Few distinct names, so that names repeat.
        proptest::collection::vec(("[a-d]{0,2}", "[x-z]{0,2}"), 0..12)
    }

    proptest! {
        /// Whatever the order and repeats, the set reads as the B-tree it
        /// replaces: lookups, iteration, JSON both ways, and insert_new.
        #[test]
        fn reads_as_a_btree_map(pairs in pairs(), probe in "[a-e]{0,2}") {
            let labels = |v: &[(String, String)]| -> Vec<(Label, Label)> {
                v.iter().map(|(k, v)| (Label::from(k.as_str()), Label::from(v.as_str()))).collect()
            };
            let set: LabelSet = labels(&pairs).into_iter().collect();
            let map: BTreeMap<Label, Label> = labels(&pairs).into_iter().collect();
            prop_assert_eq!(set.len(), map.len());
            prop_assert_eq!(set.get(&probe), map.get(probe.as_str()));
            prop_assert_eq!(set.contains_key(&probe), map.contains_key(probe.as_str()));
            prop_assert!(set.iter().eq(map.iter()));
            prop_assert_eq!(format!("{set:?}"), format!("{map:?}"));
            let json = serde_json::to_string(&set).unwrap();
            prop_assert_eq!(&json, &serde_json::to_string(&map).unwrap());
            let back: LabelSet = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(&back, &set);

            // insert_new: the first value of each name, as a map's entry API
            // with or_insert would keep.
            let mut first = LabelSet::new();
            let mut reference: BTreeMap<Label, Label> = BTreeMap::new();
            for (k, v) in labels(&pairs) {
                let fresh = !reference.contains_key(&k);
                reference.entry(k.clone()).or_insert(v.clone());
                prop_assert_eq!(first.insert_new(k, v), fresh);
            }
            prop_assert!(first.iter().eq(reference.iter()));
        }
    }

    #[test]
    fn a_name_given_twice_in_json_keeps_its_last_value() {
        let set: LabelSet = serde_json::from_str(r#"{"b":"1","a":"2","b":"3"}"#).unwrap();
        assert_eq!(serde_json::to_string(&set).unwrap(), r#"{"a":"2","b":"3"}"#);
        assert!(serde_json::from_str::<LabelSet>(r#"{"a":1}"#).is_err());
    }
}
