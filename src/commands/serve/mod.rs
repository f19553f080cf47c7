//! `movq serve`: a local web page to paint a mask and edit images with a stage-2 run, and the
//! JSON API it uses (`GET /api/info`, `POST /api/edit`), served by the binary itself (the page
//! is plain HTML and JavaScript embedded at build time).

use std::io::Read;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use image::RgbImage;
use serde::Deserialize;
use serde_json::{json, Value};
use tiny_http::{Header, Method, Request, Response, Server};

use crate::cli::{DecodeArgs, GuidanceArg, OrderArg, ScheduleArg, ServeArgs};
use crate::commands::edit::{edit_image, EditRequest};
use crate::data::classes::resolve_class;
use crate::data::transform::{eval_view, mask_view};
use crate::train::runs::{is_transformer_run, TransformerRun};
use crate::transformer::editing::Margins;

/// The page, embedded in the binary.
const PAGE: &str = include_str!("page.html");

/// Largest request body accepted: an image and a mask of up to 16 MB each, in base64.
const MAX_BODY: u64 = 48 << 20;

/// Largest image side accepted, in pixels.
const MAX_SIDE: u32 = 4096;

/// Most completions one request may ask for.
const MAX_SAMPLES: usize = 16;

/// Validation images of the run's data the page offers.
const EXAMPLES: usize = 8;

/// The first validation images of the data the run was trained on, as PNGs (none when the
/// run does not record its data or the data is gone).
fn examples(tr: &TransformerRun) -> Vec<Vec<u8>> {
    let Some(spec) = &tr.cfg.data_spec else {
        return vec![];
    };
    let load = || -> Result<Vec<Vec<u8>>> {
        let ds = crate::data::Dataset::open(spec, tr.cfg.seed)?;
        let (train, val) = ds.split(tr.cfg.data.val_fraction);
        let items = if val.is_empty() { train } else { val };
        items
            .into_iter()
            .take(EXAMPLES)
            .map(|i| {
                let mut png = Vec::new();
                ds.load_native(i)?
                    .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
                Ok(png)
            })
            .collect()
    };
    load().unwrap_or_else(|e| {
        eprintln!("note: no example images ({spec}: {e:#})");
        vec![]
    })
}

/// `POST /api/edit`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EditBody {
    /// The image: a PNG or JPEG, base64 (a `data:` URL prefix is allowed).
    image: String,
    /// Inpainting: the mask image (white: regenerate), base64.
    #[serde(default)]
    mask: Option<String>,
    /// Outpainting: `right=64,bottom=32` (pixels).
    #[serde(default)]
    extend: Option<String>,
    #[serde(default)]
    class: Option<String>,
    #[serde(default = "default_steps")]
    steps: usize,
    #[serde(default)]
    seed: u64,
    #[serde(default = "default_samples")]
    samples: usize,
    #[serde(default)]
    dilate: usize,
    #[serde(default)]
    paste: bool,
    #[serde(default = "default_temperature")]
    temperature: f64,
    #[serde(default = "default_choice_temperature")]
    choice_temperature: f64,
    #[serde(default)]
    min_p: f64,
    #[serde(default)]
    cfg_scale: f64,
    #[serde(default)]
    cfg_schedule: GuidanceArg,
    #[serde(default)]
    refine: usize,
    #[serde(default = "default_refine_fraction")]
    refine_fraction: f64,
}

fn default_steps() -> usize {
    12
}
fn default_samples() -> usize {
    4
}
fn default_temperature() -> f64 {
    1.0
}
fn default_choice_temperature() -> f64 {
    4.5
}
fn default_refine_fraction() -> f64 {
    0.1
}

/// A refused request: its status and reason.
#[derive(Debug)]
struct Refusal(u16, String);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}

impl std::error::Error for Refusal {}

fn refuse<T>(status: u16, msg: String) -> Result<T> {
    Err(Refusal(status, msg).into())
}

