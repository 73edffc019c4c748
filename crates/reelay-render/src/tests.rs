//! End-to-end checks of the MP4 bytes: structure, determinism, and a full decode with
//! OpenH264's decoder (no ffprobe on the build machines).

use std::time::Instant;

use openh264::decoder::Decoder;
use openh264::formats::YUVSource;

use crate::frame::{Canvas, YuvFrame};
use crate::scene::Scene;
use crate::{AspectRatio, FRAME_COUNT, RenderSpec, render_mp4};

fn spec(seed: u32, aspect_ratio: AspectRatio) -> RenderSpec<'static> {
    RenderSpec {
        prompt: "A lighthouse at dusk, waves crashing (4K)",
        seed,
        aspect_ratio,
        watermark_text: Some("reelay preview"),
        first_frame: None,
        last_frame: None,
    }
}

fn render(spec: &RenderSpec<'_>) -> Vec<u8> {
    render_mp4(spec).expect("render")
}

/// Minimal ISO-BMFF reading: just enough to find boxes and the sample table.
mod mp4 {
    /// The boxes directly inside `data`, as (type, payload).
    pub fn boxes(mut data: &[u8]) -> Vec<([u8; 4], &[u8])> {
        let mut out = Vec::new();
        while data.len() >= 8 {
            let size = u32::from_be_bytes(data[0..4].try_into().unwrap()) as usize;
            let kind: [u8; 4] = data[4..8].try_into().unwrap();
            let (header, size) = match size {
                0 => (8, data.len()),
                1 => (
                    16,
                    u64::from_be_bytes(data[8..16].try_into().unwrap()) as usize,
                ),
                n => (8, n),
            };
            assert!(size >= header && size <= data.len(), "bad box size");
            out.push((kind, &data[header..size]));
            data = &data[size..];
        }
        assert!(data.is_empty(), "trailing bytes after last box");
        out
    }

