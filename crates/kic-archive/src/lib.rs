//! (being moved here from kic-image::apply)
