//! The HTTP surface, in-process (actix test utilities), without a database: validation, the
//! error statuses and their exact JSON bodies, 503 when the database cannot be reached, and the
//! `/stats` counters. The database-backed behaviour is in `tests/http_db.rs`.

mod common;

use std::collections::BTreeSet;

use actix_web::http::{header, Method, StatusCode};
use actix_web::test::{self, TestRequest};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use futures_util::future::join_all;
use serde_json::json;

use candle_server::model::RankNet;
use candle_server::server::app::AppState;
use candle_server::server::batching::BatchSettings;
use candle_server::server::scorer::{NoModel, Scorer};
use common::{call, rank, unreachable_dsn, SERVER_NAME};

fn zero_model() -> Box<dyn Scorer> {
    let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
    Box::new(RankNet::new(vb).expect("zero-weight model"))
}

fn named(scorer: Box<dyn Scorer>) -> AppState {
    AppState::new(SERVER_NAME, scorer, 1)
}

#[actix_web::test]
async fn invalid_bodies_get_400_naming_the_field() {
    let app = common::app(named(zero_model()), &unreachable_dsn()).await;
    let cases = [
        ("{", "malformed JSON: EOF while parsing an object at line 1 column 1"),
        ("[]", "body must be a JSON object with user_id, item_ids and top_k, got an array"),
        (r#"{"item_ids": [1]}"#, "user_id is required"),
        (
            r#"{"user_id": true, "item_ids": [1]}"#,
            "user_id must be a 64-bit integer, got a boolean",
        ),
        (r#"{"user_id": 1.0, "item_ids": [1]}"#, "user_id must be a 64-bit integer, got a float"),
        (r#"{"user_id": "1", "item_ids": [1]}"#, "user_id must be a 64-bit integer, got a string"),
        (r#"{"user_id": 1}"#, "item_ids is required"),
        (r#"{"user_id": 1, "item_ids": []}"#, "item_ids must have 1 to 1000 entries, got 0"),
        (
            r#"{"user_id": 1, "item_ids": [1, "2"]}"#,
            "item_ids[1] must be a 64-bit integer, got a string",
        ),
        (
            r#"{"user_id": 1, "item_ids": [1], "top_k": 0}"#,
            "top_k must be between 1 and 1000, got 0",
        ),
        (
            r#"{"user_id": 1, "item_ids": [1], "top_k": true}"#,
            "top_k must be an integer, got a boolean",
        ),
    ];
    for (body, message) in cases {
        let (status, headers, value) = call(&app, rank(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(value, json!({"error": message}), "{body}");
        assert_eq!(headers.get(header::CONTENT_TYPE).unwrap(), "application/json");
    }
}

#[actix_web::test]
async fn body_over_64_kib_gets_413() {
    let app = common::app(named(zero_model()), &unreachable_dsn()).await;
    // A valid JSON document, just too long: the limit is on bytes, not on content.
    let padding = " ".repeat(64 * 1024);
    let body = format!(r#"{{"user_id": 1, "item_ids": [1]{padding}}}"#);
    let (status, _, value) = call(&app, rank(&body)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(value, json!({"error": "request body over 65536 bytes"}));

    // Exactly at the limit is fine (and reaches the database, which is unreachable here).
    let exact = r#"{"user_id": 1, "item_ids": [1]}"#.to_owned();
    let exact = format!("{exact}{}", " ".repeat(64 * 1024 - exact.len()));
    assert_eq!(exact.len(), 64 * 1024);
    let (status, _, _) = call(&app, rank(&exact)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[actix_web::test]
async fn headers_over_16_kib_get_431() {
    let app = common::app(named(zero_model()), &unreachable_dsn()).await;
    let big = "x".repeat(16 * 1024);
    for req in [
        rank(r#"{"user_id": 1, "item_ids": [1]}"#).insert_header(("x-filler", big.clone())),
        TestRequest::get().uri("/health").insert_header(("x-filler", big.clone())),
    ] {
        let (status, _, value) = call(&app, req).await;
        assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert_eq!(value, json!({"error": "request headers over 16384 bytes"}));
    }
    // Just under the limit passes the guard.
    let fits = "x".repeat(16 * 1024 - 200);
    let (status, _, _) =
        call(&app, TestRequest::get().uri("/nowhere").insert_header(("x-filler", fits))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[actix_web::test]
async fn unknown_paths_and_wrong_methods() {
    let app = common::app(named(zero_model()), &unreachable_dsn()).await;
    let (status, _, value) = call(&app, TestRequest::get().uri("/nowhere")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(value, json!({"error": "unknown path /nowhere"}));
    let long = format!("/{}", "a".repeat(4000));
    let (status, _, value) = call(&app, TestRequest::get().uri(&long)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(value, json!({"error": format!("unknown path {}", &long[..100])}));

    let cases = [
        (Method::GET, "/rank", "POST"),
        (Method::PUT, "/rank", "POST"),
        (Method::POST, "/health", "GET"),
        (Method::POST, "/stats", "GET"),
        (Method::GET, "/stats/reset", "POST"),
    ];
    for (method, path, allow) in cases {
        let (status, headers, value) =
            call(&app, TestRequest::default().method(method.clone()).uri(path)).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_eq!(value, json!({"error": format!("method not allowed on {path}: use {allow}")}));
        assert_eq!(headers.get(header::ALLOW).unwrap(), allow);
    }
}

#[actix_web::test]
async fn database_down_gives_503_and_unhealthy() {
    let app = common::app(named(zero_model()), &unreachable_dsn()).await;
    let (status, _, value) = call(&app, rank(r#"{"user_id": 1, "item_ids": [1]}"#)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let message = value["error"].as_str().expect("error message");
    assert!(message.starts_with("database unavailable: "), "{message}");

    let (status, _, value) = call(&app, TestRequest::get().uri("/health")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(value["status"], "unavailable");
    assert_eq!(value["server"], SERVER_NAME);
}

#[actix_web::test]
async fn database_down_gives_every_request_of_a_batch_503() {
    let settings = BatchSettings::new(64, 0, None, 2, 1).expect("settings");
    let app =
        common::app(named(Box::new(NoModel)).with_batching(settings), &unreachable_dsn()).await;
    let bodies: Vec<String> =
        (1..=6).map(|user| format!(r#"{{"user_id": {user}, "item_ids": [1]}}"#)).collect();
    let answers = join_all(bodies.iter().map(|body| call(&app, rank(body)))).await;
    for (status, _, value) in answers {
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{value}");
        let message = value["error"].as_str().expect("error message");
        assert!(message.starts_with("database unavailable: "), "{message}");
    }
    let (_, _, stats) = call(&app, TestRequest::get().uri("/stats")).await;
    assert_eq!((&stats["requests"], &stats["errors"]), (&json!(6), &json!(6)));
    let batches = &stats["batching"];
    // A failed batch counts its size, and no duration (nothing was answered 200).
    assert_eq!(batches["requests"], json!(6), "{batches}");
    assert_eq!(batches["rows"], json!(0), "{batches}");
    assert_eq!(batches["batch_stages"]["total"]["count"], json!(0), "{batches}");
    assert_eq!(stats["stages"]["queue"]["count"], json!(0), "{stats}");
    let settings =
        ["max_batch", "max_wait_us", "batches_in_flight", "batches_in_flight_per_worker"];
    let got: Vec<&serde_json::Value> = settings.iter().map(|key| &batches[*key]).collect();
    assert_eq!(got, [&json!(64), &json!(0), &json!(2), &json!([2])]);
}

#[actix_web::test]
async fn stats_count_rank_requests_and_reset() {
    let app = common::app(named(Box::new(NoModel)), &unreachable_dsn()).await;
    // Three requests to /rank, all answered non-2xx (400, 405, 503); other paths are not counted.
    call(&app, rank("nope")).await;
    call(&app, TestRequest::get().uri("/rank")).await;
    call(&app, rank(r#"{"user_id": 1, "item_ids": [1]}"#)).await;
    call(&app, TestRequest::get().uri("/nowhere")).await;
    call(&app, TestRequest::get().uri("/health")).await;

    let (status, _, stats) = call(&app, TestRequest::get().uri("/stats")).await;
    assert_eq!(status, StatusCode::OK);
    let zero = json!({"count": 0, "sum_us": 0.0, "mean_us": 0.0, "p50_us": 0.0, "p90_us": 0.0,
                      "p99_us": 0.0, "max_us": 0.0, "histogram": []});
    // No model, no runtime: nothing to report about its threads.
    let expected = json!({
        "server": SERVER_NAME, "backend": "none", "workers": 1, "runtime_threads": {},
        "requests": 3, "errors": 3,
        "stages": {"parse": zero, "db": zero, "pre": zero, "infer": zero, "post": zero,
                   "total": zero},
    });
    assert_eq!(stats, expected);

    let res = test::call_service(&app, TestRequest::post().uri("/stats/reset").to_request()).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert!(test::read_body(res).await.is_empty());
    let (_, _, stats) = call(&app, TestRequest::get().uri("/stats")).await;
    assert_eq!((stats["requests"].as_u64(), stats["errors"].as_u64()), (Some(0), Some(0)));
}

#[actix_web::test]
async fn stats_name_the_candle_backend_and_its_threads() {
    let app = common::app(named(zero_model()), &unreachable_dsn()).await;
    let (_, _, stats) = call(&app, TestRequest::get().uri("/stats")).await;
    assert_eq!(
        (stats["server"].as_str(), stats["backend"].as_str()),
        (Some(SERVER_NAME), Some("candle"))
    );
    // This test process does not pin Candle to one thread (the server binary does, see
    // tests/binary.rs): the keys and kinds are checked here, the values there.
    let threads = stats["runtime_threads"].as_object().expect("runtime_threads is an object");
    let keys: BTreeSet<&str> = threads.keys().map(String::as_str).collect();
    let want = BTreeSet::from([
        "candle_get_num_threads",
        "rayon_current_num_threads",
        "gemm_threading_threshold",
        "RAYON_NUM_THREADS",
        "CANDLE_NUM_THREADS",
        "os_threads",
    ]);
    assert_eq!(keys, want);
    for key in ["candle_get_num_threads", "rayon_current_num_threads", "os_threads"] {
        assert!(threads[key].as_u64().is_some_and(|n| n >= 1), "{key}: {}", threads[key]);
    }
    assert!(threads["RAYON_NUM_THREADS"].is_string(), "{}", threads["RAYON_NUM_THREADS"]);
}

#[actix_web::test]
async fn api_key_guards_every_route_but_health() {
    const KEY: &str = "s3cr3t";
    assert!(named(Box::new(NoModel)).with_api_key("").is_err());
    let state = named(Box::new(NoModel)).with_api_key(KEY).expect("key");
    let app = common::app(state, &unreachable_dsn()).await;
    let unauthorised = json!({"error": "missing or invalid API key"});
    let without_key = [
        rank(r#"{"user_id": 1, "item_ids": [1]}"#),
        rank("{not json"),
        TestRequest::get().uri("/rank"),
        TestRequest::get().uri("/stats"),
        TestRequest::post().uri("/stats/reset"),
        TestRequest::get().uri("/nowhere"),
    ];
    for req in without_key {
        let (status, _, value) = call(&app, req).await;
        assert_eq!((status, &value), (StatusCode::UNAUTHORIZED, &unauthorised));
    }
    for wrong in ["s3cr3T", "s3cr3", "s3cr3tx", ""] {
        let (status, _, _) =
            call(&app, TestRequest::get().uri("/stats").insert_header(("X-API-Key", wrong))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{wrong:?}");
    }
    // /health stays open; with the key everything else behaves as without a key configured.
    let (status, _, _) = call(&app, TestRequest::get().uri("/health")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "health is checked, not refused");
    let (status, _, _) =
        call(&app, TestRequest::get().uri("/stats").insert_header(("x-api-key", KEY))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, value) = call(&app, rank("{not json").insert_header(("X-API-Key", KEY))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{value}");
    let (_, _, stats) =
        call(&app, TestRequest::get().uri("/stats").insert_header(("X-API-Key", KEY))).await;
    // Three /rank requests refused for the key, one 400 with it: four requests, four errors.
    assert_eq!((stats["requests"].as_u64(), stats["errors"].as_u64()), (Some(4), Some(4)));
}
