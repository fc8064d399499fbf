//! rankbench's Rust side: the RankNet model in Candle ([`model`], always built) and the
//! actix-web server around it ([`server`], behind the default `server` feature).
//!
//! A Python binding depends on this crate with `default-features = false` and reuses
//! [`model::RankNet`] and [`model::input_rows`] without pulling in the HTTP and database stack.

pub mod model;

#[cfg(feature = "server")]
pub mod server;
