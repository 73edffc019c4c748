//! `reelay generate`: the API from the command line, for trying reelay and for scripts.

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

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
    let http = reqwest::Client::new();
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
    if !args.json {
        eprintln!("created {id} (price {})", created["price"]);
    }
    let deadline = tokio::time::Instant::now() + args.wait_timeout;
    loop {
        let generation = call(
            http.get(format!("{base}/v1/veo/generations/{id}"))
                .bearer_auth(&client.api_key),
        )
        .await?;
        let status = generation["status"].as_str().unwrap_or_default();
        if status == "completed" || status == "failed" {
            if !args.json {
                eprintln!();
            }
            print(&generation, args.json);
            return if status == "failed" {
                bail!("the generation failed: {}", generation["error"]["message"])
            } else {
                Ok(())
            };
        }
        if !args.json {
            eprint!(
                "\r{status:<10} {:>3}%  queue position {}   ",
                generation["progress_pct"], generation["queue_position"]
            );
        }
        if tokio::time::Instant::now() > deadline {
            bail!("gave up waiting for {id} after {:?}", args.wait_timeout);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

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
