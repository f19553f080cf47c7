//! Named scalar results of a step or a validation, in insertion order.

use serde_json::{Map, Number, Value};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics(Vec<(String, f64)>);

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, name: impl Into<String>, value: f64) {
        self.0.push((name.into(), value));
    }

    pub fn get(&self, name: &str) -> Option<f64> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> {
        self.0.iter().map(|(n, v)| (n.as_str(), *v))
    }

    /// First non-finite entry, if any.
    pub fn non_finite(&self) -> Option<(&str, f64)> {
        self.iter().find(|(_, v)| !v.is_finite())
    }

    /// Adds every entry to a JSON object (non-finite numbers become `null`).
    pub fn write_json(&self, obj: &mut Map<String, Value>) {
        for (n, v) in self.iter() {
            obj.insert(
                n.to_string(),
                Number::from_f64(v).map_or(Value::Null, Value::Number),
            );
        }
    }

    /// `name value` pairs for a progress line.
    pub fn short(&self, names: &[&str]) -> String {
        names
            .iter()
            .filter_map(|n| self.get(n).map(|v| format!("{n} {v:.4}")))
            .collect::<Vec<_>>()
            .join("  ")
    }
}