    /// The payload of the first box at `path` (each step a child of the previous one).
    pub fn find<'a>(data: &'a [u8], path: &[&[u8; 4]]) -> &'a [u8] {
        let mut current = data;
        for step in path {
            current = boxes(current)
                .into_iter()
                .find(|(kind, _)| kind == *step)
                .map(|(_, payload)| payload)
                .unwrap_or_else(|| panic!("no {} box", String::from_utf8_lossy(*step)));
        }
        current
    }

    pub fn u16_at(data: &[u8], at: usize) -> u16 {
        u16::from_be_bytes(data[at..at + 2].try_into().unwrap())
    }

    pub fn u32_at(data: &[u8], at: usize) -> u32 {
        u32::from_be_bytes(data[at..at + 4].try_into().unwrap())
    }

    pub const STBL: [&[u8; 4]; 5] = [b"moov", b"trak", b"mdia", b"minf", b"stbl"];

    pub fn stbl_child<'a>(file: &'a [u8], kind: &[u8; 4]) -> &'a [u8] {
        let stbl = find(file, &STBL);
        find(stbl, &[kind])
    }

    /// The avc1 sample entry's payload (after its 8-byte header).
    pub fn avc1(file: &[u8]) -> &[u8] {
        let stsd = stbl_child(file, b"stsd");
        assert_eq!(u32_at(stsd, 4), 1, "one sample entry");
        find(&stsd[8..], &[b"avc1"])
    }

    /// avc1 width and height.
    pub fn avc1_dimensions(file: &[u8]) -> (u16, u16) {
        let avc1 = avc1(file);
        (u16_at(avc1, 24), u16_at(avc1, 26))
    }

    /// tkhd width and height (16.16 fixed point, the box's last eight bytes).
    pub fn tkhd_dimensions(file: &[u8]) -> (u32, u32) {
        let tkhd = find(file, &[b"moov", b"trak", b"tkhd"]);
        let end = tkhd.len();
        (u32_at(tkhd, end - 8) >> 16, u32_at(tkhd, end - 4) >> 16)
    }

    /// The avcC record: (profile_idc, NAL length size, SPS list, PPS list).
    pub fn avcc(file: &[u8]) -> (u8, usize, Vec<&[u8]>, Vec<&[u8]>) {
        // The visual sample entry's fixed fields take 78 bytes; child boxes follow.
        let avcc = find(&avc1(file)[78..], &[b"avcC"]);
        let profile = avcc[1];
        let length_size = usize::from(avcc[4] & 3) + 1;
        let read_list = |count: usize, at: &mut usize| {
            (0..count)
                .map(|_| {
                    let len = usize::from(u16_at(avcc, *at));
                    let nal = &avcc[*at + 2..*at + 2 + len];
                    *at += 2 + len;
                    nal
                })
                .collect::<Vec<_>>()
        };
        let mut at = 6;
        let sps = read_list(usize::from(avcc[5] & 0x1f), &mut at);
        let pps_count = usize::from(avcc[at]);
        at += 1;
        let pps = read_list(pps_count, &mut at);
        (profile, length_size, sps, pps)
    }

    /// Every sample's bytes, located through stsz, stsc and stco.
    pub fn samples(file: &[u8]) -> Vec<&[u8]> {
        let stsz = stbl_child(file, b"stsz");
        let fixed = u32_at(stsz, 4) as usize;
        let count = u32_at(stsz, 8) as usize;
        let sizes: Vec<usize> = (0..count)
            .map(|i| {
                if fixed != 0 {
                    fixed
                } else {
                    u32_at(stsz, 12 + 4 * i) as usize
                }
            })
            .collect();

        let stco = stbl_child(file, b"stco");
        let chunk_offsets: Vec<usize> = (0..u32_at(stco, 4) as usize)
            .map(|i| u32_at(stco, 8 + 4 * i) as usize)
            .collect();

        // stsc runs: (first chunk, 1-based; samples per chunk), each until the next run.
        let stsc = stbl_child(file, b"stsc");
        let runs: Vec<(usize, usize)> = (0..u32_at(stsc, 4) as usize)
            .map(|i| {
                let at = 8 + 12 * i;
                (u32_at(stsc, at) as usize, u32_at(stsc, at + 4) as usize)
            })
            .collect();

        let mut out = Vec::new();
        let mut sizes = sizes.into_iter();
        for (chunk, &offset) in chunk_offsets.iter().enumerate() {
            let per_chunk = runs
                .iter()
                .rev()
                .find(|(first, _)| *first <= chunk + 1)
                .map_or(0, |run| run.1);
            let mut at = offset;
            for size in sizes.by_ref().take(per_chunk) {
                out.push(&file[at..at + size]);
                at += size;
            }
        }
        assert_eq!(out.len(), count, "stsc/stco cover every sample");
        out
    }
}

#[test]
fn output_is_a_fast_start_mp4_of_reasonable_size() {
    let file = render(&spec(7, AspectRatio::Landscape16x9));
    assert_eq!(&file[4..8], b"ftyp");
    let kinds: Vec<[u8; 4]> = mp4::boxes(&file).into_iter().map(|(k, _)| k).collect();
    let moov = kinds.iter().position(|k| k == b"moov").expect("moov");
    let mdat = kinds.iter().position(|k| k == b"mdat").expect("mdat");
    assert!(
        moov < mdat,
        "moov must precede mdat for fast start: {kinds:?}"
    );
    assert!(
        file.len() > 5 * 1024 && file.len() < 2 * 1024 * 1024,
        "size {}",
        file.len()
    );
}

#[test]
fn same_spec_gives_identical_bytes() {
    let a = render(&spec(7, AspectRatio::Landscape16x9));
    let b = render(&spec(7, AspectRatio::Landscape16x9));
    assert!(a == b, "two renders of the same spec differ");
}

