//! `movq eval-samples`: do samples show the class they were asked for?

use std::process::ExitCode;

use anyhow::{bail, Result};

use crate::cli::EvalSamplesArgs;
use crate::data::image::open_rgb;
use crate::data::samples::labelled_samples;
use crate::data::Dataset;
use crate::device;
use crate::metrics::class_fidelity::{per_class_fid, shapes_accuracy};
use crate::metrics::fid::{features_of_images, load_inception};

pub fn run(a: EvalSamplesArgs) -> Result<ExitCode> {
    if a.batch_size == 0 {
        bail!("--batch-size must be positive");
    }
    let ds = Dataset::open(&a.data, 0)?;
    let names = ds.classes().to_vec();
    let samples = labelled_samples(&a.samples, &names, a.class.as_deref())?;
    let source = a.samples.display().to_string();
    if ds.is_builtin_shapes() {
        let images = samples
            .iter()
            .map(|(p, c)| Ok((open_rgb(p)?, *c)))
            .collect::<Result<Vec<_>>>()?;
        let report = shapes_accuracy(&images, &names);
        if a.json {
            let mut v = serde_json::to_value(&report)?;
            v["samples"] = source.into();
            v["classifier"] = "builtin:shapes analytic".into();
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            println!(
                "{:<20} {:>7} {:>9} {:>12}",
                "class", "images", "accuracy", "unrecognised"
            );
            for r in &report.per_class {
                println!(
                    "{:<20} {:>7} {:>8.1}% {:>12}",
                    r.class,
                    r.images,
                    100.0 * r.accuracy,
                    r.unrecognised
                );
            }
            println!(
                "{:<20} {:>7} {:>8.1}% {:>12}   (mean over classes {:.1}%)",
                "all",
                report.images,
                100.0 * report.accuracy,
                report.unrecognised,
                100.0 * report.mean_class_accuracy
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let device = device::select(&a.common.device)?;
    let net = load_inception(a.inception_weights.as_deref(), &device)?;
    let sample_labels: Vec<u32> = samples.iter().map(|(_, c)| *c).collect();
    let sample_features = features_of_images(
        &net,
        samples.iter().map(|(p, _)| open_rgb(p)),
        samples.len(),
        a.batch_size,
    )?;
    let n_real = ds.len();
    let real_labels: Vec<u32> = (0..n_real)
        .map(|i| ds.label(i).unwrap_or(u32::MAX))
        .collect();
    let real_features = features_of_images(
        &net,
        (0..n_real).map(|i| ds.load_native(i)),
        n_real,
        a.batch_size,
    )?;
    let report = per_class_fid(
        &sample_features,
        &sample_labels,
        &real_features,
        &real_labels,
        &names,
    )?;
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        v["samples"] = source.into();
        v["data"] = a.data.clone().into();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{:<20} {:>9} {:>8} {:>8}",
            "class", "FID", "samples", "real"
        );
        for r in &report.per_class {
            let fid = r.fid.map_or("-".to_string(), |f| format!("{f:.2}"));
            println!(
                "{:<20} {:>9} {:>8} {:>8}",
                r.class, fid, r.images, r.real_images
            );
        }
        println!(
            "{:<20} {:>9.2} {:>8} {:>8}   (mean per-class FID {:.2})",
            "all", report.fid, report.images, report.real_images, report.mean_class_fid
        );
    }
    Ok(ExitCode::SUCCESS)
}
