//! `reelay listen`: a local webhook receiver that verifies and prints every webhook, and can
//! forward it to the application under development.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use reelay_webhooks::{EventStatus, GenerationEvent, Secret, Verifier, VerifyError};
use serde_json::{Value, json};

#[derive(Debug, clap::Args)]
pub struct ListenArgs {
    /// Port to listen on (127.0.0.1); callback URLs then look like http://127.0.0.1:PORT/webhook
    #[arg(long, default_value_t = 5000)]
    pub port: u16,
    /// Forward each webhook (same body and headers) to this URL, like your app's
    /// http://127.0.0.1:3000/webhook, and answer reelay with its status; a webhook whose
    /// signature does not verify is answered 401 and not forwarded
    #[arg(long, value_name = "URL")]
    pub forward_to: Option<String>,
    /// Signing secret (whsec_…); fetched from the server with --api-key when not given
    #[arg(long, env = "REELAY_WEBHOOK_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// reelay server URL, to fetch the secret
    #[arg(long, env = "REELAY_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// API key of the account whose webhooks these are, to fetch its signing secret from
    /// --server (not needed with --secret)
    #[arg(long, env = "REELAY_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// One JSON line per webhook on stdout (after the forward, when there is one)
    #[arg(long)]
    pub json: bool,
}

struct Listener {
    verifier: Option<Verifier>,
    forward_to: Option<String>,
    http: reqwest::Client,
    json: bool,
}

/// What became of passing a webhook on to `--forward-to`.
struct Forwarded {
    url: String,
    took: Duration,
    /// The app's answer, or why there was none.
    outcome: Result<StatusCode, String>,
}

pub async fn listen(args: ListenArgs) -> anyhow::Result<()> {
    let (secret, source) = match (&args.secret, &args.api_key) {
        (Some(secret), _) => (Some(secret.clone()), "the given --secret".to_owned()),
        (None, Some(key)) => (
            Some(fetch_secret(&args.server, key).await?),
            format!("the account's secret, fetched from {}", args.server),
        ),
        (None, None) => (None, String::new()),
    };
    let verifier = secret
        .map(|s| Secret::parse(&s).map(Verifier::new))
        .transpose()
        .map_err(|e| anyhow::anyhow!("--secret: {e}"))?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port))
        .await
        .with_context(|| {
            format!(
                "listening on port {} (another program has it? choose one with --port)",
                args.port
            )
        })?;
    // Everything but the events goes to stderr, so that stdout stays one line per webhook.
    let addr = listener.local_addr()?;
    eprintln!(
        "listening for webhooks: use \"callback_url\": \"http://{addr}/webhook\" (any path works)"
    );
    if verifier.is_some() {
        eprintln!("checking signatures with {source}");
    } else {
        eprintln!("no --secret or --api-key: signatures are not checked");
    }
    match &args.forward_to {
        Some(url) => eprintln!("forwarding each webhook to {url}, answering with its status"),
        None => {
            eprintln!("answering 200 to each webhook (--forward-to passes them on to your app)")
        }
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
    let response = reqwest::Client::new()
        .get(format!(
            "{}/v1/webhooks/secret",
            server.trim_end_matches('/')
        ))
        .bearer_auth(key)
        .send()
        .await
        .with_context(|| {
            format!("fetching the signing secret from {server} (is the server running?)")
        })?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        anyhow::bail!(
            "fetching the signing secret from {server}: {status} {}",
            body["message"].as_str().unwrap_or_default()
        );
    }
    body["secret"]
        .as_str()
        .map(str::to_owned)
        .context("the server's answer has no secret")
}

/// The status as the API and the webhook body spell it.
fn status_name(status: EventStatus) -> &'static str {
    match status {
        EventStatus::Completed => "completed",
        EventStatus::Failed => "failed",
    }
}