#[test]
fn different_inputs_give_different_bytes() {
    let base = render(&spec(7, AspectRatio::Landscape16x9));
    assert_ne!(base, render(&spec(8, AspectRatio::Landscape16x9)));
    let mut other_prompt = spec(7, AspectRatio::Landscape16x9);
    other_prompt.prompt = "A lighthouse at dawn";
    assert_ne!(base, render(&other_prompt));
    let mut no_watermark = spec(7, AspectRatio::Landscape16x9);
    no_watermark.watermark_text = None;
    assert_ne!(base, render(&no_watermark));
}

#[test]
fn portrait_and_landscape_dimensions() {
    let landscape = render(&spec(7, AspectRatio::Landscape16x9));
    let portrait = render(&spec(7, AspectRatio::Portrait9x16));
    assert_eq!(mp4::tkhd_dimensions(&landscape), (320, 180));
    assert_eq!(mp4::avc1_dimensions(&landscape), (320, 180));
    assert_eq!(mp4::tkhd_dimensions(&portrait), (180, 320));
    assert_eq!(mp4::avc1_dimensions(&portrait), (180, 320));
}

#[test]
fn stream_is_baseline_with_one_sample_per_frame() {
    let file = render(&spec(7, AspectRatio::Landscape16x9));
    let (profile, length_size, sps, pps) = mp4::avcc(&file);
    assert_eq!(profile, 66, "H.264 baseline profile");
    assert_eq!(length_size, 4);
    assert_eq!((sps.len(), pps.len()), (1, 1));
    assert_eq!(mp4::samples(&file).len(), FRAME_COUNT as usize);
    // One keyframe per second: stss lists samples 1 and 25.
    let stss = mp4::stbl_child(&file, b"stss");
    let sync: Vec<u32> = (0..mp4::u32_at(stss, 4) as usize)
        .map(|i| mp4::u32_at(stss, 8 + 4 * i))
        .collect();
    assert_eq!(sync, [1, 25]);
    // Two seconds: mvhd duration over its timescale.
    let mvhd = mp4::find(&file, &[b"moov", b"mvhd"]);
    assert_eq!(mvhd[0], 0, "version 0 mvhd");
    assert_eq!(mp4::u32_at(mvhd, 16), 2 * mp4::u32_at(mvhd, 12));
}

