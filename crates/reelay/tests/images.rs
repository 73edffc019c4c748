//! Image inputs, black-box: RunBlob's `bytes_image`, `start_frame` + `end_frame` and
//! `reference_images` against a real `reelay serve` — every refusal with its code and nothing
//! charged, images judged by their bytes, the largest body within a stated memory bound, and
//! the images handed to external workers only through the lease that holds the job.

mod common;

use std::io::Cursor;

use base64::Engine as _;
use common::*;
use reqwest::Method;
use serde_json::{Value, json};

/// 20 MiB: the largest image accepted.
const MAX_IMAGE_BYTES: usize = 20 * 1024 * 1024;
/// Peak RSS of a server that took one create with the largest allowed body (three images of
/// almost 20 MiB, 84 MB of JSON): the body, the decoded images and one decode at a time,
/// plus the server's own baseline.
const LARGEST_BODY_RSS_BOUND: u64 = 256 * 1024 * 1024;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn encoded(image: &image::RgbImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = Vec::new();
    image.write_to(&mut Cursor::new(&mut out), format).unwrap();
    out
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 7) as u8, (y * 5) as u8, 90])
    });
    encoded(&image, image::ImageFormat::Png)
}

fn jpeg(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_pixel(width, height, image::Rgb([20, 160, 220]));
    encoded(&image, image::ImageFormat::Jpeg)
}

/// A PNG of noise just under `bytes` long (noise does not compress).
fn noise_png(bytes: usize) -> Vec<u8> {
    let width = 2048u32;
    let height = (bytes as u32 - 4096) / (width * 3 + 1);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let image = image::RgbImage::from_fn(width, height, |_, _| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let [a, b, c, ..] = seed.to_le_bytes();
        image::Rgb([a, b, c])
    });
    let out = encoded(&image, image::ImageFormat::Png);
    assert!(out.len() <= bytes, "{} > {bytes}", out.len());
    out
}

/// A PNG that declares `width` × `height` and holds almost nothing: a decompression bomb's
/// header.
fn png_header(width: u32, height: u32) -> Vec<u8> {
    let mut header = [0u8; 13];
    header[..4].copy_from_slice(&width.to_be_bytes());
    header[4..8].copy_from_slice(&height.to_be_bytes());
    header[8] = 8;
    header[9] = 2;
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [
        (&b"IHDR"[..], &header[..]),
        (b"IDAT", b"\x78\x9c\x03\x00\x00\x00\x00\x01"),
        (b"IEND", b""),
    ] {
        out.extend((data.len() as u32).to_be_bytes());
        let mut chunk = kind.to_vec();
        chunk.extend(data);
        out.extend(&chunk);
        let mut crc = 0xffff_ffffu32;
        for &b in &chunk {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        out.extend((!crc).to_be_bytes());
    }
    out
}

fn with_prompt(extra: Value) -> Value {
    let mut body = json!({ "prompt": PROMPT });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

#[tokio::test]
async fn every_bad_image_is_refused_with_its_code_and_costs_nothing() {
    let s = TestServer::start(&[]).await;
    let a = s.create_account("images", "10").await;
    let good = b64(&png(64, 36));
    let mut truncated = png(64, 36);
    truncated.truncate(truncated.len() - 40);
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "not base64",
            json!({"bytes_image": "%%% not base64 %%%"}),
            "INVALID_IMAGE",
            "bytes_image",
        ),
        (
            "not an image",
            json!({"bytes_image": b64(b"just some text, no image")}),
            "INVALID_IMAGE",
            "bytes_image",
        ),
        (
            "truncated",
            json!({"bytes_image": b64(&truncated)}),
            "INVALID_IMAGE",
            "bytes_image",
        ),
        (
            "a GIF",
            json!({"bytes_image": b64(b"GIF89a\x01\x00\x01\x00\x80\x00\x00")}),
            "UNSUPPORTED_IMAGE_FORMAT",
            "bytes_image",
        ),
        (
            "20 MiB + 1 byte",
            json!({"start_frame": b64(&vec![0xff; MAX_IMAGE_BYTES + 1]), "end_frame": good}),
            "IMAGE_TOO_LARGE",
            "start_frame",
        ),
        (
            "30,000 × 30,000",
            json!({"bytes_image": b64(&png_header(30_000, 30_000))}),
            "IMAGE_TOO_LARGE",
            "bytes_image",
        ),
        (
            "a reference that is not an image",
            json!({"reference_images": [good, "aGVsbG8="]}),
            "INVALID_IMAGE",
            "reference_images[1]",
        ),
        (
            "two modes",
            json!({"bytes_image": good, "reference_images": [good]}),
            "INVALID_PARAMETERS",
            "reference_images",
        ),
        (
            "a start without an end",
            json!({"start_frame": good}),
            "INVALID_PARAMETERS",
            "end_frame",
        ),
        (
            "four references",
            json!({"reference_images": [good, good, good, good]}),
            "INVALID_PARAMETERS",
            "reference_images",
        ),
        (
            "no references",
            json!({"reference_images": []}),
            "INVALID_PARAMETERS",
            "reference_images",
        ),
        (
            "references with veo-3-quality",
            json!({"reference_images": [good], "model": "veo-3-quality"}),
            "INVALID_PARAMETERS",
            "reference_images",
        ),
        (
            "an image that is a number",
            json!({"bytes_image": 42}),
            "INVALID_PARAMETERS",
            "bytes_image",
        ),
    ];
    for (what, fields, code, field) in cases {
        let r = s.generate(&a.api_key, &with_prompt(fields)).await;
        assert_error(&r, 422, code, what);
        assert!(
            error_fields(&r).iter().any(|f| f == field),
            "{what}: {field} is named: {r}"
        );
    }
    assert_eq!(s.balance(&a.api_key).await, "10.0000", "nothing charged");
    assert_eq!(s.list(&a.api_key, "").await["total"], 0, "nothing created");
    let inputs = s.data_dir().join("inputs");
    let left = std::fs::read_dir(&inputs).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "no image kept for a refused request");
}

