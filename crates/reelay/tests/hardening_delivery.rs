//! Black-box tests of the hardened delivery path (issue 7): the address allow-list at
//! creation, blocked destinations (no retry, no address shown to the customer), TLS failures
//! reported as such, and callback URLs kept out of the server's log.
//!
//! Every wait is bounded by a generous deadline; nothing here asserts how long anything took.

mod common;
mod receiver;

use std::time::{Duration, Instant};

use common::*;
use receiver::{SelfSignedTlsReceiver, SilentListener};
use serde_json::{Value, json};

/// Upper bound for a webhook attempt that should happen at once to be recorded.
const ARRIVAL: Duration = Duration::from_secs(30);

/// Polls the deliveries API until `done(attempts)` holds; returns them.
async fn wait_attempts(
    s: &TestServer,
    key: &str,
    id: &str,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + ARRIVAL;
    loop {
        let d = deliveries(s, key, id).await;
        let list = attempts(&d);
        if done(list) {
            return list.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{id}: not {what} within {ARRIVAL:?}: {d}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every IP address written in `text` (IPv4 dotted quads and IPv6 forms).
fn addresses_in(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_ascii_hexdigit() || c == '.' || c == ':'))
        .map(|t| t.trim_matches(|c| c == '.' || c == ':'))
        .filter(|t| t.contains('.') || t.contains(':'))
        .filter(|t| t.parse::<std::net::IpAddr>().is_ok())
        .map(str::to_string)
        .collect()
}

// ============================================================================ allow-list

#[tokio::test]
async fn special_purpose_literals_and_service_ports_are_refused_at_creation() {
    // A long render delay: nothing created here is ever sent anywhere.
    let s = TestServer::start(&[("REELAY_RENDER_DELAY", "10m")]).await;
    let a = s.create_account("allow-list", "10").await;
    for url in [
        // Accepted before the allow-list; each is in a non-global registry entry.
        "https://[fec0::1]/",
        "https://[3fff::1]/",
        "https://[2001::1]/",
        "https://[2001:2::1]/",
        "https://[2001:10::1]/",
        "https://[5f00::1]/",
        "https://192.88.99.1/",
        // Other edges of the table.
        "https://192.0.0.8/",
        "https://[64:ff9b:1::1]/",
        "https://[100::1]/",
        "https://[4000::1]/",
        // Ports of non-HTTP services, on a public name.
        "https://hooks.example.com:6379/hook",
        "https://hooks.example.com:25/hook",
    ] {
        let r = s
            .generate(
                &a.api_key,
                &json!({ "prompt": PROMPT, "callback_url": url }),
            )
            .await;
        assert_invalid_field(&r, "callback_url", &format!("strict mode, {url}"));
    }
    // Globally reachable sub-entries of non-global blocks stay callable.
    for url in [
        "https://192.0.0.9/hook",
        "https://[2001:3::1]/hook",
        "https://[2001:20::1]/hook",
        "https://hooks.example.com:8443/hook",
    ] {
        let r = s
            .generate(
                &a.api_key,
                &json!({ "prompt": PROMPT, "callback_url": url }),
            )
            .await;
        assert_eq!(r.status, 201, "{url} is public: {r}");
    }
}

// ============================================================================ blocked

#[tokio::test]
async fn a_blocked_destination_is_tried_once_and_its_error_names_no_address() {
    let name = hosts_loopback_name();
    let trap = SilentListener::start().await;
    let s = TestServer::start(&[
        ("REELAY_GENERATOR", "instant"),
        ("REELAY_WEBHOOK_MAX_ATTEMPTS", "5"),
        ("REELAY_WEBHOOK_RETRY_INTERVAL", "1s"),
    ])
    .await;
    let a = s.create_account("blocked", "10").await;
    let url = format!("https://{name}:{}/hook", trap.addr.port());
    let id = create_with_callback(&s, &a.api_key, PROMPT, &url).await;

    let g = wait_webhook_state(&s, &a.api_key, &id, "failed", ARRIVAL).await;
    assert_eq!(g["webhook"]["attempts"], 1, "no retry after a block: {g}");
    let reason = g["webhook"]["failure_reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("blocked_destination"),
        "failure_reason names blocked_destination: {g}"
    );
    let list = attempts(&deliveries(&s, &a.api_key, &id).await).clone();
    assert_eq!(list.len(), 1, "exactly one attempt: {list:?}");
    assert_eq!(list[0]["outcome"], "blocked_destination", "{list:?}");
    let error = list[0]["error"].as_str().unwrap_or("");
    assert!(error.contains(&name), "the error names the host: {error}");
    assert!(
        addresses_in(error).is_empty() && !error.contains("127.") && !error.contains("loopback"),
        "the customer-visible error names no address nor range: {error}"
    );

    // A redelivery starts a new round, which the guard blocks again, once.
    let r = s
        .post(
            &a.api_key,
            &format!("/v1/veo/generations/{id}/webhook/redeliver"),
            &json!({}),
        )
        .await;
    assert!((200..300).contains(&r.status), "redeliver -> {r}");
    let list = wait_attempts(&s, &a.api_key, &id, "a second attempt", |l| l.len() >= 2).await;
    assert_eq!(list[1]["outcome"], "blocked_destination", "{list:?}");
    wait_webhook_state(&s, &a.api_key, &id, "failed", ARRIVAL).await;
    assert_eq!(
        attempts(&deliveries(&s, &a.api_key, &id).await).len(),
        2,
        "one attempt per round"
    );
    assert_eq!(
        trap.accepted(),
        0,
        "nothing may reach the loopback listener"
    );
}

// ============================================================================ TLS

#[tokio::test]
async fn a_self_signed_receiver_is_a_tls_error() {
    let rx = SelfSignedTlsReceiver::start().await;
    let s = TestServer::start(&[
        ("REELAY_ALLOW_INSECURE_CALLBACKS", "true"),
        ("REELAY_GENERATOR", "instant"),
        ("REELAY_WEBHOOK_MAX_ATTEMPTS", "1"),
    ])
    .await;
    let a = s.create_account("tls", "10").await;
    let id = create_with_callback(&s, &a.api_key, PROMPT, &rx.url("/hook")).await;

    wait_webhook_state(&s, &a.api_key, &id, "failed", ARRIVAL).await;
    let list = attempts(&deliveries(&s, &a.api_key, &id).await).clone();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(
        list[0]["outcome"], "tls_error",
        "self-signed certificate: {list:?}"
    );
    assert!(list[0]["status_code"].is_null(), "{list:?}");
    assert_eq!(rx.requests(), 0, "no request gets past the handshake");
}

// ============================================================================ log redaction

#[tokio::test]
async fn callback_query_strings_never_reach_the_log() {
    // A port nothing listens on: each attempt is refused at once.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").port()
    };
    let s = TestServer::start(&[
        ("REELAY_ALLOW_INSECURE_CALLBACKS", "true"),
        ("REELAY_GENERATOR", "instant"),
        ("REELAY_WEBHOOK_MAX_ATTEMPTS", "1"),
        ("RUST_LOG", "info"),
    ])
    .await;
    let a = s.create_account("redact", "10").await;
    let url = format!("http://127.0.0.1:{dead}/hook?token=SECRET123");
    let id = create_with_callback(&s, &a.api_key, PROMPT, &url).await;

    wait_webhook_state(&s, &a.api_key, &id, "failed", ARRIVAL).await;
    let list = attempts(&deliveries(&s, &a.api_key, &id).await).clone();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["outcome"], "connect_error", "{list:?}");
    let error = list[0]["error"].as_str().unwrap_or("");
    assert!(
        !error.is_empty() && !error.contains("SECRET123"),
        "customer-visible error: {error}"
    );

    // The failure is logged (with the redacted URL), the secret never.
    let deadline = Instant::now() + ARRIVAL;
    let log = loop {
        let log = s.log();
        if log.contains("webhook attempt failed") {
            break log;
        }
        assert!(
            Instant::now() < deadline,
            "no `webhook attempt failed` line within {ARRIVAL:?}:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        !log.contains("SECRET123"),
        "the callback's query string reached the log:\n{log}"
    );
    assert!(
        log.contains(&format!("127.0.0.1:{dead}/hook?<redacted>")),
        "the attempt line names the redacted callback:\n{log}"
    );
}
