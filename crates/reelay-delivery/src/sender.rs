//! One webhook attempt over HTTP: signed headers out, an outcome class back.
//!
//! The client never follows redirects, never uses a proxy from the environment, resolves names
//! through the guard, and reads at most [`READ_CAP`] of a response.
//!
//! Error texts never carry the callback URL (reqwest puts it in its errors; its query string
//! often holds a token) nor an address a name resolved to: they are shown to the customer and
//! logged as they are.

use std::error::Error;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reelay_core::destination::DestinationPolicy;
use reelay_core::retry::AttemptOutcome;
use reqwest::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER, USER_AGENT};

use crate::guard::{Blocked, GuardedResolver, Unresolvable};

/// The most of a response body read; the rest is dropped with the connection.
const READ_CAP: usize = 64 * 1024;
/// The part of a response body kept in the attempt log.
pub const KEPT_BODY: usize = 1024;

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptResult {
    pub outcome: AttemptOutcome,
    pub status: Option<u16>,
    pub retry_after: Option<Duration>,
    /// The first KiB of the response body.
    pub body: Option<String>,
    pub error: Option<String>,
    pub duration: Duration,
}

/// A signed request to send.
pub struct Delivery<'a> {
    pub url: &'a str,
    pub webhook_id: &'a str,
    pub timestamp: i64,
    pub signature: &'a str,
    pub body: &'a str,
}

/// HTTP clients for webhooks: one per egress address (or one using the system's choice).
pub struct Sender {
    clients: Vec<reqwest::Client>,
    next: AtomicUsize,
    policy: DestinationPolicy,
}

#[derive(Debug, Clone)]
pub struct SenderConfig {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub policy: DestinationPolicy,
    /// Egress addresses to bind, taken in turn; empty lets the system choose.
    pub source_ips: Vec<IpAddr>,
}

impl Sender {
    pub fn new(config: &SenderConfig) -> Result<Self, reqwest::Error> {
        let sources: Vec<Option<IpAddr>> = if config.source_ips.is_empty() {
            vec![None]
        } else {
            config.source_ips.iter().copied().map(Some).collect()
        };
        let clients = sources
            .into_iter()
            .map(|source| {
                reqwest::Client::builder()
                    .user_agent(concat!("reelay/", env!("CARGO_PKG_VERSION")))
                    .redirect(reqwest::redirect::Policy::none())
                    .no_proxy()
                    .connect_timeout(config.connect_timeout)
                    .timeout(config.request_timeout)
                    .pool_idle_timeout(Duration::from_secs(30))
                    .tcp_nodelay(true)
                    .local_address(source)
                    .dns_resolver(Arc::new(GuardedResolver {
                        policy: config.policy,
                    }))
                    .build()
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            clients,
            next: AtomicUsize::new(0),
            policy: config.policy,
        })
    }

    pub async fn send(&self, d: Delivery<'_>) -> AttemptResult {
        let started = Instant::now();
        let done = |outcome, status, retry_after, body, error: Option<String>| AttemptResult {
            outcome,
            status,
            retry_after,
            body,
            error,
            duration: started.elapsed(),
        };
        // The URL was judged at creation; judge it again now (policies and literal addresses
        // skip the resolver, so they are checked here). The message may name a literal
        // address: the customer wrote it in the URL themselves.
        if let Err(why) = self.policy.check_url(d.url) {
            return done(
                AttemptOutcome::BlockedDestination,
                None,
                None,
                None,
                Some(why),
            );
        }
        let client = &self.clients[self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len()];
        let request = client
            .post(d.url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(
                USER_AGENT,
                HeaderValue::from_static(concat!("reelay/", env!("CARGO_PKG_VERSION"))),
            )
            .header("webhook-id", d.webhook_id)
            .header("webhook-timestamp", d.timestamp.to_string())
            .header("webhook-signature", d.signature)
            .body(d.body.to_owned());
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                let (outcome, message) = classify(e.without_url(), d.webhook_id);
                return done(outcome, None, None, None, Some(message));
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let mut kept = Vec::new();
        let mut read = 0;
        let mut body_error = None;
        while read < READ_CAP {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    read += chunk.len();
                    let room = KEPT_BODY.saturating_sub(kept.len());
                    kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Ok(None) => break,
                Err(e) => {
                    body_error = Some(e);
                    break;
                }
            }
        }
        let body = Some(String::from_utf8_lossy(&kept).into_owned());
        let code = Some(status.as_u16());
        if let Some(e) = body_error.filter(|e| e.is_timeout()) {
            // The receiver sent headers but not the whole body in time.
            return done(
                AttemptOutcome::Timeout,
                code,
                None,
                body,
                Some(error_chain(&e.without_url())),
            );
        }
        let outcome = if status.is_success() {
            AttemptOutcome::Delivered
        } else if status.is_redirection() {
            AttemptOutcome::Redirect
        } else {
            AttemptOutcome::HttpError
        };
        let error = match outcome {
            AttemptOutcome::Redirect => Some(format!(
                "HTTP {status}: redirects are not followed; point callback_url at the final address"
            )),
            AttemptOutcome::HttpError => Some(format!("HTTP {status}")),
            _ => None,
        };
        done(outcome, code, retry_after, body, error)
    }
}

