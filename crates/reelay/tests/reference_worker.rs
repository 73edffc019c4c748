//! `reelay worker --builtin` as real processes against a real `reelay serve` with
//! `REELAY_GENERATOR=external`: work is shared, each job done once, and a worker killed
//! mid-job loses it to another.

mod common;

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A `reelay worker` process, killed when dropped; its log kept in a file.
struct Worker {
    child: Option<Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Worker {
    fn start(s: &TestServer, token: &str, extra: &[&str]) -> Worker {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("worker.log");
        let mut cmd = Command::new(bin());
        for (k, _) in std::env::vars() {
            if k.starts_with("REELAY_") {
                cmd.env_remove(k);
            }
        }
        cmd.args(["worker", "--server", &s.url, "--token", token])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("worker log"));
        let child = cmd.spawn().expect("spawn reelay worker");
        Worker {
            child: Some(child),
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The generations this worker says it finished (`job completed` lines).
    fn completed(&self) -> Vec<String> {
        lines_with(&self.log(), "job completed")
    }

    fn claimed(&self) -> Vec<String> {
        lines_with(&self.log(), "job claimed")
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM; the exit status, or None if it still ran after `deadline`.
    async fn terminate(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        terminate_child(self.child.take()?, deadline).await
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The `generation=` of each log line containing `what`.
fn lines_with(log: &str, what: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(what))
        .filter_map(|l| {
            let at = l.find("generation=")? + "generation=".len();
            Some(l[at..].split_whitespace().next()?.to_owned())
        })
        .collect()
}

async fn wait_until(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + deadline;
    while !done() {
        assert!(Instant::now() < until, "gave up waiting: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn two_builtin_workers_share_the_work_and_survive_a_kill() {
    let s = TestServer::start(&[
        ("REELAY_GENERATOR", "external"),
        ("REELAY_WORKER_LEASE", "3s"),
    ])
    .await;
    let a = s.create_account("alice", "100").await;
    let token = s.worker_token("builtin").await;
    let flags = ["--builtin", "--render-delay", "2s", "--concurrency", "2"];
    let mut w1 = Worker::start(&s, &token, &flags);
    let w2 = Worker::start(&s, &token, &flags);

    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            s.create_generation(&a.api_key, &format!("{PROMPT}, take {i}"))
                .await,
        );
    }
    for id in &ids {
        let g = s.wait_terminal(&a.api_key, id, RENDER_DEADLINE).await;
        assert_eq!(g["status"], "completed", "{g}");
        let video = s
            .http
            .get(g["video_url"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(video.status(), 200);
        assert_eq!(&video.bytes().await.unwrap()[4..8], b"ftyp");
    }
    // Each job was done exactly once, and both workers took part.
    let (done1, done2) = (w1.completed(), w2.completed());
    let mut all: Vec<_> = done1.iter().chain(&done2).cloned().collect();
    all.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(all, expected, "w1 {done1:?}\nw2 {done2:?}");
    assert!(
        !done1.is_empty() && !done2.is_empty(),
        "both workers worked: w1 {done1:?}, w2 {done2:?}"
    );

    // Kill -9 the worker holding a slow job: it goes to the other once its lease lapses.
    drop(w2);
    let slow = s.create_generation(&a.api_key, PROMPT).await;
    wait_until("w1 claims the job", Duration::from_secs(30), || {
        w1.claimed().contains(&slow)
    })
    .await;
    w1.kill9();
    let w3 = Worker::start(&s, &token, &flags);
    let g = s.wait_terminal(&a.api_key, &slow, RENDER_DEADLINE).await;
    assert_eq!(g["status"], "completed", "{g}");
    assert_eq!(w3.completed(), std::slice::from_ref(&slow), "{}", w3.log());
    assert_eq!(
        s.balance(&a.api_key).await,
        "94.7500",
        "21 charged, none twice"
    );
}

#[tokio::test]
async fn sigterm_finishes_the_job_held_then_exits() {
    let s = TestServer::start(&[("REELAY_GENERATOR", "external")]).await;
    let a = s.create_account("alice", "10").await;
    let token = s.worker_token("builtin").await;
    let mut w = Worker::start(&s, &token, &["--builtin", "--render-delay", "3s"]);
    let id = s.create_generation(&a.api_key, PROMPT).await;
    wait_until("the worker claims the job", Duration::from_secs(30), || {
        w.claimed().contains(&id)
    })
    .await;
    let status = w.terminate(RENDER_DEADLINE).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "exits cleanly: {status:?}\n{}",
        w.log()
    );
    // It finished the job before it went: nothing is left for another worker.
    let g = s.generation(&a.api_key, &id).await;
    assert_eq!(g["status"], "completed", "{g}\n{}", w.log());
}
