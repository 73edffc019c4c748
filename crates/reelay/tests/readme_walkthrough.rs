//! The README's "First ten minutes", as a newcomer runs it: `reelay dev` and what its greeting
//! promises, across a restart.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{PROMPT, bin};
use serde_json::{Value, json};

/// A running `reelay dev`; killed on drop.
struct Dev {
    child: Child,
    url: String,
    api_key: String,
    webhook_secret: String,
    balance: String,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value after `label` on a greeting line like `  API key (shown once): rly_…`.
fn field(greeting: &[String], label: &str) -> String {
    greeting
        .iter()
        .find_map(|l| l.trim().strip_prefix(label))
        .unwrap_or_else(|| {
            panic!(
                "no `{label}` line in the greeting:\n{}",
                greeting.join("\n")
            )
        })
        .trim()
        .to_owned()
}

/// Starts `reelay dev` in `dir` (its working directory: `dev` keeps its data in ./reelay-data)
/// and reads its greeting up to the `listening on` line.
fn dev(dir: &std::path::Path) -> Dev {
    let mut cmd = Command::new(bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("REELAY_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .arg("dev")
        .current_dir(dir)
        .env("REELAY_LISTEN", "127.0.0.1:0")
        .env("REELAY_GENERATOR", "instant")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn reelay dev");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut greeting = Vec::new();
    let url = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no `listening on` line from reelay dev: {greeting:?}"));
        if let Some(url) = line.strip_prefix("listening on ") {
            break url.trim().to_owned();
        }
        greeting.push(line);
    };
    let account = field(&greeting, "account:");
    Dev {
        child,
        url,
        api_key: field(&greeting, "API key (shown once):"),
        webhook_secret: field(&greeting, "webhook secret:"),
        balance: account
            .split_once("(balance ")
            .and_then(|(_, b)| b.strip_suffix(')'))
            .unwrap_or_else(|| panic!("no balance in `account: {account}`"))
            .to_owned(),
    }
}

async fn get(http: &reqwest::Client, url: &str, key: &str) -> (u16, Value) {
    let r = http.get(url).bearer_auth(key).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn dev_prints_a_new_key_on_every_start_and_keeps_the_balance() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();

    let first = dev(dir.path());
    assert!(first.api_key.starts_with("rly_"), "{}", first.api_key);
    assert!(first.webhook_secret.starts_with("whsec_"));
    assert_eq!(
        first.balance, "100.0000",
        "a new dev account starts with 100 credits"
    );
    let (status, created) = {
        let r = http
            .post(format!("{}/v1/veo/generate", first.url))
            .bearer_auth(&first.api_key)
            .json(&json!({"prompt": PROMPT}))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["price"], "0.2500");
    let (_, secret) = get(
        &http,
        &format!("{}/v1/webhooks/secret", first.url),
        &first.api_key,
    )
    .await;
    assert_eq!(
        secret["secret"], first.webhook_secret,
        "the greeting's webhook secret is the account's"
    );
    let old_key = first.api_key.clone();
    drop(first);

    let second = dev(dir.path());
    assert_ne!(second.api_key, old_key, "every start prints a new key");
    assert_eq!(second.balance, "99.7500", "the balance carries over");
    assert_eq!(second.webhook_secret, secret["secret"], "the same account");
    let (status, balance) = get(&http, &format!("{}/v1/data/balance", second.url), &old_key).await;
    assert_eq!(status, 200, "the old key keeps working: {balance}");
    assert_eq!(balance["balance"], "99.7500");
}
