//! Retention: a finished generation's video and input images are deleted `REELAY_RETENTION`
//! after it ended (its video URL then answers 410), and its row, webhook event and attempt log
//! `REELAY_RECORDS_RETENTION` after (it then answers 404 like an unknown one). Balances and the
//! ledger are never deleted.
//!
//! Each pass goes by small batches, each one short transaction with a pause after it, so a
//! prune of any size never holds the store's writer long enough to stall the API or the
//! dispatcher.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reelay_core::GenerationId;
use reelay_store::{ExpiredMedia, Prunable, Store, StoreResult};
use tokio_util::sync::CancellationToken;

/// Generations handled per transaction.
const BATCH: usize = 500;
/// The pause after each batch, leaving the writer to everyone else.
const PAUSE: Duration = Duration::from_millis(20);
/// How often a pass runs, at most: a quarter of the media retention when that is shorter, so
/// anything is deleted within a quarter of its retention after it is due.
const EVERY: Duration = Duration::from_secs(60);
const MIN_EVERY: Duration = Duration::from_secs(1);

/// What to keep, for how long, and where the files are.
#[derive(Debug, Clone)]
pub struct Retention {
    /// Videos and input images, after the generation ended.
    pub media: Duration,
    /// Generation rows, events and attempt logs, after the generation ended (at least `media`).
    pub records: Duration,
    pub videos_dir: PathBuf,
    pub inputs_dir: PathBuf,
}

/// What one pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub media: u64,
    pub records: u64,
}

impl Retention {
    /// Runs a pass now and then every minute (or a quarter of the media retention, when
    /// shorter) until `shutdown`.
    pub async fn run(self, store: Arc<dyn Store>, shutdown: CancellationToken) {
        let every = (self.media / 4).clamp(MIN_EVERY, EVERY);
        loop {
            match self.prune(store.as_ref(), &shutdown).await {
                Ok(p) if p != Pruned::default() => {
                    tracing::info!(media = p.media, records = p.records, "retention pruned")
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "retention failed; it runs again later"),
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// What a pass would delete now.
    pub async fn preview(&self, store: &dyn Store) -> StoreResult<Prunable> {
        let now = store.now();
        store
            .prunable(now - self.media, now - self.records.max(self.media))
            .await
    }

    /// One pass: media first, then the records whose media are gone.
    pub async fn prune(&self, store: &dyn Store, stop: &CancellationToken) -> StoreResult<Pruned> {
        let now = store.now();
        let mut pruned = Pruned::default();
        while !stop.is_cancelled() {
            let batch = store.media_to_prune(now - self.media, BATCH).await?;
            if batch.is_empty() {
                break;
            }
            let ids = self.delete_files(batch).await;
            pruned.media += ids.len() as u64;
            store.mark_media_pruned(ids, now).await?;
            tokio::time::sleep(PAUSE).await;
        }
        let records_before = now - self.records.max(self.media);
        while !stop.is_cancelled() {
            let n = store.prune_records(records_before, BATCH).await?;
            if n == 0 {
                break;
            }
            pruned.records += n;
            tokio::time::sleep(PAUSE).await;
        }
        Ok(pruned)
    }

    /// Deletes the batch's files. A video file is deleted only when named after its
    /// generation (`<id>.mp4`, `<id>-<upload>.mp4`): the instant generator's one shared video
    /// belongs to no generation.
    async fn delete_files(&self, batch: Vec<ExpiredMedia>) -> Vec<GenerationId> {
        let (videos_dir, inputs_dir) = (self.videos_dir.clone(), self.inputs_dir.clone());
        let work = move || {
            for media in &batch {
                let id = media.id.to_string();
                if let Some(file) = media.video_file.as_deref().filter(|f| f.starts_with(&id)) {
                    remove(std::fs::remove_file(videos_dir.join(file)), &id);
                }
                if media.has_inputs {
                    remove(std::fs::remove_dir_all(inputs_dir.join(&id)), &id);
                }
            }
            batch.into_iter().map(|m| m.id).collect()
        };
        tokio::task::spawn_blocking(work)
            .await
            .expect("deleting files does not panic")
    }
}

fn remove(result: std::io::Result<()>, id: &str) {
    if let Err(e) = result
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(generation = id, error = %e, "deleting an expired file failed");
    }
}
