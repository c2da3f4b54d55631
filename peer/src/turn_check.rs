//! Why relaying failed, in words: one TURN allocation asked for with the
//! credentials a `config` handed out, and the server's answer.
//!
//! The webrtc crate only logs a refused allocation and goes on without a
//! relay candidate, so a peer that must relay (`--relay-only`) and has none
//! asks each TURN server itself. The allocation, when granted, is released
//! at once.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use protocol::IceServer;
use rtc::ice::url::SchemeType;
use rtc::peer_connection::configuration::RTCIceServer;
use rtc::sansio::Protocol;
use rtc::shared::{TransportContext, TransportMessage, TransportProtocol};
use rtc::stun::error_code::ErrorCodeAttribute;
use rtc::stun::message::{CLASS_ERROR_RESPONSE, Getter, Message as StunMessage};
use rtc::turn::client::{Client, ClientConfig, Event};
use tokio::net::UdpSocket;

/// What a TURN server said to one allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurnAnswer {
    /// It relays: the address it allocated (released again).
    Allocated(SocketAddr),
    /// It refused the credentials (401: a wrong secret, or a username
    /// whose expiry has passed).
    AuthenticationRefused { code: u16, reason: String },
    /// It refused for another reason.
    Refused { code: u16, reason: String },
    /// Nothing came back in time.
    NoAnswer,
    /// The URL cannot be tried here (a `turns:` or TCP URL: the peers'
    /// stack relays over UDP only), or was malformed.
    NotTried(String),
}

/// One TURN URL of a `config` and what its server answered.
#[derive(Debug, Clone)]
pub struct TurnReport {
    pub url: String,
    pub username: String,
    pub answer: TurnAnswer,
}

impl std::fmt::Display for TurnReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = &self.url;
        match &self.answer {
            TurnAnswer::Allocated(relay) => write!(f, "{url} relays (allocated {relay})"),
            TurnAnswer::AuthenticationRefused { code, reason } => {
                write!(
                    f,
                    "TURN authentication failed at {url}: {code} {reason} for username {:?}",
                    self.username
                )?;
                match expiry_passed(&self.username, SystemTime::now()) {
                    Some(ago) => write!(
                        f,
                        " (its expiry passed {} ago)",
                        humanize(Duration::from_secs(ago))
                    ),
                    None => f.write_str(
                        " (the credential does not match: the signaling server and the TURN \
                         server do not share the same secret)",
                    ),
                }
            }
            TurnAnswer::Refused { code, reason } => {
                write!(f, "{url} refused the allocation: {code} {reason}")
            }
            TurnAnswer::NoAnswer => write!(f, "{url} did not answer (is the TURN server up?)"),
            TurnAnswer::NotTried(why) => write!(f, "{url} not tried: {why}"),
        }
    }
}

/// Seconds since the expiry a TURN REST username (`<expiry>:<name>`)
/// carries, when that expiry has passed.
pub fn expiry_passed(username: &str, now: SystemTime) -> Option<u64> {
    let (expiry, _) = username.split_once(':')?;
    let expiry: u64 = expiry.parse().ok()?;
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    (expiry <= now).then(|| now - expiry)
}

fn humanize(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        0..120 => format!("{seconds} s"),
        120..7200 => format!("{} min", seconds / 60),
        _ => format!("{} h", seconds / 3600),
    }
}

/// What a relay-only peer that gathered no relay candidate tells its
/// user: each TURN server of `ice_servers` asked, and its answer.
pub async fn why_no_relay(ice_servers: &[IceServer]) -> String {
    let reports = check_turn_servers(ice_servers, CHECK_PATIENCE).await;
    if reports.is_empty() {
        return "relay only, but the ICE servers name no TURN server (the signaling \
                server hands them out with --turn-url and a TURN secret)"
            .to_owned();
    }
    let said: Vec<String> = reports.iter().map(ToString::to_string).collect();
    format!("relay only, and no relay candidate: {}", said.join("; "))
}

/// How long [`why_no_relay`] waits for each TURN server.
pub const CHECK_PATIENCE: Duration = Duration::from_secs(3);