#[tokio::test]
async fn formats_are_read_from_the_bytes_and_every_mode_is_accepted() {
    let s = TestServer::start(&[("REELAY_GENERATOR", "external")]).await;
    let a = s.create_account("modes", "10").await;
    // A PNG declared as JPEG and a JPEG declared as PNG: each taken for what its bytes are.
    let (p, j) = (png(64, 36), jpeg(48, 27));
    for body in [
        json!({"bytes_image": format!("data:image/jpeg;base64,{}", b64(&p))}),
        json!({"start_frame": format!("data:image/png;base64,{}", b64(&j)), "end_frame": b64(&p)}),
        json!({"reference_images": [b64(&p), b64(&j), b64(&p)]}),
    ] {
        let r = s.generate(&a.api_key, &with_prompt(body)).await;
        assert_eq!(r.status, 201, "{r}");
    }
    let w = s.worker_token("w").await;
    let r = s
        .post(&w, "/v1/worker/claim", &json!({"max_jobs": 3}))
        .await;
    assert_eq!(r.status, 200, "{r}");
    let kinds: Vec<Vec<(String, String)>> = r.body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| {
            job["inputs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| {
                    let (name, kind) = (&i["name"], &i["content_type"]);
                    (name.as_str().unwrap().into(), kind.as_str().unwrap().into())
                })
                .collect()
        })
        .collect();
    let pair = |n: &str, t: &str| (n.to_owned(), t.to_owned());
    assert_eq!(
        kinds,
        [
            vec![pair("image", "image/png")],
            vec![
                pair("start_frame", "image/jpeg"),
                pair("end_frame", "image/png")
            ],
            vec![
                pair("reference_1", "image/png"),
                pair("reference_2", "image/jpeg"),
                pair("reference_3", "image/png")
            ],
        ],
        "{r}"
    );
}

