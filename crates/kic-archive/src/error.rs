//! The error type of archive work.

use std::path::PathBuf;

/// What went wrong applying, writing or listing an archive.
///
/// [`Error::Unsafe`], [`Error::Invalid`] and [`Error::NotFound`] are the caller's (or the
/// archive's) fault; [`Error::Io`] is a failure of the filesystem underneath.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An archive entry that would write outside its target, or is otherwise unsafe.
    #[error("refusing unsafe archive entry {entry:?}: {reason}")]
    Unsafe { entry: String, reason: String },

    /// An archive, a destination or a request that cannot be used as it is.
    #[error("{0}")]
    Invalid(String),

    /// A path that was asked for does not exist (Docker's wording is in the message).
    #[error("{0}")]
    NotFound(String),

    /// Local filesystem error with the path it happened on.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub fn unsafe_entry(entry: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Unsafe {
            entry: entry.into(),
            reason: reason.into(),
        }
    }

    /// True when the caller asked for something that cannot be done (as opposed to a failure
    /// of the filesystem): the guest answers these with `Response::Refused`.
    pub fn is_refusal(&self) -> bool {
        !matches!(self, Error::Io { .. })
    }
}

/// Shorthand used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
