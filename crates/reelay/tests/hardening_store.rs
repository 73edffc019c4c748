//! Issue 7, the storage side, seen from outside the real binary: at most two signing secrets
//! sign a webhook, rotation is rate-limited per account (429 with `Retry-After`), credit
//! arithmetic never overflows, and the data files are private.
//!
//! Every wait is bounded. The one deliberate pause sleeps as long as the server's own
//! `Retry-After` says (at most a minute), as a well-behaved client would.

mod common;
mod receiver;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use receiver::{Received, Receiver};
use serde_json::{Value, json};

/// Upper bound for a webhook that should arrive at once to arrive.
const ARRIVAL: Duration = Duration::from_secs(30);
/// The rotation rate limit the server enforces (`ROTATION_INTERVAL`).
const ROTATION_INTERVAL_SECS: u64 = 60;
const ROTATE: &str = "/v1/webhooks/secret/rotate";

const LOCAL: &[(&str, &str)] = &[
    ("REELAY_ALLOW_INSECURE_CALLBACKS", "true"),
    ("REELAY_GENERATOR", "instant"),
];

// ============================================================================ signing secrets

async fn current_secret(s: &TestServer, key: &str) -> Value {
    let r = s.get(key, "/v1/webhooks/secret").await;
    assert_eq!(r.status, 200, "GET /v1/webhooks/secret -> {r}");
    r.body
}

async fn rotate_ok(s: &TestServer, key: &str, ctx: &str) -> String {
    let r = s.post(key, ROTATE, &json!({})).await;
    assert_eq!(r.status, 200, "{ctx}: rotate -> {r}");
    r.body["secret"]
        .as_str()
        .unwrap_or_else(|| panic!("{ctx}: no secret in {r}"))
        .to_string()
}

/// Asserts a refused rotation: 429 RATE_LIMITED with `Retry-After` in whole seconds, within
/// the interval; returns it.
fn assert_rate_limited(r: &Resp, ctx: &str) -> u64 {
    assert_error(r, 429, "RATE_LIMITED", ctx);
    let retry_after: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{ctx}: Retry-After must be whole seconds: {r:?}"));
    assert!(
        (1..=ROTATION_INTERVAL_SECS).contains(&retry_after),
        "{ctx}: Retry-After {retry_after} not within 1..={ROTATION_INTERVAL_SECS}"
    );
    retry_after
}

/// Delivers one webhook to `path` and returns it.
async fn one_webhook(s: &TestServer, rx: &Receiver, key: &str, path: &str) -> Received {
    let before = rx.count();
    s.generate_ok(
        key,
        &json!({ "prompt": PROMPT, "callback_url": rx.url(path) }),
    )
    .await;
    rx.wait_for(before + 1, ARRIVAL)
        .await
        .into_iter()
        .find(|r| r.path == path)
        .unwrap_or_else(|| panic!("no webhook to {path}"))
}

/// The `v1,` signatures of a webhook, and which of `secrets` verify it.
fn signatures(r: &Received) -> Vec<String> {
    let header = r.header("webhook-signature").unwrap_or_default();
    let sigs: Vec<String> = header.split(' ').map(str::to_owned).collect();
    assert!(
        sigs.iter().all(|s| s.starts_with("v1,")),
        "every signature is v1: {header:?}"
    );
    sigs
}

fn signs(secret: &str, r: &Received) -> bool {
    let ts: i64 = r
        .header("webhook-timestamp")
        .and_then(|t| t.parse().ok())
        .expect("numeric webhook-timestamp");
    let want = standardwebhooks::Webhook::new(secret)
        .expect("a whsec_ secret")
        .sign(&r.webhook_id(), ts, &r.body)
        .expect("signing");
    signatures(r).contains(&want)
}

#[tokio::test]
async fn rotations_are_rate_limited_and_at_most_two_secrets_sign() {
    let rx = Receiver::start().await;
    let s = TestServer::start(LOCAL).await;
    let a = s.create_account("rotations", "10").await;
    let b = s.create_account("bystander", "10").await;

    let s0 = current_secret(&s, &a.api_key).await["secret"]
        .as_str()
        .unwrap()
        .to_string();
    // The first secret was made on first use, not by a rotation: rotating it is allowed.
    let s1 = rotate_ok(&s, &a.api_key, "first rotation").await;

    // Right after a rotation, another is refused and changes nothing.
    let r = s.post(&a.api_key, ROTATE, &json!({})).await;
    let retry_after = assert_rate_limited(&r, "second rotation at once");
    let shown = current_secret(&s, &a.api_key).await;
    assert_eq!(shown["secret"], s1.as_str(), "the refusal changed nothing");
    // Per account: another account rotates freely.
    current_secret(&s, &b.api_key).await;
    rotate_ok(&s, &b.api_key, "another account").await;

    // Now: the current secret and the one it replaced sign, nothing else.
    let w1 = one_webhook(&s, &rx, &a.api_key, "/after-one").await;
    assert_eq!(
        signatures(&w1).len(),
        2,
        "{:?}",
        w1.header("webhook-signature")
    );
    assert!(signs(&s1, &w1) && signs(&s0, &w1), "signed by s1 and s0");

    // A client honouring Retry-After gets its rotation. (Bounded: at most the interval.)
    tokio::time::sleep(Duration::from_secs(retry_after) + Duration::from_millis(500)).await;
    let s2 = rotate_ok(&s, &a.api_key, "rotation after Retry-After").await;
    let r = s.post(&a.api_key, ROTATE, &json!({})).await;
    assert_rate_limited(&r, "again at once");

    // s0 was still inside its 24-hour overlap, yet it stops now: exactly s2 and s1 sign.
    let w2 = one_webhook(&s, &rx, &a.api_key, "/after-two").await;
    let header = w2.header("webhook-signature").unwrap_or_default();
    assert_eq!(
        signatures(&w2).len(),
        2,
        "exactly two signatures: {header:?}"
    );
    assert!(signs(&s2, &w2), "the current secret signs: {header:?}");
    assert!(signs(&s1, &w2), "the secret it replaced signs: {header:?}");
    assert!(
        !signs(&s0, &w2),
        "the older secret no longer signs: {header:?}"
    );
    let shown = current_secret(&s, &a.api_key).await;
    assert_eq!(shown["secret"], s2.as_str());
    assert_timestamp(
        &shown["previous_secret_expires_at"],
        "the replaced secret's overlap",
    );
}

