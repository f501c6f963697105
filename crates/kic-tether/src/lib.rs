//! kic-tether
