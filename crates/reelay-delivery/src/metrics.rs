//! The webhook engine's Prometheus metrics, named in one place.

use std::time::Duration;

use reelay_core::retry::AttemptOutcome;
use reelay_store::DeliveryCounts;
use time::OffsetDateTime;

pub const ATTEMPTS: &str = "reelay_webhook_attempts_total";
pub const ATTEMPT_DURATION: &str = "reelay_webhook_attempt_duration_seconds";
pub const LATENCY: &str = "reelay_webhook_delivery_latency_seconds";
pub const FAILED: &str = "reelay_webhook_deliveries_failed_total";
pub const WAITING: &str = "reelay_webhook_deliveries";

pub fn describe() {
    metrics::describe_counter!(ATTEMPTS, "Webhook attempts by outcome");
    metrics::describe_histogram!(ATTEMPT_DURATION, "Duration of one webhook attempt");
    metrics::describe_histogram!(
        LATENCY,
        "From a generation becoming terminal to its webhook's 2xx"
    );
    metrics::describe_counter!(FAILED, "Deliveries marked failed after their last attempt");
    metrics::describe_gauge!(
        WAITING,
        "Deliveries by state: due (now or in flight), scheduled (a later retry), failed"
    );
}

pub fn attempt(outcome: AttemptOutcome, duration: Duration) {
    metrics::counter!(ATTEMPTS, "outcome" => outcome.as_str()).increment(1);
    metrics::histogram!(ATTEMPT_DURATION).record(duration.as_secs_f64());
}

pub fn delivered(terminal_at: OffsetDateTime) {
    let latency = (OffsetDateTime::now_utc() - terminal_at).as_seconds_f64();
    metrics::histogram!(LATENCY).record(latency.max(0.0));
}

pub fn failed() {
    metrics::counter!(FAILED).increment(1);
}

/// Publishes the storage's counts (called when metrics are scraped).
pub fn waiting(counts: DeliveryCounts) {
    metrics::gauge!(WAITING, "state" => "due").set(counts.due as f64);
    metrics::gauge!(WAITING, "state" => "scheduled").set(counts.scheduled as f64);
    metrics::gauge!(WAITING, "state" => "failed").set(counts.failed as f64);
}
