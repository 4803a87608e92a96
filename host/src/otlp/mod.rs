//! OTLP on the wire: reading requests without decoding them, span views for the guest, JSON.

pub mod codec;
pub mod json;
pub mod request;
pub mod view;
pub mod wire;
