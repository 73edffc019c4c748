//! `reelay listen`: a local webhook receiver that verifies and prints every webhook, and can
//! forward it to the application under development.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use reelay_webhooks::{GenerationEvent, Secret, Verifier};
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct ListenArgs {
    /// Port to listen on (127.0.0.1)
    #[arg(long, default_value_t = 5000)]
    pub port: u16,
    /// Forward each webhook (same body and headers) to this URL and answer with its status
    #[arg(long)]
    pub forward_to: Option<String>,
    /// Signing secret (whsec_…); fetched from the server with --api-key when not given
    #[arg(long, env = "REELAY_WEBHOOK_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// reelay server URL, to fetch the secret
    #[arg(long, env = "REELAY_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    #[arg(long, env = "REELAY_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// One JSON line per webhook
    #[arg(long)]
    pub json: bool,
}

struct Listener {
    verifier: Option<Verifier>,
    forward_to: Option<String>,
    http: reqwest::Client,
    json: bool,
}

pub async fn listen(args: ListenArgs) -> anyhow::Result<()> {
    let secret = match (&args.secret, &args.api_key) {
        (Some(secret), _) => Some(secret.clone()),
        (None, Some(key)) => Some(fetch_secret(&args.server, key).await?),
        (None, None) => None,
    };
    let verifier = secret
        .map(|s| Secret::parse(&s).map(Verifier::new))
        .transpose()
        .map_err(|e| anyhow::anyhow!("--secret: {e}"))?;
    if verifier.is_none() {
        eprintln!("no --secret or --api-key: signatures are not checked (verified: false)");
    }
    let state = Arc::new(Listener {
        verifier,
        forward_to: args.forward_to,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?,
        json: args.json,
    });
    let app = Router::new().fallback(receive).with_state(state);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port))
        .await
        .with_context(|| format!("listening on port {}", args.port))?;
    eprintln!(
        "listening for webhooks on http://{}/ (use it as callback_url)",
        listener.local_addr()?
    );
    // The same front door as the server: a receiver on a shared machine gets the same limits.
    let stop = tokio_util::sync::CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        on_signal.cancel();
    });
    crate::front_door::serve(listener, app, crate::front_door::Limits::default(), stop).await?;
    Ok(())
}

async fn fetch_secret(server: &str, key: &str) -> anyhow::Result<String> {
    let body: serde_json::Value = reqwest::Client::new()
        .get(format!(
            "{}/v1/webhooks/secret",
            server.trim_end_matches('/')
        ))
        .bearer_auth(key)
        .send()
        .await
        .context("fetching the signing secret from the server")?
        .error_for_status()?
        .json()
        .await?;
    body["secret"]
        .as_str()
        .map(str::to_owned)
        .context("the server's answer has no secret")
}

async fn receive(
    State(state): State<Arc<Listener>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let verified = state
        .verifier
        .as_ref()
        .map(|v| v.verify(header, &body, now));
    let event: Option<GenerationEvent> = serde_json::from_slice(&body).ok();
    let webhook_id = header("webhook-id").unwrap_or_default();
    if state.json {
        println!(
            "{}",
            json!({
                "webhook_id": webhook_id,
                "generation_id": event.as_ref().map(|e| e.generation_id.to_string()),
                "status": event.as_ref().map(|e| e.status),
                "error": event.as_ref().and_then(|e| e.error.as_ref()).map(|e| &e.message),
                "video_url": event.as_ref().and_then(|e| e.video_url.as_ref()),
                "verified": matches!(verified, Some(Ok(()))),
                "verify_error": verified.as_ref().and_then(|v| v.as_ref().err()).map(|e| e.to_string()),
            })
        );
    } else {
        let check = match &verified {
            Some(Ok(())) => "verified".to_owned(),
            Some(Err(e)) => format!("NOT VERIFIED ({e})"),
            None => "unchecked".to_owned(),
        };
        match &event {
            Some(e) => println!(
                "{webhook_id} {} {:?} {} [{check}]",
                e.generation_id,
                e.status,
                e.video_url
                    .clone()
                    .or_else(|| e.error.as_ref().map(|x| x.message.clone()))
                    .unwrap_or_default()
            ),
            None => println!(
                "{webhook_id} (not a reelay event: {} bytes) [{check}]",
                body.len()
            ),
        }
    }
    if matches!(verified, Some(Err(_))) {
        return StatusCode::UNAUTHORIZED;
    }
    let Some(target) = &state.forward_to else {
        return StatusCode::OK;
    };
    let mut forward = state.http.post(target).body(body.clone());
    for name in [
        "content-type",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    ] {
        if let Some(value) = headers.get(name) {
            forward = forward.header(name, value);
        }
    }
    match forward.send().await {
        Ok(response) => {
            StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY)
        }
        Err(e) => {
            eprintln!("forwarding to {target} failed: {e}");
            StatusCode::BAD_GATEWAY
        }
    }
}
