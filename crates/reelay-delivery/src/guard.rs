//! The send-time half of the SSRF guard: reelay resolves every callback host itself and hands
//! the HTTP client only the addresses the policy admits, so what is judged is exactly what is
//! connected to (a DNS answer that changes between check and connect cannot slip through).

use std::net::SocketAddr;

use reelay_core::destination::DestinationPolicy;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// The callback's host resolved only to addresses reelay refuses to call.
///
/// Its message, which the customer sees, names only the host: the addresses a name resolves
/// to inside reelay's network, and which of them were refused, are the operator's to know
/// (they map the network for whoever controls the name). Those are in `refused`, for the log.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves only to non-public addresses; reelay only calls public addresses")]
pub struct Blocked {
    pub host: String,
    /// Each refused address with the policy's reason, for the operator log only.
    pub refused: Vec<String>,
}

/// The callback's host could not be resolved.
#[derive(Debug, thiserror::Error)]
#[error("could not resolve {name}: {cause}")]
pub struct Unresolvable {
    pub name: String,
    pub cause: String,
}

/// A resolver that drops every address the destination policy refuses.
pub struct GuardedResolver {
    pub policy: DestinationPolicy,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| Unresolvable {
                    name: host.clone(),
                    cause: e.to_string(),
                })?
                .collect();
            let mut refused = Vec::new();
            let admitted: Vec<SocketAddr> = found
                .into_iter()
                .filter(|addr| match policy.admits(addr.ip()) {
                    Ok(()) => true,
                    Err(why) => {
                        refused.push(why);
                        false
                    }
                })
                .collect();
            if admitted.is_empty() {
                if refused.is_empty() {
                    refused.push("the name has no addresses".into());
                }
                return Err(Box::new(Blocked { host, refused }) as _);
            }
            Ok(Box::new(admitted.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    async fn resolve(policy: DestinationPolicy, name: &str) -> Result<Vec<SocketAddr>, String> {
        GuardedResolver { policy }
            .resolve(Name::from_str(name).unwrap())
            .await
            .map(|addrs| addrs.collect())
            .map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn names_resolving_to_loopback_are_refused_unless_insecure() {
        let strict = DestinationPolicy::default();
        let err = resolve(strict, "localhost").await.unwrap_err();
        assert!(
            err.contains("localhost resolves only to non-public"),
            "{err}"
        );
        let dev = DestinationPolicy {
            allow_insecure: true,
        };
        let addrs = resolve(dev, "localhost").await.unwrap();
        assert!(!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()));
    }

    #[tokio::test]
    async fn the_customer_message_names_no_address_and_the_detail_names_each() {
        let err = GuardedResolver {
            policy: DestinationPolicy::default(),
        }
        .resolve(Name::from_str("localhost").unwrap())
        .await
        .err()
        .expect("localhost is refused in strict mode");
        let blocked = err.downcast_ref::<Blocked>().expect("a Blocked error");
        let message = blocked.to_string();
        assert!(
            !message.contains("127.0.0.1")
                && !message.contains("::1")
                && !message.contains("loopback"),
            "{message}"
        );
        assert!(!blocked.refused.is_empty());
        assert!(
            blocked.refused.iter().all(|why| why.contains("loopback")),
            "{:?}",
            blocked.refused
        );
    }

    #[tokio::test]
    async fn unresolvable_names_are_dns_errors() {
        let err = resolve(DestinationPolicy::default(), "no-such-host.invalid")
            .await
            .unwrap_err();
        assert!(err.contains("could not resolve"), "{err}");
    }
}
