//! Generated images labelled with the class they were asked for: a folder written by
//! `movq sample --class C` (every image is of class C), or by `movq sample --class all` (one
//! subfolder per class, named after it). `grid.png` files are overviews, not samples.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::data::classes::resolve_class;
use crate::data::folder::walk;

/// The sample images under `dir` (recursive, sorted), without `grid.png` overviews.
fn images_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    walk(dir, &mut files)?;
    files.retain(|p| p.file_name().is_none_or(|n| n != "grid.png"));
    Ok(files)
}

/// Each sample with the class id it was asked for, from `classes` (the dataset's): with
/// `class`, every image under `dir`; without, the images of each first-level subfolder named
/// after a class.
pub fn labelled_samples(
    dir: &Path,
    classes: &[String],
    class: Option<&str>,
) -> Result<Vec<(PathBuf, u32)>> {
    if !dir.is_dir() {
        bail!("{}: no such folder of samples", dir.display());
    }
    if classes.is_empty() {
        bail!("the data has no classes to score samples against (it needs class subfolders, labels, or builtin:shapes)");
    }
    let labelled: Vec<(PathBuf, u32)> = match class {
        Some(spec) => {
            let id = resolve_class(Some(spec), classes)?;
            images_under(dir)?.into_iter().map(|p| (p, id)).collect()
        }
        None => {
            let mut subfolders: Vec<PathBuf> = std::fs::read_dir(dir)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_dir())
                .collect();
            subfolders.sort();
            if subfolders.is_empty() {
                bail!(
                    "{}: no class subfolders; pass --class C when every image is of class C",
                    dir.display()
                );
            }
            let mut out = Vec::new();
            for sub in subfolders {
                let name = sub.file_name().map(|n| n.to_string_lossy().into_owned());
                let name = name.unwrap_or_default();
                let id = resolve_class(Some(&name), classes).map_err(|_| {
                    anyhow::anyhow!(
                        "{}: the subfolder {name:?} is not a class of the data (classes: {})",
                        dir.display(),
                        classes.join(", ")
                    )
                })?;
                out.extend(images_under(&sub)?.into_iter().map(|p| (p, id)));
            }
            out
        }
    };
    if labelled.is_empty() {
        bail!(
            "{}: no sample images (png/jpeg/webp/bmp) in it",
            dir.display()
        );
    }
    Ok(labelled)
}