// ============================================================================ credits

/// Credits::MAX, as the API and the CLI write it.
const MAX: &str = "922337203685477.5807";

#[tokio::test]
async fn credits_never_overflow_through_the_cli() {
    let s = TestServer::start(LOCAL).await;
    let a = s.create_account("rich", "10").await;

    // Past the maximum: refused with why, nothing changed.
    for amount in ["922337203685477", MAX] {
        let (code, stdout, stderr) = s
            .cli(&[
                "credits",
                "add",
                "--account",
                &a.account_id,
                "--amount",
                amount,
                "--json",
            ])
            .await;
        assert_ne!(code, 0, "adding {amount} must fail; stdout: {stdout}");
        assert!(
            stderr.contains(&format!(
                "the balance would exceed the maximum of {MAX} credits"
            )),
            "adding {amount}: stderr says why: {stderr}"
        );
        assert!(!stderr.contains("Real"), "no storage error leaks: {stderr}");
        assert_eq!(
            s.balance(&a.api_key).await,
            "10.0000",
            "after adding {amount}"
        );
    }

    // Up to the maximum exactly, then not one unit more.
    let v = s.add_credits(&a.account_id, "922337203685467.5807").await;
    assert_eq!(v["balance"], MAX, "{v}");
    assert_eq!(s.balance(&a.api_key).await, MAX);
    let (code, _, stderr) = s
        .cli(&[
            "credits",
            "add",
            "--account",
            &a.account_id,
            "--amount",
            "0.0001",
        ])
        .await;
    assert_ne!(code, 0);
    assert!(stderr.contains("would exceed the maximum"), "{stderr}");
    assert_eq!(s.balance(&a.api_key).await, MAX);

    // Everything still works at the maximum: a generation is charged, credits can be removed.
    let id = s.create_generation(&a.api_key, PROMPT).await;
    s.wait_terminal(&a.api_key, &id, RENDER_DEADLINE).await;
    assert_eq!(s.balance(&a.api_key).await, "922337203685477.3307");
    let v = s.add_credits(&a.account_id, "-922337203685477").await;
    assert_eq!(v["balance"], "0.3307", "{v}");

    // Amounts that are not representable at all are refused when read, saying so.
    for amount in ["922337203685477.5808", "99999999999999999999"] {
        let (code, _, stderr) = s
            .cli(&[
                "credits",
                "add",
                "--account",
                &a.account_id,
                "--amount",
                amount,
            ])
            .await;
        assert_ne!(code, 0, "{amount}");
        assert!(
            stderr.contains("beyond the largest amount there is") && stderr.contains(MAX),
            "{amount}: {stderr}"
        );
    }
    // So is a new account's opening balance.
    let (code, _, stderr) = s
        .cli(&[
            "keys",
            "create",
            "--name",
            "richer",
            "--credits",
            "1000000000000000",
        ])
        .await;
    assert_ne!(code, 0);
    assert!(
        stderr.contains("beyond the largest amount there is"),
        "{stderr}"
    );
    assert_eq!(s.balance(&a.api_key).await, "0.3307");
}

// ============================================================================ file modes

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[cfg(unix)]
#[tokio::test]
async fn data_files_are_private() {
    let s = TestServer::start(LOCAL).await;
    let a = s.create_account("private", "10").await;
    let id = s.create_generation(&a.api_key, PROMPT).await;
    s.wait_terminal(&a.api_key, &id, RENDER_DEADLINE).await;
    current_secret(&s, &a.api_key).await;

    let dir = s.data_dir();
    assert_eq!(mode(dir), 0o700, "data directory {}", dir.display());
    assert_eq!(mode(&dir.join("master.key")), 0o600, "master.key");
    let db = dir.join("reelay.sqlite3");
    assert_eq!(mode(&db), 0o600, "{}", db.display());
    for suffix in ["-wal", "-shm"] {
        let file = dir.join(format!("reelay.sqlite3{suffix}"));
        if file.exists() {
            assert_eq!(mode(&file), 0o600, "{}", file.display());
        }
    }
}

#[cfg(unix)]
#[tokio::test]
async fn a_master_key_others_can_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let s = TestServer::start(LOCAL).await;
    let data = tempfile::Builder::new()
        .prefix("reelay-test-shared-key")
        .tempdir()
        .expect("a temporary directory");
    // A well-formed key (the server's own), left readable by everyone.
    let key = data.path().join("master.key");
    std::fs::copy(s.data_dir().join("master.key"), &key).expect("copying the key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();

    let mut cmd = s.command();
    cmd.env("REELAY_DATA_DIR", data.path())
        .arg("serve")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawning reelay serve");
    let deadline = Instant::now() + START_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("reelay serve kept running with a master key others can read");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let output = child.wait_with_output().expect("reading its output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!status.success(), "it must refuse to start: {stderr}");
    assert!(
        stderr.contains("chmod 600"),
        "it says how to fix it: {stderr}"
    );
    assert_eq!(mode(&key), 0o644, "it does not silently change the file");
}
