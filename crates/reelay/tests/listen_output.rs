//! What a developer sees from `reelay listen` in a terminal: where to point callbacks, one line
//! per webhook with the status spelled as the API spells it, and what became of the forward to
//! their app.

mod common;
mod receiver;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{PROMPT, TestServer};
use receiver::{Plan, Receiver, Reply};
use serde_json::{Value, json};

/// A `reelay listen` process with its stdout and stderr read line by line; killed on drop.
struct Listen {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    port: u16,
}

impl Drop for Listen {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Listen {
    fn callback(&self) -> String {
        format!("http://127.0.0.1:{}/webhook", self.port)
    }

    /// The next line on stdout. Polls rather than blocks: the test's receiver runs on this
    /// thread's runtime, and listen's forward waits for it.
    async fn next_stdout(&self) -> String {
        for _ in 0..600 {
            if let Ok(line) = self.stdout.try_recv() {
                return line;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("reelay listen printed no line on stdout within 60 s");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn lines(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

/// Starts `reelay listen` and waits for its greeting on stderr (which ends once it listens).
async fn listen(server: &TestServer, extra: &[&str]) -> (Listen, Vec<String>) {
    let port = free_port();
    let mut child = server
        .command()
        .args(["listen", "--port", &port.to_string()])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn reelay listen");
    let stdout = lines(child.stdout.take().unwrap());
    let stderr = lines(child.stderr.take().unwrap());
    let handle = Listen {
        child,
        stdout,
        stderr,
        port,
    };
    let mut greeting = Vec::new();
    for _ in 0..200 {
        while let Ok(line) = handle.stderr.try_recv() {
            greeting.push(line);
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            // The greeting is printed before the port accepts; give the reader a moment.
            tokio::time::sleep(Duration::from_millis(100)).await;
            while let Ok(line) = handle.stderr.try_recv() {
                greeting.push(line);
            }
            return (handle, greeting);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("reelay listen did not open port {port}; stderr: {greeting:?}");
}

async fn insecure_server() -> TestServer {
    TestServer::start(&[
        ("REELAY_GENERATOR", "instant"),
        ("REELAY_ALLOW_INSECURE_CALLBACKS", "true"),
        ("REELAY_WEBHOOK_RETRY_INTERVAL", "1h"),
    ])
    .await
}

#[tokio::test]
async fn listen_says_where_to_point_callbacks_and_shows_each_forward() {
    let server = insecure_server().await;
    let acct = server.create_account("listener", "10").await;
    let app = Receiver::start().await;
    let app_url = app.url("/webhook");
    let (l, greeting) = listen(
        &server,
        &[
            "--server",
            &server.url,
            "--api-key",
            &acct.api_key,
            "--forward-to",
            &app_url,
        ],
    )
    .await;
    let greeting = greeting.join("\n");
    assert!(
        greeting.contains(&format!("\"callback_url\": \"{}\"", l.callback())),
        "the greeting names the callback URL to use: {greeting}"
    );
    assert!(
        greeting.contains(&format!(
            "checking signatures with the account's secret, fetched from {}",
            server.url
        )),
        "{greeting}"
    );
    assert!(
        greeting.contains(&format!("forwarding each webhook to {app_url}")),
        "{greeting}"
    );

    let created = server
        .generate_ok(
            &acct.api_key,
            &json!({"prompt": PROMPT, "callback_url": l.callback()}),
        )
        .await;
    let id = created["generation_id"].as_str().unwrap();
    let receipt = l.next_stdout().await;
    let fields: Vec<&str> = receipt.split(' ').collect();
    assert!(fields[0].starts_with("msg_"), "{receipt}");
    assert_eq!(fields[1], id, "{receipt}");
    assert_eq!(fields[2], "completed", "the API's spelling: {receipt}");
    assert!(
        fields[3].starts_with(&format!("{}/videos/{id}/", server.url)),
        "the video_url: {receipt}"
    );
    assert!(receipt.ends_with("(signature verified)"), "{receipt}");

    let forwarded = l.next_stdout().await;
    let prefix = format!("  forwarded to {app_url}: 200 OK in ");
    assert!(
        forwarded.starts_with(&prefix) && forwarded.ends_with(" ms"),
        "{forwarded}"
    );
    forwarded[prefix.len()..forwarded.len() - 3]
        .parse::<u64>()
        .unwrap_or_else(|e| panic!("not a number of ms ({e}): {forwarded}"));

    // The app got the webhook as reelay sent it, so its own verification works unchanged.
    let got = app.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(got[0].webhook_id(), fields[0]);
    assert_eq!(got[0].json()["generation_id"], id);
    assert!(
        got[0]
            .header("webhook-signature")
            .unwrap()
            .starts_with("v1,")
    );
    common::wait_webhook_state(
        &server,
        &acct.api_key,
        id,
        "delivered",
        Duration::from_secs(30),
    )
    .await;
}

#[tokio::test]
async fn listen_shows_a_failed_generation_and_the_apps_error_status() {
    let server = insecure_server().await;
    let acct = server.create_account("listener", "10").await;
    let app = Receiver::with_plan(Plan::always(Reply::status(500))).await;
    let app_url = app.url("/webhook");
    let (l, _) = listen(
        &server,
        &[
            "--api-key",
            &acct.api_key,
            "--server",
            &server.url,
            "--forward-to",
            &app_url,
        ],
    )
    .await;
    let created = server
        .generate_ok(
            &acct.api_key,
            &json!({"prompt": "an nsfw clip of a cat", "callback_url": l.callback()}),
        )
        .await;
    let id = created["generation_id"].as_str().unwrap();
    let receipt = l.next_stdout().await;
    assert!(
        receipt.ends_with(&format!(" {id} failed UNSAFE_CONTENT (signature verified)")),
        "{receipt}"
    );
    let forwarded = l.next_stdout().await;
    assert!(
        forwarded.starts_with(&format!(
            "  forwarded to {app_url}: 500 Internal Server Error in "
        )),
        "{forwarded}"
    );
    // listen answers with the app's status, so reelay records the app's failure.
    let mut webhook = Value::Null;
    for _ in 0..300 {
        webhook = server.generation(&acct.api_key, id).await["webhook"].clone();
        if !webhook["last_status_code"].is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(webhook["last_status_code"], 500, "{webhook}");
}

#[tokio::test]
async fn listen_says_why_a_forward_failed_and_that_a_bad_signature_is_not_forwarded() {
    let server = insecure_server().await;
    let acct = server.create_account("listener", "10").await;
    let closed = format!("http://127.0.0.1:{}/webhook", free_port());
    let (l, _) = listen(
        &server,
        &[
            "--api-key",
            &acct.api_key,
            "--server",
            &server.url,
            "--forward-to",
            &closed,
        ],
    )
    .await;
    server
        .generate_ok(
            &acct.api_key,
            &json!({"prompt": PROMPT, "callback_url": l.callback()}),
        )
        .await;
    let receipt = l.next_stdout().await;
    assert!(receipt.contains(" completed "), "{receipt}");
    let failed = l.next_stdout().await;
    assert!(
        failed.starts_with(&format!("  forwarding to {closed} failed after ")),
        "{failed}"
    );
    assert!(
        failed.contains("Connection refused") && failed.ends_with("; answered 502 Bad Gateway"),
        "the cause a developer can act on: {failed}"
    );
    drop(l);

    let wrong = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let app = Receiver::start().await;
    let (l, greeting) = listen(
        &server,
        &["--secret", wrong, "--forward-to", &app.url("/webhook")],
    )
    .await;
    assert!(
        greeting
            .iter()
            .any(|g| g == "checking signatures with the given --secret"),
        "{greeting:?}"
    );
    server
        .generate_ok(
            &acct.api_key,
            &json!({"prompt": PROMPT, "callback_url": l.callback()}),
        )
        .await;
    let receipt = l.next_stdout().await;
    assert!(
        receipt.ends_with("(signature NOT VERIFIED: no signature matches the secret)"),
        "{receipt}"
    );
    assert_eq!(
        l.next_stdout().await,
        "  answered 401 Unauthorized: the signature does not verify; not forwarded"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        app.count(),
        0,
        "a webhook that fails verification is not forwarded"
    );
}

#[tokio::test]
async fn listen_json_reports_the_forward_in_the_webhooks_line() {
    let server = insecure_server().await;
    let acct = server.create_account("listener", "10").await;
    let app = Receiver::with_plan(Plan::always(Reply::status(204))).await;
    let app_url = app.url("/hook");
    let (l, _) = listen(
        &server,
        &[
            "--json",
            "--api-key",
            &acct.api_key,
            "--server",
            &server.url,
            "--forward-to",
            &app_url,
        ],
    )
    .await;
    let created = server
        .generate_ok(
            &acct.api_key,
            &json!({"prompt": PROMPT, "callback_url": l.callback()}),
        )
        .await;
    let line: Value = serde_json::from_str(&l.next_stdout().await).expect("one JSON line");
    assert_eq!(line["generation_id"], created["generation_id"]);
    assert_eq!(line["status"], "completed");
    assert_eq!(line["verified"], true);
    assert_eq!(line["forward"]["url"], app_url.as_str());
    assert_eq!(line["forward"]["status"], 204);
    assert!(line["forward"]["duration_ms"].is_u64(), "{line}");
    assert_eq!(line["forward"]["error"], Value::Null);
    assert_eq!(line["answered"], 204);
    // Exactly one line per webhook: nothing else arrives on stdout.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        l.stdout.try_recv().is_err(),
        "more than one line for one webhook"
    );
}
