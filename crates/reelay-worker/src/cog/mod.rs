//! `reelay worker --cog URL`: runs each job as a prediction on a Cog model server
//! (Replicate's packaging), so a real model serves reelay without a change to its code.
//!
//! The job's fields become the predictor's inputs (renamed by an [`InputMap`]; a field the
//! predictor does not take is not sent). Each job is one synchronous `PUT /predictions/{id}`:
//! its answer is the final state, so nothing can overtake it. Progress comes meanwhile from
//! the model server's `logs` webhooks ([`hooks`]: the last `N%` printed, as tqdm and most
//! models print it). A cancel posts `/predictions/{id}/cancel` and waits for the model to
//! stop. The output — a `data:` URL, a `file://` path or an `http(s)` URL — becomes the video.

mod hooks;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine as _;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use crate::protocol::{FailCode, Job};
use crate::{Failure, Image, Output, Progress};
use hooks::Hooks;

/// How long the model server may take to become ready at start-up (model weights load).
const READY_WAIT: Duration = Duration::from_secs(600);
/// The longest one prediction may run; reelay's own time limit normally ends it far sooner.
const PREDICTION_LIMIT: Duration = Duration::from_secs(2 * 60 * 60);
/// How long a cancelled prediction may take to stop before the worker moves on.
const CANCEL_WAIT: Duration = Duration::from_secs(30);
/// How long a prediction is retried while the model server says all its slots are busy.
const BUSY_WAIT: Duration = Duration::from_secs(60);
/// The largest video fetched from an `http` output URL.
const MAX_FETCH_BYTES: usize = 512 * 1024 * 1024;

/// A job's fields a predictor can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Field {
    Prompt,
    Seed,
    AspectRatio,
    WatermarkText,
    /// The first frame: `bytes_image`, or `start_frame`.
    Image,
    /// `end_frame`.
    EndImage,
    /// `reference_images`, as a list.
    ReferenceImages,
}

impl Field {
    const ALL: [Field; 7] = [
        Field::Prompt,
        Field::Seed,
        Field::AspectRatio,
        Field::WatermarkText,
        Field::Image,
        Field::EndImage,
        Field::ReferenceImages,
    ];

