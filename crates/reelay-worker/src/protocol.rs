//! The worker protocol as a client speaks it (docs/workers.md): claim, heartbeat, upload,
//! complete, fail. Only the public HTTP routes are used, so this is also a guide for workers
//! written in other languages.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Time a claim may take beyond its long-poll before the call counts as failed.
const CLAIM_MARGIN: Duration = Duration::from_secs(15);
/// Time any other JSON call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Time an upload may take: a video of hundreds of megabytes over a slow link.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// A job as the claim hands it out.
#[derive(Debug, Clone, Deserialize)]
pub struct Job {
    pub generation_id: String,
    pub lease_id: String,
    #[serde(deserialize_with = "timestamp")]
    pub lease_expires_at: OffsetDateTime,
    pub model: String,
    pub prompt: String,
    pub seed: u32,
    pub aspect_ratio: String,
    pub watermark_text: Option<String>,
    /// The job's input images, fetched with [`Server::input`].
    #[serde(default)]
    pub inputs: Vec<JobInput>,
}

/// An input image of a job, as the claim lists it.
#[derive(Debug, Clone, Deserialize)]
pub struct JobInput {
    /// `image`, `start_frame`, `end_frame`, `reference_1` … `reference_3`.
    pub name: String,
    pub content_type: String,
    pub url: String,
}

/// A heartbeat's answer.
#[derive(Debug, Clone, Deserialize)]
pub struct Beat {
    #[serde(deserialize_with = "timestamp")]
    pub lease_expires_at: OffsetDateTime,
    pub cancel_requested: bool,
}

/// The API's timestamps: UTC, written like the seed's `2026-12-02T05:40:00.123456` (an
/// RFC 3339 offset is accepted too).
fn timestamp<'de, D: serde::Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
    use time::format_description::well_known::Rfc3339;
    use time::macros::format_description;
    let text = String::deserialize(d)?;
    if let Ok(t) = OffsetDateTime::parse(&text, &Rfc3339) {
        return Ok(t);
    }
    let naive = format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second][optional [.[subsecond]]]"
    );
    time::PrimitiveDateTime::parse(&text, naive)
        .map(time::PrimitiveDateTime::assume_utc)
        .map_err(|e| serde::de::Error::custom(format!("{text:?} is not a timestamp: {e}")))
}

/// The failure codes a worker may report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum FailCode {
    #[serde(rename = "TASK_FAILED")]
    TaskFailed,
    #[serde(rename = "UNSAFE_CONTENT")]
    UnsafeContent,
}

/// Why a call changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// 409 `LEASE_LOST`: the job is no longer ours; stop and discard.
    #[error("the lease is lost: the job ended or went to another worker")]
    LeaseLost,
    /// The server refused the call for another reason; retrying the same call will not help.
    #[error("the server refused the call: {status} {detail}: {message}")]
    Refused {
        status: u16,
        detail: String,
        message: String,
    },
    /// The call may not have reached the server, or the server failed: worth retrying.
    #[error("the call failed: {0}")]
    Transient(String),
}

impl CallError {
    pub fn is_transient(&self) -> bool {
        matches!(self, CallError::Transient(_))
    }
}

/// A reelay server, as seen by a worker token.
#[derive(Clone)]
pub struct Server {
    http: reqwest::Client,
    base: String,
    token: String,
}

#[derive(Serialize)]
struct ClaimBody<'a> {
    max_jobs: usize,
    wait_seconds: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    models: Option<&'a [String]>,
}

#[derive(Deserialize)]
struct Claimed {
    jobs: Vec<Job>,
}

#[derive(Serialize)]
struct HeartbeatBody<'a> {
    progress_pct: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    log: Option<&'a str>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    detail: String,
    #[serde(default)]
    message: String,
}

