//! Which callback URLs reelay may call: the creation-time half of the SSRF guard.
//!
//! A URL is judged here before anything is stored, so a customer learns at once that reelay
//! will never call into a private network. Names are judged again on their resolved addresses
//! at send time; this module holds the address policy both halves share.
//!
//! The address policy is an allow-list: an address is public only when it lies in public
//! IPv4 space or in IPv6 global unicast (2000::/3) and in no entry of the IANA IPv4 and IPv6
//! Special-Purpose Address Registries whose "Globally Reachable" column is not `True`
//! (entries marked `N/A`, such as Teredo or 6to4, are refused too). The most specific entry
//! containing an address decides, so a globally reachable sub-entry (2001:3::/32 AMT inside
//! the non-global 2001::/23) is admitted. Anything outside the allowed space is refused even
//! when no entry names it: there is no default "public" arm for unknown space.

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

/// One registry entry (or other range) and what an address inside it is.
type Entry<T> = (T, u8, AddressClass);

use AddressClass::{Forbidden, Loopback, Public};

/// IPv4 ranges that are not public: every entry of the IANA IPv4 Special-Purpose Address
/// Registry, with its "Globally Reachable" verdict, plus multicast (from the IPv4 address
/// space registry). Entries marked globally reachable by the registry that lie outside any
/// refused range (192.31.196.0/24 AS112-v4, 192.52.193.0/24 AMT, 192.175.48.0/24 AS112
/// direct delegation) need no line: unlisted unicast IPv4 space is public.
#[rustfmt::skip]
const V4: &[Entry<u32>] = &[
    // RFC 791/1122: "this network"; 0.0.0.0 means this host, never a remote receiver.
    (0x0000_0000, 8, Forbidden("\"this network\" (0.0.0.0/8)")),
    // RFC 1918 private use: internal networks.
    (0x0a00_0000, 8, Forbidden("private-use (10.0.0.0/8)")),
    // RFC 6598 shared address space: carrier-grade NAT, inside a provider.
    (0x6440_0000, 10, Forbidden("shared address space, carrier-grade NAT (100.64.0.0/10)")),
    // RFC 1122 loopback: this machine (admitted only in dev mode).
    (0x7f00_0000, 8, Loopback),
    // RFC 3927 link-local, where cloud metadata services (169.254.169.254) live.
    (0xa9fe_0000, 16, Forbidden("link-local, cloud metadata (169.254.0.0/16)")),
    // RFC 1918 private use.
    (0xac10_0000, 12, Forbidden("private-use (172.16.0.0/12)")),
    // RFC 6890 IETF protocol assignments: not global, except the two anycast entries below.
    (0xc000_0000, 24, Forbidden("IETF protocol assignments (192.0.0.0/24)")),
    // RFC 7335 IPv4 service continuity prefix (DS-Lite), inside a provider.
    (0xc000_0000, 29, Forbidden("IPv4 service continuity, DS-Lite (192.0.0.0/29)")),
    // RFC 7600 IPv4 dummy address.
    (0xc000_0008, 32, Forbidden("IPv4 dummy address (192.0.0.8/32)")),
    // RFC 7723 Port Control Protocol anycast: globally reachable per the registry.
    (0xc000_0009, 32, Public),
    // RFC 8155 TURN anycast: globally reachable per the registry.
    (0xc000_000a, 32, Public),
    // RFC 8880 NAT64/DNS64 discovery: well-known names' addresses, not global.
    (0xc000_00aa, 32, Forbidden("NAT64/DNS64 discovery (192.0.0.170/32)")),
    (0xc000_00ab, 32, Forbidden("NAT64/DNS64 discovery (192.0.0.171/32)")),
    // RFC 5737 TEST-NET-1: documentation only.
    (0xc000_0200, 24, Forbidden("documentation, TEST-NET-1 (192.0.2.0/24)")),
    // RFC 7526 deprecated 6to4 relay anycast: the registry says N/A, so not known global.
    (0xc058_6300, 24, Forbidden("deprecated 6to4 relay anycast (192.88.99.0/24)")),
    // RFC 1918 private use.
    (0xc0a8_0000, 16, Forbidden("private-use (192.168.0.0/16)")),
    // RFC 2544 benchmarking: lab networks.
    (0xc612_0000, 15, Forbidden("benchmarking (198.18.0.0/15)")),
    // RFC 5737 TEST-NET-2: documentation only.
    (0xc633_6400, 24, Forbidden("documentation, TEST-NET-2 (198.51.100.0/24)")),
    // RFC 5737 TEST-NET-3: documentation only.
    (0xcb00_7100, 24, Forbidden("documentation, TEST-NET-3 (203.0.113.0/24)")),
    // RFC 5771 multicast (IPv4 address space registry): not a single receiver.
    (0xe000_0000, 4, Forbidden("multicast (224.0.0.0/4)")),
    // RFC 1112 reserved for future use.
    (0xf000_0000, 4, Forbidden("reserved (240.0.0.0/4)")),
    // RFC 919 limited broadcast.
    (0xffff_ffff, 32, Forbidden("limited broadcast (255.255.255.255/32)")),
];

