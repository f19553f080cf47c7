//! Test harness: temporary folders and a runner for the `movq` binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `movq` binary, with an empty weight cache (tests that need weights name their own).
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_movq"));
    c.env("NO_COLOR", "1");
    c.env(
        "MOVQ_CACHE",
        std::env::temp_dir().join("movq-tests-no-weights"),
    );
    c
}

/// Result of one CLI run.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> &Self {
        assert_eq!(
            self.code,
            Some(0),
            "command failed:\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Asserts failure with exit code 1 and a message containing every needle.
    pub fn fails_with(&self, needles: &[&str]) -> &Self {
        assert_eq!(
            self.code,
            Some(1),
            "expected exit 1:\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        for n in needles {
            assert!(
                self.stderr.contains(n),
                "stderr lacks {n:?}:\n{}",
                self.stderr
            );
        }
        self
    }
}

pub fn movq(args: &[&str]) -> Run {
    movq_with_cache(args, &std::env::temp_dir().join("movq-tests-no-weights"))
}

/// [`movq`] with `MOVQ_CACHE` (where pretrained weights are looked for) set to `cache`.
pub fn movq_with_cache(args: &[&str], cache: &Path) -> Run {
    let out: Output = bin()
        .env("MOVQ_CACHE", cache)
        .args(args)
        .output()
        .expect("run movq");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The committed test data folder.
/// The committed test data: under the crate that built the tests, or (for a test binary carried
/// to another machine, e.g. the GPU one) `tests/data` under the current directory.
pub fn data_dir() -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    if built.is_dir() {
        built
    } else {
        PathBuf::from("tests/data")
    }
}

/// Writes the tiny preset with `edit` applied to its JSON, returns the path.
pub fn tiny_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/tiny.json"))
            .unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    edit(&mut v);
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let p = dir.join(format!("config-{n}.json"));
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    p
}

/// A fast config for CLI tests: few steps, small batches.
pub fn quick_config(dir: &Path, steps: usize) -> PathBuf {
    tiny_config(dir, |v| {
        v["train"]["steps"] = steps.into();
        v["train"]["batch_size"] = 4.into();
        v["train"]["val_images"] = 4.into();
        v["train"]["log_every"] = 2.into();
        v["train"]["checkpoint_every"] = 0.into();
        v["train"]["val_every"] = 0.into();
        v["loss"]["discriminator"]["start"] = 2.into();
    })
}

/// Batches of 4 in both stages and 4 validation images: the settings of the short CLI runs.
pub fn small_batches(v: &mut serde_json::Value) {
    v["train"]["batch_size"] = 4.into();
    v["train"]["val_images"] = 4.into();
    v["transformer"]["train"]["batch_size"] = 4.into();
    v["transformer"]["train"]["val_images"] = 4.into();
}

/// `movq train-vq --config CFG --data DATA --out OUT --device cpu`.
pub fn train_vq(cfg: &Path, data: &str, out: &Path) -> Run {
    movq(&[
        "train-vq",
        "--config",
        s(cfg),
        "--data",
        data,
        "--out",
        s(out),
        "--device",
        "cpu",
    ])
}

/// Largest absolute difference of two tensors.
pub fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The CUDA device the `cuda` variants of [`device_test!`] run on, set up as `--device cuda`
/// sets it up.
#[cfg(feature = "cuda")]
pub fn cuda_device() -> candle_core::Device {
    movq::device::select("cuda").expect("a CUDA GPU (these tests were built with --features cuda)")
}

/// Runs `fn $name(dev: &Device)` on every available device, in the style of candle's
/// `test_device!`: `$name::cpu` always, `$name::cuda` when built with the `cuda` feature.
macro_rules! device_test {
    ($name:ident) => {
        mod $name {
            #[test]
            fn cpu() {
                super::$name(&candle_core::Device::Cpu)
            }
            #[cfg(feature = "cuda")]
            #[test]
            fn cuda() {
                super::$name(&crate::harness::cuda_device())
            }
        }
    };
}

/// For a test of real pretrained weights that are not installed: fails when
/// `MOVQ_REQUIRE_WEIGHTS` is set (CI installs them first), else returns and the test passes
/// without checking them (cargo hides what a passing test prints).
pub fn weights_missing(what: &str) {
    assert!(
        std::env::var_os("MOVQ_REQUIRE_WEIGHTS").is_none(),
        "MOVQ_REQUIRE_WEIGHTS is set but {what} are not installed (bash scripts/get-weights)"
    );
}
