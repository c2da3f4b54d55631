//! Who the client is behind a reverse proxy (PROTOCOL.md, "Behind a
//! proxy"): with `--trusted-proxy CIDR`, a request that comes from one of
//! those addresses names its client in `Forwarded` (RFC 7239) or
//! `X-Forwarded-For`; that address is the peer for the per-address limit
//! and every log line. From any other peer those headers change nothing,
//! so a client cannot spoof its address.

use std::net::{IpAddr, SocketAddr};

use axum::http::{HeaderMap, HeaderName};
use ipnet::IpNet;

/// The proxies whose forwarding headers are believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "--trusted-proxy {0:?}: write an address or a network, e.g. 10.0.0.5, 10.0.0.0/8 or fd00::/8"
)]
pub struct ProxyError(String);

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

impl TrustedProxies {
    /// From the `--trusted-proxy` values: networks, or single addresses.
    pub fn parse(values: &[String]) -> Result<Self, ProxyError> {
        values
            .iter()
            .map(|value| {
                value
                    .parse::<IpNet>()
                    .or_else(|_| value.parse::<IpAddr>().map(IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| ProxyError(value.clone()))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many networks are trusted.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether `ip` is one of the proxies.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client a request from `peer` is for: `peer` itself, unless it
    /// is a trusted proxy that names one. The chain is read from the
    /// nearest hop back: the first address that is not a trusted proxy is
    /// the client (hops before it could have written anything). `Forwarded`
    /// wins over `X-Forwarded-For` when both are there. The port is the
    /// proxy's connection's when the header gives none.
    pub fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> SocketAddr {
        if !self.trusts(peer.ip()) {
            return peer;
        }
        let chain = forwarded_for(headers).or_else(|| x_forwarded_for(headers));
        let Some(chain) = chain else {
            return peer;
        };
        let mut client = None;
        for hop in chain.into_iter().rev() {
            let Some(hop) = hop else {
                // `unknown` or an obfuscated name: nothing behind it can be
                // believed either.
                break;
            };
            client = Some(hop);
            if !self.trusts(hop.ip()) {
                break;
            }
        }
        match client {
            Some(client) if client.port() == 0 => SocketAddr::new(client.ip(), peer.port()),
            Some(client) => client,
            None => peer,
        }
    }
}

/// An IPv4 address mapped into IPv6 (`::ffff:a.b.c.d`) as the IPv4 one.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The `for=` of every `Forwarded` element in order; `None` for one that
/// names no address. `None` overall without the header.
fn forwarded_for(headers: &HeaderMap) -> Option<Vec<Option<SocketAddr>>> {
    let elements = items(headers, FORWARDED)?;
    Some(
        elements
            .into_iter()
            .map(|element| {
                // The element's first `for=` decides, whether or not it
                // names an address.
                let first = element.split(';').find_map(|pair| {
                    let (key, value) = pair.split_once('=')?;
                    key.trim()
                        .eq_ignore_ascii_case("for")
                        .then(|| node(value.trim().trim_matches('"')))
                });
                first.flatten()
            })
            .collect(),
    )
}

/// Every address of `X-Forwarded-For`, in order.
fn x_forwarded_for(headers: &HeaderMap) -> Option<Vec<Option<SocketAddr>>> {
    Some(
        items(headers, X_FORWARDED_FOR)?
            .into_iter()
            .map(node)
            .collect(),
    )
}

/// The comma-separated items of every line of header `name`, in order,
/// trimmed; `None` without the header, or with a line that is not text.
fn items(headers: &HeaderMap, name: HeaderName) -> Option<Vec<&str>> {
    let mut lines = headers.get_all(name).iter().peekable();
    lines.peek()?;
    let mut items = Vec::new();
    for line in lines {
        items.extend(line.to_str().ok()?.split(',').map(str::trim));
    }
    Some(items)
}

/// A node of a forwarding header: `1.2.3.4`, `1.2.3.4:5`, `[::1]`,
/// `[::1]:5`, or a bare IPv6 address; the port 0 when none.
fn node(text: &str) -> Option<SocketAddr> {
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Some(SocketAddr::new(canonical(address.ip()), address.port()));
    }
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    bare.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(canonical(ip), 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    fn proxies() -> TrustedProxies {
        TrustedProxies::parse(&["10.0.0.0/8".into(), "192.0.2.7".into(), "fd00::/8".into()])
            .unwrap()
    }

    const PROXY: &str = "10.1.2.3:40000";

    #[test]
    fn networks_and_addresses_are_parsed() {
        let trusted = proxies();
        assert!(trusted.trusts("10.255.0.1".parse().unwrap()));
        assert!(trusted.trusts("192.0.2.7".parse().unwrap()));
        assert!(!trusted.trusts("192.0.2.8".parse().unwrap()));
        assert!(trusted.trusts("::ffff:10.0.0.1".parse().unwrap()));
        assert!(trusted.trusts("fd12::1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "proxy.example", "", "10.0.0"] {
            assert!(TrustedProxies::parse(&[bad.into()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_trusted_proxy_names_the_client() {
        let trusted = proxies();
        let peer: SocketAddr = PROXY.parse().unwrap();
        let client = |pairs: &[(&'static str, &str)]| trusted.client(peer, &headers(pairs));
        assert_eq!(
            client(&[("x-forwarded-for", "203.0.113.9")]),
            "203.0.113.9:40000".parse().unwrap()
        );
        // The nearest hop that is no proxy of ours: what came before it
        // is the client's to write.
        assert_eq!(
            client(&[("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.9.9.9")]),
            "203.0.113.9:40000".parse().unwrap()
        );
        assert_eq!(
            client(&[(
                "forwarded",
                r#"for="[2001:db8::1]:4711";proto=https, for=10.0.0.2"#
            )]),
            "[2001:db8::1]:4711".parse().unwrap()
        );
        // Forwarded wins over X-Forwarded-For.
        assert_eq!(
            client(&[
                ("forwarded", "for=198.51.100.1"),
                ("x-forwarded-for", "203.0.113.9")
            ]),
            "198.51.100.1:40000".parse().unwrap()
        );
        // Several header lines are one list.
        assert_eq!(
            client(&[
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-for", "10.0.0.8")
            ]),
            "203.0.113.9:40000".parse().unwrap()
        );
        // Nothing to believe: the proxy itself.
        assert_eq!(client(&[]), peer);
        assert_eq!(client(&[("forwarded", "for=unknown")]), peer);
        assert_eq!(client(&[("x-forwarded-for", "not an address")]), peer);
        assert_eq!(
            client(&[("x-forwarded-for", "203.0.113.9, _hidden, 10.0.0.4")]),
            "10.0.0.4:40000".parse().unwrap()
        );
    }

    #[test]
    fn an_untrusted_peer_cannot_spoof_its_address() {
        let trusted = proxies();
        let peer: SocketAddr = "203.0.113.50:5555".parse().unwrap();
        let spoofed = headers(&[("x-forwarded-for", "1.1.1.1"), ("forwarded", "for=2.2.2.2")]);
        assert_eq!(trusted.client(peer, &spoofed), peer);
        assert_eq!(
            TrustedProxies::default().client(PROXY.parse().unwrap(), &spoofed),
            PROXY.parse().unwrap()
        );
    }
}
