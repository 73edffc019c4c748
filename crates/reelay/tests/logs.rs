//! The log as an operator reads it: plain text when stderr goes to a file or a pipe (no ANSI
//! colour codes to strip), coloured only on a terminal.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::bin;

/// A command for `program` with a fresh data directory, a free port, the log at info level and
/// nothing inherited that changes colouring.
fn command(program: &str, data_dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(program);
    for (k, _) in std::env::vars() {
        if k.starts_with("REELAY_") {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("NO_COLOR")
        .env("RUST_LOG", "info")
        .env("REELAY_DATA_DIR", data_dir)
        .env("REELAY_LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null());
    cmd
}

/// Reads `path` until it contains `what`, for at most a minute.
fn wait_for_text(path: &std::path::Path, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(what) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_log_written_to_a_file_has_no_colour_codes() {
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let (out, err) = (logs.path().join("stdout"), logs.path().join("stderr"));
    let mut child = command(bin(), data.path())
        .arg("serve")
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("spawn reelay serve");
    let stdout = wait_for_text(&out, "listening on http://");
    let _ = child.kill();
    let _ = child.wait();
    assert!(stdout.contains("listening on http://"), "{stdout}");
    let log = std::fs::read_to_string(&err).unwrap();
    assert!(log.contains(" INFO "), "the server logged at info: {log}");
    assert!(
        !log.contains('\x1b'),
        "colour codes in a log file:\n{log:?}"
    );
}

#[test]
fn the_log_on_a_terminal_is_coloured() {
    // The other side of the test above, so that it cannot pass by never colouring: `script`
    // gives the server a pseudo-terminal as stdout and stderr.
    let data = tempfile::tempdir().unwrap();
    let mut child = command("script", data.path())
        .args([
            "-q",
            "-e",
            "-c",
            &format!("exec {} serve", bin()),
            "/dev/null",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn `script` (util-linux) to give reelay a terminal");
    let mut pty = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = pty.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            let _ = tx.send(String::from_utf8_lossy(&seen).into_owned());
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut text = String::new();
    while Instant::now() < deadline && !(text.contains("listening on") && text.contains("INFO")) {
        if let Ok(t) = rx.recv_timeout(Duration::from_millis(200)) {
            text = t;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(text.contains("INFO"), "the server logged at info: {text:?}");
    assert!(text.contains("\x1b["), "no colour on a terminal: {text:?}");
}
