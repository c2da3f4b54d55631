//! Who may register and connect (PROTOCOL.md, "Tokens"): static tokens
//! (`--device-token`, `--client-token`, or their files) and signed, scoped,
//! expiring tokens (`--token-secret-file`): HS256 JSON Web Tokens whose
//! claims name a role, the device ids, and an expiry.
//!
//! This is a front door's part: it reads the wall clock and the secret
//! files. What a token allows reaches the core as a [`Grant`], its expiry
//! on the core's clock.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::core::{DevicePattern, Grant};
use crate::secret::{FileStamp, Secret, SecretError, SecretSource};

/// Who a token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Registers devices (`/register_device`).
    Device,
    /// Connects to devices, and reads the client-facing endpoints.
    Client,
}

/// A signed token's claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub role: Role,
    /// Device ids, each exact or a prefix ending in `*` (`*` alone: any).
    pub devices: Vec<String>,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Not valid before, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

/// The shortest token secret: HS256 wants a key at least as long as its
/// hash, 32 bytes (RFC 7518 §3.2).
pub const MIN_SECRET_BYTES: usize = 32;

/// How far ahead of the server's clock a token's `nbf` may be and still
/// count (the clock of the host that minted it may be a little ahead).
/// `exp` has none: a token is never taken past its expiry.
pub const NBF_LEEWAY: Duration = Duration::from_secs(30);

/// The most bytes of a token read; a longer one is refused unread.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// `--device-token[-file]`, `--client-token[-file]`, `--token-secret-file`
/// and the settings around them.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    pub device_token: Option<SecretSource>,
    pub client_token: Option<SecretSource>,
    /// The HS256 secret of signed tokens, in a file.
    pub token_secret: Option<PathBuf>,
    /// After the secret file changes, how long tokens signed with the
    /// secret before still verify.
    pub token_secret_grace: Duration,
    /// A session whose token expires goes on (`--sessions-outlive-tokens`);
    /// by default it ends at the token's expiry.
    pub sessions_outlive_tokens: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Secret(#[from] SecretError),
    #[error(
        "the token secret file {path} holds {len} bytes; HS256 needs at least {MIN_SECRET_BYTES} \
         (make one with: head -c 32 /dev/urandom | base64 > {path})"
    )]
    ShortSecret { path: PathBuf, len: usize },
    #[error("cannot sign the token: {0}")]
    Sign(String),
}

const TOKEN_SECRET: &str = "the token secret file";
const DEVICE_TOKEN: &str = "the device token file";
const CLIENT_TOKEN: &str = "the client token file";

/// Why a request's credentials were refused: the text of its 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No token, or one that is neither a static token nor a signed one.
    Missing,
    /// A signed token whose signature does not verify.
    BadSignature,
    /// Signed with another algorithm than HS256 (`none` among them).
    Algorithm,
    /// Not a JWT with the claims this server needs.
    Malformed,
    Expired,
    NotYetValid,
    /// A device's token where a client's is needed.
    DeviceTokenForClient,
    /// A client's token where a device's is needed.
    ClientTokenForDevice,
}

impl Denied {
    pub fn text(self) -> &'static str {
        match self {
            Self::Missing => "Unauthorized: missing or invalid token",
            Self::BadSignature => {
                "Unauthorized: the token's signature does not verify with the server's secret"
            }
            Self::Algorithm => {
                "Unauthorized: the token is not signed with HS256, the one algorithm accepted"
            }
            Self::Malformed => {
                "Unauthorized: the token is not a JWT with a role, a list of devices and an expiry"
            }
            Self::Expired => "Unauthorized: the token has expired",
            Self::NotYetValid => "Unauthorized: the token is not valid yet (nbf)",
            Self::DeviceTokenForClient => {
                "Unauthorized: a device's token cannot connect as a client"
            }
            Self::ClientTokenForDevice => "Unauthorized: a client's token cannot register a device",
        }
    }
}

