//! Shared harness of the black-box tests: spawns the real `reelay` binary, talks real HTTP to it,
//! and drives the CLI against the same data directory.
//!
//! Every wait in here is bounded by a deadline; deadlines are generous upper bounds (the suite
//! must not flake on a 2-core machine), never timing assertions.
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use tempfile::TempDir;

/// Upper bound for the server to print its address and answer `/healthz`.
pub const START_DEADLINE: Duration = Duration::from_secs(60);
/// Upper bound for one CLI invocation.
pub const CLI_DEADLINE: Duration = Duration::from_secs(60);
/// Upper bound for a built-in render to finish (debug build, 2 cores, other tests in parallel).
pub const RENDER_DEADLINE: Duration = Duration::from_secs(120);

/// A prompt that passes validation and moderation.
pub const PROMPT: &str = "A red fox running through fresh snow at dawn";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_reelay")
}

/// A running `reelay serve` on a random loopback port, with its own temporary data directory.
/// The process is killed when this value is dropped.
pub struct TestServer {
    child: Option<Child>,
    /// Base URL, e.g. `http://127.0.0.1:41234` (no trailing slash).
    pub url: String,
    data_dir: TempDir,
    log_dir: TempDir,
    env: Vec<(String, String)>,
    starts: usize,
    /// The open-file limit (soft and hard) the server runs under; the inherited one when None.
    open_file_limit: Option<u64>,
    pub http: reqwest::Client,
}

/// An account with one API key, made through `reelay keys create --json`.
#[derive(Debug, Clone)]
pub struct Account {
    pub account_id: String,
    pub key_id: String,
    pub api_key: String,
    pub name: String,
    pub created: Value,
}

/// A fully read HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub bytes: Vec<u8>,
    /// The body parsed as JSON, or `Value::Null` when it is not JSON.
    pub body: Value,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("<non-ascii>").to_string())
    }
}

impl std::fmt::Display for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = self.text();
        let shown: String = text.chars().take(2000).collect();
        write!(f, "HTTP {} {}", self.status, shown)
    }
}

impl TestServer {
    /// Starts `reelay serve` with `REELAY_DATA_DIR=<tempdir>`, `REELAY_LISTEN=127.0.0.1:0` and
    /// the given extra environment, and waits until `/healthz` answers 200.
    pub async fn start(extra_env: &[(&str, &str)]) -> TestServer {
        Self::start_with(extra_env, None).await
    }

    /// Like [`TestServer::start`], with the server's open-file limit (soft and hard) set to
    /// `limit`, as on a host with the common default of 1024.
    pub async fn start_with_open_file_limit(extra_env: &[(&str, &str)], limit: u64) -> TestServer {
        Self::start_with(extra_env, Some(limit)).await
    }

    async fn start_with(extra_env: &[(&str, &str)], open_file_limit: Option<u64>) -> TestServer {
        let data_dir = tempfile::Builder::new()
            .prefix("reelay-test-data")
            .tempdir()
            .expect("create temp data dir");
        let log_dir = tempfile::Builder::new()
            .prefix("reelay-test-logs")
            .tempdir()
            .expect("create temp log dir");
        let env = extra_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .no_proxy()
            .build()
            .expect("build reqwest client");
        let mut server = TestServer {
            child: None,
            url: String::new(),
            data_dir,
            log_dir,
            env,
            starts: 0,
            open_file_limit,
            http,
        };
        server.spawn().await;
        server
    }

    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    fn stdout_path(&self, n: usize) -> PathBuf {
        self.log_dir.path().join(format!("stdout-{n}.log"))
    }

    fn stderr_path(&self, n: usize) -> PathBuf {
        self.log_dir.path().join(format!("stderr-{n}.log"))
    }