/// IPv6 ranges with a verdict: every entry of the IANA IPv6 Special-Purpose Address Registry
/// (with its "Globally Reachable" verdict), plus the non-global parts of the IPv6 address
/// space registry, named only for a clearer reason (they lie outside 2000::/3 and are refused
/// anyway). 64:ff9b::/96 (NAT64) is judged by its embedded IPv4 address before this table and
/// ::ffff:0:0/96 (IPv4-mapped) is turned into IPv4 first. 2620:4f:8000::/48 (AS112 direct
/// delegation) is globally reachable and inside 2000::/3, so it needs no line.
#[rustfmt::skip]
const V6: &[Entry<u128>] = &[
    // RFC 4291 unspecified address: no destination.
    (0, 128, Forbidden("unspecified (::/128)")),
    // RFC 4291 loopback: this machine (admitted only in dev mode).
    (1, 128, Loopback),
    // RFC 8215 local-use IPv4/IPv6 translation: inside one network.
    (0x0064_ff9b_0001_0000 << 64, 48, Forbidden("local-use IPv4/IPv6 translation (64:ff9b:1::/48)")),
    // RFC 6666 discard-only: traffic to it is dropped on purpose.
    (0x0100 << 112, 64, Forbidden("discard-only (100::/64)")),
    // RFC 9780 dummy IPv6 prefix.
    (0x0100_0000_0000_0001 << 64, 64, Forbidden("dummy prefix (100:0:0:1::/64)")),
    // RFC 2928 IETF protocol assignments: not global, except the sub-entries marked Public.
    (0x2001 << 112, 23, Forbidden("IETF protocol assignments (2001::/23)")),
    // RFC 4380 Teredo: tunnels to hosts behind NAT; the registry says N/A.
    (0x2001 << 112, 32, Forbidden("Teredo (2001::/32)")),
    // RFC 7723 PCP anycast, RFC 8155 TURN anycast, RFC 9665 DNS-SD SRP anycast: global.
    ((0x2001_0001 << 96) | 1, 128, Public),
    ((0x2001_0001 << 96) | 2, 128, Public),
    ((0x2001_0001 << 96) | 3, 128, Public),
    // RFC 5180 benchmarking: lab networks.
    (0x2001_0002 << 96, 48, Forbidden("benchmarking (2001:2::/48)")),
    // RFC 7450 AMT: globally reachable.
    (0x2001_0003 << 96, 32, Public),
    // RFC 7535 AS112-v6: globally reachable.
    (0x2001_0004_0112 << 80, 48, Public),
    // RFC 4843 deprecated ORCHID: the registry says N/A.
    (0x2001_0010 << 96, 28, Forbidden("deprecated ORCHID (2001:10::/28)")),
    // RFC 7343 ORCHIDv2 and RFC 9374 drone remote ID tags: globally reachable.
    (0x2001_0020 << 96, 28, Public),
    (0x2001_0030 << 96, 28, Public),
    // RFC 3849 documentation.
    (0x2001_0db8 << 96, 32, Forbidden("documentation (2001:db8::/32)")),
    // RFC 3056 6to4: relays to arbitrary IPv4 space; the registry says N/A.
    (0x2002 << 112, 16, Forbidden("6to4 (2002::/16)")),
    // RFC 9637 documentation.
    (0x3fff << 112, 20, Forbidden("documentation (3fff::/20)")),
    // RFC 9602 SRv6 segment identifiers: routing-domain internal.
    (0x5f00 << 112, 16, Forbidden("SRv6 segment identifiers (5f00::/16)")),
    // RFC 4193 unique local: private networks.
    (0xfc00 << 112, 7, Forbidden("unique local (fc00::/7)")),
    // RFC 4291 link-local.
    (0xfe80 << 112, 10, Forbidden("link-local (fe80::/10)")),
    // RFC 3879 deprecated site-local (IPv6 address space registry).
    (0xfec0 << 112, 10, Forbidden("deprecated site-local (fec0::/10)")),
    // RFC 4291 multicast.
    (0xff00 << 112, 8, Forbidden("multicast (ff00::/8)")),
];

