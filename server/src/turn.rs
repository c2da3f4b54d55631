//! Short-lived TURN credentials in every `config` (PROTOCOL.md, "TURN"):
//! the TURN REST scheme of draft-uberti-behave-turn-rest, which coturn
//! serves with `--use-auth-secret --static-auth-secret=SECRET`. The server
//! and the TURN server share a secret; each `config` carries the username
//! `<expiry unix time>:<who>` and the credential
//! `base64(HMAC-SHA1(secret, username))`, which the TURN server checks
//! without asking anyone, until the expiry.
//!
//! This is a front door's part, not the core's: it reads the wall clock and
//! the secret file. The core asks it for credentials through
//! [`TurnCredentials`] when it queues a `config`.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use protocol::IceServer;
use ring::hmac;

use crate::core::TurnCredentials;
use crate::secret::{FileStamp, SecretError};
pub use crate::secret::{Secret, SecretSource};

/// `--turn-url`, `--turn-secret-file`, `--turn-ttl`, `--turn-secret-grace`.
#[derive(Debug, Clone)]
pub struct TurnConfig {
    /// `turn:` and `turns:` URLs, all in one `ice_servers` entry.
    pub urls: Vec<String>,
    pub secret: SecretSource,
    /// How long each credential is valid.
    pub ttl: Duration,
    /// After a new secret is read, how long the previous one still signs.
    pub grace: Duration,
}

impl TurnConfig {
    /// The default lifetime of a credential: a day, so that a session
    /// started in the morning keeps its relay through the working day
    /// while a credential copied out of a `config` is useless by the next.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
    pub const MIN_TTL: Duration = Duration::from_secs(60);
    pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
}

/// A TURN secret that cannot be read.
pub type TurnError = SecretError;

/// How an error names the file.
const WHAT: &str = "the TURN secret file";

/// `base64(HMAC-SHA1(secret, username))`: what the TURN server computes
/// to check the username (SHA-1 because the scheme and coturn say so).
pub fn credential(secret: &[u8], username: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let tag = hmac::sign(&key, username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
}

/// Longest `who` in a username, in bytes.
const MAX_WHO: usize = 96;

/// `<expiry>:<who>`, with `who` kept to letters, digits and `._-/` (any
/// other character becomes `_`) and to [`MAX_WHO`] bytes, so that a device
/// id of any shape makes a username every TURN server takes.
pub fn username(expiry_unix: u64, who: &str) -> String {
    let mut name = format!("{expiry_unix}:");
    for c in who.chars().take(MAX_WHO) {
        name.push(if c.is_ascii_alphanumeric() || "._-/".contains(c) {
            c
        } else {
            '_'
        });
    }
    name
}

#[derive(Debug)]
struct Secrets {
    signing: Secret,
    /// A new secret, and when it starts signing.
    next: Option<(Secret, Instant)>,
    stamp: Option<FileStamp>,
}

/// What a reload found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    Unchanged,
    /// The new secret signs from now on.
    Now,
    /// The new secret signs after the grace period.
    AfterGrace,
}

/// The issuer of TURN credentials.
#[derive(Debug)]
pub struct Turn {
    urls: Vec<String>,
    ttl: Duration,
    grace: Duration,
    source: SecretSource,
    secrets: Mutex<Secrets>,
}

