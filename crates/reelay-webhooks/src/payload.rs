//! The webhook body: one event per generation, sent when it becomes terminal.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::timestamp::serde_seed;

/// The terminal outcome an event reports; a webhook is never sent for a task still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum EventStatus {
    Completed,
    Failed,
}

/// Why a generation failed: `message` carries the code (`TIMEOUT`, `UNSAFE_CONTENT`, ...), as in
/// the seed; `details` is an object reserved for extra context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventError {
    /// The failure code: `UNSAFE_CONTENT`, `MODERATION_FAILED`, `TIMEOUT`, `TASK_FAILED`,
    /// `CANCELLED` or `MAINTENANCE`.
    #[cfg_attr(feature = "openapi", schema(example = "TIMEOUT"))]
    pub message: String,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// The webhook body. Field order is the seed's and is part of the contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GenerationEvent {
    pub generation_id: Uuid,
    pub status: EventStatus,
    pub prompt: String,
    /// The video, on success; null on failure.
    pub video_url: Option<String>,
    #[serde(with = "serde_seed")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "2025-12-06T21:43:03.374000"))]
    pub created_at: OffsetDateTime,
    #[serde(with = "serde_seed")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "2025-12-06T21:44:06.143000"))]
    pub completed_at: OffsetDateTime,
    pub seed: u32,
    /// Null on success.
    pub error: Option<EventError>,
}

impl GenerationEvent {
    /// The exact bytes sent (and signed): compact JSON in the seed's key order.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("the event has only serializable fields")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn event(error: Option<EventError>) -> GenerationEvent {
        GenerationEvent {
            generation_id: "ffd473d5-5bef-4e14-bf22-8d559be3c19f".parse().unwrap(),
            status: if error.is_some() {
                EventStatus::Failed
            } else {
                EventStatus::Completed
            },
            prompt: "A cat playing with a ball in a sunny room".into(),
            video_url: error
                .is_none()
                .then(|| "https://cdn.runblob.io/videos/your-video.mp4".into()),
            created_at: datetime!(2025-12-06 21:43:03.374 UTC),
            completed_at: datetime!(2025-12-06 21:44:06.143 UTC),
            seed: 319790131,
            error,
        }
    }

    #[test]
    fn completed_matches_the_seed_byte_for_byte() {
        assert_eq!(
            event(None).to_json(),
            r#"{"generation_id":"ffd473d5-5bef-4e14-bf22-8d559be3c19f","status":"completed","prompt":"A cat playing with a ball in a sunny room","video_url":"https://cdn.runblob.io/videos/your-video.mp4","created_at":"2025-12-06T21:43:03.374000","completed_at":"2025-12-06T21:44:06.143000","seed":319790131,"error":null}"#
        );
    }

    #[test]
    fn failed_carries_the_code_and_empty_details() {
        let failed = event(Some(EventError {
            message: "TIMEOUT".into(),
            details: Default::default(),
        }));
        assert_eq!(
            failed.to_json(),
            r#"{"generation_id":"ffd473d5-5bef-4e14-bf22-8d559be3c19f","status":"failed","prompt":"A cat playing with a ball in a sunny room","video_url":null,"created_at":"2025-12-06T21:43:03.374000","completed_at":"2025-12-06T21:44:06.143000","seed":319790131,"error":{"message":"TIMEOUT","details":{}}}"#
        );
    }

    #[test]
    fn parses_the_seed_example_as_printed() {
        let seed = r#"{ "generation_id" : "ffd473d5-5bef-4e14-bf22-8d559be3c19f" , "status" : "failed" ,
            "prompt" : "A cat playing with a ball in a sunny room" , "video_url" : null ,
            "created_at" : "2025-12-06T21:43:03.374000" , "completed_at" : "2025-12-06T21:44:06.143000" ,
            "seed" : 319790131 , "error" : { "message" : "UNSAFE_CONTENT" , "details" : {} } }"#;
        let parsed: GenerationEvent = serde_json::from_str(seed).unwrap();
        assert_eq!(parsed.error.unwrap().message, "UNSAFE_CONTENT");
        assert_eq!(parsed.seed, 319790131);
    }
}
