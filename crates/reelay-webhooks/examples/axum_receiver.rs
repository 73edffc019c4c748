//! A webhook receiver in axum that verifies reelay's signatures with `reelay-webhooks`.
//!
//! ```sh
//! REELAY_WEBHOOK_SECRET=whsec_... cargo run -p reelay-webhooks --example axum_receiver
//! ```
//! then create generations with `"callback_url": "http://127.0.0.1:5000/webhook"` on a
//! `reelay dev` server.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use reelay_webhooks::{EventStatus, Secret, Verifier};

async fn webhook(State(verifier): State<Verifier>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match verifier.verify_event(header, &body, now) {
        Ok(event) => {
            match event.status {
                EventStatus::Completed => {
                    println!(
                        "video ready for {}: {:?}",
                        event.generation_id, event.video_url
                    )
                }
                EventStatus::Failed => println!(
                    "generation {} failed: {}",
                    event.generation_id,
                    event.error.map(|e| e.message).unwrap_or_default()
                ),
            }
            StatusCode::OK
        }
        Err(e) => {
            eprintln!("rejected a webhook: {e}");
            StatusCode::UNAUTHORIZED
        }
    }
}

#[tokio::main]
async fn main() {
    let secret = std::env::var("REELAY_WEBHOOK_SECRET").expect("set REELAY_WEBHOOK_SECRET");
    let verifier = Verifier::new(Secret::parse(&secret).expect("a whsec_ secret"));
    let app = Router::new()
        .route("/webhook", post(webhook))
        .with_state(verifier);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:5000")
        .await
        .unwrap();
    println!("listening on http://127.0.0.1:5000/webhook");
    axum::serve(listener, app).await.unwrap();
}
