//! `--ice-servers FILE`: `ice_servers` entries kept in a file, read at
//! start and again on SIGHUP or when the file changes; the entries of
//! `--stun-server` come before them.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use protocol::IceServer;

use crate::secret::FileStamp;

#[derive(Debug, thiserror::Error)]
pub enum IceServersError {
    #[error("cannot read --ice-servers {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--ice-servers {path} is not a JSON array of IceServer dictionaries: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("--ice-servers {path}: entry {index}: {why}")]
    Entry {
        path: PathBuf,
        /// From 1.
        index: usize,
        why: String,
    },
}

/// Why an entry would not work in a browser's `RTCPeerConnection` (W3C
/// WebRTC §4.2.1: a URL of another scheme is a SyntaxError, a TURN URL
/// without a username and credential an InvalidAccessError); `None` for
/// one that would.
pub fn entry_problem(entry: &IceServer) -> Option<String> {
    if entry.urls.is_empty() {
        return Some("\"urls\" is empty; give at least one stun:, turn: or turns: URL".into());
    }
    for url in &entry.urls {
        let scheme = url.split_once(':').map(|(scheme, _)| scheme);
        match scheme {
            Some("stun" | "stuns") => {}
            Some("turn" | "turns") => {
                if entry.username.is_none() || entry.credential.is_none() {
                    return Some(format!(
                        "{url} needs a \"username\" and a \"credential\" (or use --turn-url with --turn-secret-file)"
                    ));
                }
            }
            _ => {
                return Some(format!(
                    "{url:?} is not a stun:, stuns:, turn: or turns: URL"
                ));
            }
        }
    }
    None
}

/// The entries in `path`.
pub fn read(path: &Path) -> Result<Vec<IceServer>, IceServersError> {
    let text = std::fs::read_to_string(path).map_err(|source| IceServersError::Read {
        path: path.to_owned(),
        source,
    })?;
    let entries: Vec<IceServer> =
        serde_json::from_str(&text).map_err(|source| IceServersError::Parse {
            path: path.to_owned(),
            source,
        })?;
    for (index, entry) in entries.iter().enumerate() {
        if let Some(why) = entry_problem(entry) {
            return Err(IceServersError::Entry {
                path: path.to_owned(),
                index: index + 1,
                why,
            });
        }
    }
    Ok(entries)
}

/// The file, and its stamp at the last reading.
#[derive(Debug)]
pub struct IceServersFile {
    path: PathBuf,
    /// The entries that come before the file's (`--stun-server`).
    fixed: Vec<IceServer>,
    stamp: Mutex<Option<FileStamp>>,
}

impl IceServersFile {
    /// Reads it: the fixed entries, then the file's.
    pub fn load(
        path: PathBuf,
        fixed: Vec<IceServer>,
    ) -> Result<(Self, Vec<IceServer>), IceServersError> {
        let file = Self {
            path,
            fixed,
            stamp: Mutex::new(None),
        };
        let all = file.reload()?;
        Ok((file, all))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn stamp(&self) -> std::sync::MutexGuard<'_, Option<FileStamp>> {
        self.stamp.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the file changed since it was last read.
    pub fn changed(&self) -> bool {
        FileStamp::of(&self.path) != *self.stamp()
    }

    /// Every entry, read again; an error leaves the stamp moved on, so a
    /// file that stays broken is said once.
    pub fn reload(&self) -> Result<Vec<IceServer>, IceServersError> {
        *self.stamp() = FileStamp::of(&self.path);
        let mut all = self.fixed.clone();
        all.extend(read(&self.path)?);
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(urls: &[&str], credentials: bool) -> IceServer {
        IceServer {
            urls: urls.iter().map(|u| u.to_string()).collect(),
            username: credentials.then(|| "u".into()),
            credential: credentials.then(|| "c".into()),
        }
    }

    #[test]
    fn entries_a_browser_would_refuse_are_named() {
        assert_eq!(entry_problem(&entry(&["stun:127.0.0.1:3478"], false)), None);
        assert_eq!(
            entry_problem(&entry(&["turn:127.0.0.1:3478", "turns:h:5349"], true)),
            None
        );
        assert!(
            entry_problem(&entry(&[], false))
                .unwrap()
                .contains("is empty")
        );
        assert!(
            entry_problem(&entry(&["http://127.0.0.1/"], false))
                .unwrap()
                .contains("is not a stun:, stuns:, turn: or turns: URL")
        );
        assert!(
            entry_problem(&entry(&["127.0.0.1:3478"], false))
                .unwrap()
                .contains("is not a stun:")
        );
        assert!(
            entry_problem(&entry(&["turn:127.0.0.1:3478"], false))
                .unwrap()
                .contains("needs a \"username\" and a \"credential\"")
        );
    }
}
