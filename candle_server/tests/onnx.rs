//! The ONNX Runtime scorer (`--runtime onnx`): `artifacts/ranknet.onnx` on the .venv's
//! libonnxruntime, against the plain-numpy forward pass of `artifacts/parity_fixture.json` (written
//! by `make model`; nothing here is typed by hand), its session options as ONNX Runtime reports
//! them, and its sessions shared by concurrent callers. `/rank` through this scorer against the
//! reference's answers is in `tests/http_db.rs`.

mod common;

use std::collections::HashMap;

use candle_server::model::{input_rows, INPUT_FEATURES, USER_FEATURES};
use candle_server::runtime::ThreadSetting;
use candle_server::server::onnx::{OnnxRankNet, MODEL_FILE};
use candle_server::server::scorer::Scorer;
use common::{onnx_model, parity_fixture, PARITY_ROWS};

fn assert_close(got: &[f32], want: &[f64]) {
    common::assert_close("onnx", got, want);
}

#[test]
fn scores_match_numpy_forward_pass_on_every_row() {
    let fixture = parity_fixture();
    let net = onnx_model(1);
    // All 16 rows in one call, split into user and item features as the /rank handler builds them.
    let mut rows = Vec::with_capacity(PARITY_ROWS * INPUT_FEATURES);
    for row in &fixture.inputs {
        let (user, item) = row.split_at(USER_FEATURES);
        rows.extend(input_rows(user, [item]).expect("row"));
    }
    assert_close(&net.scores(rows).expect("batch"), &fixture.scores);
    // One row at a time, and a large batch: the same per-row scores.
    common::assert_batch_size_does_not_change_scores(
        "onnx",
        &fixture,
        |row| net.scores(row.to_vec()).expect("one row"),
        |rows| net.scores(rows).expect("big batch"),
    );
}

#[test]
fn no_rows_no_scores_and_ragged_rows_refused() {
    let net = onnx_model(1);
    assert_eq!(net.scores(Vec::new()), Ok(Vec::new()));
    let err = net.scores(vec![0.0; INPUT_FEATURES + 3]).expect_err("ragged");
    assert!(err.0.contains("43 values"), "{err}");
}

#[test]
fn concurrent_callers_share_the_sessions() {
    let fixture = parity_fixture();
    let net = onnx_model(2);
    let rows = fixture.inputs.concat();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| (0..20).map(|_| net.scores(rows.clone())).collect::<Vec<_>>()))
            .collect();
        for worker in workers {
            for scores in worker.join().expect("no panic") {
                assert_close(&scores.expect("scores"), &fixture.scores);
            }
        }
    });
}

#[test]
fn runtime_threads_are_what_onnx_runtime_holds() {
    let net = onnx_model(1);
    assert_eq!(net.backend(), "onnx");
    let report: HashMap<&str, ThreadSetting> = net.runtime_threads().into_iter().collect();
    let text = |key: &str| match report.get(key) {
        Some(ThreadSetting::Text(value)) => value.clone(),
        other => panic!("{key}: {other:?} in {report:?}"),
    };
    // Read back from ONNX Runtime: py-onnx's settings.
    assert_eq!(text("execution_mode"), "ORT_SEQUENTIAL");
    assert_eq!(text("session.intra_op.allow_spinning"), "0");
    assert_eq!(text("session.inter_op.allow_spinning"), "0");
    // The library the Python package ships, version and all.
    let library = text("onnxruntime_library");
    let version = text("onnxruntime_version");
    assert!(library.ends_with(&format!("libonnxruntime.so.{version}")), "{library} vs {version}");
    assert!(version.starts_with("1."), "{version}");
    assert_eq!(report.get("intra_op_num_threads_set"), Some(&ThreadSetting::Count(1)));
    assert!(matches!(report.get("os_threads"), Some(ThreadSetting::Count(n)) if *n >= 1));
}

#[test]
fn a_model_file_onnx_runtime_cannot_read_is_one_error_line() {
    let dir = std::env::temp_dir().join(format!("candle_server_onnx_bad_{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join(MODEL_FILE), b"not an onnx model").expect("model");
    let err = OnnxRankNet::load(&common::onnx_library(), &dir, 1).expect_err("garbage model");
    assert!(err.0.starts_with("cannot load model from "), "{err}");
    assert!(err.0.contains(MODEL_FILE) && !err.0.contains('\n'), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
