//! The images a command reads with `--input`: one file, or any data set `--data` takes.

use std::path::{Path, PathBuf};

use anyhow::Result;
use image::RgbImage;

use crate::data::image::open_rgb;
use crate::data::transform::eval_view;
use crate::data::Dataset;

/// The images named by `--input`: one file, a folder (recursive) or a built-in set.
pub enum Inputs {
    File(PathBuf),
    Set(Dataset),
}

impl Inputs {
    /// One image file, or anything `--data` takes (a folder, `idx:…`, `builtin:…`).
    pub fn open(spec: &str) -> Result<Self> {
        let path = Path::new(spec);
        if path.is_file() {
            Ok(Inputs::File(path.to_path_buf()))
        } else if path.is_dir() || Dataset::is_spec(spec) {
            Ok(Inputs::Set(Dataset::open(spec, 0)?))
        } else {
            anyhow::bail!("--input {spec}: no such file or folder")
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Inputs::File(_) => 1,
            Inputs::Set(ds) => ds.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A name for image `i` (its path, or the built-in item's name).
    pub fn name(&self, i: usize) -> String {
        match self {
            Inputs::File(p) => p.display().to_string(),
            Inputs::Set(ds) => ds.name(i),
        }
    }

    /// Image `i` as the model sees it: shorter side resized to `side`, centre crop.
    pub fn load(&self, i: usize, side: u32) -> Result<RgbImage> {
        Ok(match self {
            Inputs::File(p) => eval_view(&open_rgb(p)?, side),
            Inputs::Set(ds) => eval_view(ds.load_resized(i, side)?.as_ref(), side),
        })
    }

    /// The images in order, `batch_size` at a time (the last batch may be smaller), each with
    /// the indices it holds.
    pub fn batches(
        &self,
        batch_size: usize,
        side: u32,
    ) -> impl Iterator<Item = Result<(std::ops::Range<usize>, Vec<RgbImage>)>> + '_ {
        let n = batch_size.max(1);
        (0..self.len()).step_by(n).map(move |start| {
            let range = start..(start + n).min(self.len());
            let images = range
                .clone()
                .map(|i| self.load(i, side))
                .collect::<Result<Vec<_>>>()?;
            Ok((range, images))
        })
    }
}

/// Output file names from input names: the file stem, made unique.
pub fn output_names(names: &[String]) -> Vec<String> {
    let mut used = std::collections::HashSet::new();
    names
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let stem = Path::new(p).file_stem().map_or_else(
                || format!("image-{i}"),
                |s| s.to_string_lossy().into_owned(),
            );
            let mut name = format!("{stem}.png");
            let mut k = 1;
            while !used.insert(name.clone()) {
                name = format!("{stem}-{k}.png");
                k += 1;
            }
            name
        })
        .collect()
}
