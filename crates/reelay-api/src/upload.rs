//! A worker's video upload: streamed to a temporary file under the videos directory with a size
//! cap (never held in memory), then checked to be an MP4 before anything refers to it.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use axum::body::Body;
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

use crate::{ApiError, ErrorCode};

/// Removes the file when dropped, unless it was kept.
pub struct TempVideo {
    path: Option<PathBuf>,
}

impl TempVideo {
    /// Moves the file to `to`; from then on it is no longer removed.
    pub async fn keep_as(mut self, to: &Path) -> std::io::Result<()> {
        let from = self.path.take().expect("not kept yet");
        tokio::fs::rename(&from, to).await
    }
}

impl Drop for TempVideo {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn too_large(cap: u64) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!(
            "the video exceeds this server's limit of {cap} bytes (REELAY_WORKER_MAX_VIDEO_BYTES)"
        ),
    )
}

fn invalid_video(why: &str) -> ApiError {
    ApiError::invalid("body", format!("the body is not an MP4: {why}"))
        .with_detail(ErrorCode::InvalidVideo)
}

/// Streams `body` to `path` (at most `cap` bytes, each chunk within `chunk_timeout`) and checks
/// it is an MP4.
pub async fn receive(
    body: Body,
    path: PathBuf,
    declared: Option<u64>,
    cap: u64,
    chunk_timeout: std::time::Duration,
) -> Result<TempVideo, ApiError> {
    if declared.is_some_and(|n| n > cap) {
        return Err(too_large(cap));
    }
    let mut file = tokio::fs::File::create(&path).await.map_err(|e| {
        tracing::error!(error = %e, path = %path.display(), "creating an upload file failed");
        ApiError::internal()
    })?;
    let temp = TempVideo {
        path: Some(path.clone()),
    };
    let mut body = body;
    let mut written: u64 = 0;
    loop {
        let frame = match tokio::time::timeout(chunk_timeout, body.frame()).await {
            Err(_) => {
                return Err(ApiError::new(
                    ErrorCode::RequestTimeout,
                    "the upload stalled; send the body without pauses",
                ));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(ApiError::invalid(
                    "body",
                    format!("could not read the body: {e}"),
                ));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        written += data.len() as u64;
        if written > cap {
            return Err(too_large(cap));
        }
        file.write_all(&data).await.map_err(|e| {
            tracing::error!(error = %e, "writing an upload failed");
            ApiError::internal()
        })?;
    }
    file.sync_all().await.map_err(|e| {
        tracing::error!(error = %e, "syncing an upload failed");
        ApiError::internal()
    })?;
    drop(file);
    let checked = tokio::task::spawn_blocking(move || check_mp4(&path))
        .await
        .map_err(|_| ApiError::internal())?;
    match checked {
        Ok(Ok(())) => Ok(temp),
        Ok(Err(why)) => Err(invalid_video(why)),
        Err(e) => {
            tracing::error!(error = %e, "reading an upload back failed");
            Err(ApiError::internal())
        }
    }
}

/// The most top-level boxes looked at: a real MP4 has a handful.
const MAX_BOXES: usize = 10_000;

/// An `ftyp` box first and a `moov` box somewhere among the top-level boxes, every box size
/// consistent with the file's length.
fn check_mp4(path: &Path) -> std::io::Result<Result<(), &'static str>> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let mut offset = 0u64;
    let mut moov = false;
    for index in 0..MAX_BOXES {
        if offset == len {
            break;
        }
        if len - offset < 8 {
            return Ok(Err("a box header is cut short"));
        }
        file.seek(SeekFrom::Start(offset))?;
        let mut header = [0u8; 16];
        let n = if len - offset >= 16 { 16 } else { 8 };
        file.read_exact(&mut header[..n])?;
        let size32 = u32::from_be_bytes(header[0..4].try_into().expect("4 bytes")) as u64;
        let kind = &header[4..8];
        let size = match size32 {
            0 => len - offset,
            1 if n == 16 => u64::from_be_bytes(header[8..16].try_into().expect("8 bytes")),
            1 => return Ok(Err("a box header is cut short")),
            s => s,
        };
        if size < 8 || size > len - offset {
            return Ok(Err("a box size does not fit the file"));
        }
        if index == 0 && kind != b"ftyp" {
            return Ok(Err("it does not start with an `ftyp` box"));
        }
        if kind == b"moov" {
            moov = true;
        }
        offset += size;
    }
    if offset == 0 {
        return Ok(Err("it is empty"));
    }
    if !moov {
        return Ok(Err("it has no `moov` box"));
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boxed(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut b = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
        b.extend_from_slice(kind);
        b.extend_from_slice(payload);
        b
    }

    fn check(bytes: &[u8]) -> Result<(), &'static str> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.mp4");
        std::fs::write(&path, bytes).unwrap();
        check_mp4(&path).unwrap()
    }

    #[test]
    fn mp4_needs_ftyp_first_and_a_moov() {
        let ftyp = boxed(b"ftyp", b"isom\0\0\0\0");
        let moov = boxed(b"moov", &[0; 20]);
        let mdat = boxed(b"mdat", &[1; 100]);
        assert_eq!(
            check(&[ftyp.clone(), mdat.clone(), moov.clone()].concat()),
            Ok(())
        );
        assert_eq!(
            check(&[ftyp.clone(), moov.clone(), mdat.clone()].concat()),
            Ok(())
        );
        assert!(check(&[ftyp.clone(), mdat.clone()].concat()).is_err());
        assert!(check(&[moov.clone(), ftyp.clone()].concat()).is_err());
        assert!(check(b"").is_err());
        assert!(check(b"not a video at all, just some text").is_err());
        let mut cut = [ftyp, moov].concat();
        cut.truncate(cut.len() - 3);
        assert!(check(&cut).is_err());
    }
}