fn decode_image(b64: &str, what: &str) -> Result<RgbImage> {
    let data = b64.split_once(";base64,").map_or(b64, |(_, d)| d);
    let bytes = STANDARD
        .decode(data.trim())
        .map_err(|e| anyhow!("{what}: not base64 ({e})"))?;
    let reader = image::ImageReader::new(std::io::Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| anyhow!("{what}: {e}"))?;
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| anyhow!("{what}: not an image ({e})"))?;
    if w.max(h) > MAX_SIDE {
        return refuse(
            413,
            format!("{what}: {w}×{h} is larger than {MAX_SIDE} px on a side"),
        );
    }
    Ok(image::load_from_memory(&bytes)
        .map_err(|e| anyhow!("{what}: not an image ({e})"))?
        .to_rgb8())
}

fn encode_png(img: &RgbImage) -> Result<String> {
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
    Ok(STANDARD.encode(png))
}

/// Runs one `POST /api/edit`.
fn api_edit(tr: &TransformerRun, body: &[u8]) -> Result<Value> {
    let b: EditBody = serde_json::from_slice(body).context("the request is not the edit JSON")?;
    if b.steps == 0 || b.samples == 0 || b.samples > MAX_SAMPLES {
        bail!("steps must be positive and samples from 1 to {MAX_SAMPLES}");
    }
    let decode = DecodeArgs {
        temperature: b.temperature,
        choice_temperature: b.choice_temperature,
        min_p: b.min_p,
        schedule: ScheduleArg::Cosine,
        cfg_scale: b.cfg_scale,
        cfg_schedule: b.cfg_schedule,
        order: OrderArg::Confidence,
        refine: b.refine,
        refine_fraction: b.refine_fraction,
    };
    let opts = decode.options(b.steps, false)?;
    let side = tr.vq_cfg.model.resolution as u32;
    let f = tr.vq_cfg.model.downsample_factor();
    let img = decode_image(&b.image, "image")?;
    let (mask, margins) = match (&b.mask, &b.extend) {
        (Some(m), None) => {
            let m = decode_image(m, "mask")?;
            if m.dimensions() != img.dimensions() {
                bail!(
                    "mask: {}×{} is not the image's size {}×{}",
                    m.width(),
                    m.height(),
                    img.width(),
                    img.height()
                );
            }
            (Some(mask_view(&m, img.width(), img.height(), side)), None)
        }
        (None, Some(spec)) => (None, Some(Margins::parse(spec, f)?)),
        (Some(_), Some(_)) => bail!("give a mask or extend, not both"),
        (None, None) => bail!("give a mask (inpainting) or extend (outpainting)"),
    };
    let request = EditRequest {
        view: eval_view(&img, side),
        mask,
        margins,
        cond: resolve_class(b.class.as_deref(), &tr.cfg.classes)?,
        samples: b.samples,
        seed: b.seed,
        dilate: b.dilate,
        paste: b.paste,
    };
    let result = edit_image(tr, &request, &opts)?;
    Ok(json!({
        "input": encode_png(&result.input)?,
        "overlay": encode_png(&result.overlay)?,
        "completions": result.completions.iter().map(encode_png).collect::<Result<Vec<_>>>()?,
        "metrics": result.record,
    }))
}

