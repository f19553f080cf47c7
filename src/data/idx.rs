//! IDX image sets (MNIST, Fashion-MNIST): `--data idx:PATH`.
//!
//! `PATH` is an images file (`*-images-idx3-ubyte`, optionally `.gz`) whose labels file
//! (`*-labels-idx1-ubyte[.gz]`) is found beside it, or a folder holding the standard
//! `train-*` files (`idx:DIR:test` takes the `t10k-*` files). Images are greyscale `rows × cols`
//! bytes; they are padded with black to the next multiple of 32 (28 → 32) and repeated over
//! three channels. Class names come from a `classes.txt` beside the files (one per line), the
//! Fashion-MNIST names when the path mentions "fashion", or the digits 0–9.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use image::{Rgb, RgbImage};

use crate::data::transform::resize_shorter;

/// The ten Fashion-MNIST classes, by label.
pub const FASHION_CLASSES: [&str; 10] = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
];

/// One IDX file's dimensions and bytes.
#[derive(Debug, Clone)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads an IDX file of unsigned bytes (gzip-compressed when the name ends in `.gz`).
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut raw = Vec::new();
    let gz = path.extension().is_some_and(|e| e == "gz");
    if gz {
        flate2::read::GzDecoder::new(file)
            .read_to_end(&mut raw)
            .with_context(|| format!("{}: not a readable gzip file", path.display()))?;
    } else {
        std::io::BufReader::new(file)
            .read_to_end(&mut raw)
            .with_context(|| format!("cannot read {}", path.display()))?;
    }
    parse_idx(&raw).with_context(|| format!("{}: not a valid IDX file", path.display()))
}

/// Parses IDX bytes: magic `0 0 type ndim`, `ndim` big-endian u32 sizes, then the values.
pub fn parse_idx(raw: &[u8]) -> Result<IdxArray> {
    if raw.len() < 4 || raw[0] != 0 || raw[1] != 0 {
        bail!(
            "the header does not start with the IDX magic bytes 00 00 (found {:02x?})",
            &raw[..raw.len().min(4)]
        );
    }
    if raw[2] != 0x08 {
        bail!(
            "value type 0x{:02x} is not supported (only 0x08, unsigned bytes)",
            raw[2]
        );
    }
    let ndim = raw[3] as usize;
    if ndim == 0 || raw.len() < 4 + 4 * ndim {
        bail!("the header is truncated ({ndim} dimensions announced)");
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|d| {
            let b = &raw[4 + 4 * d..8 + 4 * d];
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
        })
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .context("the dimensions overflow")?;
    let body = &raw[4 + 4 * ndim..];
    if body.len() != count {
        bail!(
            "the header announces {dims:?} = {count} values but the file holds {}",
            body.len()
        );
    }
    Ok(IdxArray {
        dims,
        data: body.to_vec(),
    })
}

/// An IDX image set held in memory.
#[derive(Debug, Clone)]
pub struct IdxSet {
    images: std::sync::Arc<Vec<u8>>,
    labels: Option<Vec<u8>>,
    rows: usize,
    cols: usize,
    count: usize,
    pub classes: Vec<String>,
    /// The images file, for names and fingerprints.
    pub path: PathBuf,
}

