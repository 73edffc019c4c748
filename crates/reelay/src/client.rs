//! `reelay generate`: the API from the command line, for trying reelay and for scripts.
//! `--wait` follows the generation (see [`wait`]).

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

mod wait;

/// Where the server is and who is calling.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// reelay server URL
    #[arg(long, env = "REELAY_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// API key
    #[arg(long, env = "REELAY_API_KEY", hide_env_values = true)]
    pub api_key: String,
}

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// What the video should show (10–4000 characters)
    pub prompt: String,
    /// Where to send the webhook when the generation ends (https; http and loopback only
    /// against `reelay dev`)
    #[arg(long)]
    pub callback_url: Option<String>,
    /// veo-3-fast or veo-3-quality
    #[arg(long)]
    pub model: Option<String>,
    /// 16:9 or 9:16
    #[arg(long)]
    pub aspect_ratio: Option<String>,
    /// The same seed and prompt give the same video; random when omitted
    #[arg(long)]
    pub seed: Option<u32>,
    /// Text drawn over the video
    #[arg(long)]
    pub watermark_text: Option<String>,
    /// Wait until the generation finishes, showing its progress
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this long
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    pub wait_timeout: Duration,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

pub async fn generate(client: ClientArgs, args: GenerateArgs) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
        .context("building the HTTP client")?;
    let base = client.server.trim_end_matches('/');
    let mut body = json!({"prompt": args.prompt});
    for (field, value) in [
        ("callback_url", args.callback_url),
        ("model", args.model),
        ("aspect_ratio", args.aspect_ratio),
        ("watermark_text", args.watermark_text),
    ] {
        if let Some(value) = value {
            body[field] = json!(value);
        }
    }
    if let Some(seed) = args.seed {
        body["seed"] = json!(seed);
    }
    let created = call(
        http.post(format!("{base}/v1/veo/generate"))
            .bearer_auth(&client.api_key)
            .json(&body),
    )
    .await?;
    let id = created["generation_id"]
        .as_str()
        .context("the server's answer has no generation_id")?
        .to_owned();
    if !args.wait {
        print(&created, args.json);
        return Ok(());
    }
    let mut shown = wait::Display::new(args.json);
    shown.created(&id, created["price"].as_str().unwrap_or("?"));
    let waiting = wait::Waiting {
        http: &http,
        base,
        api_key: &client.api_key,
        id: &id,
        deadline: tokio::time::Instant::now() + args.wait_timeout,
    };
    let outcome = match waiting.follow_events(&mut shown).await {
        Ok(Some(generation)) => Ok(generation),
        Ok(None) => waiting.poll(&mut shown).await,
        Err(e) => Err(e),
    };
    // An error is printed under the bar, which stays as it was.
    let generation = outcome.inspect_err(|_| shown.abandon())?;
    shown.finish(&generation);
    print(&generation, args.json);
    if generation["status"] == "failed" {
        bail!(
            "the generation failed: {}",
            generation["error"]["message"]
                .as_str()
                .unwrap_or("unknown error")
        );
    }
    Ok(())
}

/// How long to wait for the server to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one API call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

fn print(value: &Value, json: bool) {
    if json {
        println!("{value}");
    } else {
        println!(
            "{}",
            serde_json::to_string_pretty(value).expect("JSON prints")
        );
    }
}

/// Sends a request and returns its JSON body, or the server's error message.
async fn call(request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
    let response = request
        .timeout(CALL_TIMEOUT)
        .send()
        .await
        .context("could not reach the reelay server (is it running? see --server)")?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!(
            "{status}: {} — {}",
            body["detail"].as_str().unwrap_or("error"),
            body["message"].as_str().unwrap_or("")
        );
    }
    Ok(body)
}
