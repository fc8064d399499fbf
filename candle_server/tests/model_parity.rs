//! Candle's RankNet against the plain-numpy forward pass of the seed step.
//!
//! `artifacts/parity_fixture.json` (written by `make model`) holds 16 input rows and the scores
//! numpy computed for them from `ranknet.safetensors`; nothing here is typed by hand.
//! `RANKBENCH_ARTIFACTS` points elsewhere if the artifacts live outside the repository.

mod common;

use candle_server::model::{input_rows, input_tensor, RankNet, INPUT_FEATURES, USER_FEATURES};
use common::{artifacts_dir, parity_fixture};

fn model() -> RankNet {
    RankNet::load_dir(artifacts_dir()).unwrap_or_else(|e| panic!("{e}"))
}

fn assert_close(got: &[f32], want: &[f64]) {
    common::assert_close("candle", got, want);
}

#[test]
fn scores_match_numpy_forward_pass() {
    let fixture = parity_fixture();
    let rows: Vec<f32> = fixture.inputs.concat();
    let scores = model().score_rows(rows).expect("forward pass");
    assert_close(&scores, &fixture.scores);
    // The fixture is only a real check if its scores are spread out, not all near 0.5.
    let spread = fixture.scores.iter().cloned().fold(f64::MIN, f64::max)
        - fixture.scores.iter().cloned().fold(f64::MAX, f64::min);
    assert!(spread > 0.1, "fixture scores barely differ (spread {spread})");
}

#[test]
fn batch_size_does_not_change_scores() {
    // One row at a time (score_slice), and a large batch (gemm takes other kernel paths).
    let net = model();
    common::assert_batch_size_does_not_change_scores(
        "candle",
        &parity_fixture(),
        |row| net.score_slice(row).expect("one row"),
        |rows| net.score_rows(rows).expect("big batch"),
    );
}

#[test]
fn server_input_path_matches_numpy_on_every_row() {
    // Each fixture row split into its user and item features and scored through the functions
    // the /rank handler calls (input_rows, input_tensor, RankNet::scores): all 16 rows in one
    // batch, each against numpy's score.
    let fixture = parity_fixture();
    let net = model();
    let mut rows = Vec::with_capacity(fixture.inputs.len() * INPUT_FEATURES);
    for row in &fixture.inputs {
        let (user, item) = row.split_at(USER_FEATURES);
        rows.extend(input_rows(user, [item]).expect("row"));
    }
    let x = input_tensor(rows).expect("tensor");
    assert_close(&net.scores(&x).expect("batch"), &fixture.scores);
}
