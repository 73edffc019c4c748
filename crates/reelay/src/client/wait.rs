//! `reelay generate --wait`: follows a generation to its end over the server's event stream
//! (`/v1/veo/generations/{id}/events`), resuming with `Last-Event-ID` when the connection
//! drops, and polling instead when the server offers no stream (an older server, a proxy that
//! cuts streams, or the account's stream limit).
//!
//! What it shows depends on where stderr goes: a progress bar on a terminal, one plain line per
//! change anywhere else (a log file or a pipe must not fill with carriage-return redraws).

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::bail;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::time::Instant;

use super::call;

/// How often the fallback polls.
const POLL_EVERY: Duration = Duration::from_millis(500);
/// A stream silent this long is taken for dead (the server comments every 15 s).
const STREAM_SILENCE: Duration = Duration::from_secs(45);
/// Reconnections in a row without an event before giving the stream up for polling.
const MAX_RECONNECTS: u32 = 5;
/// The longest line an event stream may send (the final event is a generation, a few KiB).
const MAX_LINE: usize = 1024 * 1024;

/// The generation being waited for.
pub(super) struct Waiting<'a> {
    pub http: &'a reqwest::Client,
    pub base: &'a str,
    pub api_key: &'a str,
    pub id: &'a str,
    pub deadline: Instant,
}

