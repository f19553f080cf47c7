//! `movq edit`: inpainting, outpainting and class-conditional editing with a stage-2 run.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::harness::{movq, s, tiny_config, tmp, train_vq};

/// A tiny stage-1 run and its stage-2 run (16 classes of builtin:shapes) in `dir`.
fn runs(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let cfg = tiny_config(dir, |v| {
        crate::harness::small_batches(v);
        v["train"]["steps"] = 2.into();
        v["transformer"]["train"]["steps"] = 2.into();
    });
    let (vq, tr) = (dir.join("vq"), dir.join("tr"));
    train_vq(&cfg, "builtin:shapes:16", &vq).ok();
    movq(&[
        "train-transformer",
        "--vq",
        s(&vq),
        "--data",
        "builtin:shapes:16",
        "--out",
        s(&tr),
        "--device",
        "cpu",
    ])
    .ok();
    (vq, tr)
}

fn write_image(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) {
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)))
        .save(path)
        .unwrap();
}

/// `movq sample --num 1 --seed 5 --class 3` into `out`: what a full-mask edit must reproduce.
fn sample_seed_5_class_3(tr: &Path, out: &Path) {
    movq(&[
        "sample",
        "--model",
        s(tr),
        "--num",
        "1",
        "--seed",
        "5",
        "--class",
        "3",
        "--out",
        s(out),
        "--device",
        "cpu",
    ])
    .ok();
}

fn edit(tr: &Path, args: &[&str]) -> crate::harness::Run {
    let mut all = vec!["edit", "--model", s(tr), "--device", "cpu"];
    all.extend_from_slice(args);
    movq(&all)
}

fn codes(out: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(out.join("codes.safetensors"), &Device::Cpu).unwrap()
}

/// Tokens `[c, h, w]` of `t` `[1 or S, c, h, w]` at sample `k` as nested vectors.
fn grid(t: &Tensor, k: usize) -> Vec<Vec<Vec<u32>>> {
    t.get(k).unwrap().to_vec3().unwrap()
}

