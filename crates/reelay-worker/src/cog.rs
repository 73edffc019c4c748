//! `reelay worker --cog URL`: runs each job as a prediction on a Cog model server
//! (Replicate's packaging), so a real model serves reelay without a change to its code.
//!
//! The job's fields become the predictor's inputs (renamed by an [`InputMap`]; a field the
//! predictor does not take is not sent), the prediction's logs give the progress (the last
//! `N%` they print, as tqdm and most models do), a cancel reaches the prediction, and the
//! output — a `data:` URL, a `file://` path or an `http(s)` URL — becomes the job's video.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine as _;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use crate::protocol::{FailCode, Job};
use crate::{Failure, Output, Progress};

/// How long the model server may take to become ready at start-up (model weights load).
const READY_WAIT: Duration = Duration::from_secs(600);
/// How often a running prediction is looked at.
const POLL_EVERY: Duration = Duration::from_millis(500);
/// How long a cancelled prediction may take to stop before it is left behind.
const CANCEL_WAIT: Duration = Duration::from_secs(30);
/// The largest video fetched from an `http` output URL.
const MAX_FETCH_BYTES: usize = 512 * 1024 * 1024;

/// A job's fields a predictor can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Field {
    Prompt,
    Seed,
    AspectRatio,
    WatermarkText,
}

impl Field {
    const ALL: [Field; 4] = [
        Field::Prompt,
        Field::Seed,
        Field::AspectRatio,
        Field::WatermarkText,
    ];

    fn name(self) -> &'static str {
        match self {
            Field::Prompt => "prompt",
            Field::Seed => "seed",
            Field::AspectRatio => "aspect_ratio",
            Field::WatermarkText => "watermark_text",
        }
    }

    fn value(self, job: &Job) -> Option<Value> {
        match self {
            Field::Prompt => Some(json!(job.prompt)),
            Field::Seed => Some(json!(job.seed)),
            Field::AspectRatio => Some(json!(job.aspect_ratio)),
            Field::WatermarkText => job.watermark_text.as_ref().map(|w| json!(w)),
        }
    }
}

/// Which predictor input each job field goes to (`None`: never sent).
#[derive(Debug, Clone)]
pub struct InputMap(BTreeMap<Field, Option<String>>);

impl InputMap {
    /// Parses `FIELD=INPUT` pairs over the identity map; an empty INPUT drops the field.
    pub fn parse(pairs: &[String]) -> anyhow::Result<Self> {
        let mut map: BTreeMap<_, _> = Field::ALL
            .iter()
            .map(|f| (*f, Some(f.name().to_owned())))
            .collect();
        for pair in pairs {
            let Some((field, input)) = pair.split_once('=') else {
                bail!("--input-map takes FIELD=INPUT pairs, not {pair:?}");
            };
            let Some(field) = Field::ALL.into_iter().find(|f| f.name() == field.trim()) else {
                bail!(
                    "--input-map: unknown job field {field:?} (fields: prompt, seed, \
                     aspect_ratio, watermark_text)"
                );
            };
            let input = input.trim();
            map.insert(field, (!input.is_empty()).then(|| input.to_owned()));
        }
        Ok(Self(map))
    }

    /// The prediction's `input` object for `job`, keeping only inputs the predictor takes
    /// (all of them when its schema is unknown).
    fn inputs(&self, job: &Job, accepted: Option<&[String]>) -> Map<String, Value> {
        let mut input = Map::new();
        for (field, name) in &self.0 {
            let Some(name) = name else { continue };
            if accepted.is_some_and(|names| !names.iter().any(|n| n == name)) {
                continue;
            }
            if let Some(value) = field.value(job) {
                input.insert(name.clone(), value);
            }
        }
        input
    }
}

/// A Cog model server.
pub struct Cog {
    http: reqwest::Client,
    base: String,
    map: InputMap,
    /// The predictor's input names, from its OpenAPI schema.
    accepted: Option<Vec<String>>,
}

