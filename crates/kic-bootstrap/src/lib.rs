//! kic-bootstrap