#[derive(Debug)]
struct Keys {
    device_token: Option<Secret>,
    client_token: Option<Secret>,
    /// The token secret, and the one before it with the end of its grace.
    secret: Option<Secret>,
    previous: Option<(Secret, Instant)>,
    /// The stamps of the three files at their last reading.
    stamps: [Option<FileStamp>; 3],
}

/// What a reload found, said in the log.
#[derive(Debug)]
pub struct Reload {
    /// What was read again and changed, by name ("the token secret").
    pub changed: Vec<&'static str>,
    /// What could not be read: the one in use stays.
    pub failed: Vec<AuthError>,
}

/// The server's credentials, read again on SIGHUP.
#[derive(Debug)]
pub struct Auth {
    config: AuthConfig,
    keys: Mutex<Keys>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// Reads the token secret file, refusing one too short for HS256.
pub fn read_token_secret(path: &Path) -> Result<(Secret, Option<FileStamp>), AuthError> {
    let (secret, stamp) = SecretSource::File(path.to_owned()).read(TOKEN_SECRET)?;
    if secret.as_bytes().len() < MIN_SECRET_BYTES {
        return Err(AuthError::ShortSecret {
            path: path.to_owned(),
            len: secret.as_bytes().len(),
        });
    }
    Ok((secret, stamp))
}

/// A signed token for `claims`.
pub fn mint(secret: &Secret, claims: &Claims) -> Result<String, AuthError> {
    let key =
        EncodingKey::from_secret(secret.as_bytes()).map_err(|e| AuthError::Sign(e.to_string()))?;
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key)
        .map_err(|e| AuthError::Sign(e.to_string()))
}

