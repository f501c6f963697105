//! Container networking on the endpoint side: the VCH's network namespace as seen from
//! kic-vch (sockets opened inside it), the per-network DNS responder, and the userland proxy
//! that publishes container ports.

pub mod ctl;
pub mod dns;
pub mod netns;
pub mod proxy;
