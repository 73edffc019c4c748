//! Generators turn a generation's spec into a video file under the videos directory.
//!
//! The built-in renderer draws a real MP4 (optionally taking longer, like a real model); the
//! instant generator reuses one video rendered at start-up, for load tests.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use reelay_core::AspectRatio;
use reelay_render::{RenderSpec, render_mp4};
use reelay_store::Generation;

/// How far along a generation is, in percent; read by the engine's heartbeat.
#[derive(Debug, Clone, Default)]
pub struct Progress(Arc<AtomicU8>);

impl Progress {
    pub fn set(&self, pct: u8) {
        self.0.store(pct.min(99), Ordering::Relaxed);
    }

    pub fn get(&self) -> u8 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A generator that could not make the video; the generation fails with TASK_FAILED.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct GenerateError(pub String);

#[async_trait]
pub trait Generator: Send + Sync + 'static {
    /// Makes the video and returns its file name under the videos directory.
    async fn generate(
        &self,
        generation: &Generation,
        progress: &Progress,
    ) -> Result<String, GenerateError>;

    /// Removes a video whose result came too late to be kept.
    async fn discard(&self, _file: &str) {}

    /// How many generations this generator runs at once in one process. The limit is the
    /// generator's own: a CPU-bound renderer must not throttle a generator that does no work
    /// here (or waits on another machine).
    fn concurrency(&self) -> usize;

    /// Whether the engine claims and runs generations in this process. False for external
    /// workers, which claim over HTTP instead.
    fn runs_here(&self) -> bool {
        true
    }
}

fn aspect(g: &Generation) -> reelay_render::AspectRatio {
    match g.spec.aspect_ratio {
        AspectRatio::Landscape => reelay_render::AspectRatio::Landscape16x9,
        AspectRatio::Portrait => reelay_render::AspectRatio::Portrait9x16,
    }
}

/// A video's first and last frames from its input images, RGB8 at the video's size.
struct InputFrames {
    first: Option<Vec<u8>>,
    last: Option<Vec<u8>>,
}

/// The first and last frames a generation's input images give (bytes_image or start_frame,
/// and end_frame), read from disk and fitted to the video's size. Blocking.
fn input_frames(
    inputs_dir: &std::path::Path,
    g: &Generation,
) -> Result<InputFrames, GenerateError> {
    let (width, height) = aspect(g).dimensions();
    let frame = |names: &[&str]| -> Result<Option<Vec<u8>>, GenerateError> {
        let Some(input) = g
            .spec
            .inputs
            .iter()
            .find(|i| names.contains(&i.name.as_str()))
        else {
            return Ok(None);
        };
        let path = crate::inputs::path(inputs_dir, g.id, input);
        let bytes = std::fs::read(&path)
            .map_err(|e| GenerateError(format!("reading input {}: {e}", input.name)))?;
        reelay_core::images::fit_rgb(&bytes, width, height)
            .map(Some)
            .map_err(|e| GenerateError(format!("decoding input {}: {e}", input.name)))
    };
    Ok(InputFrames {
        first: frame(&["image", "start_frame"])?,
        last: frame(&["end_frame"])?,
    })
}

/// Writes a file so that it is either absent or complete, even across a crash.
async fn write_atomically(path: PathBuf, bytes: Vec<u8>) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        // Named for this process: nodes sharing a data directory may write one file at once.
        let tmp = path.with_extension(format!("{}.part", std::process::id()));
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// The default generator: renders each video from its prompt and seed.
pub struct BuiltinRenderer {
    videos_dir: PathBuf,
    /// Where the input images are (first and last frames).
    inputs_dir: PathBuf,
    delay: Duration,
    concurrency: usize,
}

impl BuiltinRenderer {
    /// `delay` is extra time spent before rendering, to behave like a real model;
    /// `concurrency` is how many render at once (each encode takes a core).
    pub fn new(
        videos_dir: PathBuf,
        inputs_dir: PathBuf,
        delay: Duration,
        concurrency: usize,
    ) -> Self {
        Self {
            videos_dir,
            inputs_dir,
            delay,
            concurrency: concurrency.max(1),
        }
    }
}

