//! What the integration tests share: where the artifacts are, which database to use, and the
//! in-process app (one worker with its own small pool) with helpers to call it.
// Each test crate compiles this module and uses its own subset of it.
#![allow(dead_code)]

use std::path::PathBuf;

/// `artifacts/` of the repository (`make model` writes it), or `RANKBENCH_ARTIFACTS`.
pub fn artifacts_dir() -> PathBuf {
    std::env::var_os("RANKBENCH_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../artifacts"))
}

/// An artifact parsed as JSON; a missing file fails the test with the command that creates it.
pub fn artifact_json(name: &str, make_target: &str) -> serde_json::Value {
    let path = artifacts_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("cannot read {}: {e}; run `make {make_target}` to create it", path.display())
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// `artifacts/parity_fixture.json` (written by `make model`): input rows and the scores numpy
/// computed for them from `ranknet.safetensors`.
pub struct ParityFixture {
    pub inputs: Vec<Vec<f32>>,
    pub scores: Vec<f64>,
}

/// The fixture's row count (`seed/model.py`): a shorter file would quietly check less.
pub const PARITY_ROWS: usize = 16;
/// The contract's tolerance against the numpy reference.
pub const PARITY_TOLERANCE: f64 = 1e-5;

/// The parity fixture, checked for its shape (16 rows of 40 values, 16 scores).
pub fn parity_fixture() -> ParityFixture {
    let value = artifact_json("parity_fixture.json", "model");
    let floats = |v: &serde_json::Value| -> Vec<f64> {
        v.as_array().expect("a list").iter().map(|x| x.as_f64().expect("a float")).collect()
    };
    let inputs: Vec<Vec<f32>> = value["inputs"]
        .as_array()
        .expect("fixture has `inputs`")
        .iter()
        .map(|row| floats(row).into_iter().map(|x| x as f32).collect())
        .collect();
    let scores = floats(&value["scores"]);
    assert_eq!(inputs.len(), PARITY_ROWS, "fixture rows");
    assert_eq!(scores.len(), PARITY_ROWS, "fixture scores");
    assert!(inputs.iter().all(|r| r.len() == 40), "fixture rows must have 40 values");
    ParityFixture { inputs, scores }
}

/// Each score within [`PARITY_TOLERANCE`] of numpy's; `runtime` names the side in a failure.
pub fn assert_close(runtime: &str, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let diff = (f64::from(g) - w).abs();
        assert!(
            diff <= PARITY_TOLERANCE,
            "row {i}: {runtime} {g} vs numpy {w} (|diff| = {diff:e})"
        );
    }
}

/// Each fixture row scored alone by `score_one`, then the 16 rows 64 times over in one call to
/// `score_many` (a large batch takes other kernel paths): the same per-row scores, each within
/// [`PARITY_TOLERANCE`] of numpy's.
pub fn assert_batch_size_does_not_change_scores(
    runtime: &str,
    fixture: &ParityFixture,
    mut score_one: impl FnMut(&[f32]) -> Vec<f32>,
    mut score_many: impl FnMut(Vec<f32>) -> Vec<f32>,
) {
    for (row, &want) in fixture.inputs.iter().zip(&fixture.scores) {
        assert_close(runtime, &score_one(row.as_slice()), &[want]);
    }
    let repeats = 64;
    let rows: Vec<f32> = (0..repeats).flat_map(|_| fixture.inputs.concat()).collect();
    let want: Vec<f64> = (0..repeats).flat_map(|_| fixture.scores.clone()).collect();
    assert_close(runtime, &score_many(rows), &want);
}

#[cfg(feature = "server")]
mod server {
    use actix_web::body::MessageBody;
    use actix_web::dev::{Service, ServiceResponse};
    use actix_web::http::{header, StatusCode};
    use actix_web::test::{self, TestRequest};
    use actix_web::web::{Bytes, Data};
    use serde_json::Value;

    use candle_server::server::app::{build_app, AppState, WorkerState};
    use candle_server::server::cli::DEFAULT_DSN;
    use candle_server::server::db::{pg_config, Database};
    use candle_server::server::onnx::{self, OnnxRankNet, LIBRARY_ENV};

    /// The `--server-name` the tests give their servers.
    pub const SERVER_NAME: &str = "rust-test";

    /// `DATABASE_URL`, else the private cluster.
    pub fn dsn() -> String {
        std::env::var("DATABASE_URL")
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| DEFAULT_DSN.into())
    }

    /// The ONNX Runtime library the tests load: `ORT_DYLIB_PATH`, else the .venv's (as the
    /// server finds it). A missing one fails the test with the command that installs it.
    pub fn onnx_library() -> std::path::PathBuf {
        std::env::var_os(LIBRARY_ENV)
            .filter(|v| !v.is_empty())
            .map(std::path::PathBuf::from)
            .or_else(onnx::find_library)
            .unwrap_or_else(|| {
                panic!("no libonnxruntime in a .venv and {LIBRARY_ENV} unset; run `make setup`")
            })
    }

    /// `artifacts/ranknet.onnx` on the .venv's ONNX Runtime, `sessions` sessions.
    pub fn onnx_model(sessions: usize) -> OnnxRankNet {
        OnnxRankNet::load(&onnx_library(), &super::artifacts_dir(), sessions)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A DSN whose port nobody listens on: connections are refused at once.
    pub fn unreachable_dsn() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        format!("postgresql://bench@127.0.0.1:{port}/bench")
    }

    /// The app of one worker as actix builds it, with a pool of two connections to `dsn`.
    pub async fn app(
        state: AppState,
        dsn: &str,
    ) -> impl Service<
        actix_http::Request,
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
    > {
        let state = Data::new(state);
        let db = Database::new(pg_config(dsn).expect("dsn"), 2).expect("pool");
        let worker = Data::new(WorkerState::new(&state, db, 0));
        test::init_service(build_app(state, worker)).await
    }

    /// Status, headers and the raw body.
    pub async fn call_raw<S, B>(app: &S, req: TestRequest) -> (StatusCode, header::HeaderMap, Bytes)
    where
        S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
        B: MessageBody,
    {
        let res = test::call_service(app, req.to_request()).await;
        let status = res.status();
        let headers = res.headers().clone();
        (status, headers, test::read_body(res).await)
    }

    /// Status, headers and the body as JSON (`Value::Null` for an empty body).
    pub async fn call<S, B>(app: &S, req: TestRequest) -> (StatusCode, header::HeaderMap, Value)
    where
        S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
        B: MessageBody,
    {
        let (status, headers, body) = call_raw(app, req).await;
        let value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
        };
        (status, headers, value)
    }

    /// `POST /rank` with a JSON body (a `&str` is sent as it is, malformed or not).
    pub fn rank(body: impl ToString) -> TestRequest {
        TestRequest::post()
            .uri("/rank")
            .insert_header((header::CONTENT_TYPE, "application/json"))
            .set_payload(body.to_string())
    }
}

#[cfg(feature = "server")]
#[allow(unused_imports)] // model_parity uses none of it
pub use server::*;
