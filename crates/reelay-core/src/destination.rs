//! Which callback URLs reelay may call: the creation-time half of the SSRF guard.
//!
//! A URL is judged here before anything is stored, so a customer learns at once that reelay
//! will never call into a private network. Names are judged again on their resolved addresses
//! at send time; this module holds the address policy both halves share.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::{Host, Url};

/// The longest callback URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// How strict the guard is. Production calls only public HTTPS endpoints; dev mode also lets
/// plain `http` and loopback through, never private, link-local or metadata addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DestinationPolicy {
    pub allow_insecure: bool,
}

/// What an address is, for the guard's purposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    Public,
    Loopback,
    /// Never connected to; the reason names the range.
    Forbidden(&'static str),
}

/// Classifies an address; IPv4-mapped and NAT64/6to4 forms of IPv4 are judged as IPv4.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip.to_canonical() {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    use AddressClass::*;
    let [a, b, c, _] = ip.octets();
    match (a, b, c) {
        (127, _, _) => Loopback,
        (0, _, _) => Forbidden("unspecified (0.0.0.0/8)"),
        (10, _, _) => Forbidden("private (10.0.0.0/8)"),
        (100, 64..=127, _) => Forbidden("carrier-grade NAT (100.64.0.0/10)"),
        (169, 254, _) => Forbidden("link-local and cloud metadata (169.254.0.0/16)"),
        (172, 16..=31, _) => Forbidden("private (172.16.0.0/12)"),
        (192, 0, 0) => Forbidden("IETF protocol assignments (192.0.0.0/24)"),
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => Forbidden("documentation (TEST-NET)"),
        (192, 168, _) => Forbidden("private (192.168.0.0/16)"),
        (198, 18..=19, _) => Forbidden("benchmarking (198.18.0.0/15)"),
        (224..=239, _, _) => Forbidden("multicast (224.0.0.0/4)"),
        (240..=255, _, _) => Forbidden("reserved or broadcast (240.0.0.0/4)"),
        _ => Public,
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    use AddressClass::*;
    let seg = ip.segments();
    if ip.is_loopback() {
        return Loopback;
    }
    if ip.is_unspecified() {
        return Forbidden("unspecified (::)");
    }
    // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) carry an IPv4 address that decides.
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let v4 = Ipv4Addr::from(((seg[6] as u32) << 16) | seg[7] as u32);
        return match classify_v4(v4) {
            Public => Public,
            _ => Forbidden("NAT64 form of a non-public IPv4 address (64:ff9b::/96)"),
        };
    }
    match seg[0] {
        0x2002 => Forbidden("6to4 (2002::/16)"),
        0xfc00..=0xfdff => Forbidden("unique local (fc00::/7)"),
        0xfe80..=0xfebf => Forbidden("link-local (fe80::/10)"),
        0xff00..=0xffff => Forbidden("multicast (ff00::/8)"),
        0x2001 if seg[1] == 0x0db8 => Forbidden("documentation (2001:db8::/32)"),
        0x0000..=0x1fff => Forbidden("reserved (not global unicast)"),
        _ => Public,
    }
}

impl DestinationPolicy {
    /// Whether an address may be connected to under this policy.
    pub fn admits(self, ip: IpAddr) -> Result<(), String> {
        match classify(ip) {
            AddressClass::Public => Ok(()),
            AddressClass::Loopback if self.allow_insecure => Ok(()),
            AddressClass::Loopback => Err(format!(
                "{ip} is a loopback address; reelay only calls public addresses \
                 (loopback is allowed only in dev mode)"
            )),
            AddressClass::Forbidden(why) => Err(format!(
                "{ip} is a {why} address; reelay only calls public addresses"
            )),
        }
    }