/// Asks every TURN URL of `ice_servers` for an allocation, each within
/// `patience`, and says what each answered.
pub async fn check_turn_servers(ice_servers: &[IceServer], patience: Duration) -> Vec<TurnReport> {
    let mut reports = Vec::new();
    for server in ice_servers {
        let username = server.username.clone().unwrap_or_default();
        let parsed = RTCIceServer {
            urls: server.urls.clone(),
            username: username.clone(),
            credential: server.credential.clone().unwrap_or_default(),
        }
        .urls();
        let Ok(urls) = parsed else {
            for url in &server.urls {
                if url.starts_with("turn") {
                    reports.push(TurnReport {
                        url: url.clone(),
                        username: username.clone(),
                        answer: TurnAnswer::NotTried("not a URL the WebRTC stack reads".into()),
                    });
                }
            }
            continue;
        };
        for (raw, url) in server.urls.iter().zip(urls) {
            if !matches!(url.scheme, SchemeType::Turn | SchemeType::Turns) {
                continue;
            }
            let answer = if url.scheme == SchemeType::Turns {
                TurnAnswer::NotTried("turns: is not relayed by this WebRTC stack".into())
            } else if url.proto.to_string() != "udp" {
                TurnAnswer::NotTried("TURN over TCP is not relayed by this WebRTC stack".into())
            } else {
                allocate(&url.host, url.port, &url.username, &url.password, patience).await
            };
            reports.push(TurnReport {
                url: raw.clone(),
                username: url.username.clone(),
                answer,
            });
        }
    }
    reports
}

/// One Allocate with long-term credentials, driven over a UDP socket of
/// its own; a granted allocation is released before this returns.
async fn allocate(
    host: &str,
    port: u16,
    username: &str,
    password: &str,
    patience: Duration,
) -> TurnAnswer {
    match tokio::time::timeout(patience, try_allocate(host, port, username, password)).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(error)) => TurnAnswer::NotTried(error),
        Err(_) => TurnAnswer::NoAnswer,
    }
}

async fn try_allocate(
    host: &str,
    port: u16,
    username: &str,
    password: &str,
) -> Result<TurnAnswer, String> {
    let server = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} has no address"))?;
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().map_err(|_| "bad address")?
    } else {
        "[::]:0".parse().map_err(|_| "bad address")?
    };
    let socket = UdpSocket::bind(bind)
        .await
        .map_err(|e| format!("cannot bind a UDP socket: {e}"))?;
    let local = socket.local_addr().map_err(|e| e.to_string())?;
    let crypto = rtc::crypto::default_provider().map_err(|e| e.to_string())?;
    let mut client = Client::new(
        ClientConfig {
            stun_serv_addr: String::new(),
            turn_serv_addr: server.to_string(),
            local_addr: local,
            transport_protocol: TransportProtocol::UDP,
            username: username.to_owned(),
            password: password.to_owned(),
            realm: String::new(),
            software: String::new(),
            rto_in_ms: 0,
            allocation_refresh_interval_cap: None,
        },
        crypto,
    )
    .map_err(|e| e.to_string())?;
    client.allocate(Instant::now()).map_err(|e| e.to_string())?;
    // The error the server gave last: the client's own error event only
    // has it as text.
    let mut last_error: Option<(u16, String)> = None;
    let mut buffer = vec![0u8; 1500];
    loop {
        while let Some(out) = client.poll_write() {
            socket
                .send_to(&out.message, out.transport.peer_addr)
                .await
                .map_err(|e| format!("cannot send to {server}: {e}"))?;
        }
        while let Some(event) = client.poll_event() {
            match event {
                Event::AllocateResponse(_, relayed) => {
                    if let Ok(mut relay) = client.relay(relayed) {
                        let _ = relay.close(Instant::now());
                    }
                    while let Some(out) = client.poll_write() {
                        let _ = socket.send_to(&out.message, out.transport.peer_addr).await;
                    }
                    return Ok(TurnAnswer::Allocated(relayed));
                }
                Event::AllocateError(_, error) => {
                    return Ok(match last_error.take() {
                        Some((401, reason)) => {
                            TurnAnswer::AuthenticationRefused { code: 401, reason }
                        }
                        Some((code, reason)) => TurnAnswer::Refused { code, reason },
                        None => TurnAnswer::Refused {
                            code: 0,
                            reason: error.to_string(),
                        },
                    });
                }
                Event::TransactionTimeout(_) => return Ok(TurnAnswer::NoAnswer),
                _ => {}
            }
        }
        let wake = client
            .poll_timeout()
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(1));
        tokio::select! {
            received = socket.recv_from(&mut buffer) => {
                let (length, from) = received.map_err(|e| format!("cannot read from {server}: {e}"))?;
                let bytes = &buffer[..length];
                if let Some(error) = error_code(bytes) {
                    last_error = Some(error);
                }
                client
                    .handle_read(TransportMessage {
                        now: Instant::now(),
                        transport: TransportContext {
                            local_addr: local,
                            peer_addr: from,
                            transport_protocol: TransportProtocol::UDP,
                            ecn: None,
                        },
                        message: BytesMut::from(bytes),
                    })
                    .map_err(|e| e.to_string())?;
            }
            () = tokio::time::sleep_until(wake) => {
                client.handle_timeout(Instant::now()).map_err(|e| e.to_string())?;
            }
        }
    }
}

