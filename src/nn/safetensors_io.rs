//! Reading and atomically writing safetensors files with string metadata.
//!
//! The metadata map is stored as one compact JSON string under the key `movq`: safetensors keeps
//! its header metadata in a hash map, and a single key keeps the file byte-for-byte reproducible.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Result, Tensor};

const METADATA_KEY: &str = "movq";

/// Writes `tensors` to `path` via a temporary file in the same folder and a rename, so a crash
/// or a full disk never leaves a half-written file under the final name.
pub fn write_atomic(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let tmp = crate::fsutil::temp_sibling(path);
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<_>>()?;
    let meta = HashMap::from([(
        METADATA_KEY.to_string(),
        serde_json::to_string(metadata).unwrap_or_default(),
    )]);
    let res =
        safetensors::serialize_to_file(cpu.iter().map(|(n, t)| (n.as_str(), t)), Some(meta), &tmp)
            .map_err(|e| candle_core::Error::Msg(format!("cannot write {}: {e}", path.display())))
            .and_then(|_| {
                std::fs::rename(&tmp, path).map_err(|e| {
                    candle_core::Error::Msg(format!("cannot write {}: {e}", path.display()))
                })
            });
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Reads every tensor of a safetensors file and its metadata.
pub fn read(
    path: &Path,
    device: &Device,
) -> Result<(BTreeMap<String, Tensor>, BTreeMap<String, String>)> {
    let bytes = std::fs::read(path)
        .map_err(|e| candle_core::Error::Msg(format!("cannot read {}: {e}", path.display())))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| {
        candle_core::Error::Msg(format!("{} is not a safetensors file: {e}", path.display()))
    })?;
    let metadata = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(METADATA_KEY))
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)?
        .into_iter()
        .collect();
    Ok((tensors, metadata))
}