#[test]
fn inpainting_keeps_the_known_tokens_and_matches_sampling_under_a_full_mask() {
    let dir = tmp();
    let (_, tr) = runs(dir.path());
    let d = dir.path();
    let input = d.join("in.png");
    write_image(&input, 40, 32, |x, y| [(x * 6) as u8, (y * 7) as u8, 90]);
    // a mask over the top-left quarter, one of nothing, one of everything (another size)
    let quarter = d.join("quarter.png");
    write_image(&quarter, 40, 32, |x, y| {
        if x < 20 && y < 16 {
            [255, 0, 0]
        } else {
            [0, 0, 0]
        }
    });
    let empty = d.join("empty.png");
    write_image(&empty, 40, 32, |_, _| [0, 0, 0]);
    let full = d.join("full.png");
    write_image(&full, 10, 8, |_, _| [200, 200, 200]);

    // an empty mask returns the stage-1 reconstruction's codes
    let out = d.join("empty-out");
    edit(
        &tr,
        &[
            "--input",
            s(&input),
            "--mask",
            s(&empty),
            "--out",
            s(&out),
            "--samples",
            "1",
        ],
    )
    .ok();
    let c = codes(&out);
    assert_eq!(grid(&c["samples"], 0), grid(&c["input"], 0));
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(m["masked_tokens_per_channel"], 0);
    assert!(
        m["samples"][0]["psnr_outside_vs_reconstruction"].is_null(),
        "identical"
    );

    // known tokens never change; the masked ones are regenerated in every channel
    let out = d.join("quarter-out");
    let r = edit(
        &tr,
        &[
            "--input",
            s(&input),
            "--mask",
            s(&quarter),
            "--out",
            s(&out),
            "--samples",
            "2",
            "--seed",
            "3",
        ],
    );
    r.ok();
    for f in [
        "input.png",
        "mask-overlay.png",
        "00000.png",
        "00001.png",
        "grid.png",
        "metrics.json",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let c = codes(&out);
    let (input_codes, (ch, h, w)) = (
        grid(&c["input"], 0),
        c["input"].get(0).unwrap().dims3().unwrap(),
    );
    // tiny: f = 2; the input's 40×32 view is its 32×32 centre, the mask's left half reaches x < 16
    // of the view after the crop (40→32 wide at scale 1: columns 4..36), rows < 16
    let masked = |y: usize, x: usize| y < 8 && x < 8;
    let mut regenerated = 0;
    for k in 0..2 {
        let g = grid(&c["samples"], k);
        for cc in 0..ch {
            for y in 0..h {
                for x in 0..w {
                    if !masked(y, x) {
                        assert_eq!(
                            g[cc][y][x], input_codes[cc][y][x],
                            "known token ({cc},{y},{x})"
                        );
                    } else if g[cc][y][x] != input_codes[cc][y][x] {
                        regenerated += 1;
                    }
                }
            }
        }
    }
    assert!(regenerated > 0);
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert!(m["samples"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["known_tokens_kept"] == true));
    // the same seed gives byte-identical images
    let again = d.join("quarter-again");
    edit(
        &tr,
        &[
            "--input",
            s(&input),
            "--mask",
            s(&quarter),
            "--out",
            s(&again),
            "--samples",
            "2",
            "--seed",
            "3",
        ],
    )
    .ok();
    for f in ["00000.png", "00001.png"] {
        assert_eq!(
            std::fs::read(out.join(f)).unwrap(),
            std::fs::read(again.join(f)).unwrap()
        );
    }

    // a full mask (another size: a notice) with a seed and a class is `movq sample`
    let out = d.join("full-out");
    let r = edit(
        &tr,
        &[
            "--input",
            s(&input),
            "--mask",
            s(&full),
            "--out",
            s(&out),
            "--samples",
            "1",
            "--seed",
            "5",
            "--class",
            "3",
        ],
    );
    r.ok();
    assert!(r.stderr.contains("resized to the image"), "{}", r.stderr);
    let sampled = d.join("sampled");
    sample_seed_5_class_3(&tr, &sampled);
    assert_eq!(
        std::fs::read(out.join("00000.png")).unwrap(),
        std::fs::read(sampled.join("sample-0000.png")).unwrap()
    );
}

#[test]
fn outpainting_keeps_the_original_region_and_folders_edit_every_image() {
    let dir = tmp();
    let (vq, tr) = runs(dir.path());
    let d = dir.path();
    let inputs = d.join("inputs");
    let masks = d.join("masks");
    std::fs::create_dir_all(&inputs).unwrap();
    std::fs::create_dir_all(&masks).unwrap();
    for (name, shade) in [("a.png", 40u8), ("b.png", 200)] {
        write_image(&inputs.join(name), 32, 32, |x, _| [shade, (x * 8) as u8, 0]);
        write_image(&masks.join(name), 32, 32, |x, _| {
            if x >= 24 {
                [255; 3]
            } else {
                [0; 3]
            }
        });
    }
    // outpainting: 40 px on the right (20 positions at f = 2) and 3 px below (2 positions)
    let out = d.join("wide");
    edit(
        &tr,
        &[
            "--input",
            s(&inputs.join("a.png")),
            "--extend",
            "right=40,bottom=3",
            "--out",
            s(&out),
            "--samples",
            "1",
        ],
    )
    .ok();
    let c = codes(&out);
    let (orig, wide) = (grid(&c["input"], 0), grid(&c["samples"], 0));
    assert_eq!((wide[0].len(), wide[0][0].len()), (18, 36));
    for cc in 0..orig.len() {
        for y in 0..16 {
            assert_eq!(wide[cc][y][..16], orig[cc][y][..], "row {y}");
        }
    }
    let img = image::open(out.join("00000.png")).unwrap();
    assert_eq!((img.width(), img.height()), (72, 36));
    // a folder of inputs with a folder of masks
    let out = d.join("many");
    edit(
        &tr,
        &[
            "--input",
            s(&inputs),
            "--mask",
            s(&masks),
            "--out",
            s(&out),
            "--samples",
            "1",
            "--paste",
        ],
    )
    .ok();
    assert!(out.join("a/00000.png").is_file() && out.join("b/00000.png").is_file());

    // bad input: one line each, nothing written
    let bad = d.join("bad");
    let input = inputs.join("a.png");
    let mask = masks.join("a.png");
    edit(
        &tr,
        &[
            "--input",
            s(&input),
            "--mask",
            s(&d.join("none.png")),
            "--out",
            s(&bad),
        ],
    )
    .fails_with(&["--mask", "none.png"]);
    let garbage = d.join("garbage.png");
    std::fs::write(&garbage, b"not a png").unwrap();
    edit(
        &tr,
        &[
            "--input",
            s(&input),
            "--mask",
            s(&garbage),
            "--out",
            s(&bad),
        ],
    )
    .fails_with(&["--mask", "garbage.png"]);
    edit(
        &tr,
        &[
            "--input",
            s(&input),
            "--mask",
            s(&mask),
            "--extend",
            "right=8",
            "--out",
            s(&bad),
        ],
    )
    .fails_with(&["--mask and --extend cannot be combined"]);
    edit(
        &tr,
        &[
            "--input",
            s(&input),
            "--mask",
            s(&mask),
            "--class",
            "99",
            "--out",
            s(&bad),
        ],
    )
    .fails_with(&["--class 99", "out of range"]);
    edit(
        &tr,
        &[
            "--input",
            s(&input),
            "--mask",
            s(&mask),
            "--class",
            "purple-star",
            "--out",
            s(&bad),
        ],
    )
    .fails_with(&["unknown class name", "circle-red"]);
    edit(
        &vq,
        &["--input", s(&input), "--mask", s(&mask), "--out", s(&bad)],
    )
    .fails_with(&["edit needs a train-transformer run"]);
    edit(
        &tr,
        &["--input", s(&input), "--extend", "right", "--out", s(&bad)],
    )
    .fails_with(&["not side=pixels"]);
    edit(&tr, &["--input", s(&input), "--out", s(&bad)]).fails_with(&["give --mask"]);
    edit(
        &tr,
        &["--input", s(&inputs), "--mask", s(&mask), "--out", s(&bad)],
    )
    .fails_with(&["give the folder of their masks"]);
    assert!(!bad.exists());
}

/// One HTTP/1.1 request to `port`; returns the status and the body.
fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes).unwrap();
    let out = String::from_utf8_lossy(&bytes).into_owned();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn serve_answers_the_page_and_the_edit_api() {
    use base64::Engine;
    use std::io::BufRead;
    let dir = tmp();
    let (_, tr) = runs(dir.path());
    /// The server, stopped however the test ends.
    struct Serving(std::process::Child);
    impl Drop for Serving {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Serving(
        std::process::Command::new(env!("CARGO_BIN_EXE_movq"))
            .args(["serve", "--model", s(&tr), "--port", "0", "--device", "cpu"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = std::io::BufReader::new(child.0.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let port: u16 = first
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {first:?}"));
    let (status, page) = http(port, "GET", "/", "");
    assert_eq!(status, 200);
    assert!(page.contains("<canvas id=\"paint\"") && page.contains("/api/edit"));
    let (status, info) = http(port, "GET", "/api/info", "");
    assert_eq!(status, 200);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["classes"].as_array().unwrap().len(), 16);
    // the run's validation images, by index only
    assert!(info["examples"].as_u64().unwrap() > 0);
    let (status, _) = http(port, "GET", "/api/examples/0", "");
    assert_eq!(status, 200);
    for bad in [
        "/api/examples/99",
        "/api/examples/-1",
        "/api/examples/../../etc/passwd",
    ] {
        assert_eq!(http(port, "GET", bad, "").0, 404, "{bad}");
    }
    // a full mask with seed 5 and class 3: what `movq sample --seed 5 --class 3` draws
    let png = |img: image::RgbImage| {
        let mut bytes = Vec::new();
        img.write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
        base64::engine::general_purpose::STANDARD.encode(bytes)
    };
    let body = serde_json::json!({
        "image": format!("data:image/png;base64,{}", png(image::RgbImage::from_pixel(32, 32, image::Rgb([10, 90, 200])))),
        "mask": png(image::RgbImage::from_pixel(32, 32, image::Rgb([255, 255, 255]))),
        "class": "3", "seed": 5, "samples": 1,
    });
    let (status, out) = http(port, "POST", "/api/edit", &body.to_string());
    assert_eq!(status, 200, "{out}");
    let out: serde_json::Value = serde_json::from_str(&out).unwrap();
    let completion = base64::engine::general_purpose::STANDARD
        .decode(out["completions"][0].as_str().unwrap())
        .unwrap();
    let sampled = dir.path().join("sampled");
    sample_seed_5_class_3(&tr, &sampled);
    let want = image::open(sampled.join("sample-0000.png"))
        .unwrap()
        .to_rgb8();
    assert_eq!(
        image::load_from_memory(&completion).unwrap().to_rgb8(),
        want
    );
    assert_eq!(out["metrics"]["masked_tokens_per_channel"], 256);
    // bad requests: 400 with the reason
    let (status, err) = http(port, "POST", "/api/edit", r#"{"image": "not base64!"}"#);
    assert_eq!(status, 400);
    assert!(err.contains("not base64"), "{err}");
    let (status, err) = http(
        port,
        "POST",
        "/api/edit",
        &serde_json::json!({"image": body["image"], "mask": body["mask"], "class": "purple"})
            .to_string(),
    );
    assert_eq!(status, 400);
    assert!(err.contains("unknown class name"), "{err}");
    // the guidance schedule: "constant" (the default) or "linear"
    let guided = |schedule: &str| {
        let mut b = body.clone();
        b["cfg_scale"] = 3.0.into();
        b["cfg_schedule"] = schedule.into();
        http(port, "POST", "/api/edit", &b.to_string())
    };
    let (status, out) = guided("linear");
    assert_eq!(status, 200, "{out}");
    let (status, err) = guided("ramp");
    assert_eq!(status, 400);
    assert!(err.contains("unknown variant `ramp`"), "{err}");
    // refinement rounds after decoding change the completion; a share of 0 is refused
    let refined = |rounds: usize, fraction: f64| {
        let mut b = body.clone();
        b["refine"] = rounds.into();
        b["refine_fraction"] = fraction.into();
        http(port, "POST", "/api/edit", &b.to_string())
    };
    let (status, out) = refined(2, 0.1);
    assert_eq!(status, 200, "{out}");
    let out: serde_json::Value = serde_json::from_str(&out).unwrap();
    let refined_png = base64::engine::general_purpose::STANDARD
        .decode(out["completions"][0].as_str().unwrap())
        .unwrap();
    assert_ne!(
        image::load_from_memory(&refined_png).unwrap().to_rgb8(),
        want
    );
    let (status, err) = refined(2, 0.0);
    assert_eq!(status, 400);
    assert!(err.contains("--refine-fraction must be above 0"), "{err}");
    assert_eq!(http(port, "GET", "/nowhere", "").0, 404);
    // no file outside what the page offers
    for path in [
        "/../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/api/../../etc/passwd",
    ] {
        let (status, body) = http(port, "GET", path, "");
        assert!(status == 404 || status == 400, "{path}: {status}");
        assert!(!body.contains("root:"), "{path}");
    }
    assert_eq!(http(port, "GET", "/api/edit", "").0, 405);
    assert_eq!(http(port, "DELETE", "/", "").0, 405);
    // a mask of another size, and a body over the limit
    let small_mask =
        serde_json::json!({"image": body["image"], "mask": png(image::RgbImage::new(8, 8))});
    let (status, err) = http(port, "POST", "/api/edit", &small_mask.to_string());
    assert_eq!(status, 400);
    assert!(err.contains("not the image's size"), "{err}");
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(s, "POST /api/edit HTTP/1.1\r\nHost: x\r\nContent-Length: 60000000\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    }
    // two clients at once: each gets its own edit (the one a lone request with its seed gets)
    let request = |seed: u64| {
        let mut b = body.clone();
        b["seed"] = seed.into();
        b.to_string()
    };
    let alone: Vec<String> = [11, 12]
        .iter()
        .map(|&s| http(port, "POST", "/api/edit", &request(s)).1)
        .collect();
    let together: Vec<String> = [11, 12]
        .map(|seed| {
            let r = request(seed);
            std::thread::spawn(move || http(port, "POST", "/api/edit", &r).1)
        })
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let completions =
        |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap()["completions"].clone();
    assert_ne!(completions(&alone[0]), completions(&alone[1]));
    for k in 0..2 {
        assert_eq!(completions(&together[k]), completions(&alone[k]));
    }
    // Ctrl-C stops the server cleanly
    let pid = child.0.id().to_string();
    std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            t0.elapsed().as_secs() < 20,
            "the server did not stop on SIGINT"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l == "stopped"), "{rest:?}");
}
