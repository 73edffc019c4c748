//! reelay's built-in renderer.
//!
//! reelay is an engine for asynchronous video-generation tasks; real deployments plug in a
//! real model, but the engine must work end to end without one (for demos, tests and
//! self-hosters checking their webhook plumbing). This crate is that stand-in: it turns a
//! prompt and a seed into a short, genuinely playable H.264 MP4.
//!
//! The output is deterministic: the same [`RenderSpec`] always produces the same bytes, on
//! any machine, so results can be cached, compared and checked in tests. The picture is a
//! gradient with bouncing shapes whose colours and paths come from a SHA-256 of the prompt
//! and seed, the start of the prompt as a caption, an optional watermark and a progress bar.

mod encode;
mod font;
mod frame;
mod scene;

#[cfg(test)]
mod tests;

use encode::Mp4Encoder;
use frame::{Canvas, YuvFrame};
use scene::Scene;

/// Frames per second of every rendered video.
const FPS: u32 = 24;
/// Frames per video: two seconds, long enough to see the motion, short enough to be cheap.
const FRAME_COUNT: u32 = 48;

/// Shape of the rendered video. Requests choose between the two common social formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AspectRatio {
    /// 16:9 landscape, rendered at 320x180.
    Landscape16x9,
    /// 9:16 portrait, rendered at 180x320.
    Portrait9x16,
}

impl AspectRatio {
    /// Width and height in pixels of videos rendered with this aspect ratio, so callers can
    /// report them without parsing the MP4. Both are even, as yuv420p requires.
    pub const fn dimensions(self) -> (u32, u32) {
        match self {
            Self::Landscape16x9 => (320, 180),
            Self::Portrait9x16 => (180, 320),
        }
    }
}

/// Everything that determines a rendered video; equal specs give byte-identical files.
#[derive(Clone, Copy, Debug)]
pub struct RenderSpec<'a> {
    /// Drives the picture (through a hash) and is partly shown as a caption (first 24
    /// characters; letters drawn as capitals, characters the font lacks as boxes).
    pub prompt: &'a str,
    /// Varies the picture for the same prompt, like a model's sampling seed.
    pub seed: u32,
    /// Chooses the frame size; see [`AspectRatio::dimensions`].
    pub aspect_ratio: AspectRatio,
    /// Drawn in the top-right corner when present and not blank (truncated to fit), e.g. to
    /// mark output from a free tier. It does not affect the rest of the picture.
    pub watermark_text: Option<&'a str>,
    /// The first frame (image to video, or the start of frame to frame): RGB8 pixels, row by
    /// row, exactly [`AspectRatio::dimensions`] in size (the caller scales and crops). Without
    /// `last_frame` the video fades from it into the drawn scene.
    pub first_frame: Option<&'a [u8]>,
    /// The last frame (frame to frame), like `first_frame`: the video cross-fades from
    /// `first_frame` to it.
    pub last_frame: Option<&'a [u8]>,
}

/// Why rendering failed. Neither should happen with the fixed settings used here; they
/// exist because the encoder and muxer report errors and a server must not panic on them.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// OpenH264 could not be set up or failed to encode a frame.
    #[error("H.264 encoding failed: {0}")]
    Encode(String),
    /// muxide rejected a sample or could not finish the MP4.
    #[error("MP4 muxing failed: {0}")]
    Mux(String),
    /// A frame given in the spec does not have the video's size.
    #[error("an input frame has {got} bytes; a {width}x{height} RGB frame has {want}")]
    FrameSize {
        got: usize,
        want: usize,
        width: u32,
        height: u32,
    },
}

/// Renders the whole MP4 into memory. CPU-bound: callers run it on a blocking thread.
///
/// The result is a fast-start (`moov` before `mdat`) MP4 with one H.264 baseline yuv420p
/// track: 48 frames at 24 fps (two seconds), a few tens of kilobytes.
pub fn render_mp4(spec: &RenderSpec<'_>) -> Result<Vec<u8>, RenderError> {
    let (width, height) = spec.aspect_ratio.dimensions();
    let (w, h) = (width as usize, height as usize);
    for frame in [spec.first_frame, spec.last_frame].into_iter().flatten() {
        if frame.len() != w * h * 3 {
            return Err(RenderError::FrameSize {
                got: frame.len(),
                want: w * h * 3,
                width,
                height,
            });
        }
    }
    let scene = Scene::new(spec, w, h);
    let mut canvas = Canvas::new(w, h);
    let mut yuv = YuvFrame::new(w, h);
    let mut encoder = Mp4Encoder::new(width, height, FPS)?;
    for index in 0..FRAME_COUNT {
        scene.draw(&mut canvas, index, FRAME_COUNT);
        yuv.copy_from(&canvas);
        encoder.push(&yuv)?;
    }
    encoder.finish()
}
