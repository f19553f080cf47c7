//! Named scalar results of a step or a validation, in insertion order.
//!
//! A training step's metric is either a *share*: this rank's part of the whole batch's value
//! (a mean over its rows scaled by its share of the batch), which the loop sums over the ranks;
//! or *global*: the same on every rank (the gradient norm after the all-reduce).

use serde_json::{Map, Number, Value};

use crate::parallel::Shard;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    values: Vec<(String, f64)>,
    /// Per entry: summed over the ranks (a share) or not (global).
    share: Vec<bool>,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// A share of the whole batch's value (or, outside training steps, simply a value).
    pub fn push(&mut self, name: impl Into<String>, value: f64) {
        self.values.push((name.into(), value));
        self.share.push(true);
    }

    /// A value every rank has alike.
    pub fn push_global(&mut self, name: impl Into<String>, value: f64) {
        self.values.push((name.into(), value));
        self.share.push(false);
    }

    /// The whole batch's metrics: every share summed over the ranks of `shard` (one collective;
    /// every rank must hold the same entries).
    pub fn reduce(mut self, shard: &Shard) -> anyhow::Result<Self> {
        if shard.world() == 1 {
            return Ok(self);
        }
        let shares: Vec<f64> = self
            .values
            .iter()
            .zip(&self.share)
            .filter(|(_, &s)| s)
            .map(|((_, v), _)| *v)
            .collect();
        let mut sums = shard.sum(&shares)?.into_iter();
        for ((_, v), &s) in self.values.iter_mut().zip(&self.share) {
            if s {
                *v = sums.next().unwrap_or(*v);
            }
        }
        Ok(self)
    }

    pub fn get(&self, name: &str) -> Option<f64> {
        self.values.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> {
        self.values.iter().map(|(n, v)| (n.as_str(), *v))
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