/// Sorts a failed request into the outcome classes of the deliveries API. `e` must have had
/// its URL removed ([`reqwest::Error::without_url`]): the text returned is customer-visible.
fn classify(e: reqwest::Error, webhook_id: &str) -> (AttemptOutcome, String) {
    for cause in causes(&e) {
        if let Some(blocked) = cause.downcast_ref::<Blocked>() {
            // The operator learns which addresses were refused and why; the customer only
            // that the name is not public.
            tracing::warn!(webhook_id, host = %blocked.host, refused = ?blocked.refused,
                "callback host resolves only to refused addresses");
            return (AttemptOutcome::BlockedDestination, blocked.to_string());
        }
        if let Some(dns) = cause.downcast_ref::<Unresolvable>() {
            return (AttemptOutcome::DnsError, dns.to_string());
        }
        if let Some(tls) = cause.downcast_ref::<rustls::Error>() {
            return (AttemptOutcome::TlsError, format!("TLS: {tls}"));
        }
    }
    let chain = error_chain(&e);
    if e.is_timeout() {
        (AttemptOutcome::Timeout, chain)
    } else {
        (AttemptOutcome::ConnectError, chain)
    }
}

/// The longest error chain followed; a guard against a cycle in a hand-written `source()`.
const MAX_CHAIN: usize = 32;

/// `e` and every error beneath it. An [`std::io::Error`] wrapping another error (as
/// tokio-rustls wraps a [`rustls::Error`]) answers `source()` with the wrapped error's
/// source, skipping the wrapped error itself, so the walk steps into it with `get_ref()`.
fn causes<'a>(e: &'a (dyn Error + 'static)) -> Vec<&'a (dyn Error + 'static)> {
    let mut found = Vec::new();
    let mut next = Some(e);
    while let Some(cause) = next.filter(|_| found.len() < MAX_CHAIN) {
        found.push(cause);
        next = match cause
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn Error + 'static)),
            None => cause.source(),
        };
    }
    found
}

/// The error's messages joined with `: `, outermost first (each once).
fn error_chain(e: &(dyn Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in causes(e) {
        let text = cause.to_string();
        // An io::Error wrapping an error prints that error's message too.
        if parts.last() != Some(&text) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

/// `Retry-After` as seconds or an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    if let Ok(secs) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at =
        time::OffsetDateTime::parse(value.trim(), &time::format_description::well_known::Rfc2822)
            .ok()?;
    Some(
        (at - time::OffsetDateTime::now_utc())
            .try_into()
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that wraps another as its source, as hyper-util's connect errors do.
    #[derive(Debug)]
    struct Outer(Box<dyn Error + Send + Sync>);

    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("client error (Connect)")
        }
    }

    impl Error for Outer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn the_walk_finds_a_rustls_error_inside_an_io_error() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        // What source() alone sees: the io::Error, then nothing (it skips what it wraps).
        assert!(io.source().is_none());
        let outer = Outer(Box::new(io));
        let found = causes(&outer);
        assert!(
            found.iter().any(|c| matches!(
                c.downcast_ref::<rustls::Error>(),
                Some(rustls::Error::InvalidCertificate(_))
            )),
            "{found:?}"
        );
        let text = error_chain(&outer);
        assert_eq!(
            text.matches("invalid peer certificate").count(),
            1,
            "{text}"
        );
    }

    #[tokio::test]
    async fn errors_do_not_carry_the_url() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        }; // closed: connections are refused
        let sender = Sender::new(&SenderConfig {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            policy: DestinationPolicy {
                allow_insecure: true,
            },
            source_ips: Vec::new(),
        })
        .unwrap();
        let url = format!("http://127.0.0.1:{port}/hook?token=SECRET123");
        let result = sender
            .send(Delivery {
                url: &url,
                webhook_id: "msg_1",
                timestamp: 0,
                signature: "v1,x",
                body: "{}",
            })
            .await;
        assert_eq!(result.outcome, AttemptOutcome::ConnectError, "{result:?}");
        let error = result.error.unwrap_or_default();
        assert!(!error.is_empty());
        assert!(
            !error.contains("SECRET123") && !error.contains("/hook"),
            "{error}"
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
