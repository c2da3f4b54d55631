//! Which web pages may drive a browser into this server (PROTOCOL.md,
//! "Origins"): checked before a websocket upgrade and on the polling
//! endpoints, so a foreign page a user happens to open cannot use their
//! browser (its cookies, its network position, its loopback) against the
//! server (cross-site websocket hijacking).
//!
//! A request without `Origin` is not a browser's page (a device, a CLI)
//! and passes. One with an `Origin` passes when it is the server's own
//! origin (the page came from this server: its host and port are the
//! request's `Host`), when `--allowed-origin` lists it, or when that flag
//! is `*`.

use axum::http::{HeaderMap, header};

/// The origins `--allowed-origin` lets in beside the server's own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedOrigins {
    /// `--allowed-origin '*'`: every origin.
    pub any: bool,
    /// Each as `scheme://host:port`, lowercase, the port always written.
    pub listed: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    #[error(
        "--allowed-origin {0:?}: write an origin, scheme://host[:port] (http or https, no path), or '*'"
    )]
    Malformed(String),
}

impl AllowedOrigins {
    /// From the `--allowed-origin` values.
    pub fn parse(values: &[String]) -> Result<Self, OriginError> {
        let mut allowed = Self::default();
        for value in values {
            if value == "*" {
                allowed.any = true;
                continue;
            }
            let origin = normalize(value).ok_or_else(|| OriginError::Malformed(value.clone()))?;
            if !allowed.listed.contains(&origin) {
                allowed.listed.push(origin);
            }
        }
        Ok(allowed)
    }

    /// Whether a request with these headers may go on. `Err` carries the
    /// origin refused, as the request gave it.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), String> {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(());
        };
        let Ok(origin) = origin.to_str() else {
            return Err(String::from_utf8_lossy(origin.as_bytes()).into_owned());
        };
        if self.any {
            return Ok(());
        }
        let Some(normalized) = normalize(origin) else {
            // `null` (a sandboxed frame, a file) and anything else that is
            // no origin of a web page.
            return Err(origin.to_owned());
        };
        if self.listed.contains(&normalized) || is_own(&normalized, headers) {
            Ok(())
        } else {
            Err(origin.to_owned())
        }
    }
}

/// Whether `origin` (normalized) is this server's: its host and port are
/// the request's `Host` (the default port of the origin's scheme when
/// `Host` names none).
fn is_own(origin: &str, headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let Some((scheme, _)) = origin.split_once("://") else {
        return false;
    };
    normalize(&format!("{scheme}://{host}")).is_some_and(|own| own == origin)
}

/// `scheme://host:port` in lowercase with the port always written, or
/// `None` when `text` is no http(s) origin (a path, userinfo, a query, an
/// empty host, a bad port).
fn normalize(text: &str) -> Option<String> {
    let (scheme, rest) = text.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return None;
    }
    let rest = rest.to_ascii_lowercase();
    // A bracketed IPv6 host may hold colons of its own.
    let (host, port) = match rest.rfind(':') {
        Some(colon) if !rest[colon..].contains(']') => {
            let port: u16 = rest[colon + 1..].parse().ok()?;
            (&rest[..colon], port)
        }
        _ => (rest.as_str(), default_port),
    };
    if host.is_empty() || (host.starts_with('[') != host.ends_with(']')) {
        return None;
    }
    Some(format!("{scheme}://{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(origin) = origin {
            headers.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        }
        headers
    }

    #[test]
    fn origins_are_normalized() {
        assert_eq!(
            normalize("https://App.Example").as_deref(),
            Some("https://app.example:443")
        );
        assert_eq!(normalize("http://h:8443").as_deref(), Some("http://h:8443"));
        assert_eq!(
            normalize("http://[::1]:80").as_deref(),
            Some("http://[::1]:80")
        );
        assert_eq!(
            normalize("http://[::1]").as_deref(),
            Some("http://[::1]:80")
        );
        for bad in [
            "null",
            "file://",
            "ftp://h",
            "http://",
            "http://h/path",
            "http://u@h",
            "http://h:99999",
            "h:80",
        ] {
            assert_eq!(normalize(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_servers_own_pages_and_non_browsers_pass_by_default() {
        let allowed = AllowedOrigins::default();
        assert_eq!(allowed.check(&headers(None, "127.0.0.1:8443")), Ok(()));
        assert_eq!(
            allowed.check(&headers(Some("http://127.0.0.1:8443"), "127.0.0.1:8443")),
            Ok(())
        );
        assert_eq!(
            allowed.check(&headers(Some("https://cvd.example"), "cvd.example")),
            Ok(())
        );
        assert_eq!(
            allowed.check(&headers(Some("https://cvd.example"), "cvd.example:443")),
            Ok(())
        );
        for foreign in [
            "http://evil.example",
            "http://127.0.0.1:9999",
            "null",
            "http://127.0.0.1:8443.evil",
        ] {
            assert_eq!(
                allowed.check(&headers(Some(foreign), "127.0.0.1:8443")),
                Err(foreign.to_owned()),
                "{foreign}"
            );
        }
    }

    #[test]
    fn listed_origins_and_star_pass() {
        let allowed = AllowedOrigins::parse(&["https://app.example".into()]).unwrap();
        assert_eq!(
            allowed.check(&headers(Some("https://APP.example:443"), "signal:8443")),
            Ok(())
        );
        assert!(
            allowed
                .check(&headers(Some("http://app.example"), "signal:8443"))
                .is_err()
        );
        let any = AllowedOrigins::parse(&["*".into()]).unwrap();
        assert_eq!(any.check(&headers(Some("null"), "signal:8443")), Ok(()));
        assert_eq!(
            AllowedOrigins::parse(&["app.example".into()]),
            Err(OriginError::Malformed("app.example".into()))
        );
    }
}
