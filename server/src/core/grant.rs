//! What a connection's credentials allow: which device ids it may register
//! or connect to, and until when (PROTOCOL.md, "Scoped tokens").
//!
//! A front door reads the token, with the wall clock and the secrets it
//! keeps (`auth.rs`); the core only sees the result, with the expiry
//! already on its own clock.

use std::sync::Arc;
use std::time::Instant;

/// One entry of a token's `devices`: an id, or a prefix written with a
/// trailing `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevicePattern {
    Exact(String),
    Prefix(String),
}

impl DevicePattern {
    /// `cvd-1` is that id; `lab-*` every id starting `lab-`; `*` any id.
    pub fn parse(text: &str) -> Self {
        match text.strip_suffix('*') {
            Some(prefix) => Self::Prefix(prefix.to_owned()),
            None => Self::Exact(text.to_owned()),
        }
    }

    pub fn matches(&self, device_id: &str) -> bool {
        match self {
            Self::Exact(id) => id == device_id,
            Self::Prefix(prefix) => device_id.starts_with(prefix.as_str()),
        }
    }
}

impl std::fmt::Display for DevicePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact(id) => f.write_str(id),
            Self::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

/// What a connection may do. The default, for a server without tokens or
/// a static token, is any device, for as long as the session lasts.
///
/// One pointer in every session: a connection without a signed token
/// (most of them, and every one on a server without) carries no more.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grant(Option<Arc<Scope>>);

#[derive(Debug, PartialEq, Eq)]
struct Scope {
    devices: Box<[DevicePattern]>,
    /// The session ends here (`Token expired`), if it runs that long.
    expires: Option<Instant>,
}

impl Grant {
    /// Any device, no end.
    pub fn unlimited() -> Self {
        Self::default()
    }

    /// The device ids `devices` names, until `expires` if given.
    pub fn scoped(devices: Vec<DevicePattern>, expires: Option<Instant>) -> Self {
        Self(Some(Arc::new(Scope {
            devices: devices.into(),
            expires,
        })))
    }

    /// The same, but the session outlives the token (`--sessions-outlive-tokens`).
    pub fn without_expiry(self) -> Self {
        match self.0 {
            Some(scope) => Self::scoped(scope.devices.to_vec(), None),
            None => self,
        }
    }

    /// Whether it covers `device_id`.
    pub fn allows(&self, device_id: &str) -> bool {
        self.0
            .as_ref()
            .is_none_or(|scope| scope.devices.iter().any(|p| p.matches(device_id)))
    }

    /// When the session it opened must end.
    pub fn expires(&self) -> Option<Instant> {
        self.0.as_ref().and_then(|scope| scope.expires)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_ids_prefixes_and_the_star() {
        let grant = Grant::scoped(
            vec![DevicePattern::parse("cvd-1"), DevicePattern::parse("lab-*")],
            None,
        );
        assert!(grant.allows("cvd-1"));
        assert!(!grant.allows("cvd-10"));
        assert!(!grant.allows("cvd-2"));
        assert!(grant.allows("lab-7"));
        assert!(!grant.allows("lab"));
        let all = Grant::scoped(vec![DevicePattern::parse("*")], None);
        assert!(all.allows("anything"));
        assert!(Grant::unlimited().allows("x"));
        assert!(!Grant::scoped(Vec::new(), None).allows("x"));
        assert_eq!(DevicePattern::parse("lab-*").to_string(), "lab-*");
    }
}
