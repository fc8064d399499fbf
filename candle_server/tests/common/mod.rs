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

    /// The `--server-name` the tests give their servers.
    pub const SERVER_NAME: &str = "rust-test";

    /// `DATABASE_URL`, else the private cluster.
    pub fn dsn() -> String {
        std::env::var("DATABASE_URL")
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| DEFAULT_DSN.into())
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
        let worker = Data::new(WorkerState::new(&state, db));
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
