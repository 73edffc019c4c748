//! Writes one rendered video to a file, for looking at it in a browser or player:
//!
//! ```text
//! cargo run --release -p reelay-render --example render -- "a red fox" 42 fox.mp4 [portrait] [watermark]
//! ```

use std::process::ExitCode;

use reelay_render::{AspectRatio, RenderSpec, render_mp4};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(prompt), Some(seed), Some(path)) = (args.first(), args.get(1), args.get(2)) else {
        eprintln!("usage: render PROMPT SEED OUT.mp4 [landscape|portrait] [WATERMARK]");
        return ExitCode::FAILURE;
    };
    let Ok(seed) = seed.parse() else {
        eprintln!("SEED must be a number from 0 to {}", u32::MAX);
        return ExitCode::FAILURE;
    };
    let aspect_ratio = match args.get(3).map(String::as_str) {
        None | Some("landscape") => AspectRatio::Landscape16x9,
        Some("portrait") => AspectRatio::Portrait9x16,
        Some(other) => {
            eprintln!("unknown aspect ratio {other:?}");
            return ExitCode::FAILURE;
        }
    };
    let spec = RenderSpec {
        prompt,
        seed,
        aspect_ratio,
        watermark_text: args.get(4).map(String::as_str),
        first_frame: None,
        last_frame: None,
    };
    let start = std::time::Instant::now();
    let result = render_mp4(&spec)
        .map_err(|e| e.to_string())
        .and_then(|mp4| {
            std::fs::write(path, &mp4).map_err(|e| e.to_string())?;
            Ok(mp4.len())
        });
    match result {
        Ok(len) => {
            eprintln!("wrote {path}: {len} bytes in {:?}", start.elapsed());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("render failed: {e}");
            ExitCode::FAILURE
        }
    }
}
