//! The one error type of the image store.
//!
//! Every variant says what failed, on what, and (where there is one) what to do. Callers that
//! speak HTTP pick the status from [`ImageError::kind`], never by matching message text.

use std::path::PathBuf;

/// Broad class of an [`ImageError`], for callers that map errors to HTTP statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The named image, tag, blob or manifest does not exist (404).
    NotFound,
    /// The request is malformed: bad reference, bad layout, bad manifest (400).
    Invalid,
    /// The request conflicts with current state, e.g. removing an image referenced by several
    /// repositories without force (409).
    Conflict,
    /// Content from outside failed verification or tried to escape (400/500 depending on caller).
    Unsafe,
    /// Authentication against a registry failed (401).
    Unauthorized,
    /// The registry or a local tool failed (500/502).
    Upstream,
    /// Local I/O failed (500).
    Internal,
}

/// Errors from the image store, registry client, layer applier and disk builder.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Docker's wording: `No such image: busybox:latest`.
    #[error("No such image: {0}")]
    NotFound(String),

    /// The registry has no manifest for the tag or digest asked (Docker's wording).
    #[error("manifest for {0} not found: manifest unknown")]
    ManifestUnknown(String),

    /// A reference, manifest, configuration or layout that cannot be used.
    #[error("{0}")]
    Invalid(String),

    /// Docker's wording for conflicts, e.g. `conflict: unable to delete ...`.
    #[error("{0}")]
    Conflict(String),

    /// A layer or archive entry that would write outside its target, or is otherwise unsafe.
    #[error("refusing unsafe archive entry {entry:?}: {reason}")]
    Unsafe { entry: String, reason: String },

    /// Content whose digest or size differs from what was asked for.
    #[error("{what} failed verification: expected {expected}, got {actual}; the registry or layout is corrupt or was tampered with, nothing was stored")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },

    /// The registry answered 401/403 even with the credentials given.
    #[error("{0}")]
    Unauthorized(String),

    /// The registry failed or answered something unusable.
    #[error("registry {registry}: {message}")]
    Registry { registry: String, message: String },

    /// An external tool (mke2fs, skopeo, debootstrap) failed.
    #[error("{tool} failed: {message}")]
    Tool { tool: String, message: String },

    /// Local filesystem error with the path it happened on.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ImageError {
    /// The class of the error, for status mapping.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ImageError::NotFound(_) | ImageError::ManifestUnknown(_) => ErrorKind::NotFound,
            ImageError::Invalid(_) => ErrorKind::Invalid,
            ImageError::Conflict(_) => ErrorKind::Conflict,
            ImageError::Unsafe { .. } | ImageError::DigestMismatch { .. } => ErrorKind::Unsafe,
            ImageError::Unauthorized(_) => ErrorKind::Unauthorized,
            ImageError::Registry { .. } | ImageError::Tool { .. } => ErrorKind::Upstream,
            ImageError::Io { .. } => ErrorKind::Internal,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ImageError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn unsafe_entry(entry: impl Into<String>, reason: impl Into<String>) -> Self {
        ImageError::Unsafe {
            entry: entry.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn registry(registry: impl Into<String>, message: impl Into<String>) -> Self {
        ImageError::Registry {
            registry: registry.into(),
            message: message.into(),
        }
    }
}

impl From<kic_archive::Error> for ImageError {
    fn from(e: kic_archive::Error) -> Self {
        match e {
            kic_archive::Error::Unsafe { entry, reason } => ImageError::Unsafe { entry, reason },
            kic_archive::Error::Invalid(m) | kic_archive::Error::NotFound(m) => {
                ImageError::Invalid(m)
            }
            kic_archive::Error::Io { op, path, source } => ImageError::Io { op, path, source },
        }
    }
}

/// Shorthand used across the crate.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;
