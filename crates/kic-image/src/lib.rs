//! kic-image
pub mod apply;
pub mod digest;
pub mod error;
pub mod reference;
pub mod spec;
pub use error::{ErrorKind, ImageError};
