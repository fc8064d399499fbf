//! The HTTP server of the rankbench contract: routes, validation, database, stage statistics.

pub mod answer;
pub mod app;
pub mod batching;
pub mod build_info;
pub mod cli;
pub mod db;
pub mod error;
pub mod onnx;
pub mod request;
pub mod scorer;
pub mod stats;
pub mod transport;

/// Contract limits (docs/contract.md).
pub const MAX_ITEMS: usize = 1000;
pub const MAX_TOP_K: i64 = 1000;
pub const DEFAULT_TOP_K: i64 = 10;
pub const MAX_BODY_BYTES: usize = 64 * 1024;
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