/// The response to one request: status, content type and body.
fn handle(
    tr: &TransformerRun,
    model: &str,
    examples: &[Vec<u8>],
    req: &mut Request,
) -> (u16, &'static str, Vec<u8>) {
    let as_json = |status: u16, v: Value| (status, "application/json", v.to_string().into_bytes());
    let (method, url) = (req.method().clone(), req.url().to_string());
    match (&method, url.as_str()) {
        (Method::Get, "/") | (Method::Get, "/index.html") => {
            (200, "text/html; charset=utf-8", PAGE.as_bytes().to_vec())
        }
        (Method::Get, "/api/info") => {
            let layout = tr.model.layout();
            as_json(
                200,
                json!({
                    "model": model,
                    "classes": tr.cfg.classes,
                    "resolution": tr.vq_cfg.model.resolution,
                    "factor": tr.vq_cfg.model.downsample_factor(),
                    "tokens": [layout.h, layout.w, layout.channels],
                    "examples": examples.len(),
                }),
            )
        }
        (Method::Get, path) if path.starts_with("/api/examples/") => {
            let k = path["/api/examples/".len()..].parse::<usize>().ok();
            match k.and_then(|k| examples.get(k)) {
                Some(png) => (200, "image/png", png.clone()),
                None => as_json(404, json!({"error": format!("no such example: {path}")})),
            }
        }
        (Method::Post, "/api/edit") => {
            if req.body_length().is_some_and(|n| n as u64 > MAX_BODY) {
                return as_json(
                    413,
                    json!({"error": format!("the request is larger than {} MiB", MAX_BODY >> 20)}),
                );
            }
            let mut body = Vec::new();
            if let Err(e) = req.as_reader().take(MAX_BODY + 1).read_to_end(&mut body) {
                return as_json(
                    400,
                    json!({"error": format!("cannot read the request: {e}")}),
                );
            }
            if body.len() as u64 > MAX_BODY {
                return as_json(
                    413,
                    json!({"error": format!("the request is larger than {} MiB", MAX_BODY >> 20)}),
                );
            }
            match api_edit(tr, &body) {
                Ok(v) => as_json(200, v),
                Err(e) => {
                    let status = e.downcast_ref::<Refusal>().map_or(400, |r| r.0);
                    as_json(status, json!({"error": format!("{e:#}")}))
                }
            }
        }
        (_, "/" | "/index.html" | "/api/info" | "/api/edit") => as_json(
            405,
            json!({"error": format!("{method} is not allowed on {url}")}),
        ),
        // nothing else is served: no file is ever read from a request's path
        _ => as_json(404, json!({"error": format!("no such page: {url}")})),
    }
}

pub fn run(a: ServeArgs) -> Result<ExitCode> {
    if a.model.is_dir() && !is_transformer_run(&a.model) {
        bail!(
            "--model {}: serve needs a train-transformer run; this is a stage-1 run",
            a.model.display()
        );
    }
    let tr = TransformerRun::open(&a.model, &a.common.run())?;
    let server = Server::http((a.host.as_str(), a.port))
        .map_err(|e| anyhow!("cannot listen on {}:{}: {e}", a.host, a.port))?;
    let server = std::sync::Arc::new(server);
    if !["127.0.0.1", "localhost", "::1"].contains(&a.host.as_str()) {
        eprintln!(
            "warning: --host {} lets other machines reach the page and run the model; the server has no authentication",
            a.host
        );
    }
    // Ctrl-C ends the loop below: the request being answered finishes first
    let stopper = server.clone();
    ctrlc::set_handler(move || stopper.unblock()).context("cannot install the Ctrl-C handler")?;
    let addr = server.server_addr().to_ip().context("not an IP address")?;
    let model = a.model.display().to_string();
    let examples = examples(&tr);
    eprintln!("serving {model} on http://{addr}/ (Ctrl-C stops)");
    // one request at a time: the model is never shared between two edits
    for mut req in server.incoming_requests() {
        let (status, content_type, body) = handle(&tr, &model, &examples, &mut req);
        eprintln!("{} {} → {status}", req.method(), req.url());
        let header =
            Header::from_bytes("Content-Type", content_type).map_err(|_| anyhow!("bad header"))?;
        // one request per connection: tiny_http answers a browser's parallel keep-alive
        // connections one at a time, and a request queued behind another on a reused
        // connection could wait forever
        let close = Header::from_bytes("Connection", "close").map_err(|_| anyhow!("bad header"))?;
        let response = Response::from_data(body)
            .with_status_code(status)
            .with_header(header)
            .with_header(close);
        if let Err(e) = req.respond(response) {
            eprintln!("could not answer: {e}");
        }
    }
    eprintln!("stopped");
    Ok(ExitCode::SUCCESS)
}
