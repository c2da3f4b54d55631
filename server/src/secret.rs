//! Secrets the server keeps in files and reads again on SIGHUP: the TURN
//! secret (`turn.rs`), the token secret and the static tokens (`auth.rs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// A secret; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<[u8]>);

impl Secret {
    pub fn new(bytes: &[u8]) -> Self {
        Self(bytes.into())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// Where a secret comes from.
#[derive(Debug, Clone)]
pub enum SecretSource {
    /// A file holding it (surrounding whitespace is not part of it), read
    /// again on SIGHUP.
    File(PathBuf),
    /// Given once (an environment variable, a flag).
    Value(Secret),
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path} holds no secret")]
    Empty { what: &'static str, path: PathBuf },
}

/// When and how big a file was at its last reading: a different stamp
/// means it changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
}

impl FileStamp {
    pub fn of(path: &Path) -> Option<Self> {
        std::fs::metadata(path).ok().map(|meta| Self {
            modified: meta.modified().ok(),
            len: meta.len(),
        })
    }
}

impl SecretSource {
    /// The file's stamp now (`None` for a value, which never changes).
    pub fn stamp(&self) -> Option<FileStamp> {
        match self {
            Self::File(path) => FileStamp::of(path),
            Self::Value(_) => None,
        }
    }

    /// The secret, and the stamp of the file it was read from; `what`
    /// names the file in an error ("the TURN secret file").
    pub fn read(&self, what: &'static str) -> Result<(Secret, Option<FileStamp>), SecretError> {
        match self {
            Self::Value(secret) => Ok((secret.clone(), None)),
            Self::File(path) => {
                // The stamp first: a change while reading shows as a change
                // at the next look, and is read again.
                let before = FileStamp::of(path);
                let text = std::fs::read(path).map_err(|source| SecretError::Read {
                    what,
                    path: path.clone(),
                    source,
                })?;
                let secret = text.trim_ascii();
                if secret.is_empty() {
                    return Err(SecretError::Empty {
                        what,
                        path: path.clone(),
                    });
                }
                Ok((Secret::new(secret), before))
            }
        }
    }
}