/// The first existing file among `stem` and `stem.gz` in `dir`.
fn find(dir: &Path, stem: &str) -> Option<PathBuf> {
    [stem.to_string(), format!("{stem}.gz")]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

impl IdxSet {
    /// Opens `spec` (what follows `idx:`).
    pub fn open(spec: &str) -> Result<Self> {
        let (path, split) = match spec.rsplit_once(':') {
            Some((p, s @ ("train" | "test"))) => (PathBuf::from(p), s),
            _ => (PathBuf::from(spec), "train"),
        };
        let images_path = if path.is_dir() {
            let prefix = if split == "test" { "t10k" } else { "train" };
            find(&path, &format!("{prefix}-images-idx3-ubyte")).with_context(|| {
                format!(
                    "--data idx:{spec}: no {prefix}-images-idx3-ubyte[.gz] in {} (scripts/get-fashion-mnist installs Fashion-MNIST)",
                    path.display()
                )
            })?
        } else if path.is_file() {
            path.clone()
        } else {
            bail!(
                "--data idx:{spec}: {} does not exist (scripts/get-fashion-mnist installs Fashion-MNIST)",
                path.display()
            );
        };
        let images = read_idx(&images_path)?;
        let [count, rows, cols] = images.dims[..] else {
            bail!(
                "{}: expected images as [count, rows, cols], found dimensions {:?}",
                images_path.display(),
                images.dims
            );
        };
        let name = images_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dir = images_path.parent().unwrap_or(Path::new("."));
        let labels = match name.find("images-idx3-ubyte") {
            Some(at) => find(dir, &format!("{}labels-idx1-ubyte", &name[..at])),
            None => None,
        };
        let labels = match labels {
            Some(p) => {
                let l = read_idx(&p)?;
                if l.dims != [count] {
                    bail!(
                        "{}: {} labels for {count} images",
                        p.display(),
                        l.dims.first().copied().unwrap_or(0)
                    );
                }
                Some(l.data)
            }
            None => None,
        };
        let classes = match &labels {
            None => Vec::new(),
            Some(l) => {
                let n = l.iter().copied().max().map_or(0, |m| m as usize + 1);
                class_names(dir, &images_path, n)?
            }
        };
        Ok(Self {
            images: std::sync::Arc::new(images.data),
            labels,
            rows,
            cols,
            count,
            classes,
            path: images_path,
        })
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn label(&self, i: usize) -> Option<u32> {
        self.labels.as_ref().map(|l| l[i] as u32)
    }

    /// Image `i` as RGB, padded with black to a multiple of 32 and resized to `side`.
    pub fn render(&self, i: usize, side: u32) -> RgbImage {
        let (r, c) = (self.rows, self.cols);
        let pad = |n: usize| n.div_ceil(32) * 32;
        let (h, w) = (pad(r), pad(c));
        let (top, left) = ((h - r) / 2, (w - c) / 2);
        let pixels = &self.images[i * r * c..(i + 1) * r * c];
        let mut img = RgbImage::new(w as u32, h as u32);
        for y in 0..r {
            for x in 0..c {
                let v = pixels[y * c + x];
                img.put_pixel((left + x) as u32, (top + y) as u32, Rgb([v, v, v]));
            }
        }
        if img.width().min(img.height()) == side {
            img
        } else {
            resize_shorter(&img, side)
        }
    }
}

/// Names for `n` classes: `classes.txt` beside the files, Fashion-MNIST's, or "0", "1", ….
fn class_names(dir: &Path, images: &Path, n: usize) -> Result<Vec<String>> {
    let listed = dir.join("classes.txt");
    if listed.is_file() {
        let text = std::fs::read_to_string(&listed)
            .with_context(|| format!("cannot read {}", listed.display()))?;
        let names: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        if names.len() < n {
            bail!(
                "{}: {} class names for labels 0..{}",
                listed.display(),
                names.len(),
                n - 1
            );
        }
        return Ok(names);
    }
    let fashion = images
        .to_string_lossy()
        .to_ascii_lowercase()
        .contains("fashion");
    Ok(if fashion && n <= FASHION_CLASSES.len() {
        FASHION_CLASSES.iter().map(|s| s.to_string()).collect()
    } else {
        (0..n).map(|i| i.to_string()).collect()
    })
}

impl crate::data::source::ImageSource for IdxSet {
    fn len(&self) -> usize {
        self.count
    }
    fn classes(&self) -> Vec<String> {
        self.classes.clone()
    }
    fn label(&self, i: usize) -> Option<u32> {
        IdxSet::label(self, i)
    }
    fn name(&self, i: usize) -> String {
        format!("{}#{i:05}", self.path.display())
    }
    fn fingerprint(&self) -> Vec<u64> {
        let mut w = crate::data::dataset::file_words(&self.path).to_vec();
        w.push(self.count as u64);
        w
    }
    fn load_resized(&self, i: usize, side: u32) -> Result<RgbImage> {
        Ok(self.render(i, side))
    }
    fn load_native(&self, i: usize) -> Result<RgbImage> {
        Ok(self.render(i, 32))
    }
    fn greyscale(&self) -> bool {
        true
    }
}