impl Cog {
    /// Waits until the model server is ready and reads which inputs its predictor takes.
    pub async fn connect(url: &str, map: InputMap) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .no_proxy()
            .build()?;
        let base = url.trim_end_matches('/').to_owned();
        let until = tokio::time::Instant::now() + READY_WAIT;
        loop {
            let health: Option<Value> = match http.get(format!("{base}/health-check")).send().await
            {
                Ok(r) => r.json().await.ok(),
                Err(_) => None,
            };
            let status = health.as_ref().and_then(|h| h["status"].as_str());
            match status {
                Some("READY") | Some("BUSY") => break,
                Some("SETUP_FAILED") | Some("DEFUNCT") => {
                    bail!(
                        "the Cog model server at {base} is {}: {health:?}",
                        status.unwrap_or_default()
                    )
                }
                _ if tokio::time::Instant::now() > until => {
                    bail!(
                        "the Cog model server at {base} was not ready within {READY_WAIT:?} (last answer: {health:?})"
                    )
                }
                _ => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
        let accepted = input_names(&http, &base).await;
        match &accepted {
            Some(names) => {
                for (field, name) in &map.0 {
                    if let Some(name) = name
                        && !names.contains(name)
                    {
                        tracing::info!(field = field.name(), input = %name, "the predictor takes no such input; it is not sent (see --input-map)");
                    }
                }
            }
            None => tracing::warn!(
                "could not read the predictor's inputs from /openapi.json; every mapped field is sent"
            ),
        }
        tracing::info!(server = %base, "the Cog model server is ready");
        Ok(Self {
            http,
            base,
            map,
            accepted,
        })
    }

    pub async fn run(
        &self,
        job: &Job,
        progress: &Progress,
        stop: &CancellationToken,
    ) -> Result<Output, Failure> {
        let failed = |message: String| Failure::new(FailCode::TaskFailed, message);
        let id = format!("reelay{}", uuid::Uuid::new_v4().simple());
        let input = self.map.inputs(job, self.accepted.as_deref());
        let started = self
            .http
            .put(format!("{}/predictions/{id}", self.base))
            .header("Prefer", "respond-async")
            .json(&json!({ "id": id, "input": input }))
            .send()
            .await
            .map_err(|e| failed(format!("the model server is unreachable: {e}")))?;
        if !started.status().is_success() {
            let status = started.status();
            let body = started.text().await.unwrap_or_default();
            return Err(failed(format!(
                "the model server refused the prediction: {status} {body}"
            )));
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(POLL_EVERY) => {}
                _ = stop.cancelled() => {
                    self.cancel(&id).await;
                    return Err(Failure::stopped());
                }
            }
            let prediction = match self.prediction(&id).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(generation = %job.generation_id, error = %e, "reading the prediction failed");
                    continue;
                }
            };
            if let Some(pct) = last_percent(prediction["logs"].as_str().unwrap_or_default()) {
                progress.set(pct);
            }
            match prediction["status"].as_str().unwrap_or_default() {
                "succeeded" => {
                    return self
                        .output(&prediction["output"])
                        .await
                        .map_err(|e| failed(format!("{e:#}")));
                }
                "failed" => {
                    let error = prediction["error"]
                        .as_str()
                        .unwrap_or("the prediction failed");
                    return Err(failed(error.to_owned()));
                }
                "canceled" => {
                    return Err(failed("the model server canceled the prediction".into()));
                }
                _ => {}
            }
        }
    }

    async fn prediction(&self, id: &str) -> anyhow::Result<Value> {
        let response = self
            .http
            .get(format!("{}/predictions/{id}", self.base))
            .send()
            .await?
            .error_for_status()?;
        Ok(response.json().await?)
    }

    /// Cancels the prediction and waits, briefly, for it to stop.
    async fn cancel(&self, id: &str) {
        let sent = self
            .http
            .post(format!("{}/predictions/{id}/cancel", self.base))
            .send()
            .await;
        if let Err(e) = sent {
            tracing::warn!(prediction = id, error = %e, "cancelling the prediction failed");
            return;
        }
        let until = tokio::time::Instant::now() + CANCEL_WAIT;
        while tokio::time::Instant::now() < until {
            match self.prediction(id).await {
                Ok(p)
                    if matches!(
                        p["status"].as_str(),
                        Some("canceled" | "failed" | "succeeded")
                    ) =>
                {
                    tracing::info!(
                        prediction = id,
                        status = p["status"].as_str(),
                        "prediction stopped"
                    );
                    return;
                }
                _ => tokio::time::sleep(POLL_EVERY).await,
            }
        }
        tracing::warn!(
            prediction = id,
            "the prediction did not stop within {CANCEL_WAIT:?}"
        );
    }

    /// The video a prediction's output names: a `data:` URL, a `file://` path, an `http(s)`
    /// URL, or a list whose first item is one of those.
    async fn output(&self, output: &Value) -> anyhow::Result<Output> {
        let url = match output {
            Value::String(s) => s.as_str(),
            Value::Array(items) => items
                .first()
                .and_then(Value::as_str)
                .context("the prediction's output is an empty list")?,
            other => bail!("the prediction's output is not a file: {other}"),
        };
        if let Some(data) = url.strip_prefix("data:") {
            let (_, encoded) = data
                .split_once(";base64,")
                .context("the output's data URL is not base64")?;
            let mp4 = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .context("the output's data URL is not valid base64")?;
            return Ok(Output::Mp4(mp4));
        }
        if let Some(path) = url.strip_prefix("file://") {
            let mp4 = tokio::fs::read(path)
                .await
                .with_context(|| format!("reading the output file {path}"))?;
            return Ok(Output::Mp4(mp4));
        }
        if url.starts_with("https://") {
            return Ok(Output::Url(url.to_owned()));
        }
        if url.starts_with("http://") {
            return Ok(Output::Mp4(self.fetch(url).await?));
        }
        bail!(
            "the prediction's output is not a URL reelay can use: {:.80}",
            url
        )
    }

    /// Downloads a plain-`http` output (a model server's local file host), bounded.
    async fn fetch(&self, url: &str) -> anyhow::Result<Vec<u8>> {
        let mut response = self.http.get(url).send().await?.error_for_status()?;
        let mut mp4 = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if mp4.len() + chunk.len() > MAX_FETCH_BYTES {
                bail!("the output at {url} is larger than {MAX_FETCH_BYTES} bytes");
            }
            mp4.extend_from_slice(&chunk);
        }
        Ok(mp4)
    }
}