/// The verdict of the most specific entry containing `addr`, if any.
fn lookup<T>(table: &[Entry<T>], addr: T, bits: u32) -> Option<AddressClass>
where
    T: Copy + PartialEq + std::ops::Shr<u32, Output = T>,
{
    table
        .iter()
        .filter(|(net, len, _)| {
            let shift = bits - u32::from(*len);
            // A /0 contains everything (and shifting by the full width would overflow).
            *len == 0 || addr >> shift == *net >> shift
        })
        .max_by_key(|(_, len, _)| *len)
        .map(|(_, _, class)| *class)
}

/// Classifies an address; IPv4-mapped and NAT64 forms of IPv4 are judged as IPv4.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip.to_canonical() {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    lookup(V4, u32::from(ip), 32).unwrap_or(Public)
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    let bits = u128::from(ip);
    // NAT64 (64:ff9b::/96, globally reachable per the registry) carries an IPv4 address that
    // decides: a translator would connect to it.
    if bits >> 32 == 0x0064_ff9b_0000_0000_0000_0000 {
        return match classify_v4(Ipv4Addr::from(bits as u32)) {
            Public => Public,
            _ => Forbidden("NAT64 form of a non-public IPv4 address (64:ff9b::/96)"),
        };
    }
    match lookup(V6, bits, 128) {
        Some(class) => class,
        // Global unicast: the only IPv6 space IANA hands out for the public internet.
        None if bits >> 125 == 0b001 => Public,
        None => Forbidden("outside global unicast (not in 2000::/3)"),
    }
}

/// Ports of well-known services that speak something other than HTTP. A webhook to one of
/// them is at best a mistake and at worst an attempt to smuggle a request into that protocol
/// (SMTP, Redis and memcached accept line-based commands from an HTTP body), so reelay
/// refuses them on every host, in dev mode too.
pub const REFUSED_PORTS: &[(u16, &str)] = &[
    (21, "FTP"),
    (22, "SSH"),
    (23, "telnet"),
    (25, "SMTP"),
    (53, "DNS"),
    (110, "POP3"),
    (143, "IMAP"),
    (465, "SMTP"),
    (587, "SMTP"),
    (2375, "Docker API"),
    (2376, "Docker API"),
    (2379, "etcd"),
    (3306, "MySQL"),
    (5432, "PostgreSQL"),
    (6379, "Redis"),
    (9200, "Elasticsearch"),
    (11211, "memcached"),
    (27017, "MongoDB"),
];