    /// Checks a callback URL as written: length, absolute, scheme, no credentials, and a host
    /// that is either a name or an admitted address literal (in any spelling: the parser turns
    /// decimal, octal and hex IPv4 forms into the address they mean).
    pub fn check_url(self, raw: &str) -> Result<Url, String> {
        if raw.len() > MAX_URL_LEN {
            return Err(format!(
                "must be at most {MAX_URL_LEN} characters long (it has {})",
                raw.len()
            ));
        }
        let url = Url::parse(raw).map_err(|e| {
            format!("must be an absolute URL like https://example.com/webhook ({e})")
        })?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_insecure => {}
            "http" => return Err("must use https (plain http is allowed only in dev mode)".into()),
            other => return Err(format!("must use https, not {other}")),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(
                "must not contain credentials (user:password@); authenticate webhooks \
                        with their signature instead"
                    .into(),
            );
        }
        match url.host() {
            None => return Err("must name a host".into()),
            Some(Host::Ipv4(ip)) => self.admits(IpAddr::V4(ip))?,
            Some(Host::Ipv6(ip)) => self.admits(IpAddr::V6(ip))?,
            Some(Host::Domain(name)) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                if (name == "localhost" || name.ends_with(".localhost")) && !self.allow_insecure {
                    return Err(format!(
                        "{name} is a loopback name; reelay only calls public addresses \
                         (loopback is allowed only in dev mode)"
                    ));
                }
            }
        }
        Ok(url)
    }
}

/// The key deliveries are grouped by for concurrency limits: scheme, host and port. Two
/// callback URLs on one server share one key, so one slow server is one bottleneck, not many.
pub fn destination_key(url: &str) -> Option<String> {
    let url = Url::parse(url).ok()?;
    Some(format!(
        "{}://{}:{}",
        url.scheme(),
        url.host_str()?,
        url.port_or_known_default()?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: DestinationPolicy = DestinationPolicy {
        allow_insecure: false,
    };
    const DEV: DestinationPolicy = DestinationPolicy {
        allow_insecure: true,
    };

    #[test]
    fn public_https_urls_pass() {
        for url in [
            "https://example.com/webhook",
            "https://93.184.216.34/hook",
            "https://[2606:2800:220:1:248:1893:25c8:1946]/hook",
            "https://your-app.com:8443/webhook?x=1",
        ] {
            assert!(STRICT.check_url(url).is_ok(), "{url}");
        }
    }

    #[test]
    fn private_and_special_addresses_are_refused_in_every_spelling() {
        for url in [
            "https://127.0.0.1/",
            "https://localhost/",
            "https://api.localhost/",
            "https://10.1.2.3/",
            "https://169.254.169.254/latest/meta-data",
            "https://[::1]/",
            "https://[::ffff:127.0.0.1]/",
            "https://[::ffff:10.0.0.1]/",
            "https://2130706433/",
            "https://0177.0.0.1/",
            "https://0x7f.1/",
            "https://0.0.0.0/",
            "https://100.64.0.1/",
            "https://172.16.0.1/",
            "https://192.168.1.1/",
            "https://[fd00::1]/",
            "https://[fe80::1]/",
            "https://[64:ff9b::a00:1]/",
            "https://224.0.0.1/",
        ] {
            assert!(STRICT.check_url(url).is_err(), "{url} should be refused");
        }
    }

    #[test]
    fn dev_mode_admits_http_and_loopback_only() {
        assert!(DEV.check_url("http://127.0.0.1:5000/webhook").is_ok());
        assert!(DEV.check_url("http://localhost:5000/webhook").is_ok());
        assert!(DEV.check_url("http://[::1]:5000/webhook").is_ok());
        assert!(DEV.check_url("http://169.254.169.254/").is_err());
        assert!(DEV.check_url("http://10.0.0.1/").is_err());
        assert!(STRICT.check_url("http://example.com/").is_err());
    }

    #[test]
    fn destinations_group_by_scheme_host_and_port() {
        assert_eq!(
            destination_key("https://Example.com/a?x=1").as_deref(),
            Some("https://example.com:443")
        );
        assert_eq!(
            destination_key("https://example.com:443/b"),
            destination_key("https://example.com/c")
        );
        assert_ne!(
            destination_key("http://127.0.0.1:5000/"),
            destination_key("http://127.0.0.1:5001/")
        );
    }

    #[test]
    fn malformed_urls_say_what_is_wrong() {
        assert!(
            STRICT
                .check_url("/webhook")
                .unwrap_err()
                .contains("absolute")
        );
        assert!(
            STRICT
                .check_url("ftp://example.com/")
                .unwrap_err()
                .contains("https")
        );
        assert!(
            STRICT
                .check_url("https://user:pw@example.com/")
                .unwrap_err()
                .contains("credentials")
        );
        let long = format!("https://example.com/{}", "a".repeat(2048));
        assert!(STRICT.check_url(&long).unwrap_err().contains("2048"));
    }
}
