//! `reelay worker --builtin`: the built-in renderer out of process, so a server with
//! `REELAY_GENERATOR=external` can be tried (and its workers tested) without a model.

use std::time::Duration;

use reelay_render::{AspectRatio, RenderSpec, render_mp4};
use tokio_util::sync::CancellationToken;

use crate::protocol::{FailCode, Job};
use crate::{Failure, Output, Progress};

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
        let mp4 = tokio::task::spawn_blocking(move || {
            render_mp4(&RenderSpec {
                prompt: &prompt,
                seed,
                aspect_ratio,
                watermark_text: watermark.as_deref(),
            })
        })
        .await
        .map_err(|e| Failure::new(FailCode::TaskFailed, format!("the renderer crashed: {e}")))?
        .map_err(|e| Failure::new(FailCode::TaskFailed, format!("rendering failed: {e}")))?;
        Ok(Output::Mp4(mp4))
    }
}
