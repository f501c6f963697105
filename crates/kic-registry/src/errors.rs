//! Error classes and their wire forms, written once.
//!
//! Lower layers return [`StoreError`] (a class plus a message). The distribution routes turn it
//! into an [`OciError`] (the OCI error-code table below picks the HTTP status), the Harbor routes
//! into an [`ApiError`] (Harbor's `{"errors":[{"code","message"}]}` body).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Error class of the data and storage layers.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("storage: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Internal(String),
}

impl StoreError {
    /// Maps a unique-constraint violation to `Conflict`, anything else stays as is.
    pub fn conflict_on_unique(self, what: &str) -> StoreError {
        match &self {
            StoreError::Db(sqlx::Error::Database(e))
                if e.is_unique_violation() || e.message().contains("UNIQUE") =>
            {
                StoreError::Conflict(format!("{what} already exists"))
            }
            _ => self,
        }
    }
}

/// The OCI distribution error codes (spec section "Error Codes") with their HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OciCode {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    RangeInvalid,
    Unknown,
}

impl OciCode {
    /// (wire value, HTTP status, default message)
    fn table(self) -> (&'static str, StatusCode, &'static str) {
        use OciCode::*;
        match self {
            BlobUnknown => (
                "BLOB_UNKNOWN",
                StatusCode::NOT_FOUND,
                "blob unknown to registry",
            ),
            BlobUploadInvalid => (
                "BLOB_UPLOAD_INVALID",
                StatusCode::BAD_REQUEST,
                "blob upload invalid",
            ),
            BlobUploadUnknown => (
                "BLOB_UPLOAD_UNKNOWN",
                StatusCode::NOT_FOUND,
                "blob upload unknown to registry",
            ),
            DigestInvalid => (
                "DIGEST_INVALID",
                StatusCode::BAD_REQUEST,
                "provided digest did not match uploaded content",
            ),
            ManifestBlobUnknown => (
                "MANIFEST_BLOB_UNKNOWN",
                StatusCode::BAD_REQUEST,
                "manifest references a manifest or blob unknown to registry",
            ),
            ManifestInvalid => (
                "MANIFEST_INVALID",
                StatusCode::BAD_REQUEST,
                "manifest invalid",
            ),
            ManifestUnknown => (
                "MANIFEST_UNKNOWN",
                StatusCode::NOT_FOUND,
                "manifest unknown to registry",
            ),
            NameInvalid => (
                "NAME_INVALID",
                StatusCode::BAD_REQUEST,
                "invalid repository name",
            ),
            NameUnknown => (
                "NAME_UNKNOWN",
                StatusCode::NOT_FOUND,
                "repository name not known to registry",
            ),
            SizeInvalid => (
                "SIZE_INVALID",
                StatusCode::BAD_REQUEST,
                "provided length did not match content length",
            ),
            Unauthorized => (
                "UNAUTHORIZED",
                StatusCode::UNAUTHORIZED,
                "authentication required",
            ),
            Denied => (
                "DENIED",
                StatusCode::FORBIDDEN,
                "requested access to the resource is denied",
            ),
            Unsupported => (
                "UNSUPPORTED",
                StatusCode::METHOD_NOT_ALLOWED,
                "the operation is unsupported",
            ),
            RangeInvalid => (
                "RANGE_INVALID",
                StatusCode::RANGE_NOT_SATISFIABLE,
                "invalid content range",
            ),
            Unknown => (
                "UNKNOWN",
                StatusCode::INTERNAL_SERVER_ERROR,
                "unknown error",
            ),
        }
    }

    pub fn status(self) -> StatusCode {
        self.table().1
    }
}

/// An error of the distribution API, rendered as `{"errors":[{"code","message","detail"}]}`.
#[derive(Debug)]
pub struct OciError {
    pub code: OciCode,
    pub message: String,
    /// Value of `WWW-Authenticate` for 401 answers.
    pub challenge: Option<String>,
}

impl OciError {
    pub fn new(code: OciCode) -> OciError {
        OciError {
            code,
            message: code.table().2.to_string(),
            challenge: None,
        }
    }

    pub fn msg(code: OciCode, message: impl Into<String>) -> OciError {
        OciError {
            code,
            message: message.into(),
            challenge: None,
        }
    }
}

impl From<StoreError> for OciError {
    fn from(e: StoreError) -> OciError {
        match e {
            StoreError::NotFound(m) => OciError::msg(OciCode::NameUnknown, m),
            StoreError::Invalid(m) => OciError::msg(OciCode::ManifestInvalid, m),
            StoreError::Conflict(m) => OciError::msg(OciCode::Denied, m),
            other => {
                tracing::error!("internal error: {other}");
                OciError::msg(OciCode::Unknown, other.to_string())
            }
        }
    }
}

impl From<std::io::Error> for OciError {
    fn from(e: std::io::Error) -> OciError {
        StoreError::Io(e).into()
    }
}

impl From<sqlx::Error> for OciError {
    fn from(e: sqlx::Error) -> OciError {
        StoreError::Db(e).into()
    }
}

impl IntoResponse for OciError {
    fn into_response(self) -> Response {
        let (code, status, _) = self.code.table();
        let body = json!({"errors": [{"code": code, "message": self.message, "detail": null}]});
        let mut resp = (status, axum::Json(body)).into_response();
        if let Some(c) = self.challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, c);
        }
        resp
    }
}

/// Harbor's error codes and their HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    Unknown,
}

impl ApiCode {
    fn table(self) -> (&'static str, StatusCode) {
        match self {
            ApiCode::BadRequest => ("BAD_REQUEST", StatusCode::BAD_REQUEST),
            ApiCode::Unauthorized => ("UNAUTHORIZED", StatusCode::UNAUTHORIZED),
            ApiCode::Forbidden => ("FORBIDDEN", StatusCode::FORBIDDEN),
            ApiCode::NotFound => ("NOT_FOUND", StatusCode::NOT_FOUND),
            ApiCode::Conflict => ("CONFLICT", StatusCode::CONFLICT),
            ApiCode::Unknown => ("UNKNOWN", StatusCode::INTERNAL_SERVER_ERROR),
        }
    }
}

/// An error of the Harbor API, rendered as `{"errors":[{"code","message"}]}`.
#[derive(Debug)]
pub struct ApiError {
    pub code: ApiCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ApiCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }
    pub fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(ApiCode::BadRequest, message)
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(ApiCode::NotFound, message)
    }
    pub fn forbidden() -> ApiError {
        ApiError::new(ApiCode::Forbidden, "forbidden")
    }
    pub fn unauthorized() -> ApiError {
        ApiError::new(ApiCode::Unauthorized, "unauthorized")
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound(m) => ApiError::new(ApiCode::NotFound, m),
            StoreError::Conflict(m) => ApiError::new(ApiCode::Conflict, m),
            StoreError::Invalid(m) => ApiError::new(ApiCode::BadRequest, m),
            other => {
                tracing::error!("internal error: {other}");
                ApiError::new(ApiCode::Unknown, other.to_string())
            }
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> ApiError {
        StoreError::Db(e).into()
    }
}

impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> ApiError {
        StoreError::Io(e).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, status) = self.code.table();
        let mut resp = (
            status,
            axum::Json(json!({"errors": [{"code": code, "message": self.message}]})),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"harbor\""),
            );
        }
        resp
    }
}
