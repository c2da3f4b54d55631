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
}

/// The entries in `path`.
pub fn read(path: &Path) -> Result<Vec<IceServer>, IceServersError> {
    let text = std::fs::read_to_string(path).map_err(|source| IceServersError::Read {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| IceServersError::Parse {
        path: path.to_owned(),
        source,
    })
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
        let stamp = FileStamp::of(&path);
        let mut all = fixed.clone();
        all.extend(read(&path)?);
        let file = Self {
            path,
            fixed,
            stamp: Mutex::new(stamp),
        };
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