async fn receive(
    State(state): State<Arc<Listener>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let verified: Option<Result<(), VerifyError>> = state
        .verifier
        .as_ref()
        .map(|v| v.verify(header, &body, now));
    let event: Option<GenerationEvent> = serde_json::from_slice(&body).ok();
    let webhook_id = header("webhook-id").unwrap_or_default().to_owned();
    // Text mode prints the receipt at once: a forward can take up to 30 s, and a developer
    // watching wants to see that the webhook arrived.
    if !state.json {
        println!("{}", receipt_line(&webhook_id, event.as_ref(), &verified));
    }
    let (answer, forwarded) = if matches!(verified, Some(Err(_))) {
        (StatusCode::UNAUTHORIZED, None)
    } else if let Some(target) = &state.forward_to {
        let forwarded = forward(&state.http, target, &headers, body.clone()).await;
        let answer = match &forwarded.outcome {
            Ok(status) => *status,
            Err(_) => StatusCode::BAD_GATEWAY,
        };
        (answer, Some(forwarded))
    } else {
        (StatusCode::OK, None)
    };
    if state.json {
        println!(
            "{}",
            json!({
                "webhook_id": webhook_id,
                "generation_id": event.as_ref().map(|e| e.generation_id.to_string()),
                "status": event.as_ref().map(|e| status_name(e.status)),
                "error": event.as_ref().and_then(|e| e.error.as_ref()).map(|e| &e.message),
                "video_url": event.as_ref().and_then(|e| e.video_url.as_ref()),
                "verified": matches!(verified, Some(Ok(()))),
                "verify_error": verified.as_ref().and_then(|v| v.as_ref().err()).map(|e| e.to_string()),
                "forward": forwarded.as_ref().map(|f| json!({
                    "url": f.url,
                    "status": f.outcome.as_ref().ok().map(|s| s.as_u16()),
                    "duration_ms": f.took.as_millis() as u64,
                    "error": f.outcome.as_ref().err(),
                })),
                "answered": answer.as_u16(),
            })
        );
    } else if let Some(f) = &forwarded {
        let ms = f.took.as_millis();
        match &f.outcome {
            Ok(status) => println!("  forwarded to {}: {status} in {ms} ms", f.url),
            Err(e) => println!(
                "  forwarding to {} failed after {ms} ms: {e}; answered {answer}",
                f.url
            ),
        }
    } else if answer == StatusCode::UNAUTHORIZED {
        println!("  answered {answer}: the signature does not verify; not forwarded");
    }
    answer
}

/// One line per webhook: `<webhook-id> <generation-id> <status> <video_url | error code> (<check>)`.
fn receipt_line(
    webhook_id: &str,
    event: Option<&GenerationEvent>,
    verified: &Option<Result<(), VerifyError>>,
) -> String {
    let check = match verified {
        Some(Ok(())) => "signature verified".to_owned(),
        Some(Err(e)) => format!("signature NOT VERIFIED: {e}"),
        None => "signature not checked".to_owned(),
    };
    let webhook_id = if webhook_id.is_empty() {
        "(no webhook-id)"
    } else {
        webhook_id
    };
    match event {
        Some(e) => {
            let outcome = e
                .video_url
                .as_deref()
                .or_else(|| e.error.as_ref().map(|x| x.message.as_str()))
                .unwrap_or_default();
            format!(
                "{webhook_id} {} {} {outcome} ({check})",
                e.generation_id,
                status_name(e.status)
            )
        }
        None => format!("{webhook_id} (not a reelay event) ({check})"),
    }
}

async fn forward(
    http: &reqwest::Client,
    target: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Forwarded {
    let mut request = http.post(target).body(body);
    for name in [
        "content-type",
        "user-agent",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    ] {
        if let Some(value) = headers.get(name) {
            request = request.header(name, value);
        }
    }
    let started = Instant::now();
    let outcome = match request.send().await {
        Ok(response) => {
            Ok(StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY))
        }
        Err(e) => Err(error_chain(&e.without_url())),
    };
    Forwarded {
        url: target.to_owned(),
        took: started.elapsed(),
        outcome,
    }
}

/// reqwest's own message hides the cause ("error sending request"); the cause is what a
/// developer needs ("Connection refused": the app is not running).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