    fn name(self) -> &'static str {
        match self {
            Field::Prompt => "prompt",
            Field::Seed => "seed",
            Field::AspectRatio => "aspect_ratio",
            Field::WatermarkText => "watermark_text",
            Field::Image => "image",
            Field::EndImage => "end_image",
            Field::ReferenceImages => "reference_images",
        }
    }

    /// The field's value for the predictor; images go as `data:` URLs, which Cog downloads
    /// into a file before the predictor runs.
    fn value(self, job: &Job, images: &[Image]) -> Option<Value> {
        let data_url = |i: &Image| {
            use base64::Engine as _;
            let encoded = base64::engine::general_purpose::STANDARD.encode(&i.bytes);
            format!("data:{};base64,{encoded}", i.content_type)
        };
        let named = |names: &[&str]| images.iter().find(|i| names.contains(&i.name.as_str()));
        match self {
            Field::Prompt => Some(json!(job.prompt)),
            Field::Seed => Some(json!(job.seed)),
            Field::AspectRatio => Some(json!(job.aspect_ratio)),
            Field::WatermarkText => job.watermark_text.as_ref().map(|w| json!(w)),
            Field::Image => named(&["image", "start_frame"]).map(|i| json!(data_url(i))),
            Field::EndImage => named(&["end_frame"]).map(|i| json!(data_url(i))),
            Field::ReferenceImages => {
                let list: Vec<String> = images
                    .iter()
                    .filter(|i| i.name.starts_with("reference_"))
                    .map(data_url)
                    .collect();
                (!list.is_empty()).then(|| json!(list))
            }
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
                     aspect_ratio, watermark_text, image, end_image, reference_images)"
                );
            };
            let input = input.trim();
            map.insert(field, (!input.is_empty()).then(|| input.to_owned()));
        }
        Ok(Self(map))
    }

    /// The prediction's `input` object for `job`, keeping only inputs the predictor takes
    /// (all of them when its schema is unknown).
    fn inputs(
        &self,
        job: &Job,
        images: &[Image],
        accepted: Option<&[String]>,
    ) -> Map<String, Value> {
        let mut input = Map::new();
        for (field, name) in &self.0 {
            let Some(name) = name else { continue };
            if accepted.is_some_and(|names| !names.iter().any(|n| n == name)) {
                continue;
            }
            if let Some(value) = field.value(job, images) {
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
    hooks: Hooks,
}

/// How one prediction ended, from the model server's answer.
enum Ended {
    Answer(Value),
    /// All the model's slots are busy (409): try again shortly.
    Busy,
}

impl Cog {
    /// Waits until the model server is ready, reads which inputs its predictor takes, and
    /// starts the receiver of its progress webhooks on `hooks_listen`.
    pub async fn connect(
        url: &str,
        map: InputMap,
        hooks_listen: SocketAddr,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .no_proxy()
            .build()?;
        let base = url.trim_end_matches('/').to_owned();
        wait_ready(&http, &base).await?;
        let accepted = input_names(&http, &base).await;
        match &accepted {
            Some(names) => {
                for (field, name) in &map.0 {
                    if let Some(name) = name
                        && !names.contains(name)
                    {
                        tracing::info!(field = field.name(), input = %name,
                            "the predictor takes no such input; it is not sent (see --input-map)");
                    }
                }
            }
            None => tracing::warn!(
                "could not read the predictor's inputs from /openapi.json; every mapped field is sent"
            ),
        }
        let hooks = Hooks::start(hooks_listen).await.with_context(|| {
            format!("listening for the model server's webhooks on {hooks_listen}")
        })?;
        tracing::info!(server = %base, "the Cog model server is ready");
        Ok(Self {
            http,
            base,
            map,
            accepted,
            hooks,
        })
    }

    pub async fn run(
        &self,
        job: &Job,
        images: &[Image],
        progress: &Progress,
        stop: &CancellationToken,
    ) -> Result<Output, Failure> {
        let failed = |message: String| Failure::new(FailCode::TaskFailed, message);
        let id = format!("reelay-{}", uuid::Uuid::new_v4().simple());
        let watch = self.hooks.watch(&id, progress.clone());
        let body = json!({
            "id": id,
            "input": self.map.inputs(job, images, self.accepted.as_deref()),
            "webhook": self.hooks.url(&id),
            "webhook_events_filter": ["logs"],
        });
        let busy_until = tokio::time::Instant::now() + BUSY_WAIT;
        let answer = loop {
            let predict = self.predict(&id, &body);
            tokio::pin!(predict);
            let ended = tokio::select! {
                ended = &mut predict => ended,
                _ = stop.cancelled() => {
                    self.cancel(&id, predict).await;
                    return Err(Failure::stopped());
                }
            };
            match ended.map_err(|e| failed(format!("{e:#}")))? {
                Ended::Answer(answer) => break answer,
                Ended::Busy if tokio::time::Instant::now() < busy_until => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Ended::Busy => {
                    return Err(failed(format!(
                        "the model server stayed busy for {BUSY_WAIT:?} (its slots are taken: \
                         is --concurrency above what it runs at once?)"
                    )));
                }
            }
        };
        match answer["status"].as_str().unwrap_or_default() {
            "succeeded" => self
                .output(&answer["output"], &watch)
                .await
                .map_err(|e| failed(format!("{e:#}"))),
            "failed" => Err(failed(
                answer["error"]
                    .as_str()
                    .unwrap_or("the prediction failed")
                    .to_owned(),
            )),
            "canceled" => Err(failed("the model server canceled the prediction".into())),
            other => Err(failed(format!(
                "the model server answered an unfinished prediction ({other:?})"
            ))),
        }
    }

    /// Runs prediction `id` to its end: the synchronous answer is its final state.
    async fn predict(&self, id: &str, body: &Value) -> anyhow::Result<Ended> {
        let response = self
            .http
            .put(format!("{}/predictions/{id}", self.base))
            .timeout(PREDICTION_LIMIT)
            .json(body)
            .send()
            .await
            .context("the model server is unreachable")?;
        let status = response.status();
        if status.as_u16() == 409 {
            return Ok(Ended::Busy);
        }
        let text = response.text().await.context("reading the prediction")?;
        if !status.is_success() {
            bail!("the model server refused the prediction: {status} {text:.500}");
        }
        serde_json::from_str(&text)
            .map(Ended::Answer)
            .with_context(|| format!("the model server's answer is not JSON: {text:.200}"))
    }

    /// Cancels the prediction and waits, briefly, for `running` (its request) to end, so
    /// the model is free before the next job.
    async fn cancel(&self, id: &str, running: impl Future<Output = anyhow::Result<Ended>>) {
        let sent = self
            .http
            .post(format!("{}/predictions/{id}/cancel", self.base))
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        if let Err(e) = sent {
            tracing::warn!(prediction = id, error = %e, "cancelling the prediction failed");
        }
        match tokio::time::timeout(CANCEL_WAIT, running).await {
            Ok(_) => tracing::info!(prediction = id, "prediction cancelled"),
            Err(_) => tracing::warn!(
                prediction = id,
                "the prediction did not stop within {CANCEL_WAIT:?}"
            ),
        }
    }

    /// The video a prediction's output names: a `data:` URL, a `file://` path, an `http(s)`
    /// URL, the file the model server uploaded to this worker (`--upload-url`), or a list whose
    /// first item is one of those.
    async fn output(&self, output: &Value, watch: &hooks::Watch<'_>) -> anyhow::Result<Output> {
        let url = match output {
            Value::String(s) => s.as_str(),
            Value::Array(items) => items
                .first()
                .and_then(Value::as_str)
                .context("the prediction's output is an empty list")?,
            other => bail!("the prediction's output is not a file: {other}"),
        };
        if self.hooks.is_upload(url) {
            return watch
                .take_upload()
                .map(Output::Mp4)
                .context("the model server named an upload to this worker that never came");
        }
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
        bail!("the prediction's output is not a URL reelay can use: {url:.80}")
    }

    /// Downloads a plain-`http` output (a model server's local file host), bounded.
    async fn fetch(&self, url: &str) -> anyhow::Result<Vec<u8>> {
        let mut response = self
            .http
            .get(url)
            .timeout(PREDICTION_LIMIT)
            .send()
            .await?
            .error_for_status()?;
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

/// Waits for the model server's health check to say it is ready.
async fn wait_ready(http: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let until = tokio::time::Instant::now() + READY_WAIT;
    let mut logged = false;
    loop {
        let health: Option<Value> = match http
            .get(format!("{base}/health-check"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
        {
            Ok(r) => r.json().await.ok(),
            Err(_) => None,
        };
        let status = health.as_ref().and_then(|h| h["status"].as_str());
        match status {
            Some("READY" | "BUSY") => return Ok(()),
            Some(bad @ ("SETUP_FAILED" | "UNHEALTHY" | "DEFUNCT")) => {
                let setup = health.as_ref().map(|h| h["setup"]["logs"].clone());
                bail!("the Cog model server at {base} is {bad}; restart it (setup logs: {setup:?})")
            }
            _ if tokio::time::Instant::now() > until => bail!(
                "the Cog model server at {base} was not ready within {READY_WAIT:?} \
                 (last answer: {health:?})"
            ),
            _ => {
                if !logged {
                    tracing::info!(server = %base, status, "waiting for the Cog model server to be ready");
                    logged = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
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
        let input = identity.inputs(&job(), &[], None);
        assert_eq!(
            Value::Object(input),
            json!({"prompt": "a fox", "seed": 7, "aspect_ratio": "9:16"}),
            "a missing watermark is not sent"
        );
        let renamed = InputMap::parse(&["prompt=text".into(), "aspect_ratio=".into()]).unwrap();
        let accepted = vec!["text".to_owned(), "seed".to_owned()];
        assert_eq!(
            Value::Object(renamed.inputs(&job(), &[], Some(&accepted))),
            json!({"text": "a fox", "seed": 7})
        );
        assert!(InputMap::parse(&["colour=hue".into()]).is_err());
        assert!(InputMap::parse(&["prompt".into()]).is_err());
    }
}