/// How often a delayed render reports progress.
const PROGRESS_STEP: Duration = Duration::from_millis(250);

#[async_trait]
impl Generator for BuiltinRenderer {
    async fn generate(
        &self,
        generation: &Generation,
        progress: &Progress,
    ) -> Result<String, GenerateError> {
        let started = tokio::time::Instant::now();
        while started.elapsed() < self.delay {
            let left = self.delay - started.elapsed();
            tokio::time::sleep(left.min(PROGRESS_STEP)).await;
            let done = started.elapsed().as_secs_f64() / self.delay.as_secs_f64();
            progress.set((done * 90.0) as u8);
        }
        let owned = generation.clone();
        let inputs_dir = self.inputs_dir.clone();
        let bytes = tokio::task::spawn_blocking(move || {
            let InputFrames { first, last } = input_frames(&inputs_dir, &owned)?;
            render_mp4(&RenderSpec {
                prompt: &owned.spec.prompt,
                seed: owned.spec.seed,
                aspect_ratio: aspect(&owned),
                watermark_text: owned.spec.watermark_text.as_deref(),
                first_frame: first.as_deref(),
                last_frame: last.as_deref(),
            })
            .map_err(|e| GenerateError(format!("rendering failed: {e}")))
        })
        .await
        .map_err(|e| GenerateError(format!("the renderer crashed: {e}")))??;
        let file = format!("{}.mp4", generation.id);
        write_atomically(self.videos_dir.join(&file), bytes)
            .await
            .map_err(|e| GenerateError(format!("writing the video failed: {e}")))?;
        Ok(file)
    }

    async fn discard(&self, file: &str) {
        let _ = tokio::fs::remove_file(self.videos_dir.join(file)).await;
    }

    fn concurrency(&self) -> usize {
        self.concurrency
    }
}

/// For load tests only: completes at once; every generation shares one video.
pub struct InstantGenerator {
    file: String,
}

impl InstantGenerator {
    /// Renders the shared video into `videos_dir` once.
    pub async fn prepare(videos_dir: PathBuf) -> Result<Self, GenerateError> {
        let file = "instant.mp4".to_owned();
        let bytes = tokio::task::spawn_blocking(|| {
            render_mp4(&RenderSpec {
                prompt: "reelay instant generator",
                seed: 0,
                aspect_ratio: reelay_render::AspectRatio::Landscape16x9,
                watermark_text: Some("INSTANT"),
                first_frame: None,
                last_frame: None,
            })
        })
        .await
        .map_err(|e| GenerateError(e.to_string()))?
        .map_err(|e| GenerateError(e.to_string()))?;
        write_atomically(videos_dir.join(&file), bytes)
            .await
            .map_err(|e| GenerateError(e.to_string()))?;
        Ok(Self { file })
    }
}

#[async_trait]
impl Generator for InstantGenerator {
    async fn generate(&self, _: &Generation, _: &Progress) -> Result<String, GenerateError> {
        Ok(self.file.clone())
    }

    /// It does no work, so the bound is only on generations held at once (each is a lease
    /// and a heartbeat): enough that storage, not this limit, sets the pace.
    fn concurrency(&self) -> usize {
        INSTANT_CONCURRENCY
    }
}

/// Generations the instant generator holds at once.
const INSTANT_CONCURRENCY: usize = 256;

/// `REELAY_GENERATOR=external`: no generation runs in this process; workers claim them over
/// HTTP (see `docs/workers.md`). The engine still runs the time-limit watchdog and cancels.
pub struct ExternalWorkers;

#[async_trait]
impl Generator for ExternalWorkers {
    async fn generate(&self, _: &Generation, _: &Progress) -> Result<String, GenerateError> {
        Err(GenerateError(
            "external workers generate; this process does not".into(),
        ))
    }

    fn concurrency(&self) -> usize {
        1
    }

    fn runs_here(&self) -> bool {
        false
    }
}
