//! The analytic `builtin:shapes` classifier behind `movq eval-samples`.

use image::{Rgb, RgbImage};
use movq::data::shapes::{Shapes, CLASSES};
use movq::metrics::shape_classifier::classify;
use rand::{Rng, SeedableRng};

/// The quickstart's resolution, as its preset sets it.
fn quickstart_side() -> u32 {
    let preset = movq::config::RunConfig::resolve("shapes").expect("the shapes preset");
    preset.model.resolution as u32
}

#[test]
fn classifies_freshly_rendered_shapes() {
    // a seed no training run uses by default; 1,000 images cover every class
    let set = Shapes {
        count: 1000,
        seed: 90_210,
    };
    let side = quickstart_side();
    let mut seen = [0usize; CLASSES];
    let mut right = 0;
    for i in 0..set.count {
        let label = set.label(i);
        seen[label as usize] += 1;
        if classify(&set.render(i, side)).class == Some(label) {
            right += 1;
        }
    }
    assert!(seen.iter().all(|&n| n > 0), "classes seen: {seen:?}");
    let accuracy = right as f64 / set.count as f64;
    println!(
        "{right} of {} rendered shapes classified right at {side} px",
        set.count
    );
    assert!(accuracy >= 0.98, "accuracy {accuracy} on rendered shapes");
}

#[test]
fn classifies_shapes_at_other_resolutions() {
    let set = Shapes {
        count: 200,
        seed: 5,
    };
    for side in [32, 64] {
        let right = (0..set.count)
            .filter(|&i| classify(&set.render(i, side)).class == Some(set.label(i)))
            .count();
        println!("{right} of 200 rendered shapes classified right at {side} px");
        assert!(right >= 190, "{right} of 200 at {side} px");
    }
}

#[test]
fn noise_is_near_chance() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let side = quickstart_side();
    let n = 800;
    let mut right = 0;
    for i in 0..n {
        let img = match i % 2 {
            // uniform noise
            0 => RgbImage::from_fn(side, side, |_, _| Rgb(rng.random())),
            // smooth coloured blobs: noise at a quarter of the resolution, upscaled
            _ => {
                let small = RgbImage::from_fn(side / 4, side / 4, |_, _| Rgb(rng.random()));
                image::imageops::resize(&small, side, side, image::imageops::FilterType::Triangle)
            }
        };
        // each noise image is asked to be one class, in turn
        if classify(&img).class == Some((i % CLASSES) as u32) {
            right += 1;
        }
    }
    let accuracy = right as f64 / n as f64;
    assert!(
        accuracy <= 2.0 / CLASSES as f64,
        "accuracy {accuracy} on noise"
    );
}

/// Writes images `0..n` of `data` as PNGs into `dir/<class name>/` (or `dir/` when `flat`).
fn write_set(data: &str, n: usize, side: u32, dir: &std::path::Path, flat: bool) -> usize {
    let ds = movq::data::Dataset::open(data, 0).unwrap();
    let n = n.min(ds.len());
    for i in 0..n {
        let class = &ds.classes()[ds.label(i).unwrap() as usize];
        let sub = if flat {
            dir.to_path_buf()
        } else {
            dir.join(class)
        };
        std::fs::create_dir_all(&sub).unwrap();
        let img = ds.load_resized(i, side).unwrap();
        img.save(sub.join(format!("{i:05}.png"))).unwrap();
    }
    n
}