    /// A command for the binary with the test's configuration (data dir + extra env), and no
    /// `REELAY_*` variable inherited from the environment running the tests.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(bin());
        for (k, _) in std::env::vars() {
            if k.starts_with("REELAY_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("REELAY_DATA_DIR", self.data_dir.path());
        cmd.env("REELAY_LISTEN", "127.0.0.1:0");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    async fn spawn(&mut self) {
        assert!(self.child.is_none(), "server already running");
        self.starts += 1;
        let n = self.starts;
        let stdout = File::create(self.stdout_path(n)).expect("create stdout log");
        let stderr = File::create(self.stderr_path(n)).expect("create stderr log");
        let mut cmd = self.command();
        cmd.arg("serve").stdout(stdout).stderr(stderr);
        if let Some(limit) = self.open_file_limit {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || rlimit::setrlimit(rlimit::Resource::NOFILE, limit, limit));
            }
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} serve: {e}", bin()));
        self.child = Some(child);

        // Wait for the `listening on http://...` line on stdout.
        let deadline = Instant::now() + START_DEADLINE;
        let url = loop {
            let out = std::fs::read_to_string(self.stdout_path(n)).unwrap_or_default();
            if let Some(url) = out.lines().find_map(parse_listening_line) {
                break url;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().expect("try_wait") {
                panic!(
                    "reelay serve exited ({status}) before printing `listening on`.\nstdout:\n{out}\nstderr:\n{}",
                    self.stderr_tail(n)
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "reelay serve printed no `listening on http://...` line within {START_DEADLINE:?}.\nstdout:\n{out}\nstderr:\n{}",
                    self.stderr_tail(n)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        self.url = url;

        // Wait for /healthz 200.
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Ok(r) = self
                .http
                .get(format!("{}/healthz", self.url))
                .timeout(Duration::from_secs(5))
                .send()
                .await
                && r.status().as_u16() == 200
            {
                break;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().expect("try_wait") {
                panic!(
                    "reelay serve exited ({status}) before /healthz answered 200.\nstderr:\n{}",
                    self.stderr_tail(n)
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "/healthz at {} did not answer 200 within {START_DEADLINE:?}.\nstderr:\n{}",
                    self.url,
                    self.stderr_tail(n)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stderr_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(self.stderr_path(n)).unwrap_or_default();
        let skip = text.chars().count().saturating_sub(6000);
        text.chars().skip(skip).collect()
    }

    /// SIGKILLs the server (no graceful shutdown) and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // On unix, Child::kill sends SIGKILL.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The server process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    /// Everything the server has written to stderr (its log) since its last start.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.stderr_path(self.starts)).unwrap_or_default()
    }

    /// Sends SIGTERM and waits up to `deadline` for the process to exit; its status, or None
    /// if it was still running at the deadline (it is then killed).
    pub async fn terminate(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        terminate_child(self.child.take()?, deadline).await
    }

    /// Changes (or adds) one setting for the next start.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// Kills the server with SIGKILL and starts it again on the same data directory and
    /// configuration. The port (and so `self.url`) changes.
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }

    // ---------------------------------------------------------------- CLI

    /// `reelay workers create --name NAME --json`: a new worker token.
    pub async fn worker_token(&self, name: &str) -> String {
        let v = self
            .cli_json(&["workers", "create", "--name", name, "--json"])
            .await;
        v["token"]
            .as_str()
            .unwrap_or_else(|| panic!("no token in {v}"))
            .to_owned()
    }

    /// Runs `reelay ARGS...` with the server's configuration; returns (exit code, stdout, stderr).
    pub async fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let mut cmd = tokio::process::Command::from(self.command());
        cmd.args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let out = tokio::time::timeout(CLI_DEADLINE, cmd.output())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "`reelay {}` did not finish within {CLI_DEADLINE:?}",
                    args.join(" ")
                )
            })
            .unwrap_or_else(|e| panic!("run `reelay {}`: {e}", args.join(" ")));
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs a CLI command that must succeed and print one JSON document on stdout.
    pub async fn cli_json(&self, args: &[&str]) -> Value {
        let (code, stdout, stderr) = self.cli(args).await;
        assert_eq!(
            code,
            0,
            "`reelay {}` exited {code}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            args.join(" ")
        );
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "`reelay {}` did not print one JSON document on stdout ({e}):\n{stdout}",
                args.join(" ")
            )
        })
    }

    /// `reelay keys create --name NAME --credits CREDITS --json`: a new account with one key.
    pub async fn create_account(&self, name: &str, credits: &str) -> Account {
        let v = self
            .cli_json(&[
                "keys",
                "create",
                "--name",
                name,
                "--credits",
                credits,
                "--json",
            ])
            .await;
        account_from_json(v, name)
    }

    /// `reelay keys create --account ACCOUNT --name NAME --json`: another key on an account.
    pub async fn add_key(&self, account_id: &str, name: &str) -> Account {
        let v = self
            .cli_json(&[
                "keys",
                "create",
                "--account",
                account_id,
                "--name",
                name,
                "--json",
            ])
            .await;
        account_from_json(v, name)
    }

    /// `reelay credits add --account ACCOUNT --amount AMOUNT --json`.
    pub async fn add_credits(&self, account_id: &str, amount: &str) -> Value {
        self.cli_json(&[
            "credits",
            "add",
            "--account",
            account_id,
            "--amount",
            amount,
            "--json",
        ])
        .await
    }

    // ---------------------------------------------------------------- HTTP

    /// A request to `self.url + path`, with `Authorization: Bearer KEY` when a key is given.
    pub fn req(&self, method: Method, path: &str, key: Option<&str>) -> reqwest::RequestBuilder {
        let rb = self.http.request(method, format!("{}{}", self.url, path));
        match key {
            Some(k) => rb.bearer_auth(k),
            None => rb,
        }
    }

    pub async fn get(&self, key: &str, path: &str) -> Resp {
        send(self.req(Method::GET, path, Some(key))).await
    }

    pub async fn get_noauth(&self, path: &str) -> Resp {
        send(self.req(Method::GET, path, None)).await
    }

    pub async fn post(&self, key: &str, path: &str, body: &Value) -> Resp {
        send(self.req(Method::POST, path, Some(key)).json(body)).await
    }

    /// `POST /v1/veo/generate` with a JSON body.
    pub async fn generate(&self, key: &str, body: &Value) -> Resp {
        self.post(key, "/v1/veo/generate", body).await
    }

    /// `POST /v1/veo/generate` that must answer 201; returns the body.
    pub async fn generate_ok(&self, key: &str, body: &Value) -> Value {
        let r = self.generate(key, body).await;
        assert_eq!(r.status, 201, "create {body} -> {r}");
        r.body
    }

    /// Creates a generation with just a prompt; returns its id.
    pub async fn create_generation(&self, key: &str, prompt: &str) -> String {
        let b = self.generate_ok(key, &json!({ "prompt": prompt })).await;
        b["generation_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no generation_id in {b}"))
            .to_string()
    }

    /// `GET /v1/veo/generations/{id}` that must answer 200; returns the body.
    pub async fn generation(&self, key: &str, id: &str) -> Value {
        let r = self.get(key, &format!("/v1/veo/generations/{id}")).await;
        assert_eq!(r.status, 200, "GET generation {id} -> {r}");
        r.body
    }

    pub async fn cancel(&self, key: &str, id: &str) -> Resp {
        send(self.req(
            Method::POST,
            &format!("/v1/veo/generations/{id}/cancel"),
            Some(key),
        ))
        .await
    }

    /// `GET /v1/data/balance` → the balance string, e.g. `"9.7500"`.
    pub async fn balance(&self, key: &str) -> String {
        let r = self.get(key, "/v1/data/balance").await;
        assert_eq!(r.status, 200, "GET /v1/data/balance -> {r}");
        r.body["balance"]
            .as_str()
            .unwrap_or_else(|| panic!("balance is not a string: {r}"))
            .to_string()
    }

    /// `GET /v1/veo/generations?QUERY` that must answer 200; returns the body.
    pub async fn list(&self, key: &str, query: &str) -> Value {
        let r = self.get(key, &format!("/v1/veo/generations{query}")).await;
        assert_eq!(r.status, 200, "GET /v1/veo/generations{query} -> {r}");
        r.body
    }

    /// Polls `GET /v1/veo/generations/{id}` until its status is `status`; panics at the deadline
    /// or when the generation reaches a different terminal status.
    pub async fn wait_for_status(
        &self,
        key: &str,
        id: &str,
        status: &str,
        timeout: Duration,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let body = self.generation(key, id).await;
            let now = body["status"].as_str().unwrap_or("").to_string();
            if now == status {
                return body;
            }
            if (now == "completed" || now == "failed") && now != status {
                panic!("generation {id} became {now} while waiting for {status}: {body}");
            }
            if Instant::now() > deadline {
                panic!("generation {id} not {status} within {timeout:?}; last: {body}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Polls until the generation is `completed` or `failed`; returns it.
    pub async fn wait_terminal(&self, key: &str, id: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let body = self.generation(key, id).await;
            let now = body["status"].as_str().unwrap_or("");
            if now == "completed" || now == "failed" {
                return body;
            }
            if Instant::now() > deadline {
                panic!("generation {id} not terminal within {timeout:?}; last: {body}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if std::thread::panicking() && self.starts > 0 {
            eprintln!(
                "---- reelay serve stderr (last start, {}) ----\n{}\n---- end ----",
                self.url,
                self.stderr_tail(self.starts)
            );
        }
        self.kill9();
    }
}

fn parse_listening_line(line: &str) -> Option<String> {
    let idx = line.find("listening on ")?;
    let rest = line[idx + "listening on ".len()..].trim();
    let url = rest.split_whitespace().next()?;
    if url.starts_with("http://") || url.starts_with("https://") {
        Some(url.trim_end_matches('/').to_string())
    } else {
        None
    }
}

fn account_from_json(v: Value, name: &str) -> Account {
    let field = |k: &str| {
        v[k].as_str()
            .unwrap_or_else(|| panic!("`keys create --json` output lacks string `{k}`: {v}"))
            .to_string()
    };
    Account {
        account_id: field("account_id"),
        key_id: field("key_id"),
        api_key: field("api_key"),
        name: name.to_string(),
        created: v.clone(),
    }
}

/// Sends a request and reads the whole response.
pub async fn send(rb: reqwest::RequestBuilder) -> Resp {
    let r = rb.send().await.expect("HTTP request failed");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let bytes = r.bytes().await.expect("read HTTP body").to_vec();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Resp {
        status,
        headers,
        bytes,
        body,
    }
}

// -------------------------------------------------------------------- assertions

/// Asserts an error response: the status, `detail == code`, and a non-empty `message`.
#[track_caller]
pub fn assert_error(r: &Resp, status: u16, code: &str, ctx: &str) {
    assert_eq!(
        r.status, status,
        "{ctx}: expected HTTP {status} {code}, got {r}"
    );
    assert_eq!(
        r.body["detail"].as_str(),
        Some(code),
        "{ctx}: expected detail {code}, got {r}"
    );
    let msg = r.body["message"].as_str().unwrap_or("");
    assert!(
        !msg.trim().is_empty(),
        "{ctx}: error has no human message: {r}"
    );
    if status == 422 {
        let errors = r.body["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("{ctx}: 422 without an `errors` array: {r}"));
        assert!(!errors.is_empty(), "{ctx}: 422 with empty `errors`: {r}");
        for e in errors {
            assert!(
                e["field"].is_string() && e["message"].is_string(),
                "{ctx}: each errors[] entry needs string field and message: {r}"
            );
        }
    }
}

/// Asserts 422 INVALID_PARAMETERS whose `errors` names `field`.
#[track_caller]
pub fn assert_invalid_field(r: &Resp, field: &str, ctx: &str) {
    assert_error(r, 422, "INVALID_PARAMETERS", ctx);
    assert!(
        error_fields(r).iter().any(|f| f == field),
        "{ctx}: expected errors[] to name field `{field}`, got {r}"
    );
}

pub fn error_fields(r: &Resp) -> Vec<String> {
    r.body["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["field"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts `v` is a timestamp written `YYYY-MM-DDTHH:MM:SS.ffffff` (six digits, no offset).
#[track_caller]
pub fn assert_timestamp(v: &Value, ctx: &str) {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{ctx}: timestamp is not a string: {v}"));
    let b = s.as_bytes();
    let ok = b.len() == 26
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            _ => c.is_ascii_digit(),
        });
    assert!(
        ok,
        "{ctx}: timestamp {s:?} is not YYYY-MM-DDTHH:MM:SS.ffffff"
    );
}

/// Asserts `v` is a UUID string.
#[track_caller]
pub fn assert_uuid(v: &Value, ctx: &str) -> String {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{ctx}: not a string: {v}"));
    uuid::Uuid::parse_str(s).unwrap_or_else(|e| panic!("{ctx}: {s:?} is not a UUID: {e}"));
    s.to_string()
}

/// Asserts the 201 body of `POST /v1/veo/generate`.
#[track_caller]
pub fn assert_created_shape(b: &Value, price: &str, ctx: &str) -> String {
    let id = assert_uuid(&b["generation_id"], &format!("{ctx}: generation_id"));
    assert_eq!(b["status"], "pending", "{ctx}: status in {b}");
    assert!(
        b["seed"].as_u64().is_some_and(|s| s <= u32::MAX as u64),
        "{ctx}: seed must be an integer 0..=4294967295 in {b}"
    );
    assert_eq!(b["price"], price, "{ctx}: price in {b}");
    id
}

/// Asserts the shape of a generation as returned by `GET /v1/veo/generations/{id}`.
#[track_caller]
pub fn assert_generation_shape(g: &Value, ctx: &str) {
    for k in [
        "generation_id",
        "status",
        "prompt",
        "video_url",
        "created_at",
        "completed_at",
        "seed",
        "error",
        "model",
        "aspect_ratio",
        "callback_url",
        "price",
        "progress_pct",
        "queue_position",
        "webhook",
    ] {
        assert!(g.get(k).is_some(), "{ctx}: generation lacks key `{k}`: {g}");
    }
    assert_uuid(&g["generation_id"], ctx);
    let status = g["status"].as_str().unwrap_or("");
    assert!(
        ["pending", "processing", "completed", "failed"].contains(&status),
        "{ctx}: unknown status in {g}"
    );
    assert!(g["prompt"].is_string(), "{ctx}: prompt in {g}");
    assert_timestamp(&g["created_at"], &format!("{ctx}: created_at"));
    assert!(
        g["seed"].as_u64().is_some_and(|s| s <= u32::MAX as u64),
        "{ctx}: seed in {g}"
    );
    assert!(g["model"].is_string(), "{ctx}: model in {g}");
    assert!(g["aspect_ratio"].is_string(), "{ctx}: aspect_ratio in {g}");
    assert!(g["price"].is_string(), "{ctx}: price in {g}");
    let w = &g["webhook"];
    for k in [
        "state",
        "attempts",
        "last_attempt_at",
        "last_status_code",
        "next_attempt_at",
    ] {
        assert!(w.get(k).is_some(), "{ctx}: webhook lacks `{k}`: {g}");
    }
    assert!(
        ["none", "pending", "delivered", "failed"].contains(&w["state"].as_str().unwrap_or("")),
        "{ctx}: webhook.state in {g}"
    );
    assert!(w["attempts"].is_u64(), "{ctx}: webhook.attempts in {g}");
    match status {
        "completed" => {
            assert!(g["error"].is_null(), "{ctx}: completed with error: {g}");
            let url = g["video_url"].as_str().unwrap_or("");
            assert!(
                url.starts_with("http://") || url.starts_with("https://"),
                "{ctx}: completed video_url must be absolute: {g}"
            );
            assert_timestamp(&g["completed_at"], &format!("{ctx}: completed_at"));
        }
        "failed" => {
            assert!(
                g["video_url"].is_null(),
                "{ctx}: failed with video_url: {g}"
            );
            assert!(
                g["error"]["message"].is_string(),
                "{ctx}: failed needs error.message: {g}"
            );
            assert_eq!(
                g["error"]["details"],
                json!({}),
                "{ctx}: error.details must be {{}}: {g}"
            );
            assert_timestamp(&g["completed_at"], &format!("{ctx}: completed_at"));
        }
        _ => {
            assert!(
                g["video_url"].is_null(),
                "{ctx}: unfinished with video_url: {g}"
            );
            assert!(g["error"].is_null(), "{ctx}: unfinished with error: {g}");
            assert!(
                g["completed_at"].is_null(),
                "{ctx}: unfinished with completed_at: {g}"
            );
        }
    }
}

/// A prompt of exactly `n` characters (ASCII), free of moderation terms.
pub fn prompt_of_len(n: usize) -> String {
    "A calm lake under a pink sky. "
        .chars()
        .cycle()
        .take(n)
        .collect()
}

/// A name other than localhost that /etc/hosts maps to a loopback address (creation accepts
/// it, being a name; the guard sees its loopback address at send time).
pub fn hosts_loopback_name() -> String {
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    for line in hosts.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut parts = line.split_whitespace();
        let Some(Ok(ip)) = parts.next().map(str::parse::<std::net::IpAddr>) else {
            continue;
        };
        if !ip.is_loopback() {
            continue;
        }
        for name in parts {
            let lower = name.to_ascii_lowercase();
            let lower = lower.trim_end_matches('.');
            if lower != "localhost"
                && !lower.ends_with(".localhost")
                && !lower.starts_with("ip6-")
                && lower.parse::<std::net::IpAddr>().is_err()
            {
                return name.to_string();
            }
        }
    }
    panic!(
        "/etc/hosts maps no name other than localhost to a loopback address; this test needs \
         one (e.g. `127.0.0.1 vm`).\n/etc/hosts:\n{hosts}"
    );
}

/// Creates a generation with `callback_url`; returns its id.
pub async fn create_with_callback(s: &TestServer, key: &str, prompt: &str, url: &str) -> String {
    let b = s
        .generate_ok(key, &json!({ "prompt": prompt, "callback_url": url }))
        .await;
    b["generation_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no generation_id in {b}"))
        .to_string()
}

pub async fn deliveries(s: &TestServer, key: &str, id: &str) -> Value {
    let r = s
        .get(key, &format!("/v1/veo/generations/{id}/deliveries"))
        .await;
    assert_eq!(r.status, 200, "GET deliveries of {id} -> {r}");
    r.body
}

/// Polls the generation until `webhook.state == state`; returns the generation.
pub async fn wait_webhook_state(
    s: &TestServer,
    key: &str,
    id: &str,
    state: &str,
    timeout: Duration,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let g = s.generation(key, id).await;
        if g["webhook"]["state"] == state {
            return g;
        }
        if Instant::now() > deadline {
            let d = deliveries(s, key, id).await;
            panic!(
                "webhook of {id} not {state} within {timeout:?}; generation: {g}\ndeliveries: {d}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn attempts(d: &Value) -> &Vec<Value> {
    d["attempts"]
        .as_array()
        .unwrap_or_else(|| panic!("deliveries without an attempts array: {d}"))
}

/// The process's peak resident set size (VmHWM), in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmHWM in /proc status");
    kb * 1024
}

/// Sends SIGTERM to `child` and waits up to `deadline` for it to exit; its status, or None if
/// it still ran at the deadline (it is then killed).
pub async fn terminate_child(
    mut child: Child,
    deadline: Duration,
) -> Option<std::process::ExitStatus> {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM failed");
    let until = Instant::now() + deadline;
    while Instant::now() < until {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}