/// A URL as it may be logged: scheme, host, port and path, never user info, query string or
/// fragment, which often carry tokens. A value that is not a URL is not shown at all.
pub fn redact(raw: &str) -> String {
    let Ok(url) = Url::parse(raw) else {
        return "<not a URL>".into();
    };
    let mut out = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(port) = url.port_or_known_default() {
        out.push_str(&format!(":{port}"));
    }
    out.push_str(url.path());
    if url.query().is_some() {
        out.push_str("?<redacted>");
    }
    if url.fragment().is_some() {
        out.push_str("#<redacted>");
    }
    out
}

impl DestinationPolicy {
    /// Whether an address may be connected to under this policy. The message names the
    /// address: use it only where the customer wrote that address themselves.
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

    /// Checks a callback URL as written: length, absolute, scheme, no credentials, a port
    /// that is not a well-known non-HTTP service, and a host that is either a name or an
    /// admitted address literal (in any spelling: the parser turns decimal, octal and hex
    /// IPv4 forms into the address they mean).
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
        if let Some(port) = url.port_or_known_default()
            && let Some((_, service)) = REFUSED_PORTS.iter().find(|(p, _)| *p == port)
        {
            return Err(format!(
                "must not use port {port} ({service}); reelay does not call ports of \
                 well-known non-HTTP services"
            ));
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
    use proptest::prelude::*;

    const STRICT: DestinationPolicy = DestinationPolicy {
        allow_insecure: false,
    };
    const DEV: DestinationPolicy = DestinationPolicy {
        allow_insecure: true,
    };

    /// P: public, L: loopback, R: refused.
    fn verdict(ip: &str) -> char {
        match classify(ip.parse().unwrap_or_else(|e| panic!("{ip}: {e}"))) {
            Public => 'P',
            Loopback => 'L',
            Forbidden(_) => 'R',
        }
    }

    fn check_edges(edges: &[(&str, char)]) {
        let wrong: Vec<String> = edges
            .iter()
            .filter(|(ip, want)| verdict(ip) != *want)
            .map(|(ip, want)| format!("{ip}: want {want}, got {}", verdict(ip)))
            .collect();
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    #[rustfmt::skip]
    fn ipv4_range_edges() {
        check_edges(&[
            ("0.0.0.0", 'R'), ("0.255.255.255", 'R'), ("1.0.0.0", 'P'),
            ("9.255.255.255", 'P'), ("10.0.0.0", 'R'), ("10.255.255.255", 'R'), ("11.0.0.0", 'P'),
            ("100.63.255.255", 'P'), ("100.64.0.0", 'R'), ("100.127.255.255", 'R'),
            ("100.128.0.0", 'P'),
            ("126.255.255.255", 'P'), ("127.0.0.0", 'L'), ("127.255.255.255", 'L'),
            ("128.0.0.0", 'P'),
            ("169.253.255.255", 'P'), ("169.254.0.0", 'R'), ("169.254.169.254", 'R'),
            ("169.254.255.255", 'R'), ("169.255.0.0", 'P'),
            ("172.15.255.255", 'P'), ("172.16.0.0", 'R'), ("172.31.255.255", 'R'),
            ("172.32.0.0", 'P'),
            ("191.255.255.255", 'P'), ("192.0.0.0", 'R'), ("192.0.0.7", 'R'), ("192.0.0.8", 'R'),
            ("192.0.0.9", 'P'), ("192.0.0.10", 'P'), ("192.0.0.11", 'R'), ("192.0.0.170", 'R'),
            ("192.0.0.171", 'R'), ("192.0.0.255", 'R'), ("192.0.1.0", 'P'),
            ("192.0.1.255", 'P'), ("192.0.2.0", 'R'), ("192.0.2.255", 'R'), ("192.0.3.0", 'P'),
            ("192.31.196.1", 'P'), ("192.52.193.1", 'P'), ("192.175.48.1", 'P'),
            ("192.88.98.255", 'P'), ("192.88.99.0", 'R'), ("192.88.99.1", 'R'),
            ("192.88.99.255", 'R'), ("192.88.100.0", 'P'),
            ("192.167.255.255", 'P'), ("192.168.0.0", 'R'), ("192.168.255.255", 'R'),
            ("192.169.0.0", 'P'),
            ("198.17.255.255", 'P'), ("198.18.0.0", 'R'), ("198.19.255.255", 'R'),
            ("198.20.0.0", 'P'),
            ("198.51.99.255", 'P'), ("198.51.100.0", 'R'), ("198.51.100.255", 'R'),
            ("198.51.101.0", 'P'),
            ("203.0.112.255", 'P'), ("203.0.113.0", 'R'), ("203.0.113.255", 'R'),
            ("203.0.114.0", 'P'),
            ("223.255.255.255", 'P'), ("224.0.0.0", 'R'), ("239.255.255.255", 'R'),
            ("240.0.0.0", 'R'), ("255.255.255.254", 'R'), ("255.255.255.255", 'R'),
            ("8.8.8.8", 'P'), ("93.184.216.34", 'P'),
        ]);
    }

    #[test]
    #[rustfmt::skip]
    fn ipv6_range_edges() {
        let f = "ffff:ffff:ffff:ffff";
        check_edges(&[
            ("::", 'R'), ("::1", 'L'), ("::2", 'R'),
            // IPv4-mapped is IPv4; IPv4-compatible (deprecated) is outside 2000::/3.
            ("::ffff:8.8.8.8", 'P'), ("::ffff:127.0.0.1", 'L'), ("::ffff:192.0.0.9", 'P'),
            ("::ffff:10.0.0.1", 'R'), ("::8.8.8.8", 'R'),
            // NAT64 is judged by the IPv4 address inside; a loopback inside is refused.
            ("64:ff9b::808:808", 'P'), ("64:ff9b::a00:1", 'R'), ("64:ff9b::7f00:1", 'R'),
            ("64:ff9b::c000:9", 'P'), ("64:ff9b::1:0:0", 'R'),
            ("64:ff9b:1::", 'R'), (&format!("64:ff9b:1:ffff:{f}"), 'R'),
            ("100::", 'R'), ("100::ffff:ffff:ffff:ffff", 'R'), ("100:0:0:1::", 'R'),
            (&format!("1fff:ffff:ffff:ffff:{f}"), 'R'), ("2000::", 'P'),
            ("2001::", 'R'), ("2001::1", 'R'), (&format!("2001:0:ffff:ffff:{f}"), 'R'),
            ("2001:1::", 'R'), ("2001:1::1", 'P'), ("2001:1::2", 'P'), ("2001:1::3", 'P'),
            ("2001:1::4", 'R'),
            ("2001:2::", 'R'), ("2001:2::1", 'R'), (&format!("2001:2:0:ffff:{f}"), 'R'),
            ("2001:2:1::", 'R'),
            ("2001:3::", 'P'), (&format!("2001:3:ffff:ffff:{f}"), 'P'),
            (&format!("2001:4:111:ffff:{f}"), 'R'), ("2001:4:112::", 'P'),
            (&format!("2001:4:112:ffff:{f}"), 'P'), ("2001:4:113::", 'R'),
            ("2001:10::", 'R'), ("2001:10::1", 'R'), (&format!("2001:1f:ffff:ffff:{f}"), 'R'),
            ("2001:20::", 'P'), (&format!("2001:2f:ffff:ffff:{f}"), 'P'),
            ("2001:30::", 'P'), (&format!("2001:3f:ffff:ffff:{f}"), 'P'), ("2001:40::", 'R'),
            (&format!("2001:1ff:ffff:ffff:{f}"), 'R'), ("2001:200::", 'P'),
            (&format!("2001:db7:ffff:ffff:{f}"), 'P'), ("2001:db8::", 'R'),
            (&format!("2001:db8:ffff:ffff:{f}"), 'R'), ("2001:db9::", 'P'),
            (&format!("2001:ffff:ffff:ffff:{f}"), 'P'), ("2002::", 'R'),
            (&format!("2002:ffff:ffff:ffff:{f}"), 'R'), ("2003::", 'P'),
            ("2606:2800:220:1:248:1893:25c8:1946", 'P'), ("2620:4f:8000::1", 'P'),
            (&format!("3ffe:ffff:ffff:ffff:{f}"), 'P'), ("3fff::", 'R'), ("3fff::1", 'R'),
            (&format!("3fff:fff:ffff:ffff:{f}"), 'R'), ("3fff:1000::", 'P'),
            (&format!("3fff:ffff:ffff:ffff:{f}"), 'P'), ("4000::", 'R'),
            ("5f00::", 'R'), ("5f00::1", 'R'), ("8000::", 'R'),
            (&format!("fbff:ffff:ffff:ffff:{f}"), 'R'), ("fc00::", 'R'),
            (&format!("fdff:ffff:ffff:ffff:{f}"), 'R'), ("fe80::", 'R'),
            (&format!("febf:ffff:ffff:ffff:{f}"), 'R'), ("fec0::", 'R'), ("fec0::1", 'R'),
            (&format!("feff:ffff:ffff:ffff:{f}"), 'R'), ("ff00::", 'R'),
            (&format!("ffff:ffff:ffff:ffff:{f}"), 'R'),
        ]);
    }

    #[test]
    fn every_table_entry_names_a_reason_or_is_public() {
        for (_, len, class) in V4 {
            assert!(*len <= 32);
            assert!(!matches!(class, Forbidden(why) if why.is_empty()));
        }
        for (_, len, class) in V6 {
            assert!(*len <= 128);
            assert!(!matches!(class, Forbidden(why) if why.is_empty()));
        }
    }

    #[test]
    fn public_https_urls_pass() {
        for url in [
            "https://example.com/webhook",
            "https://93.184.216.34/hook",
            "https://[2606:2800:220:1:248:1893:25c8:1946]/hook",
            "https://your-app.com:8443/webhook?x=1",
            "https://192.0.0.9/",
            "https://[2001:3::1]/",
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
            // Wrongly accepted before the allow-list.
            "https://[fec0::1]/",
            "https://[3fff::1]/",
            "https://[2001::1]/",
            "https://[2001:2::1]/",
            "https://[2001:10::1]/",
            "https://[5f00::1]/",
            "https://192.88.99.1/",
        ] {
            assert!(STRICT.check_url(url).is_err(), "{url} should be refused");
        }
    }

    #[test]
    fn ports_of_non_http_services_are_refused_in_every_mode() {
        for port in [22, 25, 3306, 5432, 6379, 11211] {
            for (policy, scheme) in [(STRICT, "https"), (DEV, "http")] {
                let url = format!("{scheme}://example.com:{port}/hook");
                let err = policy.check_url(&url).unwrap_err();
                assert!(err.contains(&format!("port {port}")), "{url}: {err}");
            }
        }
        assert!(STRICT.check_url("https://example.com:8443/").is_ok());
        assert!(DEV.check_url("http://127.0.0.1:5000/").is_ok());
    }

    #[test]
    fn dev_mode_admits_http_and_loopback_only() {
        assert!(DEV.check_url("http://127.0.0.1:5000/webhook").is_ok());
        assert!(DEV.check_url("http://localhost:5000/webhook").is_ok());
        assert!(DEV.check_url("http://[::1]:5000/webhook").is_ok());
        assert!(DEV.check_url("http://169.254.169.254/").is_err());
        assert!(DEV.check_url("http://10.0.0.1/").is_err());
        assert!(DEV.check_url("http://[fec0::1]/").is_err());
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
    fn redact_keeps_scheme_host_port_and_path_only() {
        assert_eq!(
            redact("https://user:pw@Example.com/hooks/a?token=SECRET#frag"),
            "https://example.com:443/hooks/a?<redacted>#<redacted>"
        );
        assert_eq!(
            redact("http://127.0.0.1:5000/hook"),
            "http://127.0.0.1:5000/hook"
        );
        assert_eq!(
            redact("https://[::1]:8443/?"),
            "https://[::1]:8443/?<redacted>"
        );
        assert_eq!(redact("not a url ?token=SECRET"), "<not a URL>");
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

    /// What an admitted URL must be, whatever the input: the policy's scheme, no
    /// credentials, no refused port, and a host that is a non-loopback name or a literal the
    /// policy admits.
    fn assert_admitted_is_safe(policy: DestinationPolicy, raw: &str) {
        let Ok(url) = policy.check_url(raw) else {
            return;
        };
        let scheme_ok =
            url.scheme() == "https" || (policy.allow_insecure && url.scheme() == "http");
        assert!(scheme_ok, "{raw} admitted with scheme {}", url.scheme());
        assert!(
            url.username().is_empty() && url.password().is_none(),
            "{raw}"
        );
        let port = url.port_or_known_default().expect("http(s) has a port");
        assert!(REFUSED_PORTS.iter().all(|(p, _)| *p != port), "{raw}");
        let literal = match url.host() {
            Some(Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            Some(Host::Domain(name)) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                assert!(
                    policy.allow_insecure || !(name == "localhost" || name.ends_with(".localhost")),
                    "{raw}"
                );
                None
            }
            None => panic!("{raw} admitted without a host"),
        };
        if let Some(ip) = literal {
            let class = classify(ip);
            let ok = class == Public || (policy.allow_insecure && class == Loopback);
            assert!(ok, "{raw} admitted with host {ip} ({class:?})");
        }
    }

    fn url_shaped() -> impl Strategy<Value = String> {
        let scheme = prop::sample::select(vec!["https", "http", "HTTPS", "ftp", "file", "hTTps"]);
        let userinfo = prop::option::of("[a-z:%@]{0,6}@");
        let host = prop_oneof![
            "[a-z0-9-]{1,10}(\\.[a-z]{1,5}){0,2}\\.?",
            any::<u32>().prop_map(|n| std::net::Ipv4Addr::from(n).to_string()),
            any::<u32>().prop_map(|n| n.to_string()),
            "0x[0-9a-f]{1,8}(\\.[0-9]{1,3}){0,3}",
            "0[0-7]{1,4}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}",
            any::<u128>().prop_map(|n| format!("[{}]", std::net::Ipv6Addr::from(n))),
            any::<u32>().prop_map(|n| format!("[::ffff:{}]", std::net::Ipv4Addr::from(n))),
            any::<u32>().prop_map(|n| format!("[64:ff9b::{}]", std::net::Ipv4Addr::from(n))),
            any::<(u16, u16)>().prop_map(|(a, b)| format!("[{a:x}:{b:x}::1]")),
            "(localhost|LOCALHOST\\.|api\\.localhost|\\[::1\\]|127\\.0\\.0\\.1)",
            ".{0,12}",
        ];
        let port = prop::option::of(any::<u16>());
        let rest = "(/[a-zA-Z0-9%._~-]{0,8}){0,3}(\\?[a-z=&%]{0,10})?(#.{0,4})?";
        (scheme, userinfo, host, port, rest).prop_map(|(s, u, h, p, r)| {
            let port = p.map(|p| format!(":{p}")).unwrap_or_default();
            format!("{s}://{}{h}{port}{r}", u.unwrap_or_default())
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_strings_never_panic_and_admit_only_safe_urls(raw in ".{0,80}") {
            assert_admitted_is_safe(STRICT, &raw);
            assert_admitted_is_safe(DEV, &raw);
            let _ = redact(&raw);
        }

        #[test]
        fn url_shaped_strings_admit_only_safe_urls(raw in url_shaped()) {
            assert_admitted_is_safe(STRICT, &raw);
            assert_admitted_is_safe(DEV, &raw);
            let redacted = redact(&raw);
            if let Ok(url) = Url::parse(&raw) {
                if let Some(query) = url.query().filter(|q| !q.is_empty()) {
                    prop_assert!(!redacted.contains(&format!("?{query}")), "{raw} -> {redacted}");
                }
                if !url.username().is_empty() {
                    let userinfo = format!("{}@", url.username());
                    prop_assert!(!redacted.contains(&userinfo), "{raw} -> {redacted}");
                }
            }
        }
    }
}
