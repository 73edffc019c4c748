//! Input images on disk: `<inputs dir>/<generation id>/<name>.<ext>`, one folder per
//! generation, written whole (fsynced) before the generation is created.

use std::io::Write;
use std::path::{Path, PathBuf};

use reelay_core::GenerationId;
use reelay_core::request::ImageInputs;
use reelay_store::InputFile;

/// The folder of one generation's images.
pub fn folder(inputs_dir: &Path, id: GenerationId) -> PathBuf {
    inputs_dir.join(id.to_string())
}

/// The file of one input image.
pub fn path(inputs_dir: &Path, id: GenerationId, input: &InputFile) -> PathBuf {
    folder(inputs_dir, id).join(input.file_name())
}

/// Writes the request's images for generation `id`; nothing (and no folder) without images.
pub async fn keep(
    inputs_dir: &Path,
    id: GenerationId,
    images: ImageInputs,
) -> std::io::Result<Vec<InputFile>> {
    let named = images.into_named();
    if named.is_empty() {
        return Ok(vec![]);
    }
    let files: Vec<(InputFile, Vec<u8>)> = named
        .into_iter()
        .map(|(name, image)| {
            let input = InputFile {
                name,
                format: image.format,
            };
            (input, image.bytes)
        })
        .collect();
    let dir = folder(inputs_dir, id);
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir)?;
        let mut kept = Vec::with_capacity(files.len());
        for (input, bytes) in files {
            let mut file = std::fs::File::create(dir.join(input.file_name()))?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            kept.push(input);
        }
        std::fs::File::open(&dir)?.sync_all()?;
        Ok(kept)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Removes generation `id`'s images, if it has any.
pub async fn remove(inputs_dir: &Path, id: GenerationId) {
    match tokio::fs::remove_dir_all(folder(inputs_dir, id)).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(generation = %id, error = %e, "removing input images failed"),
    }
}
