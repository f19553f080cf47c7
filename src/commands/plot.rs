//! `movq plot`: training curves of runs from their `metrics.jsonl`, one panel per metric.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};

use crate::cli::PlotArgs;
use crate::data::chart::{render, Panel, Series, Style, PALETTE};
use crate::data::image::save_png;

/// A run's logged records.
struct Logged {
    name: String,
    records: Vec<Map<String, Value>>,
}

fn read_log(run: &Path) -> Result<Vec<Map<String, Value>>> {
    let path = run.join("metrics.jsonl");
    if !run.is_dir() {
        bail!("run directory {} does not exist", run.display());
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{} has no metrics.jsonl (is it a movq run?)", run.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| match serde_json::from_str(l) {
            Ok(Value::Object(m)) => Ok(m),
            _ => bail!("{} line {}: not a JSON object", path.display(), i + 1),
        })
        .collect()
}

/// The points of `key` in the records of `split`.
fn points(records: &[Map<String, Value>], split: &str, key: &str) -> Vec<(f64, f64)> {
    records
        .iter()
        .filter(|r| r.get("split").and_then(Value::as_str) == Some(split))
        .filter_map(|r| Some((r.get("step")?.as_f64()?, r.get(key)?.as_f64()?)))
        .collect()
}

pub fn run(a: PlotArgs) -> Result<ExitCode> {
    let mut runs = Vec::new();
    for path in &a.runs {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        runs.push(Logged {
            name,
            records: read_log(path)?,
        });
    }
    // runs with the same folder name are told apart by their whole path
    for (i, path) in a.runs.iter().enumerate() {
        if runs.iter().filter(|r| r.name == runs[i].name).count() > 1 {
            runs[i].name = path.display().to_string();
        }
    }
    let available: BTreeSet<String> = runs
        .iter()
        .flat_map(|r| &r.records)
        .flat_map(|rec| rec.iter())
        .filter(|(k, v)| v.is_number() && *k != "step" && !k.starts_with("ema_"))
        .map(|(k, _)| k.clone())
        .collect();
    let metrics: Vec<String> = match &a.metrics {
        Some(list) => list
            .split(',')
            .map(|m| m.trim().to_string())
            .filter(|m| !m.is_empty())
            .collect(),
        None => ["loss", "psnr", "acc"]
            .iter()
            .filter(|m| available.contains(**m))
            .map(|m| m.to_string())
            .collect(),
    };
    if metrics.is_empty() {
        bail!("no metric to plot: the runs have logged nothing yet");
    }
    if let Some(m) = metrics.iter().find(|m| !available.contains(*m)) {
        bail!(
            "--metrics: no run logged `{m}` (logged: {})",
            available.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    let panels: Vec<Panel> = metrics
        .iter()
        .map(|m| {
            let mut series = Vec::new();
            for (i, r) in runs.iter().enumerate() {
                let color = PALETTE[i % PALETTE.len()];
                for (split, key, style, what) in [
                    ("train", m.clone(), Style::Solid, "train"),
                    ("val", m.clone(), Style::Dashed, "val"),
                    ("val", format!("ema_{m}"), Style::Dashed, "val ema"),
                ] {
                    let points = points(&r.records, split, &key);
                    if !points.is_empty() {
                        let shade = if what == "val ema" {
                            lighter(color)
                        } else {
                            color
                        };
                        series.push(Series {
                            label: format!("{} {what}", r.name),
                            color: shade,
                            style,
                            points,
                        });
                    }
                }
            }
            Panel {
                title: m.clone(),
                series,
            }
        })
        .collect();
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::fsutil::create_dir(dir)?;
    }
    save_png(&render(&panels), &a.out)?;
    eprintln!(
        "plotted {} of {} run{} → {}",
        metrics.join(", "),
        runs.len(),
        if runs.len() == 1 { "" } else { "s" },
        a.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `c` halfway to white (the moving average's series beside the raw weights').
fn lighter(c: image::Rgb<u8>) -> image::Rgb<u8> {
    image::Rgb(c.0.map(|v| v + (255 - v) / 2))
}