impl Waiting<'_> {
    fn timed_out(&self) -> anyhow::Error {
        anyhow::anyhow!("gave up waiting for {}: --wait-timeout passed", self.id)
    }

    /// Follows the event stream to the final generation; `None` when the stream is not to be
    /// had and the caller should poll.
    pub async fn follow_events(&self, shown: &mut Display) -> anyhow::Result<Option<Value>> {
        let url = format!("{}/v1/veo/generations/{}/events", self.base, self.id);
        let mut last_id: Option<String> = None;
        let mut reconnects = 0;
        loop {
            if Instant::now() >= self.deadline {
                return Err(self.timed_out());
            }
            let mut request = self
                .http
                .get(&url)
                .bearer_auth(self.api_key)
                .header(reqwest::header::ACCEPT, "text/event-stream");
            if let Some(id) = &last_id {
                request = request.header("last-event-id", id);
            }
            let mut response = match request.send().await {
                Ok(r) if r.status() == StatusCode::OK => r,
                // Not served here, refused (too many streams), or the connection failed:
                // polling still works.
                Ok(_) | Err(_) if last_id.is_none() => return Ok(None),
                _ => {
                    reconnects += 1;
                    if reconnects > MAX_RECONNECTS {
                        return Ok(None);
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut parser = SseParser::default();
            loop {
                let silence =
                    STREAM_SILENCE.min(self.deadline.saturating_duration_since(Instant::now()));
                let chunk = match tokio::time::timeout(silence, response.chunk()).await {
                    Ok(Ok(Some(chunk))) => chunk,
                    // Ended, broken or silent: reconnect from the last event seen.
                    _ => break,
                };
                for event in parser.push(&chunk)? {
                    reconnects = 0;
                    if let Some(id) = event.id {
                        last_id = Some(id);
                    }
                    let data: Value = match serde_json::from_str(&event.data) {
                        Ok(data) => data,
                        Err(_) => continue,
                    };
                    match event.name.as_str() {
                        "completed" | "failed" => return Ok(Some(data)),
                        _ => shown.update(&data),
                    }
                }
            }
            if Instant::now() >= self.deadline {
                return Err(self.timed_out());
            }
            reconnects += 1;
            if reconnects > MAX_RECONNECTS {
                return Ok(None);
            }
        }
    }

    /// Reads the generation every [`POLL_EVERY`] until it ends.
    pub async fn poll(&self, shown: &mut Display) -> anyhow::Result<Value> {
        let url = format!("{}/v1/veo/generations/{}", self.base, self.id);
        loop {
            let generation = call(self.http.get(&url).bearer_auth(self.api_key)).await?;
            if matches!(generation["status"].as_str(), Some("completed" | "failed")) {
                return Ok(generation);
            }
            shown.update(&generation);
            if Instant::now() >= self.deadline {
                return Err(self.timed_out());
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
}

/// Progress as the user sees it on stderr.
pub(super) enum Display {
    /// `--json`: stdout carries the result, stderr stays quiet.
    Quiet,
    /// Not a terminal: a line each time what is shown changes.
    Lines {
        last: String,
    },
    Bar(ProgressBar),
}

impl Display {
    pub fn new(json: bool) -> Self {
        if json {
            Display::Quiet
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(100);
            let style = ProgressStyle::with_template(
                "{prefix:<10} [{elapsed_precise}] [{bar:40}] {pos:>3}%  {msg}",
            )
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_prefix("pending");
            bar.enable_steady_tick(Duration::from_millis(200));
            Display::Bar(bar)
        } else {
            Display::Lines {
                last: String::new(),
            }
        }
    }

    pub fn created(&self, id: &str, price: &str) {
        let line = format!("created {id} (price {price})");
        match self {
            Display::Quiet => {}
            Display::Lines { .. } => eprintln!("{line}"),
            Display::Bar(bar) => bar.println(line),
        }
    }

    /// Shows a generation's (or a stream event's) status, progress and queue position.
    pub fn update(&mut self, g: &Value) {
        let status = g["status"].as_str().unwrap_or("unknown");
        let pct = g["progress_pct"].as_u64().unwrap_or(0).min(100);
        // A queue position is news only while waiting in the queue; processing ones are 0.
        let queue = match (status, g["queue_position"].as_u64()) {
            ("pending", Some(position)) => format!("queue position {position}"),
            _ => String::new(),
        };
        match self {
            Display::Quiet => {}
            Display::Lines { last } => {
                let line = format!("{status:<10} {pct:>3}%  {queue}");
                let line = line.trim_end();
                if line != last {
                    eprintln!("{line}");
                    *last = line.to_owned();
                }
            }
            Display::Bar(bar) => {
                bar.set_prefix(status.to_owned());
                bar.set_position(pct);
                bar.set_message(queue);
            }
        }
    }

    /// The last line: `completed 100%`, or the failure and its code.
    pub fn finish(&mut self, g: &Value) {
        let status = g["status"].as_str().unwrap_or("unknown");
        let failure = g["error"]["message"].as_str().unwrap_or_default();
        match self {
            Display::Quiet => {}
            Display::Lines { .. } => match status {
                "completed" => eprintln!("{status:<10} 100%"),
                _ => eprintln!("{status:<10} {failure}"),
            },
            Display::Bar(bar) => {
                bar.set_prefix(status.to_owned());
                if status == "completed" {
                    bar.set_position(100);
                    bar.finish_with_message("");
                } else {
                    bar.abandon_with_message(failure.to_owned());
                }
            }
        }
    }

    /// Leaves the bar where it is, for an error to be printed under it.
    pub fn abandon(&self) {
        if let Display::Bar(bar) = self {
            bar.abandon();
        }
    }
}

/// One server-sent event.
#[derive(Debug, Default, PartialEq, Eq)]
struct SseEvent {
    name: String,
    data: String,
    id: Option<String>,
}

/// Turns a stream's bytes into events, as the SSE format says: `field: value` lines, an event
/// ending at a blank line, `:` lines being comments (keep-alives).
#[derive(Debug, Default)]
struct SseParser {
    buf: Vec<u8>,
    event: SseEvent,
    has_data: bool,
}

impl SseParser {
    fn push(&mut self, bytes: &[u8]) -> anyhow::Result<Vec<SseEvent>> {
        self.buf.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                let event = std::mem::take(&mut self.event);
                if std::mem::take(&mut self.has_data) {
                    events.push(event);
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => self.event.name = value.to_owned(),
                "id" => self.event.id = Some(value.to_owned()),
                "data" => {
                    if self.has_data {
                        self.event.data.push('\n');
                    }
                    self.event.data.push_str(value);
                    self.has_data = true;
                }
                _ => {}
            }
        }
        if self.buf.len() + self.event.data.len() > MAX_LINE {
            bail!("the server's event stream sent an oversized event");
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_split_across_chunks_and_skips_comments() {
        let mut p = SseParser::default();
        assert!(p.push(b":\n\nevent: status\nid: 99").unwrap().is_empty());
        let events = p
            .push(b"9\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\nevent: completed\ndata: {}\n\n")
            .unwrap();
        assert_eq!(
            events,
            vec![
                SseEvent {
                    name: "status".into(),
                    data: "{\"a\":\n1}".into(),
                    id: Some("999".into()),
                },
                SseEvent {
                    name: "completed".into(),
                    data: "{}".into(),
                    id: None,
                },
            ]
        );
    }

    #[test]
    fn an_endless_line_is_refused_not_buffered() {
        let mut p = SseParser::default();
        let chunk = vec![b'x'; 64 * 1024];
        let mut refused = false;
        for _ in 0..32 {
            if p.push(&chunk).is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused);
    }
}