/// Pins the exact output, so a change to the picture or the encoder (including an OpenH264
/// upgrade or a different CPU code path) is noticed: equal requests are promised equal bytes,
/// also across versions and machines. If the change is intended, update the hashes.
#[test]
fn output_bytes_are_pinned() {
    use sha2::{Digest, Sha256};
    let hex = |file: &[u8]| -> String {
        Sha256::digest(file)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    assert_eq!(
        hex(&render(&spec(7, AspectRatio::Landscape16x9))),
        "e34673fc2dfac33fe35d5705203cd94f2131936a1080794d80aa1778ec2866f2"
    );
    assert_eq!(
        hex(&render(&spec(7, AspectRatio::Portrait9x16))),
        "019c6c09d5b43b54f78e63733d0c0bb7b300810a5b0729bd436ec65c47d7abfe"
    );
}

/// Decodes every sample with OpenH264: each frame's luma plane, `w` × `h`.
fn decoded_luma(file: &[u8], w: usize, h: usize) -> Vec<Vec<u8>> {
    let (_, length_size, sps, pps) = mp4::avcc(file);
    assert_eq!(length_size, 4);
    let mut decoder = Decoder::new().expect("decoder");
    let mut frames = Vec::new();
    for (index, sample) in mp4::samples(file).into_iter().enumerate() {
        // Length-prefixed NAL units back to Annex B; parameter sets go first.
        let mut annex_b = Vec::new();
        let mut nals: Vec<&[u8]> = if index == 0 {
            sps.iter().chain(&pps).copied().collect()
        } else {
            Vec::new()
        };
        let mut rest = sample;
        while !rest.is_empty() {
            let len = mp4::u32_at(rest, 0) as usize;
            nals.push(&rest[4..4 + len]);
            rest = &rest[4 + len..];
        }
        for nal in nals {
            annex_b.extend_from_slice(&[0, 0, 0, 1]);
            annex_b.extend_from_slice(nal);
        }

        let picture = decoder
            .decode(&annex_b)
            .unwrap_or_else(|e| panic!("frame {index}: {e}"))
            .unwrap_or_else(|| panic!("frame {index} gave no picture"));
        assert_eq!(picture.dimensions(), (w, h));
        let stride = picture.strides().0;
        frames.push(
            (0..h)
                .flat_map(|y| picture.y()[y * stride..y * stride + w].to_vec())
                .collect(),
        );
    }
    assert!(decoder.flush_remaining().expect("flush").is_empty());
    frames
}

/// Decodes every sample with OpenH264 and compares the pictures with what was drawn.
fn decode_and_compare(spec: &RenderSpec<'_>) {
    let file = render(spec);
    let (width, height) = spec.aspect_ratio.dimensions();
    let (w, h) = (width as usize, height as usize);
    let scene = Scene::new(spec, w, h);
    let mut canvas = Canvas::new(w, h);
    let mut expected = YuvFrame::new(w, h);
    let frames = decoded_luma(&file, w, h);
    assert_eq!(frames.len(), FRAME_COUNT as usize);
    for (index, luma) in frames.iter().enumerate() {
        // Lossy, so compare on average: mean absolute luma error per pixel.
        scene.draw(&mut canvas, index as u32, FRAME_COUNT);
        expected.copy_from(&canvas);
        let total: u64 = luma
            .iter()
            .zip(expected.luma())
            .map(|(a, b)| u64::from(a.abs_diff(*b)))
            .sum();
        let mean = total as f64 / (w * h) as f64;
        assert!(mean < 3.0, "frame {index}: mean luma error {mean:.2}");
    }
}

/// A `w` × `h` RGB8 picture of one colour.
fn solid(w: usize, h: usize, rgb: [u8; 3]) -> Vec<u8> {
    rgb.repeat(w * h)
}

/// BT.601 limited-range luma of a colour, as the encoder's input has it.
fn luma_of([r, g, b]: [u8; 3]) -> f64 {
    16.0 + (65.481 * f64::from(r) + 128.553 * f64::from(g) + 24.966 * f64::from(b)) / 255.0
}

/// Mean luma of the region `x0..x1` × `y0..y1` of a decoded frame.
fn region_mean(luma: &[u8], w: usize, (x0, x1): (usize, usize), (y0, y1): (usize, usize)) -> f64 {
    let sum: u64 = (y0..y1)
        .flat_map(|y| (x0..x1).map(move |x| u64::from(luma[y * w + x])))
        .sum();
    sum as f64 / ((x1 - x0) * (y1 - y0)) as f64
}

#[test]
fn input_images_are_the_first_and_last_frames() {
    for aspect_ratio in [AspectRatio::Landscape16x9, AspectRatio::Portrait9x16] {
        let (width, height) = aspect_ratio.dimensions();
        let (w, h) = (width as usize, height as usize);
        let (red, blue) = ([200, 40, 40], [20, 60, 220]);
        let (first, last) = (solid(w, h, red), solid(w, h, blue));
        let spec = RenderSpec {
            first_frame: Some(&first),
            last_frame: Some(&last),
            ..spec(3, aspect_ratio)
        };
        let file = render(&spec);
        assert_eq!(mp4::avc1_dimensions(&file), (width as u16, height as u16));
        let frames = decoded_luma(&file, w, h);
        // The middle of the picture, clear of the caption, watermark and progress bar.
        let (xs, ys) = ((w / 4, 3 * w / 4), (h / 3, 2 * h / 3));
        let first_mean = region_mean(&frames[0], w, xs, ys);
        let last_mean = region_mean(frames.last().unwrap(), w, xs, ys);
        assert!(
            (first_mean - luma_of(red)).abs() < 4.0,
            "{aspect_ratio:?} first {first_mean}"
        );
        assert!(
            (last_mean - luma_of(blue)).abs() < 4.0,
            "{aspect_ratio:?} last {last_mean}"
        );
        // Every frame is still what the scene draws.
        decode_and_compare(&spec);
    }
}

#[test]
fn one_input_image_fades_into_the_scene() {
    let (w, h) = (320, 180);
    let green = [30, 200, 60];
    let first = solid(w, h, green);
    let faded = RenderSpec {
        first_frame: Some(&first),
        ..spec(3, AspectRatio::Landscape16x9)
    };
    let frames = decoded_luma(&render(&faded), w, h);
    let (xs, ys) = ((w / 4, 3 * w / 4), (h / 3, 2 * h / 3));
    assert!((region_mean(&frames[0], w, xs, ys) - luma_of(green)).abs() < 4.0);
    // The last frame is the scene alone (the same picture, encoded after another history).
    let plain = decoded_luma(&render(&spec(3, AspectRatio::Landscape16x9)), w, h);
    let (a, b) = (frames.last().unwrap(), plain.last().unwrap());
    let total: u64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| u64::from(x.abs_diff(*y)))
        .sum();
    let mean = total as f64 / (w * h) as f64;
    assert!(
        mean < 3.0,
        "the last frame is the scene alone: mean luma error {mean:.2}"
    );
    let spec = faded;
    decode_and_compare(&spec);
}

