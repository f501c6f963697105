//! kic-portlayer
