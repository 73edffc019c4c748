//! Results: one row per measurement, a table, and one JSON line per scenario.

use serde::Serialize;
use serde_json::Value;

use crate::stats::Latency;

/// One measurement. `None` fields print as `-` in the table and `null` in JSON.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Row {
    pub scenario: String,
    pub variant: String,
    pub backend: String,
    /// Events (or raw requests, for `limit`) in the measurement.
    pub events: Option<u64>,
    /// `limit` only: the receiver's ceiling for the load generator's client.
    pub raw_requests_per_s: Option<f64>,
    pub creates_per_s: Option<f64>,
    pub webhooks_per_s: Option<f64>,
    /// `queue` only: claim + complete cycles per second through the worker protocol.
    pub claims_per_s: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// webhooks/s ÷ (raw requests/s ÷ 2).
    pub limit_ratio: Option<f64>,
    /// Healthy p99 with dead destinations ÷ healthy p99 without.
    pub p99_ratio: Option<f64>,
    /// `queue` only: claims/s at this backlog ÷ claims/s at the smallest, same workers.
    pub queue_ratio: Option<f64>,
    pub lost: Option<u64>,
    pub duplicates: Option<u64>,
    pub rss_mb: Option<f64>,
    pub storage_mb: Option<f64>,
    /// reelay's CPU seconds (user + system) per 1,000 delivered webhooks.
    pub cpu_s_per_1k: Option<f64>,
    /// The database server's CPU seconds per 1,000 delivered webhooks (PostgreSQL only).
    pub db_cpu_s_per_1k: Option<f64>,
    pub note: Option<String>,
}

impl Row {
    pub fn new(scenario: &str, variant: &str, backend: &str) -> Self {
        Self {
            scenario: scenario.into(),
            variant: variant.into(),
            backend: backend.into(),
            ..Self::default()
        }
    }

    pub fn latency(mut self, l: Option<Latency>) -> Self {
        if let Some(l) = l {
            self.p50_ms = Some(l.p50_ms);
            self.p90_ms = Some(l.p90_ms);
            self.p99_ms = Some(l.p99_ms);
            self.max_ms = Some(l.max_ms);
        }
        self
    }

    /// Fills `limit_ratio` from `webhooks_per_s` and the raw ceiling.
    pub fn against(mut self, raw_requests_per_s: Option<f64>) -> Self {
        if let (Some(w), Some(raw)) = (self.webhooks_per_s, raw_requests_per_s) {
            self.limit_ratio = Some(w / (raw / 2.0));
        }
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        let note = note.into();
        self.note = Some(match self.note.take() {
            Some(old) => format!("{old}; {note}"),
            None => note,
        });
        self
    }
}

/// The keys of a JSON line, in print order.
const KEYS: [&str; 23] = [
    "scenario",
    "variant",
    "backend",
    "events",
    "raw_requests_per_s",
    "creates_per_s",
    "webhooks_per_s",
    "claims_per_s",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "max_ms",
    "limit_ratio",
    "p99_ratio",
    "queue_ratio",
    "lost",
    "duplicates",
    "rss_mb",
    "storage_mb",
    "cpu_s_per_1k",
    "db_cpu_s_per_1k",
    "note",
    "runs",
];

/// One JSON line for a scenario: the headline row's keys at the top level (rounded, `null`
/// where a key does not apply), and every row of the scenario under `runs`.
pub fn json_line(headline: &Row, rows: &[Row]) -> String {
    let runs: Vec<String> = rows.iter().map(|r| object(r, None)).collect();
    object(headline, Some(format!("[{}]", runs.join(","))))
}

fn object(row: &Row, runs: Option<String>) -> String {
    let Value::Object(map) = serde_json::to_value(row).expect("a row serializes") else {
        unreachable!()
    };
    let mut fields = Vec::new();
    for key in KEYS.iter().filter(|k| !k.is_empty()) {
        let value = match (*key, map.get(*key)) {
            ("runs", _) => match &runs {
                Some(runs) => runs.clone(),
                None => continue,
            },
            ("backend", Some(Value::String(b))) if b == "-" => "null".to_owned(),
            (_, Some(v)) => rounded(v).to_string(),
            (_, None) => continue,
        };
        fields.push(format!("{}:{value}", Value::from(*key)));
    }
    format!("{{{}}}", fields.join(","))
}

fn rounded(v: &Value) -> Value {
    match v.as_f64() {
        Some(f) if v.is_f64() => {
            let scale = if f.abs() >= 100.0 { 10.0 } else { 1000.0 };
            serde_json::json!((f * scale).round() / scale)
        }
        _ => v.clone(),
    }
}

/// The table of every row measured, in order.
pub fn table(rows: &[Row]) -> String {
    let header = [
        "scenario",
        "variant",
        "backend",
        "events",
        "raw req/s",
        "creates/s",
        "webhooks/s",
        "claims/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "limit_ratio",
        "p99_ratio",
        "queue_ratio",
        "lost",
        "dup",
        "rss MB",
        "store MB",
        "cpu s/1k",
    ];
    let f = |v: Option<f64>, d: usize| v.map_or("-".to_owned(), |v| format!("{v:.d$}"));
    let n = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.scenario.clone(),
                r.variant.clone(),
                r.backend.clone(),
                n(r.events),
                f(r.raw_requests_per_s, 0),
                f(r.creates_per_s, 0),
                f(r.webhooks_per_s, 0),
                f(r.claims_per_s, 0),
                f(r.p50_ms, 2),
                f(r.p90_ms, 2),
                f(r.p99_ms, 2),
                f(r.max_ms, 2),
                f(r.limit_ratio, 3),
                f(r.p99_ratio, 2),
                f(r.queue_ratio, 2),
                n(r.lost),
                n(r.duplicates),
                f(r.rss_mb, 1),
                f(r.storage_mb, 1),
                f(r.cpu_s_per_1k, 3),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            cells
                .iter()
                .map(|c| c[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cols: Vec<&str>| {
        let mut s = String::from("|");
        for (i, c) in cols.iter().enumerate() {
            s.push_str(&format!(" {c:>w$} |", w = widths[i]));
        }
        s
    };
    let mut out = line(header.to_vec());
    out.push('\n');
    out.push('|');
    for w in &widths {
        out.push_str(&format!("{}:|", "-".repeat(w + 1)));
    }
    for c in &cells {
        out.push('\n');
        out.push_str(&line(c.iter().map(String::as_str).collect()));
    }
    out.push('\n');
    let notes: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            r.note
                .as_ref()
                .map(|n| format!("  {} {}: {n}", r.scenario, r.variant))
        })
        .collect();
    if !notes.is_empty() {
        out.push_str("notes:\n");
        out.push_str(&notes.join("\n"));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_and_json() {
        let mut row = Row::new("pipeline", "saturation", "sqlite");
        row.webhooks_per_s = Some(2000.0);
        let row = row.against(Some(10000.0));
        assert_eq!(row.limit_ratio, Some(0.4));
        let line = json_line(&row, std::slice::from_ref(&row));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["scenario"], "pipeline");
        assert_eq!(v["limit_ratio"], 0.4);
        assert!(v["p99_ms"].is_null());
        assert!(v["lost"].is_null());
        assert_eq!(v["runs"].as_array().unwrap().len(), 1);
        assert!(table(&[row]).contains("0.400"));
    }
}
