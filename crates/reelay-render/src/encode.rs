//! H.264 encoding (OpenH264) and MP4 muxing (muxide), configured so the output is both
//! playable in browsers and byte-for-byte reproducible.
//!
//! Why each encoder setting is what it is:
//! - Baseline profile with CAVLC: the most widely decodable H.264, including in Chromium.
//! - Rate control off (QP 26, nudged per P frame by adaptive quantisation): no rate-control
//!   state or bitrate target, so a frame's encoding depends only on the pictures, and the
//!   quality is steady.
//! - Frame skipping off: every input frame must become a sample, or the clip gets shorter.
//! - One thread: OpenH264's slice threads could otherwise change how work is split.
//! - No scene-change detection: keyframes come only from the fixed one-second period, so the
//!   GOP layout is the same for every prompt.
//! - No background detection: it let blocks a shape had just left be skipped, leaving
//!   coloured smudges behind the moving shapes until the next keyframe.
//! - BT.601 limited range is signalled, matching the conversion in [`crate::frame`].
//!
//! muxide writes a fast-start file (`moov` before `mdat`) with creation times of zero unless
//! metadata is supplied, and we supply none, so there is no clock in the output.

use muxide::api::{Muxer, MuxerBuilder, VideoCodec};
use openh264::encoder::{
    Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, Profile, RateControlMode,
    VuiConfig,
};
use openh264::{OpenH264API, Timestamp};

use crate::RenderError;
use crate::frame::YuvFrame;

/// Encodes frames one by one and collects them into an in-memory MP4.
pub(crate) struct Mp4Encoder {
    encoder: Encoder,
    muxer: Muxer<Vec<u8>>,
    fps: u32,
    frames_written: u32,
    /// Reused Annex B buffer for one encoded frame.
    sample: Vec<u8>,
}

impl Mp4Encoder {
    pub fn new(width: u32, height: u32, fps: u32) -> Result<Self, RenderError> {
        let config = EncoderConfig::new()
            .profile(Profile::Baseline)
            .rate_control_mode(RateControlMode::Off)
            .skip_frames(false)
            .num_threads(1)
            .max_frame_rate(FrameRate::from_hz(fps as f32))
            .intra_frame_period(IntraFramePeriod::from_num_frames(fps))
            .scene_change_detect(false)
            .background_detection(false)
            .vui(VuiConfig::bt601());
        let encoder = Encoder::with_api_config(OpenH264API::from_source(), config)
            .map_err(|e| RenderError::Encode(format!("creating the encoder: {e}")))?;
        let muxer = MuxerBuilder::new(Vec::new())
            .video(VideoCodec::H264, width, height, f64::from(fps))
            .with_fast_start(true)
            .build()
            .map_err(|e| RenderError::Mux(e.to_string()))?;
        Ok(Self {
            encoder,
            muxer,
            fps,
            frames_written: 0,
            sample: Vec::new(),
        })
    }

    /// Encodes `frame` as the next sample, `1 / fps` seconds after the previous one.
    pub fn push(&mut self, frame: &YuvFrame) -> Result<(), RenderError> {
        let index = self.frames_written;
        let millis = u64::from(index) * 1000 / u64::from(self.fps);
        let bitstream = self
            .encoder
            .encode_at(frame, Timestamp::from_millis(millis))
            .map_err(|e| RenderError::Encode(format!("frame {index}: {e}")))?;
        // Only IDR frames (which OpenH264 emits with SPS and PPS) are random-access points.
        let keyframe = bitstream.frame_type() == FrameType::IDR;
        self.sample.clear();
        bitstream.write_vec(&mut self.sample);
        if self.sample.is_empty() {
            return Err(RenderError::Encode(format!(
                "frame {index}: the encoder produced no data"
            )));
        }

        // Exact multiples of 1/fps; muxide rounds them onto its 90 kHz timescale.
        let pts = f64::from(index) / f64::from(self.fps);
        self.muxer
            .write_video(pts, &self.sample, keyframe)
            .map_err(|e| RenderError::Mux(format!("frame {index}: {e}")))?;
        self.frames_written += 1;
        Ok(())
    }

    /// Writes the `ftyp`, `moov` and `mdat` boxes and returns the file.
    pub fn finish(mut self) -> Result<Vec<u8>, RenderError> {
        self.muxer
            .finish_in_place()
            .map_err(|e| RenderError::Mux(e.to_string()))?;
        Ok(self.muxer.into_writer())
    }
}