#[test]
fn the_watermark_changes_the_pixels_where_it_is_drawn() {
    let (w, h) = (320, 180);
    let grey = solid(w, h, [128, 128, 128]);
    let with = RenderSpec {
        first_frame: Some(&grey),
        last_frame: Some(&grey),
        ..spec(3, AspectRatio::Landscape16x9)
    };
    let without = RenderSpec {
        watermark_text: None,
        ..with
    };
    let (a, b) = (
        decoded_luma(&render(&with), w, h),
        decoded_luma(&render(&without), w, h),
    );
    let corner = ((w - 120, w - 8), (8, 24));
    let middle = ((w / 4, 3 * w / 4), (h / 3, 2 * h / 3));
    let diff = |region: ((usize, usize), (usize, usize))| {
        (region_mean(&a[0], w, region.0, region.1) - region_mean(&b[0], w, region.0, region.1))
            .abs()
    };
    assert!(
        diff(corner) > 4.0,
        "the watermark's corner changed: {}",
        diff(corner)
    );
    assert!(diff(middle) < 1.0, "the rest did not: {}", diff(middle));
}

#[test]
fn a_frame_of_the_wrong_size_is_an_error_not_a_panic() {
    let small = solid(10, 10, [0, 0, 0]);
    let spec = RenderSpec {
        first_frame: Some(&small),
        ..spec(3, AspectRatio::Landscape16x9)
    };
    assert!(matches!(
        render_mp4(&spec),
        Err(crate::RenderError::FrameSize { .. })
    ));
}

#[test]
fn every_landscape_frame_decodes_to_the_drawn_picture() {
    decode_and_compare(&spec(7, AspectRatio::Landscape16x9));
}

#[test]
fn every_portrait_frame_decodes_to_the_drawn_picture() {
    decode_and_compare(&spec(7, AspectRatio::Portrait9x16));
}

/// Not an assertion: prints render time and size (`cargo test --release -- --nocapture`).
#[test]
fn report_render_time_and_size() {
    for aspect_ratio in [AspectRatio::Landscape16x9, AspectRatio::Portrait9x16] {
        let spec = spec(7, aspect_ratio);
        render(&spec); // warm-up
        let runs = 5;
        let start = Instant::now();
        let mut size = 0;
        for _ in 0..runs {
            size = render(&spec).len();
        }
        let each = start.elapsed() / runs;
        println!("render {aspect_ratio:?}: {each:?} per video, {size} bytes");
    }
}
