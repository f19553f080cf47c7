//! Import of an original MoVQGAN Lightning checkpoint (`movq import movqgan`): a committed
//! reduced-shape checkpoint (`scripts/movqgan_fixture.py`) holding the weights of a diffusers
//! fixture under the original taming-transformers names, plus discriminator and LPIPS tensors.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use movq::vq::foreign::map_tensors;
use movq::vq::movqgan;

use crate::harness::{data_dir, movq, s, tmp};

fn fixture() -> std::path::PathBuf {
    data_dir().join("movqgan-mini")
}

#[test]
fn imported_movqgan_checkpoint_reproduces_diffusers() {
    let dir = tmp();
    let run = dir.path().join("run");
    let ckpt = fixture().join("model.ckpt");
    let out = movq(&[
        "import",
        "movqgan",
        "--ckpt",
        s(&ckpt),
        "--out",
        s(&run),
        "--resolution",
        "32",
    ]);
    out.ok();
    // 219 model tensors of 222: the three loss.* tensors are left out
    assert!(out.stderr.contains("(219 tensors)"), "{}", out.stderr);
    crate::diffusers::check_run_against(&run, &fixture(), false, &Device::Cpu);
    // the shape was read off the tensors
    let cfg = std::fs::read_to_string(run.join("config.json")).unwrap();
    let cfg: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    assert_eq!(cfg["model"]["ch"], 32);
    assert_eq!(cfg["model"]["ch_mult"], serde_json::json!([1, 2]));
    assert_eq!(cfg["model"]["num_res_blocks"], 1);
    assert_eq!(cfg["model"]["attn_resolutions"], serde_json::json!([16]));
    assert_eq!(cfg["model"]["quantizer"]["codebook_size"], 64);
}

#[test]
fn a_file_that_is_not_a_checkpoint_is_a_clear_error() {
    let dir = tmp();
    let not_pickle = data_dir().join("diffusers-mini").join("config.json");
    movq(&[
        "import",
        "movqgan",
        "--ckpt",
        s(&not_pickle),
        "--out",
        s(&dir.path().join("run")),
    ])
    .fails_with(&["cannot read", "as a PyTorch checkpoint"]);
    assert!(!dir.path().join("run").exists(), "nothing is written");
}

#[test]
fn a_bare_state_dict_is_read_and_an_incomplete_one_named() {
    // a plain torch.save(state_dict) file (no Lightning wrapper) with only encoder.conv_in
    let dir = tmp();
    let partial = fixture().join("partial-state-dict.pt");
    movq(&[
        "import",
        "movqgan",
        "--ckpt",
        s(&partial),
        "--out",
        s(&dir.path().join("run")),
    ])
    .fails_with(&["partial-state-dict.pt", "no encoder.down.* tensors"]);
    assert!(!dir.path().join("run").exists(), "nothing is written");
}

fn shapes(names: &[(&str, &[usize])]) -> BTreeMap<String, Vec<usize>> {
    names
        .iter()
        .map(|(n, s)| (n.to_string(), s.to_vec()))
        .collect()
}

#[test]
fn the_shape_comes_from_the_tensors_and_missing_ones_are_named() {
    let err = movqgan::vq_config(&shapes(&[]), 256, 32).unwrap_err();
    assert!(
        format!("{err:#}").contains("encoder.conv_in.weight"),
        "{err:#}"
    );
    let grey = shapes(&[("encoder.conv_in.weight", &[64, 1, 3, 3])]);
    let err = movqgan::vq_config(&grey, 256, 32).unwrap_err();
    assert!(format!("{err:#}").contains("RGB"), "{err:#}");
    // attention in the encoder only
    let one_sided = shapes(&[
        ("encoder.conv_in.weight", &[64, 3, 3, 3]),
        ("encoder.down.0.block.0.conv1.weight", &[64, 64, 3, 3]),
        ("encoder.down.0.attn.0.q.weight", &[64, 64, 1, 1]),
    ]);
    let err = movqgan::vq_config(&one_sided, 256, 32).unwrap_err();
    assert!(
        format!("{err:#}").contains("attention at level 0"),
        "{err:#}"
    );
    assert!(movqgan::is_training_only(
        "loss.discriminator.main.0.weight"
    ));
    assert!(!movqgan::is_training_only("decoder.conv_out.weight"));
}

#[test]
fn unknown_missing_and_misshaped_tensors_are_listed_by_name() {
    let t = |dims: &[usize]| Tensor::zeros(dims, candle_core::DType::F32, &Device::Cpu).unwrap();
    let wanted = vec![
        ("a.weight".to_string(), vec![2, 3, 1, 1]),
        ("b.weight".to_string(), vec![4]),
        ("c.weight".to_string(), vec![5]),
    ];
    let source: BTreeMap<String, Tensor> = [
        ("a.weight".to_string(), t(&[2, 3])), // a Linear weight fills a 1×1 convolution
        ("b.weight".to_string(), t(&[7])),
        ("extra.weight".to_string(), t(&[1])),
    ]
    .into_iter()
    .collect();
    let err = map_tensors(&wanted, source, str::to_string).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("missing: c.weight"), "{msg}");
    assert!(msg.contains("wrong shape: b.weight [7]"), "{msg}");
    assert!(msg.contains("unknown: extra.weight"), "{msg}");
    // a.weight was found (only "extra.weight" mentions it)
    assert_eq!(msg.matches("a.weight").count(), 1, "{msg}");
}