/// The input names of the predictor, from the model server's OpenAPI document.
async fn input_names(http: &reqwest::Client, base: &str) -> Option<Vec<String>> {
    let doc: Value = http
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let properties = doc["components"]["schemas"]["Input"]["properties"].as_object()?;
    Some(properties.keys().cloned().collect())
}

/// The last percentage a log prints (`45%|████`, `progress: 45%`), as progress.
fn last_percent(logs: &str) -> Option<u8> {
    let mut found = None;
    let bytes = logs.as_bytes();
    for (i, _) in logs.match_indices('%') {
        let digits = bytes[..i]
            .iter()
            .rev()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if (1..=3).contains(&digits)
            && let Ok(pct) = logs[i - digits..i].parse::<u16>()
            && pct <= 100
        {
            found = Some(pct as u8);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        serde_json::from_value(json!({
            "generation_id": "g", "lease_id": "l", "lease_expires_at": "2026-12-02T05:40:00.123456",
            "model": "veo-3-fast", "prompt": "a fox", "seed": 7, "aspect_ratio": "9:16",
            "watermark_text": null
        }))
        .unwrap()
    }

    #[test]
    fn progress_is_the_last_percentage_in_the_logs() {
        assert_eq!(last_percent(""), None);
        assert_eq!(last_percent("loading 2 files"), None);
        assert_eq!(last_percent(" 10%|█  | 1/10\n 40%|████ | 4/10"), Some(40));
        assert_eq!(last_percent("progress: 7%\nsaving"), Some(7));
        assert_eq!(last_percent("1234% nonsense, then 99%"), Some(99));
    }

    #[test]
    fn the_input_map_renames_drops_and_keeps_to_the_schema() {
        let identity = InputMap::parse(&[]).unwrap();
        let input = identity.inputs(&job(), None);
        assert_eq!(
            Value::Object(input),
            json!({"prompt": "a fox", "seed": 7, "aspect_ratio": "9:16"}),
            "a missing watermark is not sent"
        );
        let renamed = InputMap::parse(&["prompt=text".into(), "aspect_ratio=".into()]).unwrap();
        let accepted = vec!["text".to_owned(), "seed".to_owned()];
        assert_eq!(
            Value::Object(renamed.inputs(&job(), Some(&accepted))),
            json!({"text": "a fox", "seed": 7})
        );
        assert!(InputMap::parse(&["colour=hue".into()]).is_err());
        assert!(InputMap::parse(&["prompt".into()]).is_err());
    }
}
