//! rankbench's Rust side: the RankNet model in Candle ([`model`]) and the process settings it
//! runs under ([`runtime`]), always built; the actix-web server around it ([`server`], behind
//! the default `server` feature).
//!
//! A Python binding depends on this crate with `default-features = false` and reuses
//! [`model::RankNet`], [`model::input_rows`] and [`runtime`] without pulling in the HTTP and
//! database stack.

pub mod model;
pub mod runtime;

#[cfg(feature = "server")]
pub mod server;