impl Turn {
    /// Reads the secret.
    pub fn load(config: &TurnConfig) -> Result<Self, TurnError> {
        let (signing, stamp) = config.secret.read(WHAT)?;
        Ok(Self {
            urls: config.urls.clone(),
            ttl: config.ttl,
            grace: config.grace,
            source: config.secret.clone(),
            secrets: Mutex::new(Secrets {
                signing,
                next: None,
                stamp,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Secrets> {
        // Every update is one assignment: a panic cannot leave it half done.
        self.secrets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The secret file, when it has changed since it was last read (a
    /// secret given once never changes).
    pub fn file_changed(&self) -> bool {
        match &self.source {
            SecretSource::File(_) => self.source.stamp() != self.lock().stamp,
            SecretSource::Value(_) => false,
        }
    }

    /// Reads the secret again. A new one signs at once, or after the
    /// grace period if there is one; a file that cannot be read keeps the
    /// secret there was.
    pub fn reload(&self, now: Instant) -> Result<Reloaded, TurnError> {
        match self.source.read(WHAT) {
            Ok((secret, stamp)) => Ok(self.rotate(secret, stamp, now)),
            Err(e) => {
                // Said once: the next look finds no change until the file
                // changes again.
                self.lock().stamp = self.source.stamp();
                Err(e)
            }
        }
    }

    fn rotate(&self, secret: Secret, stamp: Option<FileStamp>, now: Instant) -> Reloaded {
        let mut secrets = self.lock();
        secrets.stamp = stamp;
        Self::promote(&mut secrets, now);
        if secrets
            .next
            .as_ref()
            .is_some_and(|(next, _)| *next == secret)
        {
            return Reloaded::Unchanged;
        }
        if secret == secrets.signing {
            // Rotated back before the grace was over: the pending one is
            // dropped.
            return match secrets.next.take() {
                Some(_) => Reloaded::Now,
                None => Reloaded::Unchanged,
            };
        }
        if self.grace.is_zero() {
            // Nothing is ever pending without a grace period.
            secrets.signing = secret;
            Reloaded::Now
        } else {
            secrets.next = Some((secret, now + self.grace));
            Reloaded::AfterGrace
        }
    }

    fn promote(secrets: &mut Secrets, now: Instant) {
        if let Some((_, at)) = &secrets.next
            && now >= *at
            && let Some((next, _)) = secrets.next.take()
        {
            secrets.signing = next;
        }
    }

    /// The `ice_servers` entry for `who`, valid for the TTL from
    /// `unix_now` (seconds since the epoch).
    pub fn ice_server_at(&self, who: &str, unix_now: u64, now: Instant) -> IceServer {
        let name = username(unix_now.saturating_add(self.ttl.as_secs()), who);
        let signing = {
            let mut secrets = self.lock();
            Self::promote(&mut secrets, now);
            secrets.signing.clone()
        };
        IceServer {
            urls: self.urls.clone(),
            credential: Some(credential(signing.as_bytes(), &name)),
            username: Some(name),
        }
    }
}

impl TurnCredentials for Turn {
    fn ice_servers(&self, who: &str) -> Vec<IceServer> {
        let unix_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        vec![self.ice_server_at(who, unix_now, Instant::now())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(secret: &str, grace: Duration) -> Turn {
        Turn::load(&TurnConfig {
            urls: vec!["turn:127.0.0.1:3478?transport=udp".into()],
            secret: SecretSource::Value(Secret::new(secret.as_bytes())),
            ttl: Duration::from_secs(3600),
            grace,
        })
        .unwrap()
    }

    #[test]
    fn credentials_are_the_hmac_sha1_of_the_username_in_base64() {
        // Computed apart from this code (Python's hmac and base64).
        assert_eq!(
            credential(b"S3cret", "1700000000:cvd-1"),
            "XZnUVbvw1BnFtn+nT+Lk1NBeAEE="
        );
        assert_eq!(
            credential(b"north", "1767225600:cvd-7/client-3"),
            "3KNdmZPi4FyycRZAMicgcByGYDg="
        );
    }

    #[test]
    fn the_username_is_the_expiry_and_who_in_a_safe_shape() {
        assert_eq!(username(1_700_000_000, "cvd-1"), "1700000000:cvd-1");
        assert_eq!(username(5, "a:b c\u{e9}/client-2"), "5:a_b_c_/client-2");
        let long = "x".repeat(500);
        assert_eq!(username(5, &long).len(), "5:".len() + MAX_WHO);
    }

    #[test]
    fn an_entry_names_who_and_expires_after_the_ttl() {
        let turn = turn("S3cret", Duration::ZERO);
        let entry = turn.ice_server_at("cvd-1", 1_699_996_400, Instant::now());
        assert_eq!(entry.urls, ["turn:127.0.0.1:3478?transport=udp"]);
        assert_eq!(entry.username.as_deref(), Some("1700000000:cvd-1"));
        assert_eq!(
            entry.credential.as_deref(),
            Some("XZnUVbvw1BnFtn+nT+Lk1NBeAEE=")
        );
    }

    #[test]
    fn a_new_secret_signs_at_once_or_after_the_grace() {
        let t0 = Instant::now();
        let sign = |turn: &Turn, now: Instant| turn.ice_server_at("d", 0, now).credential.unwrap();
        let at_once = turn("old", Duration::ZERO);
        assert_eq!(at_once.rotate(Secret::new(b"new"), None, t0), Reloaded::Now);
        assert_eq!(sign(&at_once, t0), credential(b"new", "3600:d"));

        let graceful = turn("old", Duration::from_secs(60));
        assert_eq!(
            graceful.rotate(Secret::new(b"new"), None, t0),
            Reloaded::AfterGrace
        );
        assert_eq!(
            graceful.rotate(Secret::new(b"new"), None, t0),
            Reloaded::Unchanged
        );
        assert_eq!(
            sign(&graceful, t0 + Duration::from_secs(59)),
            credential(b"old", "3600:d")
        );
        assert_eq!(
            sign(&graceful, t0 + Duration::from_secs(60)),
            credential(b"new", "3600:d")
        );
        // Rotated back within the grace: the old one goes on signing.
        let back = turn("old", Duration::from_secs(60));
        back.rotate(Secret::new(b"new"), None, t0);
        assert_eq!(back.rotate(Secret::new(b"old"), None, t0), Reloaded::Now);
        assert_eq!(
            sign(&back, t0 + Duration::from_secs(120)),
            credential(b"old", "3600:d")
        );
    }

    #[test]
    fn the_file_is_read_trimmed_and_an_unreadable_one_keeps_the_secret() {
        let dir = std::env::temp_dir().join(format!("turn-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        std::fs::write(&path, "  S3cret\n").unwrap();
        let turn = Turn::load(&TurnConfig {
            urls: vec!["turn:h".into()],
            secret: SecretSource::File(path.clone()),
            ttl: Duration::from_secs(3600),
            grace: Duration::ZERO,
        })
        .unwrap();
        let now = Instant::now();
        assert_eq!(
            turn.ice_server_at("cvd-1", 1_699_996_400, now)
                .credential
                .as_deref(),
            Some("XZnUVbvw1BnFtn+nT+Lk1NBeAEE=")
        );
        assert!(!turn.file_changed());
        std::fs::write(&path, "north-of-here\n").unwrap();
        assert!(turn.file_changed());
        assert_eq!(turn.reload(now).unwrap(), Reloaded::Now);
        assert!(!turn.file_changed());
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(turn.reload(now), Err(TurnError::Empty { .. })));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(turn.reload(now), Err(TurnError::Read { .. })));
        assert_eq!(
            turn.ice_server_at("d", 0, now).credential.unwrap(),
            credential(b"north-of-here", "3600:d")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
