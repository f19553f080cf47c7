//! With the `cuda` feature, compiles the CUDA kernels in `src/gpu/kernels/` to PTX with `nvcc`
//! (found as `$NVCC`, else on `PATH`) for compute capability `$CUDA_COMPUTE_CAP` (default 80:
//! the PTX is JIT-compiled by the driver for any newer GPU). The CPU build does nothing here.

use std::path::PathBuf;
use std::process::Command;

const KERNELS: &[&str] = &["group_norm", "attention", "rows", "adam"];

fn main() {
    println!("cargo:rerun-if-changed=src/gpu/kernels");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into());
    let cap = cap.replace('.', "");
    for name in KERNELS {
        let src = format!("src/gpu/kernels/{name}.cu");
        let ptx = out.join(format!("{name}.ptx"));
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "-std=c++17"])
            .arg(format!("-arch=compute_{cap}"))
            .arg("-o")
            .arg(&ptx)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "the cuda feature needs nvcc to compile {src} ({nvcc}: {e}); see README, GPU"
                )
            });
        assert!(status.success(), "nvcc failed on {src}");
    }
}
