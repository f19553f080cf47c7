//! TensorBoard event files (`RUN/tb/events.out.tfevents.*`), so `tensorboard --logdir runs/`
//! shows a run's scalars and preview images while it trains.
//!
//! The format is TensorFlow's record file: each record is its length (u64, little endian), the
//! masked CRC-32C of those 8 bytes (u32), the data, and the masked CRC-32C of the data. Each
//! record holds one serialized `tensorflow.Event` protocol buffer: `wall_time` (1, double),
//! `step` (2, int64) and one of `file_version` (3, string), `summary` (5) or `session_log` (7).
//! A `Summary` holds `Value`s: `tag` (1), `simple_value` (2, float) or `image` (4: `height` 1,
//! `width` 2, `colorspace` 3, `encoded_image_string` 4, a PNG). The few fields used are encoded
//! here by hand.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use image::RgbImage;

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    const fn table() -> [u32; 256] {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0x82F6_3B78 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    }
    const TABLE: [u32; 256] = table();
    !data.iter().fold(!0u32, |c, &b| {
        TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8)
    })
}

/// The record format's masked CRC: rotated right by 15 bits plus a constant.
pub fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// Appends one framed record.
fn write_record(out: &mut impl Write, data: &[u8]) -> std::io::Result<()> {
    let len = (data.len() as u64).to_le_bytes();
    out.write_all(&len)?;
    out.write_all(&masked_crc(&len).to_le_bytes())?;
    out.write_all(data)?;
    out.write_all(&masked_crc(data).to_le_bytes())
}

/// A protocol-buffer message under construction.
#[derive(Default)]
struct Message(Vec<u8>);

impl Message {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn key(&mut self, field: u32, wire: u8) {
        self.varint(((field as u64) << 3) | wire as u64);
    }
    fn uint(&mut self, field: u32, v: u64) {
        self.key(field, 0);
        self.varint(v);
    }
    fn double(&mut self, field: u32, v: f64) {
        self.key(field, 1);
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn float(&mut self, field: u32, v: f32) {
        self.key(field, 5);
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }
}

/// An `Event` at `step` with the fields `fill` adds.
fn event(step: usize, fill: impl FnOnce(&mut Message)) -> Vec<u8> {
    let mut e = Message::default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    e.double(1, now);
    e.uint(2, step as u64);
    fill(&mut e);
    e.0
}

/// One event file of a run, written as it trains.
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventWriter {
    /// A new event file in `dir` (created). With `start` > 0 (a resumed run), the file first
    /// marks a session restart at step `start + 1`, the first this session logs: TensorBoard
    /// then drops whatever an earlier session had logged from that step on (steps past the
    /// checkpoint the run continues from).
    pub fn create(dir: &Path, start: usize) -> Result<Self> {
        crate::fsutil::create_dir(dir)?;
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let path = dir.join(format!(
            "events.out.tfevents.{secs}.movq.{}",
            std::process::id()
        ));
        let file =
            File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        let mut w = Self {
            path,
            out: BufWriter::new(file),
        };
        w.append(&event(start, |e| e.bytes(3, b"brain.Event:2")))?;
        if start > 0 {
            // session_log { status: START }
            let mut log = Message::default();
            log.uint(1, 1);
            w.append(&event(start + 1, |e| e.bytes(7, &log.0)))?;
        }
        w.flush()?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn append(&mut self, data: &[u8]) -> Result<()> {
        write_record(&mut self.out, data)
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    fn summary(&mut self, step: usize, values: &[Vec<u8>]) -> Result<()> {
        let mut summary = Message::default();
        for v in values {
            summary.bytes(1, v);
        }
        self.append(&event(step, |e| e.bytes(5, &summary.0)))
    }

    /// Scalars at `step`, each under its tag (e.g. `train/loss`).
    pub fn scalars(&mut self, step: usize, values: Vec<(String, f64)>) -> Result<()> {
        let values: Vec<Vec<u8>> = values
            .into_iter()
            .map(|(tag, v)| {
                let mut m = Message::default();
                m.bytes(1, tag.as_bytes());
                m.float(2, v as f32);
                m.0
            })
            .collect();
        self.summary(step, &values)?;
        self.flush()
    }

    /// An RGB image at `step` under `tag`, stored as a PNG.
    pub fn image(&mut self, step: usize, tag: &str, img: &RgbImage) -> Result<()> {
        let mut png = Vec::new();
        image::DynamicImage::ImageRgb8(img.clone())
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .context("cannot encode a TensorBoard image")?;
        let mut im = Message::default();
        im.uint(1, img.height() as u64);
        im.uint(2, img.width() as u64);
        im.uint(3, 3); // RGB
        im.bytes(4, &png);
        let mut v = Message::default();
        v.bytes(1, tag.as_bytes());
        v.bytes(4, &im.0);
        self.summary(step, &[v.0])?;
        self.flush()
    }

    fn flush(&mut self) -> Result<()> {
        self.out
            .flush()
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_values() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
    }

    #[test]
    fn varints_encode_as_protocol_buffers_do() {
        let mut m = Message::default();
        m.varint(1);
        m.varint(300);
        m.uint(2, 150);
        assert_eq!(m.0, vec![0x01, 0xAC, 0x02, 0x10, 0x96, 0x01]);
    }
}
