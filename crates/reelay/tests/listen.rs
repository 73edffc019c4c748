//! `reelay listen`: receives real webhooks from a running server, verifies and prints them.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{PROMPT, TestServer};
use serde_json::{Value, json};

/// A `reelay listen --json` process; killed on drop.
struct Listen {
    child: Child,
    lines: mpsc::Receiver<Value>,
    port: u16,
}

impl Drop for Listen {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn listen(server: &TestServer, extra: &[&str]) -> Listen {
    let port = free_port();
    let mut cmd = server.command();
    cmd.args(["listen", "--json", "--port", &port.to_string()])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("spawn reelay listen");
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    // From here on, dropping the handle kills the process.
    let handle = Listen { child, lines, port };
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });
    // Bounded wait until the port accepts connections.
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return handle;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("reelay listen did not open port {port}");
}

fn next_line(l: &Listen) -> Value {
    l.lines
        .recv_timeout(Duration::from_secs(60))
        .expect("reelay listen printed no webhook within 60 s")
}

#[tokio::test]
async fn listen_verifies_with_the_secret_fetched_by_api_key() {
    let server = TestServer::start(&[
        ("REELAY_GENERATOR", "instant"),
        ("REELAY_ALLOW_INSECURE_CALLBACKS", "true"),
    ])
    .await;
    let acct = server.create_account("listener", "10").await;
    let l = listen(
        &server,
        &["--server", &server.url, "--api-key", &acct.api_key],
    )
    .await;
    let callback = format!("http://127.0.0.1:{}/hook", l.port);
    let done = server
        .generate_ok(
            &acct.api_key,
            &json!({"prompt": PROMPT, "callback_url": callback}),
        )
        .await;
    let blocked = server
        .generate_ok(
            &acct.api_key,
            &json!({"prompt": "an nsfw clip of a cat", "callback_url": callback}),
        )
        .await;
    let mut seen = [next_line(&l), next_line(&l)];
    seen.sort_by_key(|v| v["status"].as_str().unwrap_or_default().to_owned());
    assert_eq!(seen[0]["generation_id"], done["generation_id"]);
    assert_eq!(seen[0]["status"], "completed");
    assert_eq!(seen[0]["verified"], true);
    assert!(seen[0]["webhook_id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(seen[1]["generation_id"], blocked["generation_id"]);
    assert_eq!(seen[1]["status"], "failed");
    assert_eq!(seen[1]["error"], "UNSAFE_CONTENT");
    assert_eq!(seen[1]["verified"], true);
}

#[tokio::test]
async fn listen_rejects_webhooks_signed_with_another_secret() {
    let server = TestServer::start(&[
        ("REELAY_GENERATOR", "instant"),
        ("REELAY_ALLOW_INSECURE_CALLBACKS", "true"),
        ("REELAY_WEBHOOK_RETRY_INTERVAL", "1h"),
    ])
    .await;
    let acct = server.create_account("listener", "10").await;
    let wrong = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let l = listen(&server, &["--secret", wrong]).await;
    let created = server
        .generate_ok(
            &acct.api_key,
            &json!({"prompt": PROMPT, "callback_url": format!("http://127.0.0.1:{}/hook", l.port)}),
        )
        .await;
    let line = next_line(&l);
    assert_eq!(line["generation_id"], created["generation_id"]);
    assert_eq!(line["verified"], false);
    assert!(
        line["verify_error"]
            .as_str()
            .unwrap()
            .contains("no signature matches"),
        "{line}"
    );
    // The listener answered 401, so the server recorded a failed attempt.
    let id = created["generation_id"].as_str().unwrap();
    let mut status = Value::Null;
    for _ in 0..100 {
        let d = server
            .get(
                &acct.api_key,
                &format!("/v1/veo/generations/{id}/deliveries"),
            )
            .await;
        status = d.body["attempts"][0]["status_code"].clone();
        if !status.is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 401);
}