#[test]
fn eval_samples_scores_shapes_by_class() {
    use crate::harness::{movq, s, tmp};
    let dir = tmp();
    let samples = dir.path().join("samples");
    // real shapes, filed under the class they show: every one is recognised
    write_set("builtin:shapes:64", 64, 32, &samples, false);
    // an overview grid is not a sample
    image::RgbImage::new(8, 8)
        .save(samples.join("grid.png"))
        .unwrap();
    let r = movq(&[
        "eval-samples",
        s(&samples),
        "--data",
        "builtin:shapes",
        "--json",
    ]);
    r.ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["images"], 64, "{v}");
    assert!(v["accuracy"].as_f64().unwrap() >= 0.98, "{v}");
    assert!(v["per_class"].as_array().unwrap().len() > 8, "{v}");
    // the table form names every class and the total
    let table = movq(&["eval-samples", s(&samples), "--data", "builtin:shapes"]);
    table.ok();
    assert!(
        table.stdout.contains("circle-red") && table.stdout.contains("all"),
        "{}",
        table.stdout
    );

    // noise asked to be circle-red: near chance
    let noise = dir.path().join("noise");
    std::fs::create_dir_all(&noise).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for i in 0..32 {
        RgbImage::from_fn(32, 32, |_, _| Rgb(rng.random()))
            .save(noise.join(format!("{i}.png")))
            .unwrap();
    }
    let r = movq(&[
        "eval-samples",
        s(&noise),
        "--data",
        "builtin:shapes",
        "--class",
        "circle-red",
        "--json",
    ]);
    r.ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(v["accuracy"].as_f64().unwrap() <= 2.0 / 16.0, "{v}");

    // bad input: one clear line each, exit 1, nothing written
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let before: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    movq(&["eval-samples", s(&noise), "--data", "builtin:shapes"])
        .fails_with(&["no class subfolders", "--class"]);
    movq(&[
        "eval-samples",
        s(&noise),
        "--data",
        "builtin:shapes",
        "--class",
        "hexagon-red",
    ])
    .fails_with(&["hexagon-red", "circle-red", "diamond-yellow"]);
    movq(&[
        "eval-samples",
        s(&empty),
        "--data",
        "builtin:shapes",
        "--class",
        "circle-red",
    ])
    .fails_with(&["no sample images"]);
    let wrong = dir.path().join("wrong");
    std::fs::create_dir_all(wrong.join("hexagon-red")).unwrap();
    movq(&["eval-samples", s(&wrong), "--data", "builtin:shapes"]).fails_with(&[
        "hexagon-red",
        "not a class",
        "circle-red",
    ]);
    let unlabelled = dir.path().join("unlabelled");
    write_set("builtin:shapes:4", 4, 32, &unlabelled, true);
    movq(&[
        "eval-samples",
        s(&noise),
        "--data",
        s(&unlabelled),
        "--class",
        "0",
    ])
    .fails_with(&["no classes"]);
    let after: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(
        before.len() + 2,
        after.len(),
        "only the test's own folders appeared"
    );
}

#[test]
fn per_class_fid_against_the_class_images() {
    use crate::harness::{data_dir, movq, s, tmp};
    let dir = tmp();
    let net = data_dir().join("fid-tiny-inception.safetensors");
    let fashion = format!(
        "idx:{}:test",
        data_dir().join("fashion-mnist-mini").display()
    );
    // the data's own images as "samples", filed by class: each class against itself
    let samples = dir.path().join("samples");
    let n = write_set(&fashion, usize::MAX, 32, &samples, false);
    let run = |dir: &std::path::Path| {
        let r = movq(&[
            "eval-samples",
            s(dir),
            "--data",
            &fashion,
            "--inception-weights",
            s(&net),
            "--json",
            "--device",
            "cpu",
        ]);
        r.ok();
        serde_json::from_str::<serde_json::Value>(&r.stdout).unwrap()
    };
    let v = run(&samples);
    assert_eq!(v["images"].as_u64(), Some(n as u64), "{v}");
    assert_eq!(v["real_images"].as_u64(), Some(n as u64), "{v}");
    assert!(v["fid"].as_f64().unwrap().abs() < 1e-3, "{v}");
    let rows = v["per_class"].as_array().unwrap();
    assert!(!rows.is_empty(), "{v}");
    for r in rows {
        assert_eq!(r["images"], r["real_images"], "{r}");
        match r["fid"].as_f64() {
            Some(f) => assert!(f.abs() < 1e-3, "{r}"),
            // a class of one image has no FID
            None => assert!(r["images"].as_u64().unwrap() < 2, "{r}"),
        }
    }
    assert!(rows.iter().any(|r| r["fid"].is_number()), "{v}");
    // the same images filed under the wrong class: the overall FID stays 0, a class's does not
    let classes: Vec<String> = rows
        .iter()
        .map(|r| r["class"].as_str().unwrap().to_string())
        .collect();
    let swapped = dir.path().join("swapped");
    std::fs::create_dir_all(&swapped).unwrap();
    for (k, class) in classes.iter().enumerate() {
        let to = &classes[(k + 1) % classes.len()];
        std::fs::rename(samples.join(class), swapped.join(format!("{to}.tmp"))).unwrap();
    }
    for class in &classes {
        std::fs::rename(swapped.join(format!("{class}.tmp")), swapped.join(class)).unwrap();
    }
    let v = run(&swapped);
    assert!(v["fid"].as_f64().unwrap().abs() < 1e-3, "{v}");
    assert!(v["mean_class_fid"].as_f64().unwrap() > 1e-3, "{v}");
}