impl Auth {
    /// Reads every secret the settings name.
    pub fn load(config: &AuthConfig) -> Result<Self, AuthError> {
        let read = |source: &Option<SecretSource>, what| {
            source
                .as_ref()
                .map(|source| source.read(what))
                .transpose()
                .map(Option::unzip)
        };
        let (device_token, device_stamp) = read(&config.device_token, DEVICE_TOKEN)?;
        let (client_token, client_stamp) = read(&config.client_token, CLIENT_TOKEN)?;
        let (secret, secret_stamp) = config
            .token_secret
            .as_ref()
            .map(|path| read_token_secret(path))
            .transpose()?
            .unzip();
        Ok(Self {
            config: config.clone(),
            keys: Mutex::new(Keys {
                device_token,
                client_token,
                secret,
                previous: None,
                stamps: [
                    device_stamp.flatten(),
                    client_stamp.flatten(),
                    secret_stamp.flatten(),
                ],
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Keys> {
        // Every update is a few assignments of values already read.
        self.keys
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether `role` needs a token at all.
    pub fn required(&self, role: Role) -> bool {
        let keys = self.lock();
        keys.secret.is_some() || keys.static_token(role).is_some()
    }

    /// Whether signed tokens are taken.
    pub fn signed_tokens(&self) -> bool {
        self.config.token_secret.is_some()
    }

    /// What `presented` allows `role`, now.
    pub fn authorize(&self, role: Role, presented: Option<&str>) -> Result<Grant, Denied> {
        self.authorize_at(role, presented, unix_now(), crate::door::now())
    }

    /// The same at a given time: `unix_now` on the wall clock (what a
    /// token's times are in), `now` on the core's (what the grant's expiry
    /// is in).
    pub fn authorize_at(
        &self,
        role: Role,
        presented: Option<&str>,
        unix_now: u64,
        now: Instant,
    ) -> Result<Grant, Denied> {
        let (static_token, secrets) = {
            let mut keys = self.lock();
            if keys
                .previous
                .as_ref()
                .is_some_and(|(_, until)| now >= *until)
            {
                keys.previous = None;
            }
            let previous = keys.previous.as_ref().map(|(secret, _)| secret.clone());
            (
                keys.static_token(role).cloned(),
                [keys.secret.clone(), previous],
            )
        };
        let secrets: Vec<&Secret> = if secrets[0].is_none() {
            Vec::new()
        } else {
            secrets.iter().flatten().collect()
        };
        if static_token.is_none() && secrets.is_empty() {
            return Ok(Grant::unlimited());
        }
        let Some(presented) = presented.filter(|p| !p.is_empty() && p.len() <= MAX_TOKEN_BYTES)
        else {
            return Err(Denied::Missing);
        };
        if static_token
            .is_some_and(|token| bool::from(presented.as_bytes().ct_eq(token.as_bytes())))
        {
            return Ok(Grant::unlimited());
        }
        if secrets.is_empty() || presented.split('.').count() != 3 {
            return Err(Denied::Missing);
        }
        let claims = verify(presented, &secrets)?;
        if claims.role != role {
            return Err(match role {
                Role::Client => Denied::DeviceTokenForClient,
                Role::Device => Denied::ClientTokenForDevice,
            });
        }
        if unix_now >= claims.exp {
            return Err(Denied::Expired);
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf > unix_now.saturating_add(NBF_LEEWAY.as_secs()))
        {
            return Err(Denied::NotYetValid);
        }
        if claims.devices.is_empty() {
            return Err(Denied::Malformed);
        }
        let devices = claims
            .devices
            .iter()
            .map(|d| DevicePattern::parse(d))
            .collect();
        let expires = now.checked_add(Duration::from_secs(claims.exp - unix_now));
        let grant = Grant::scoped(devices, expires);
        Ok(if self.config.sessions_outlive_tokens {
            grant.without_expiry()
        } else {
            grant
        })
    }

    /// Whether any of its settings come from files.
    pub fn reads_files(&self) -> bool {
        self.sources()
            .iter()
            .any(|(source, _)| matches!(source, Some(SecretSource::File(_))))
    }

    /// Whether a file has changed since it was last read.
    pub fn files_changed(&self) -> bool {
        let keys = self.lock();
        self.sources()
            .iter()
            .zip(&keys.stamps)
            .any(|((source, _), stamp)| {
                matches!(source, Some(SecretSource::File(_)))
                    && source.as_ref().and_then(SecretSource::stamp) != *stamp
            })
    }

    fn sources(&self) -> [(Option<SecretSource>, &'static str); 3] {
        [
            (self.config.device_token.clone(), DEVICE_TOKEN),
            (self.config.client_token.clone(), CLIENT_TOKEN),
            (
                self.config.token_secret.clone().map(SecretSource::File),
                TOKEN_SECRET,
            ),
        ]
    }

    /// Reads every file again. A new token secret verifies at once, and
    /// the one before it until the grace period is over; a file that
    /// cannot be read keeps what was in use.
    pub fn reload(&self, now: Instant) -> Reload {
        let mut reload = Reload {
            changed: Vec::new(),
            failed: Vec::new(),
        };
        for (index, (source, what)) in self.sources().into_iter().enumerate() {
            let Some(source @ SecretSource::File(_)) = source else {
                continue;
            };
            let read = if let (2, SecretSource::File(path)) = (index, &source) {
                read_token_secret(path)
            } else {
                source.read(what).map_err(AuthError::from)
            };
            let mut keys = self.lock();
            let (secret, stamp) = match read {
                Ok(read) => read,
                Err(e) => {
                    // Said once: the next look finds no change until the
                    // file changes again.
                    keys.stamps[index] = source.stamp();
                    reload.failed.push(e);
                    continue;
                }
            };
            keys.stamps[index] = stamp;
            let slot = match index {
                0 => &mut keys.device_token,
                1 => &mut keys.client_token,
                _ => &mut keys.secret,
            };
            if slot.as_ref() == Some(&secret) {
                continue;
            }
            let before = slot.replace(secret);
            if index == 2 {
                keys.previous = before
                    .filter(|_| !self.config.token_secret_grace.is_zero())
                    .map(|before| (before, now + self.config.token_secret_grace));
            }
            reload.changed.push(match index {
                0 => "the device token",
                1 => "the client token",
                _ => "the token secret",
            });
        }
        reload
    }
}

impl Keys {
    fn static_token(&self, role: Role) -> Option<&Secret> {
        match role {
            Role::Device => self.device_token.as_ref(),
            Role::Client => self.client_token.as_ref(),
        }
    }
}

/// The header's `alg`, read before anything is verified, to name a token
/// of another algorithm as such.
fn header_algorithm(token: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Head {
        alg: String,
    }
    let head = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head)
        .ok()?;
    serde_json::from_slice::<Head>(&bytes).ok().map(|h| h.alg)
}

/// The claims of `token` if one of `secrets` signed it with HS256. Only
/// HS256 is in the allow-list, so a token that says `none`, or RS256
/// (whose verifier would take the HMAC secret as a public key), is refused
/// before any key is used.
fn verify(token: &str, secrets: &[&Secret]) -> Result<Claims, Denied> {
    match header_algorithm(token) {
        Some(alg) if alg == "HS256" => {}
        Some(_) => return Err(Denied::Algorithm),
        None => return Err(Denied::Malformed),
    }
    let mut validation = Validation::new(Algorithm::HS256);
    // Times are checked by the caller, on the clock it is given.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let mut denied = Denied::BadSignature;
    for secret in secrets {
        // An HMAC key of any length is a key.
        let Ok(key) = DecodingKey::from_secret(secret.as_bytes()) else {
            continue;
        };
        match jsonwebtoken::decode::<Claims>(token, &key, &validation) {
            Ok(data) => return Ok(data.claims),
            Err(e) => {
                use jsonwebtoken::errors::ErrorKind;
                denied = match e.kind() {
                    ErrorKind::InvalidSignature => Denied::BadSignature,
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                        Denied::Algorithm
                    }
                    _ => Denied::Malformed,
                };
                if denied != Denied::BadSignature {
                    // The claims, not the key: another secret changes nothing.
                    return Err(denied);
                }
            }
        }
    }
    Err(denied)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_800_000_000;

    fn auth(secret: &[u8]) -> (Auth, PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "auth-test-{}-{}",
            std::process::id(),
            std::thread::current()
                .name()
                .unwrap_or("t")
                .replace("::", "-")
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        std::fs::write(&path, secret).unwrap();
        let auth = Auth::load(&AuthConfig {
            token_secret: Some(path.clone()),
            ..AuthConfig::default()
        })
        .unwrap();
        (auth, path)
    }

    fn claims(role: Role, devices: &[&str], exp: u64) -> Claims {
        Claims {
            role,
            devices: devices.iter().map(|d| d.to_string()).collect(),
            exp,
            nbf: None,
            iat: Some(NOW),
        }
    }

    fn token(claims: &Claims) -> String {
        mint(&Secret::new(SECRET), claims).unwrap()
    }

    fn b64(json: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    #[test]
    fn a_client_token_allows_its_devices_until_its_expiry() {
        let (auth, _) = auth(SECRET);
        let t0 = Instant::now();
        let grant = auth
            .authorize_at(
                Role::Client,
                Some(&token(&claims(
                    Role::Client,
                    &["cvd-1", "lab-*"],
                    NOW + 3600,
                ))),
                NOW,
                t0,
            )
            .unwrap();
        assert!(grant.allows("cvd-1") && grant.allows("lab-9"));
        assert!(!grant.allows("cvd-2"));
        assert_eq!(grant.expires(), Some(t0 + Duration::from_secs(3600)));
    }

    #[test]
    fn a_token_of_the_wrong_role_is_refused_both_ways() {
        let (auth, _) = auth(SECRET);
        let t0 = Instant::now();
        let device = token(&claims(Role::Device, &["cvd-1"], NOW + 60));
        let client = token(&claims(Role::Client, &["cvd-1"], NOW + 60));
        assert_eq!(
            auth.authorize_at(Role::Client, Some(&device), NOW, t0),
            Err(Denied::DeviceTokenForClient)
        );
        assert_eq!(
            auth.authorize_at(Role::Device, Some(&client), NOW, t0),
            Err(Denied::ClientTokenForDevice)
        );
        assert!(
            auth.authorize_at(Role::Device, Some(&device), NOW, t0)
                .is_ok()
        );
    }

    #[test]
    fn expired_and_not_yet_valid_tokens_are_refused() {
        let (auth, _) = auth(SECRET);
        let t0 = Instant::now();
        let expired = token(&claims(Role::Client, &["*"], NOW));
        assert_eq!(
            auth.authorize_at(Role::Client, Some(&expired), NOW, t0),
            Err(Denied::Expired)
        );
        let mut later = claims(Role::Client, &["*"], NOW + 3600);
        later.nbf = Some(NOW + 600);
        assert_eq!(
            auth.authorize_at(Role::Client, Some(&token(&later)), NOW, t0),
            Err(Denied::NotYetValid)
        );
        // Within the leeway for a clock a little ahead.
        later.nbf = Some(NOW + NBF_LEEWAY.as_secs());
        assert!(
            auth.authorize_at(Role::Client, Some(&token(&later)), NOW, t0)
                .is_ok()
        );
    }

    #[test]
    fn another_secret_none_and_rs256_are_refused() {
        let (auth, _) = auth(SECRET);
        let t0 = Instant::now();
        let c = claims(Role::Client, &["*"], NOW + 60);
        let other = mint(&Secret::new(b"another secret of thirty-two bytes!"), &c).unwrap();
        assert_eq!(
            auth.authorize_at(Role::Client, Some(&other), NOW, t0),
            Err(Denied::BadSignature)
        );
        let payload = b64(&serde_json::to_string(&c).unwrap());
        // alg none, with and without a signature.
        let none = format!("{}.{payload}.", b64(r#"{"alg":"none","typ":"JWT"}"#));
        assert_eq!(
            auth.authorize_at(Role::Client, Some(&none), NOW, t0),
            Err(Denied::Algorithm)
        );
        // RS256 "signed" with the HMAC secret as if it were a public key:
        // the signature is a valid HMAC of the message, and still refused.
        let head = b64(r#"{"alg":"RS256","typ":"JWT"}"#);
        let message = format!("{head}.{payload}");
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET);
        let tag = ring::hmac::sign(&key, message.as_bytes());
        let rs256 = format!(
            "{message}.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref())
        );
        assert_eq!(
            auth.authorize_at(Role::Client, Some(&rs256), NOW, t0),
            Err(Denied::Algorithm)
        );
        // The same HMAC under an HS256 header is the real thing.
        let head = b64(r#"{"alg":"HS256","typ":"JWT"}"#);
        let message = format!("{head}.{payload}");
        let tag = ring::hmac::sign(&key, message.as_bytes());
        let hs256 = format!(
            "{message}.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref())
        );
        assert!(
            auth.authorize_at(Role::Client, Some(&hs256), NOW, t0)
                .is_ok()
        );
    }

    #[test]
    fn malformed_tokens_say_so_and_no_token_is_missing() {
        let (auth, _) = auth(SECRET);
        let t0 = Instant::now();
        let at = |t: Option<&str>| auth.authorize_at(Role::Client, t, NOW, t0);
        assert_eq!(at(None), Err(Denied::Missing));
        assert_eq!(at(Some("")), Err(Denied::Missing));
        assert_eq!(at(Some("not-a-jwt")), Err(Denied::Missing));
        assert_eq!(at(Some("a.b.c")), Err(Denied::Malformed));
        let long = "x".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(at(Some(&long)), Err(Denied::Missing));
        // Signed right, but without the claims the server needs.
        let bare = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"exp": NOW + 60}),
            &EncodingKey::from_secret(SECRET).unwrap(),
        )
        .unwrap();
        assert_eq!(at(Some(&bare)), Err(Denied::Malformed));
        let empty = token(&claims(Role::Client, &[], NOW + 60));
        assert_eq!(at(Some(&empty)), Err(Denied::Malformed));
    }

    #[test]
    fn a_static_token_still_works_beside_signed_ones() {
        let dir = std::env::temp_dir().join(format!("auth-static-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        std::fs::write(&path, SECRET).unwrap();
        let auth = Auth::load(&AuthConfig {
            client_token: Some(SecretSource::Value(Secret::new(b"static"))),
            token_secret: Some(path),
            ..AuthConfig::default()
        })
        .unwrap();
        let t0 = Instant::now();
        let grant = auth
            .authorize_at(Role::Client, Some("static"), NOW, t0)
            .unwrap();
        assert_eq!(grant, Grant::unlimited());
        assert_eq!(
            auth.authorize_at(Role::Client, Some("Static"), NOW, t0),
            Err(Denied::Missing)
        );
        // Devices need a signed token: there is no static one for them.
        assert!(auth.required(Role::Device));
        assert_eq!(
            auth.authorize_at(Role::Device, Some("static"), NOW, t0),
            Err(Denied::Missing)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_short_secret_is_refused_at_load() {
        let dir = std::env::temp_dir().join(format!("auth-short-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        std::fs::write(&path, "short\n").unwrap();
        let e = Auth::load(&AuthConfig {
            token_secret: Some(path),
            ..AuthConfig::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("holds 5 bytes"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_new_secret_verifies_at_once_and_the_old_one_through_the_grace() {
        let (auth, path) = auth(SECRET);
        let auth = Auth {
            config: AuthConfig {
                token_secret_grace: Duration::from_secs(60),
                ..auth.config.clone()
            },
            keys: auth.keys,
        };
        let t0 = Instant::now();
        let c = claims(Role::Client, &["*"], NOW + 3600);
        let old = token(&c);
        let new_secret = Secret::new(b"a new secret, thirty-two bytes long");
        let new = mint(&new_secret, &c).unwrap();
        assert!(!auth.files_changed());
        std::fs::write(&path, new_secret.as_bytes()).unwrap();
        assert!(auth.files_changed());
        let reload = auth.reload(t0);
        assert_eq!(reload.changed, ["the token secret"]);
        assert!(reload.failed.is_empty());
        let at = |t: &str, now| auth.authorize_at(Role::Client, Some(t), NOW, now);
        assert!(at(&new, t0).is_ok());
        assert!(at(&old, t0 + Duration::from_secs(59)).is_ok());
        assert_eq!(
            at(&old, t0 + Duration::from_secs(60)),
            Err(Denied::BadSignature)
        );
        // A file that cannot be read keeps the secret in use.
        std::fs::write(&path, "short").unwrap();
        let reload = auth.reload(t0);
        assert_eq!(reload.failed.len(), 1);
        assert!(at(&new, t0 + Duration::from_secs(61)).is_ok());
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn without_a_grace_the_old_secret_stops_at_once_and_sessions_may_outlive_tokens() {
        let (auth, path) = auth(SECRET);
        let t0 = Instant::now();
        let c = claims(Role::Client, &["*"], NOW + 3600);
        let old = token(&c);
        std::fs::write(&path, b"a new secret, thirty-two bytes long").unwrap();
        auth.reload(t0);
        assert_eq!(
            auth.authorize_at(Role::Client, Some(&old), NOW, t0),
            Err(Denied::BadSignature)
        );
        let outliving = Auth::load(&AuthConfig {
            sessions_outlive_tokens: true,
            ..auth.config.clone()
        })
        .unwrap();
        let new = mint(&Secret::new(b"a new secret, thirty-two bytes long"), &c).unwrap();
        let grant = outliving
            .authorize_at(Role::Client, Some(&new), NOW, t0)
            .unwrap();
        assert_eq!(grant.expires(), None);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
