//! Image folders: a recursive scan, with classes from first-level subfolders (ImageNet layout).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

const EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "bmp"];

/// One image file and its class index (when the folder has class subfolders).
#[derive(Debug, Clone)]
pub struct Item {
    pub path: PathBuf,
    pub label: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct ImageFolder {
    pub root: PathBuf,
    pub items: Vec<Item>,
    /// Sorted class names; empty when the images are not grouped in subfolders.
    pub classes: Vec<String>,
    /// Files with an image extension whose header could not be read, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
    /// Every usable image is greyscale.
    pub greyscale: bool,
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Image files under `dir`, recursively, sorted.
pub(crate) fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read folder {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out)?;
        } else if is_image(&p) {
            out.push(p);
        }
    }
    Ok(())
}

/// Checks that a file's header decodes as an image of non-zero size; true when it is
/// greyscale (with or without alpha).
fn check_header(path: &Path) -> std::result::Result<bool, String> {
    use image::ImageDecoder;
    let decoder = image::ImageReader::open(path)
        .map_err(|e| e.to_string())?
        .with_guessed_format()
        .map_err(|e| e.to_string())?
        .into_decoder()
        .map_err(|e| e.to_string())?;
    match decoder.dimensions() {
        (w, h) if w > 0 && h > 0 => Ok(matches!(
            decoder.color_type(),
            image::ColorType::L8
                | image::ColorType::L16
                | image::ColorType::La8
                | image::ColorType::La16
        )),
        _ => Err("image has zero size".into()),
    }
}

impl ImageFolder {
    /// Scans `root`. Classes are the sorted names of first-level subfolders when every image
    /// lives in one; unreadable files are reported on stderr, skipped and counted; a folder
    /// without a usable image is an error.
    pub fn scan(root: &Path) -> Result<Self> {
        if !root.exists() {
            bail!("data folder {} does not exist", root.display());
        }
        if !root.is_dir() {
            bail!("data path {} is not a folder", root.display());
        }
        let mut files = Vec::new();
        walk(root, &mut files)?;
        let mut classes: Vec<String> = std::fs::read_dir(root)?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        classes.sort();
        let all_in_subfolders = files.iter().all(|f| f.parent().is_some_and(|p| p != root));
        if !all_in_subfolders {
            classes.clear();
        }
        let mut items = Vec::with_capacity(files.len());
        let mut skipped = Vec::new();
        let mut greyscale = true;
        for path in files {
            match check_header(&path) {
                Ok(grey) => greyscale &= grey,
                Err(why) => {
                    eprintln!(
                        "warning: skipping unreadable image {}: {why}",
                        path.display()
                    );
                    skipped.push((path, why));
                    continue;
                }
            }
            let label = if classes.is_empty() {
                None
            } else {
                let first = path
                    .strip_prefix(root)
                    .ok()
                    .and_then(|r| r.components().next());
                let name = first.map(|c| c.as_os_str().to_string_lossy().into_owned());
                name.and_then(|n| classes.iter().position(|c| *c == n))
                    .map(|i| i as u32)
            };
            items.push(Item { path, label });
        }
        if items.is_empty() {
            bail!(
                "no usable image in {} (looked for {} files{})",
                root.display(),
                EXTENSIONS.join("/"),
                if skipped.is_empty() {
                    String::new()
                } else {
                    format!("; {} unreadable", skipped.len())
                }
            );
        }
        if !skipped.is_empty() {
            eprintln!(
                "warning: {} of {} images in {} are unreadable and skipped",
                skipped.len(),
                skipped.len() + items.len(),
                root.display()
            );
        }
        Ok(Self {
            root: root.to_path_buf(),
            items,
            classes,
            skipped,
            greyscale,
        })
    }
}

impl crate::data::source::ImageSource for ImageFolder {
    fn len(&self) -> usize {
        self.items.len()
    }
    fn classes(&self) -> Vec<String> {
        self.classes.clone()
    }
    fn label(&self, i: usize) -> Option<u32> {
        self.items[i].label
    }
    fn name(&self, i: usize) -> String {
        self.items[i].path.display().to_string()
    }
    fn fingerprint(&self) -> Vec<u64> {
        self.items
            .iter()
            .flat_map(|item| crate::data::dataset::file_words(&item.path))
            .collect()
    }
    fn load_resized(&self, i: usize, side: u32) -> Result<image::RgbImage> {
        let img = crate::data::image::open_rgb(&self.items[i].path)?;
        Ok(crate::data::transform::resize_shorter(&img, side))
    }
    fn load_native(&self, i: usize) -> Result<image::RgbImage> {
        crate::data::image::open_rgb(&self.items[i].path)
    }
    fn greyscale(&self) -> bool {
        self.greyscale
    }
    fn skipped(&self) -> usize {
        self.skipped.len()
    }
    fn cacheable(&self) -> bool {
        true
    }
}
