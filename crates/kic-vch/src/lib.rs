#![recursion_limit = "256"]
//! `kic-vch`: one Virtual Container Host endpoint. It serves the Docker Engine API (the Docker
//! personality, VIC's `docker-engine-server`) over mutual TLS, server TLS, plain TCP and a unix
//! socket, and carries every request to the port layer.
//!
//! **Owns:** the API surface (routes, Docker wording, version negotiation, hijacked streams),
//! the VCH's limits, the event stream. **Must not:** keep state that libvirt and the datastore
//! cannot rebuild: everything it knows comes from [`kic_portlayer::PortLayer`] at start.
//! **Callers:** the docker CLI, docker-compose, SDKs; `kic-machine` starts it with a
//! [`config::VchConfig`].

pub mod api;
pub mod config;
pub mod net;
pub mod server;
