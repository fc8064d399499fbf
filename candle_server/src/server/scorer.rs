//! What turns the model input into scores: the server's one seam between its HTTP and database code
//! and a runtime. `pre` builds plain row-major `(N, 40)` rows ([`crate::model::input_rows`]);
//! every scorer takes those rows and gives N scores back in row order.
//!
//! Implementations: Candle ([`RankNet`], `--runtime candle`, the default), ONNX Runtime
//! ([`super::onnx::OnnxRankNet`], `--runtime onnx`) and none ([`NoModel`], `--no-model`, the
//! DB-and-HTTP floor).

use std::fmt;

use crate::model::{RankNet, INPUT_FEATURES};
use crate::runtime::{self, ThreadSetting};

/// What went wrong in a runtime, one line: a scorer that cannot be built (start-up fails with
/// it) or a failed forward pass (a bug or a broken runtime: the request gets a 500).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScorerError(pub String);

impl fmt::Display for ScorerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ScorerError {}

/// A runtime that scores model input rows. Shared by all workers, called on the worker thread
/// that serves the request (each worker computes on its own thread).
pub trait Scorer: Send + Sync {
    /// The `backend` field of `/stats`.
    fn backend(&self) -> &'static str;

    /// Scores of row-major `(N, 40)` f32 rows, in row order; no rows give no scores.
    fn scores(&self, rows: Vec<f32>) -> Result<Vec<f32>, ScorerError>;

    /// The `runtime_threads` of `/stats`: the thread settings as the runtime reports them, asked
    /// on the calling thread (a worker, where inference runs).
    fn runtime_threads(&self) -> Vec<(&'static str, ThreadSetting)>;
}

/// Candle's RankNet forward pass (`crate::model`); the rows become the input tensor's storage
/// without a copy.
impl Scorer for RankNet {
    fn backend(&self) -> &'static str {
        "candle"
    }

    fn scores(&self, rows: Vec<f32>) -> Result<Vec<f32>, ScorerError> {
        self.score_rows(rows).map_err(|e| ScorerError(e.to_string()))
    }

    fn runtime_threads(&self) -> Vec<(&'static str, ThreadSetting)> {
        runtime::runtime_threads()
    }
}

/// The number of `(N, 40)` rows in a row-major buffer.
pub fn row_count(rows: &[f32]) -> Result<usize, ScorerError> {
    if !rows.len().is_multiple_of(INPUT_FEATURES) {
        return Err(ScorerError(format!(
            "{} values is not a whole number of {INPUT_FEATURES}-feature rows",
            rows.len()
        )));
    }
    Ok(rows.len() / INPUT_FEATURES)
}

/// `--no-model`: every score is 0.0, so ranking falls back to id order (the DB-and-HTTP floor).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoModel;

impl Scorer for NoModel {
    fn backend(&self) -> &'static str {
        "none"
    }

    fn scores(&self, rows: Vec<f32>) -> Result<Vec<f32>, ScorerError> {
        Ok(vec![0.0; row_count(&rows)?])
    }

    fn runtime_threads(&self) -> Vec<(&'static str, ThreadSetting)> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_model_scores_each_row_zero() {
        assert_eq!(NoModel.scores(vec![1.0; 3 * INPUT_FEATURES]), Ok(vec![0.0; 3]));
        assert_eq!(NoModel.scores(Vec::new()), Ok(Vec::new()));
        let err = NoModel.scores(vec![0.0; INPUT_FEATURES + 1]).expect_err("ragged");
        assert!(err.0.contains("41 values"), "{err}");
        assert!(NoModel.runtime_threads().is_empty());
    }
}
