//! IDX image sets (`--data idx:PATH`): the committed Fashion-MNIST fixture (the first 20 test
//! images), the path forms, and clear errors for corrupt files.

use std::io::Write;

use movq::data::idx::{parse_idx, FASHION_CLASSES};
use movq::data::Dataset;

use crate::harness::{data_dir, movq, s, tiny_config, tmp};

fn fixture() -> String {
    format!(
        "idx:{}:test",
        data_dir().join("fashion-mnist-mini").display()
    )
}

#[test]
fn fashion_mnist_fixture_reads_as_a_labelled_dataset() {
    let ds = Dataset::open(&fixture(), 0).unwrap();
    assert_eq!(ds.len(), 20);
    assert_eq!(ds.classes(), FASHION_CLASSES.map(String::from).as_slice());
    // the first labels of the Fashion-MNIST test set
    let labels: Vec<u32> = (0..6).map(|i| ds.label(i).unwrap()).collect();
    assert_eq!(labels, [9, 2, 1, 1, 6, 1]);
    // greyscale 28×28 → RGB 32×32 with a 2-pixel black border
    let img = ds.load_resized(0, 32).unwrap();
    assert_eq!(img.dimensions(), (32, 32));
    let row14 = [
        0u8, 0, 0, 0, 0, 0, 2, 4, 1, 0, 0, 0, 98, 136, 110, 109, 110, 162, 135, 144, 149, 159, 167,
        144, 158, 169, 119, 0,
    ];
    for (x, &v) in row14.iter().enumerate() {
        assert_eq!(
            img.get_pixel(2 + x as u32, 16).0,
            [v, v, v],
            "pixel ({x}, 14)"
        );
    }
    for i in 0..32 {
        assert_eq!(img.get_pixel(i, 0).0, [0, 0, 0]);
        assert_eq!(img.get_pixel(0, i).0, [0, 0, 0]);
        assert_eq!(img.get_pixel(31, i).0, [0, 0, 0]);
    }
    // other resolutions resize the padded image
    assert_eq!(ds.load_resized(3, 64).unwrap().dimensions(), (64, 64));
}

#[test]
fn an_images_file_finds_its_labels_and_plain_files_read_too() {
    let dir = tmp();
    let src = data_dir().join("fashion-mnist-mini");
    for name in ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"] {
        let gz = std::fs::File::open(src.join(format!("{name}.gz"))).unwrap();
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gz), &mut raw).unwrap();
        std::fs::write(dir.path().join(name), raw).unwrap();
    }
    let ds = Dataset::open(
        &format!(
            "idx:{}",
            dir.path().join("t10k-images-idx3-ubyte").display()
        ),
        0,
    )
    .unwrap();
    assert_eq!(ds.len(), 20);
    assert_eq!(ds.label(0), Some(9));
    // not a "fashion" path and no classes.txt: the labels are named by number
    assert_eq!(ds.classes().len(), 10);
    assert_eq!(ds.classes()[9], "9");
    std::fs::write(
        dir.path().join("classes.txt"),
        (0..10).map(|i| format!("c{i}\n")).collect::<String>(),
    )
    .unwrap();
    let named = Dataset::open(
        &format!(
            "idx:{}",
            dir.path().join("t10k-images-idx3-ubyte").display()
        ),
        0,
    )
    .unwrap();
    assert_eq!(named.classes()[9], "c9");
    // a folder without train-* files says what it looked for
    let err = Dataset::open(&format!("idx:{}", dir.path().display()), 0)
        .err()
        .unwrap();
    assert!(
        format!("{err:#}").contains("train-images-idx3-ubyte"),
        "{err:#}"
    );
}

#[test]
fn corrupt_idx_files_are_clear_errors() {
    let err = parse_idx(&[0x1f, 0x8b, 8, 0]).unwrap_err().to_string();
    assert!(err.contains("magic"), "{err}");
    let err = parse_idx(&[0, 0, 0x0d, 1, 0, 0, 0, 1, 0, 0, 0, 0])
        .unwrap_err()
        .to_string();
    assert!(err.contains("0x0d"), "{err}");
    let mut truncated = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28];
    truncated.extend(vec![0u8; 100]);
    let err = parse_idx(&truncated).unwrap_err().to_string();
    assert!(err.contains("1568") && err.contains("100"), "{err}");
    // through the CLI: the file is named
    let dir = tmp();
    let bad = dir.path().join("train-images-idx3-ubyte.gz");
    let mut f = std::fs::File::create(&bad).unwrap();
    f.write_all(b"not gzip at all").unwrap();
    let cfg = tiny_config(dir.path(), |_| {});
    let out = movq(&[
        "train-vq",
        "--config",
        s(&cfg),
        "--data",
        &format!("idx:{}", dir.path().display()),
        "--out",
        s(&dir.path().join("run")),
    ]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("train-images-idx3-ubyte.gz"),
        "{}",
        out.stderr
    );
    assert!(!dir.path().join("run").exists());
}

#[test]
fn training_runs_on_an_idx_set() {
    let dir = tmp();
    let cfg = crate::harness::quick_config(dir.path(), 2);
    let out = dir.path().join("run");
    let r = movq(&[
        "train-vq",
        "--config",
        s(&cfg),
        "--data",
        &fixture(),
        "--out",
        s(&out),
    ]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stderr.contains("10 classes"), "{}", r.stderr);
}
