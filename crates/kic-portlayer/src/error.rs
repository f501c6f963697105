//! Port-layer errors carry a kind; the Docker personality picks the HTTP status from the kind
//! alone and shows the message as it is (already in Docker's wording where Docker has one).

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Something named does not exist (404).
    NotFound,
    /// The request clashes with the current state (409).
    Conflict,
    /// The request itself is wrong (400).
    Invalid,
    /// Not allowed on this object at all, e.g. removing a pre-defined network (403).
    Forbidden,
    /// A limit or a dependency refuses for now (503).
    Unavailable,
    /// Anything else (500).
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: Kind,
    pub message: String,
    /// Exit code a process start failure carries (126, 127), as Docker reports it.
    pub exit_code: Option<i32>,
}

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            exit_code: None,
        }
    }
    pub fn no_such_container(name: &str) -> Self {
        Error::new(Kind::NotFound, format!("No such container: {name}"))
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        Error::new(Kind::Conflict, m)
    }
    pub fn invalid(m: impl Into<String>) -> Self {
        Error::new(Kind::Invalid, m)
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Error::new(Kind::Internal, m)
    }
    pub fn unavailable(m: impl Into<String>) -> Self {
        Error::new(Kind::Unavailable, m)
    }
    /// Wrap a lower-level failure with what was being done.
    pub fn io(what: impl fmt::Display, e: impl fmt::Display) -> Self {
        Error::internal(format!("{what}: {e}"))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<kic_image::ImageError> for Error {
    fn from(e: kic_image::ImageError) -> Self {
        let kind = match &e {
            kic_image::ImageError::NotFound(_) => Kind::NotFound,
            kic_image::ImageError::Invalid(_) => Kind::Invalid,
            _ => Kind::Internal,
        };
        Error::new(kind, e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, Error>;