/// The ERROR-CODE of a STUN error response.
fn error_code(bytes: &[u8]) -> Option<(u16, String)> {
    let mut message = StunMessage::new();
    message.raw = bytes.to_vec();
    message.decode().ok()?;
    if message.typ.class != CLASS_ERROR_RESPONSE {
        return None;
    }
    let mut code = ErrorCodeAttribute::default();
    code.get_from(&message).ok()?;
    Some((
        code.code.0,
        String::from_utf8_lossy(&code.reason).into_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usernames_expiry_is_read() {
        let at = UNIX_EPOCH + Duration::from_secs(1_700_000_100);
        assert_eq!(expiry_passed("1700000000:cvd-1", at), Some(100));
        assert_eq!(expiry_passed("1700000100:cvd-1", at), Some(0));
        assert_eq!(expiry_passed("1700000200:cvd-1", at), None);
        assert_eq!(expiry_passed("alice", at), None);
        assert_eq!(expiry_passed("soon:cvd-1", at), None);
    }

    #[test]
    fn a_refusal_says_which_kind() {
        let report = |username: &str, answer| TurnReport {
            url: "turn:127.0.0.1:3478?transport=udp".into(),
            username: username.into(),
            answer,
        };
        let refused = TurnAnswer::AuthenticationRefused {
            code: 401,
            reason: "Unauthorized".into(),
        };
        let expired = report("1000:cvd-1", refused.clone()).to_string();
        assert!(expired.starts_with("TURN authentication failed at turn:127.0.0.1:3478"));
        assert!(expired.contains("its expiry passed"), "{expired}");
        let far = SystemTime::now() + Duration::from_secs(3600);
        let far = far.duration_since(UNIX_EPOCH).unwrap().as_secs();
        let wrong = report(&format!("{far}:cvd-1"), refused).to_string();
        assert!(wrong.contains("do not share the same secret"), "{wrong}");
        assert!(
            report("u", TurnAnswer::NoAnswer)
                .to_string()
                .contains("did not answer")
        );
    }

    #[test]
    fn error_responses_are_read_and_others_are_not() {
        use rtc::stun::error_code::CODE_UNAUTHORIZED;
        use rtc::stun::message::{BINDING_REQUEST, METHOD_ALLOCATE, MessageType, Setter};
        let mut message = StunMessage::new();
        let attributes: [Box<dyn Setter>; 3] = [
            Box::new(rtc::stun::message::TransactionId::new()),
            Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_ERROR_RESPONSE)),
            Box::new(ErrorCodeAttribute {
                code: CODE_UNAUTHORIZED,
                reason: b"Unauthorized".to_vec(),
            }),
        ];
        message.build(&attributes).unwrap();
        assert_eq!(error_code(&message.raw), Some((401, "Unauthorized".into())));
        let mut binding = StunMessage::new();
        let attributes: [Box<dyn Setter>; 2] = [
            Box::new(rtc::stun::message::TransactionId::new()),
            Box::new(BINDING_REQUEST),
        ];
        binding.build(&attributes).unwrap();
        assert_eq!(error_code(&binding.raw), None);
        assert_eq!(error_code(b"not stun"), None);
    }
}
