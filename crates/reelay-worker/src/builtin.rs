//! `reelay worker --builtin`: the built-in renderer out of process, so a server with
//! `REELAY_GENERATOR=external` can be tried (and its workers tested) without a model.

use std::time::Duration;

use reelay_render::{AspectRatio, RenderSpec, render_mp4};
use tokio_util::sync::CancellationToken;

use crate::protocol::{FailCode, Job};
use crate::{Failure, Image, Output, Progress};

/// How often a delayed render reports progress.
const PROGRESS_STEP: Duration = Duration::from_millis(250);

pub struct Builtin {
    /// Extra time each job takes before it renders, to behave like a real model.
    pub delay: Duration,
}

impl Builtin {
    pub async fn run(
        &self,
        job: &Job,
        images: &[Image],
        progress: &Progress,
        stop: &CancellationToken,
    ) -> Result<Output, Failure> {
        let started = tokio::time::Instant::now();
        while started.elapsed() < self.delay {
            let left = self.delay - started.elapsed();
            tokio::select! {
                _ = tokio::time::sleep(left.min(PROGRESS_STEP)) => {}
                _ = stop.cancelled() => return Err(Failure::stopped()),
            }
            let done = started.elapsed().as_secs_f64() / self.delay.as_secs_f64();
            progress.set((done * 90.0) as u8);
        }
        let (prompt, watermark) = (job.prompt.clone(), job.watermark_text.clone());
        let aspect_ratio = match job.aspect_ratio.as_str() {
            "9:16" => AspectRatio::Portrait9x16,
            _ => AspectRatio::Landscape16x9,
        };
        let seed = job.seed;
        let pick = |names: &[&str]| {
            images
                .iter()
                .find(|i| names.contains(&i.name.as_str()))
                .map(|i| i.bytes.clone())
        };
        let (first, last) = (pick(&["image", "start_frame"]), pick(&["end_frame"]));
        let failed = |message: String| Failure::new(FailCode::TaskFailed, message);
        let mp4 = tokio::task::spawn_blocking(move || {
            let (width, height) = aspect_ratio.dimensions();
            let fit = |bytes: Option<Vec<u8>>| {
                bytes
                    .map(|b| reelay_core::images::fit_rgb(&b, width, height))
                    .transpose()
                    .map_err(|e| failed(format!("decoding an input image: {e}")))
            };
            let (first, last) = (fit(first)?, fit(last)?);
            render_mp4(&RenderSpec {
                prompt: &prompt,
                seed,
                aspect_ratio,
                watermark_text: watermark.as_deref(),
                first_frame: first.as_deref(),
                last_frame: last.as_deref(),
            })
            .map_err(|e| failed(format!("rendering failed: {e}")))
        })
        .await
        .map_err(|e| Failure::new(FailCode::TaskFailed, format!("the renderer crashed: {e}")))??;
        Ok(Output::Mp4(mp4))
    }
}
