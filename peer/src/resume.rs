//! What a peer keeps to take its session back when its connection to the
//! server drops (PROTOCOL.md, "Resuming a session"): the server's latest
//! token, how many of the session's frames it received, and the frames it
//! sent, so that it sends again those the server says it did not get.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{Result, bail};
use protocol::{Resume, ResumeOffer, Resumed};

use crate::signaling::ServerClosed;

/// The most frames a peer keeps to send again: far more than a signaling
/// session has in flight (a handshake is tens of messages).
const KEPT: usize = 1024;

/// One session's resume books, on the peer's side.
#[derive(Debug, Default)]
pub struct Resumable {
    token: Option<String>,
    window: Duration,
    /// Frames received from the server in the session, `resumed` aside.
    received: u64,
    /// The last frames sent, oldest first; `sent[0]` is number `first`.
    sent: VecDeque<String>,
    first: u64,
    sent_count: u64,
}

impl Resumable {
    pub fn new() -> Self {
        Self {
            first: 1,
            ..Self::default()
        }
    }

    /// A frame from the server: counted, and its resume offer, if it
    /// carries one (the session's first frame does), kept.
    pub fn received(&mut self, text: &str) {
        self.received += 1;
        if let Ok(Some(offer)) = ResumeOffer::in_frame(text) {
            self.offer(&offer);
        }
    }

    fn offer(&mut self, offer: &ResumeOffer<'_>) {
        self.token = Some(offer.token.to_string());
        self.window = Duration::from_millis(offer.window_ms);
    }

    /// A frame sent to the server (whether or not the connection carried
    /// it): kept until a resume says the server has it.
    pub fn sent(&mut self, text: String) {
        self.sent_count += 1;
        self.sent.push_back(text);
        if self.sent.len() > KEPT {
            self.sent.pop_front();
            self.first += 1;
        }
    }

    /// How long the server holds the session once its connection dropped;
    /// none before it offered a token.
    pub fn window(&self) -> Option<Duration> {
        self.token.as_ref().map(|_| self.window)
    }

    /// The first message of a connection that resumes (the seed's
    /// endpoints and the device socket).
    pub fn resume_message(&self) -> Option<String> {
        let token = self.token.as_deref()?;
        let resume = Resume {
            token: token.into(),
            received: self.received,
        };
        Some(protocol::DeviceToServer::Resume(resume).encode())
    }

    /// The query of an upgrade that resumes (the Go operator's
    /// `/devices/{id}/connect`).
    pub fn resume_query(&self) -> Option<String> {
        let token = self.token.as_deref()?;
        let token: String = form_urlencoded_byte(token);
        Some(format!("resume={token}&received={}", self.received))
    }

    /// The server's `resumed`: the next token kept, and the frames to send
    /// again (those after the server's count), in order. An error if the
    /// server lacks frames no longer kept here, or claims more than were
    /// sent: the session cannot go on.
    pub fn resumed(&mut self, resumed: &Resumed<'_>) -> Result<Vec<String>> {
        self.offer(&resumed.resume);
        let have = resumed.received;
        if have > self.sent_count {
            bail!(
                "the server says it received {have} frames of the {} sent",
                self.sent_count
            );
        }
        if have + 1 < self.first {
            bail!(
                "the server lacks frames after {have}, and only those from {} are kept",
                self.first
            );
        }
        let skip = usize::try_from(have + 1 - self.first).unwrap_or(usize::MAX);
        Ok(self.sent.iter().skip(skip).cloned().collect())
    }
}

/// A token in a URL query: tokens are base64url, but one from another
/// server could be anything.
fn form_urlencoded_byte(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// Whether a connection that ended with `error` (what `next_text` or a send
/// returned; `None`: the stream just ended) leaves its session held by the
/// server: it ended without a close frame, or with 4000. Any other close
/// (an error, `Device disconnected`, `Server shutting down`) ended the
/// session.
pub fn holds_session(error: Option<&anyhow::Error>) -> bool {
    match error.and_then(|e| e.downcast_ref::<ServerClosed>()) {
        Some(closed) => closed.code == protocol::CLOSE_SESSION_HELD,
        None => true,
    }
}

/// Whether the server refused a resume (its error text says so): the
/// session is gone, and a new one starts.
pub fn is_refusal(text: &str) -> bool {
    text.starts_with("Resume refused")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resumed(token: &str, received: u64) -> Resumed<'static> {
        Resumed {
            resume: ResumeOffer {
                token: token.to_owned().into(),
                window_ms: 1000,
            },
            received,
        }
    }

    #[test]
    fn the_peer_counts_what_it_got_and_sends_again_what_the_server_lacks() {
        let mut books = Resumable::new();
        assert_eq!(books.resume_message(), None);
        books.received(r#"{"message_type":"config","ice_servers":[],"resume":{"token":"t1","window_ms":30000}}"#);
        books.received(r#"{"message_type":"device_info","device_info":null}"#);
        assert_eq!(books.window(), Some(Duration::from_secs(30)));
        assert_eq!(
            books.resume_message().unwrap(),
            r#"{"message_type":"resume","token":"t1","received":2}"#
        );
        assert_eq!(books.resume_query().unwrap(), "resume=t1&received=2");
        for n in 0..3 {
            books.sent(format!("frame {n}"));
        }
        assert_eq!(
            books.resumed(&resumed("t2", 1)).unwrap(),
            ["frame 1", "frame 2"]
        );
        assert_eq!(
            books.resume_message().unwrap(),
            r#"{"message_type":"resume","token":"t2","received":2}"#
        );
        assert!(books.resumed(&resumed("t3", 4)).is_err());
    }

    #[test]
    fn only_so_many_frames_are_kept() {
        let mut books = Resumable::new();
        for n in 0..KEPT + 2 {
            books.sent(n.to_string());
        }
        assert!(books.resumed(&resumed("t", 0)).is_err());
        assert_eq!(books.resumed(&resumed("t", 2)).unwrap().len(), KEPT);
    }

    #[test]
    fn a_close_without_4000_ends_the_session() {
        let held = anyhow::Error::new(ServerClosed {
            code: 4000,
            reason: "Idle timeout".into(),
        });
        let over = anyhow::Error::new(ServerClosed {
            code: 1001,
            reason: "Server shutting down".into(),
        });
        assert!(holds_session(Some(&held)));
        assert!(!holds_session(Some(&over)));
        assert!(holds_session(Some(&anyhow::anyhow!("connection reset"))));
        assert!(holds_session(None));
    }
}
