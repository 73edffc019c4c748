//! Webhook delivery success over time, for the operator's chart.
//!
//! The store keeps every attempt but has no query that counts them by time across accounts,
//! so this node samples its own attempt counters (the Prometheus ones, by outcome) once a
//! minute into a ring of the last hour. The chart is therefore this node's, since it started;
//! on a cluster each node shows its own share.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use maud::{Markup, html};
use time::OffsetDateTime;

use super::layout;

/// Samples kept: an hour of minutes.
const KEEP: usize = 60;
const EVERY: Duration = Duration::from_secs(60);

/// Renders the Prometheus exposition.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sample {
    at: OffsetDateTime,
    delivered: u64,
    failed: u64,
}

/// Attempts between two samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bucket {
    until: OffsetDateTime,
    delivered: u64,
    failed: u64,
}

/// The samples, shared by the sampling task and the operator page.
#[derive(Clone)]
pub struct History {
    samples: Arc<Mutex<VecDeque<Sample>>>,
    render: Option<Render>,
}

/// Delivered and other attempts, summed from the exposition's attempt counter.
fn counts(exposition: &str) -> (u64, u64) {
    let prefix = reelay_delivery::metrics::ATTEMPTS;
    let (mut delivered, mut failed) = (0, 0);
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix(prefix) else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once(' ') else {
            continue;
        };
        if !labels.starts_with('{') {
            continue;
        }
        let Ok(n) = value.trim().parse::<f64>() else {
            continue;
        };
        let n = n.max(0.0) as u64;
        if labels.contains("outcome=\"delivered\"") {
            delivered += n;
        } else {
            failed += n;
        }
    }
    (delivered, failed)
}

impl History {
    /// Starts sampling when there are metrics to sample and a runtime to sample on.
    pub fn start(render: Option<Render>) -> Self {
        let history = Self {
            samples: Arc::new(Mutex::new(VecDeque::with_capacity(KEEP + 1))),
            render,
        };
        if history.render.is_some() && tokio::runtime::Handle::try_current().is_ok() {
            let sampler = history.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(EVERY);
                loop {
                    tick.tick().await;
                    sampler.sample();
                }
            });
        }
        history
    }

    fn now(&self) -> Option<Sample> {
        let render = self.render.as_ref()?;
        let (delivered, failed) = counts(&render());
        Some(Sample {
            at: OffsetDateTime::now_utc(),
            delivered,
            failed,
        })
    }

    fn sample(&self) {
        if let Some(s) = self.now() {
            let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
            samples.push_back(s);
            while samples.len() > KEEP {
                samples.pop_front();
            }
        }
    }

    /// Attempts per interval, oldest first, ending with the one still running.
    fn buckets(&self) -> Option<Vec<Bucket>> {
        let current = self.now()?;
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let points: Vec<Sample> = samples.iter().copied().chain([current]).collect();
        Some(
            points
                .windows(2)
                .map(|w| Bucket {
                    until: w[1].at,
                    delivered: w[1].delivered.saturating_sub(w[0].delivered),
                    failed: w[1].failed.saturating_sub(w[0].failed),
                })
                .collect(),
        )
    }

    /// The chart, with its numbers in a table for those who cannot see it.
    pub fn chart(&self) -> Markup {
        let Some(buckets) = self.buckets() else {
            return html! { p.empty { "Metrics are off on this server, so there is no history to chart." } };
        };
        let total_delivered: u64 = buckets.iter().map(|b| b.delivered).sum();
        let total_failed: u64 = buckets.iter().map(|b| b.failed).sum();
        let total = total_delivered + total_failed;
        let rate = match total {
            0 => "no attempts yet".to_owned(),
            _ => format!(
                "{:.1}% of {total} attempts succeeded",
                total_delivered as f64 * 100.0 / total as f64
            ),
        };
        html! {
            p { "This node, the last hour, one bar a minute: " strong { (rate) } "." }
            (svg(&buckets))
            details {
                summary { "The numbers" }
                div.scroll {
                    table {
                        thead { tr { th scope="col" { "Minute until" } th scope="col" { "Delivered" } th scope="col" { "Failed" } } }
                        tbody {
                            @for b in buckets.iter().rev() {
                                tr { td { (layout::rfc3339(b.until)) } td { (b.delivered) } td { (b.failed) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Stacked bars: delivered below, failed above, scaled to the busiest minute.
fn svg(buckets: &[Bucket]) -> Markup {
    const W: u64 = 600;
    const H: u64 = 160;
    let slot = W / KEEP as u64;
    let max = buckets
        .iter()
        .map(|b| b.delivered + b.failed)
        .max()
        .unwrap_or(0)
        .max(1);
    let scale = |n: u64| n * (H - 20) / max;
    let first = KEEP.saturating_sub(buckets.len()) as u64;
    html! {
        svg.chart viewBox=(format!("0 0 {W} {H}")) role="img" aria-labelledby="chart-title"
            xmlns="http://www.w3.org/2000/svg" preserveAspectRatio="none" {
            title id="chart-title" { "Webhook attempts per minute: delivered and failed" }
            line x1="0" y1=(H - 1) x2=(W) y2=(H - 1) class="axis" {}
            @for (i, b) in buckets.iter().enumerate() {
                @let x = (first + i as u64) * slot;
                @let ok = scale(b.delivered);
                @let bad = scale(b.failed);
                rect class="ok" x=(x) y=(H - 1 - ok) width=(slot - 1) height=(ok) {}
                rect class="bad" x=(x) y=(H - 1 - ok - bad) width=(slot - 1) height=(bad) {}
            }
            text x="4" y="14" class="label" { "max " (max) "/min" }
        }
        p.legend { span.key.ok { "■" } " delivered " span.key.bad { "■" } " failed" }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_are_counted_by_outcome() {
        let text = "# HELP reelay_webhook_attempts_total x\n\
                    reelay_webhook_attempts_total{outcome=\"delivered\"} 7\n\
                    reelay_webhook_attempts_total{outcome=\"timeout\"} 2\n\
                    reelay_webhook_attempts_total{outcome=\"http_error\"} 3\n\
                    reelay_webhook_attempt_duration_seconds_count 12\n";
        assert_eq!(counts(text), (7, 5));
        assert_eq!(counts("garbage {{ 1"), (0, 0));
    }

    #[test]
    fn buckets_are_differences() {
        let render: Render =
            Arc::new(|| "reelay_webhook_attempts_total{outcome=\"delivered\"} 10\n".to_owned());
        let h = History {
            samples: Arc::new(Mutex::new(VecDeque::new())),
            render: Some(render),
        };
        h.samples.lock().unwrap().push_back(Sample {
            at: OffsetDateTime::now_utc(),
            delivered: 4,
            failed: 0,
        });
        let b = h.buckets().unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!((b[0].delivered, b[0].failed), (6, 0));
        assert!(h.chart().into_string().contains("<svg"));
    }
}