#[tokio::test]
async fn only_the_lease_holding_the_job_can_fetch_its_images() {
    let s = TestServer::start(&[
        ("REELAY_GENERATOR", "external"),
        ("REELAY_WORKER_LEASE", "1s"),
    ])
    .await;
    let a = s.create_account("fetch", "10").await;
    let (start, end) = (png(64, 36), jpeg(64, 36));
    let body = with_prompt(json!({"start_frame": b64(&start), "end_frame": b64(&end)}));
    let r = s.generate(&a.api_key, &body).await;
    assert_eq!(r.status, 201, "{r}");
    let w = s.worker_token("w").await;
    let fetch = |url: String, token: Option<String>| {
        let mut rb = s.http.get(url);
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        send(rb)
    };

    let first = s
        .post(&w, "/v1/worker/claim", &json!({"wait_seconds": 5}))
        .await;
    let job = &first.body["jobs"][0];
    let url_of = |job: &Value, name: &str| -> String {
        job["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {job}"))["url"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let r = fetch(url_of(job, "start_frame"), Some(w.clone())).await;
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.header("content-type").as_deref(), Some("image/png"));
    assert_eq!(r.bytes, start, "the image as sent");
    let r = fetch(url_of(job, "end_frame"), Some(w.clone())).await;
    assert_eq!((r.status, &r.bytes[..]), (200, &end[..]));
    // Never public, never with an API key, never another name.
    let r = fetch(url_of(job, "end_frame"), None).await;
    assert_error(&r, 401, "UNAUTHORIZED", "no token");
    let r = fetch(url_of(job, "end_frame"), Some(a.api_key.clone())).await;
    assert_error(&r, 401, "UNAUTHORIZED", "an API key");
    let r = fetch(
        url_of(job, "end_frame").replace("end_frame", "other"),
        Some(w.clone()),
    )
    .await;
    assert_eq!(r.status, 404, "{r}");

    // Once the lease has lapsed and another claim took the job, the old lease fetches nothing.
    let second = s
        .post(&w, "/v1/worker/claim", &json!({"wait_seconds": 10}))
        .await;
    let fresh = &second.body["jobs"][0];
    assert_eq!(fresh["generation_id"], job["generation_id"], "{second}");
    let r = fetch(url_of(job, "start_frame"), Some(w.clone())).await;
    assert_error(&r, 409, "LEASE_LOST", "the lapsed lease");
    let r = fetch(url_of(fresh, "start_frame"), Some(w.clone())).await;
    assert_eq!((r.status, &r.bytes[..]), (200, &start[..]));
    // A made-up lease for the same job fetches nothing either.
    let forged = format!(
        "{}.wl_{}",
        job["generation_id"].as_str().unwrap(),
        "0".repeat(32)
    );
    let url = url_of(fresh, "start_frame").replace(fresh["lease_id"].as_str().unwrap(), &forged);
    assert_error(
        &fetch(url, Some(w.clone())).await,
        409,
        "LEASE_LOST",
        "forged lease",
    );
}

#[tokio::test]
async fn the_largest_body_stays_within_its_memory_bound() {
    let s = TestServer::start(&[("REELAY_GENERATOR", "external")]).await;
    let a = s.create_account("big", "10").await;
    let image = b64(&noise_png(MAX_IMAGE_BYTES));
    let body = with_prompt(json!({"reference_images": [image, image, image]}));
    let bytes = serde_json::to_vec(&body).unwrap();
    assert!(bytes.len() > 80_000_000, "{} bytes", bytes.len());
    let r = send(
        s.req(Method::POST, "/v1/veo/generate", Some(&a.api_key))
            .header("Content-Type", "application/json")
            .body(bytes),
    )
    .await;
    assert_eq!(r.status, 201, "{r}");
    let peak = peak_rss(s.pid());
    assert!(
        peak < LARGEST_BODY_RSS_BOUND,
        "peak RSS {} MiB over the bound of {} MiB",
        peak >> 20,
        LARGEST_BODY_RSS_BOUND >> 20
    );
    eprintln!("peak RSS after the largest create: {} MiB", peak >> 20);
}