impl Server {
    pub fn new(base: &str, token: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .build()?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        })
    }

    /// Waits up to `wait` for up to `max` jobs of `models` (the token's when `None`).
    pub async fn claim(
        &self,
        max: usize,
        wait: Duration,
        models: Option<&[String]>,
    ) -> Result<Vec<Job>, CallError> {
        let body = ClaimBody {
            max_jobs: max,
            wait_seconds: wait.as_secs(),
            models,
        };
        let request = self
            .post("/v1/worker/claim")
            .timeout(wait + CLAIM_MARGIN)
            .json(&body);
        let claimed: Claimed = answer(request).await?;
        Ok(claimed.jobs)
    }

    pub async fn heartbeat(
        &self,
        lease_id: &str,
        progress_pct: u8,
        log: Option<&str>,
    ) -> Result<Beat, CallError> {
        let request = self
            .post(&format!("/v1/worker/jobs/{lease_id}/heartbeat"))
            .timeout(CALL_TIMEOUT)
            .json(&HeartbeatBody { progress_pct, log });
        answer(request).await
    }

    /// Fetches an input image of a job this worker holds (bounded: images are at most 20 MiB).
    pub async fn input(&self, input: &JobInput) -> Result<Vec<u8>, CallError> {
        const MAX_INPUT_BYTES: usize = 21 * 1024 * 1024;
        let response = self
            .http
            .get(&input.url)
            .bearer_auth(&self.token)
            .timeout(UPLOAD_TIMEOUT)
            .send()
            .await
            .map_err(|e| CallError::Transient(e.to_string()))?;
        if !response.status().is_success() {
            return read_answer::<serde_json::Value>(response)
                .await
                .map(|_| Vec::new());
        }
        let mut response = response;
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| CallError::Transient(e.to_string()))?
        {
            if bytes.len() + chunk.len() > MAX_INPUT_BYTES {
                return Err(CallError::Transient(format!(
                    "input {} is larger than {MAX_INPUT_BYTES} bytes",
                    input.name
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }

    /// Uploads the finished MP4; the job completes with it.
    pub async fn upload(&self, lease_id: &str, mp4: Vec<u8>) -> Result<(), CallError> {
        let request = self
            .http
            .put(format!("{}/v1/worker/jobs/{lease_id}/video", self.base))
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, "video/mp4")
            .timeout(UPLOAD_TIMEOUT)
            .body(mp4);
        answer::<serde_json::Value>(request).await.map(drop)
    }

    /// Completes the job with a video the worker hosts itself (an `https` URL).
    pub async fn complete(&self, lease_id: &str, video_url: &str) -> Result<(), CallError> {
        let request = self
            .post(&format!("/v1/worker/jobs/{lease_id}/complete"))
            .timeout(CALL_TIMEOUT)
            .json(&serde_json::json!({ "video_url": video_url }));
        answer::<serde_json::Value>(request).await.map(drop)
    }

    pub async fn fail(
        &self,
        lease_id: &str,
        code: FailCode,
        message: &str,
    ) -> Result<(), CallError> {
        let request = self
            .post(&format!("/v1/worker/jobs/{lease_id}/fail"))
            .timeout(CALL_TIMEOUT)
            .json(&serde_json::json!({ "code": code, "message": message }));
        answer::<serde_json::Value>(request).await.map(drop)
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }
}

/// Sends `request` and reads its JSON answer, sorting failures by what the caller should do.
async fn answer<T: serde::de::DeserializeOwned>(
    request: reqwest::RequestBuilder,
) -> Result<T, CallError> {
    let response = request
        .send()
        .await
        .map_err(|e| CallError::Transient(e.to_string()))?;
    read_answer(response).await
}

async fn read_answer<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
) -> Result<T, CallError> {
    let status = response.status();
    if status.is_success() {
        return response
            .json()
            .await
            .map_err(|e| CallError::Transient(format!("reading the answer: {e}")));
    }
    let body: ErrorBody = response.json().await.unwrap_or(ErrorBody {
        detail: String::new(),
        message: String::new(),
    });
    if status.as_u16() == 409 && body.detail == "LEASE_LOST" {
        return Err(CallError::LeaseLost);
    }
    // Busy, overloaded, timed out, or the server's own failure: another try may work.
    if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
        return Err(CallError::Transient(format!(
            "{status} {}: {}",
            body.detail, body.message
        )));
    }
    Err(CallError::Refused {
        status: status.as_u16(),
        detail: body.detail,
        message: body.message,
    })
}
