//! `/rank` end to end in-process, against the seeded database and the real model: the right
//! features reach the right ids, ranking and top-k, unknown ids, `/health`, stage counts.
//!
//! Needs the private cluster seeded (`make seed`) and the artifacts (`make model`); the database
//! is `DATABASE_URL` or the default DSN. Fails with a clear message when either is missing.

use std::collections::HashMap;
use std::path::PathBuf;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::{header, StatusCode};
use actix_web::test::{self, TestRequest};
use actix_web::web::Data;
use serde_json::{json, Value};

use candle_server::model::{input_rows, RankNet};
use candle_server::server::app::{build_app, AppState, Scorer, WorkerState};
use candle_server::server::cli::DEFAULT_DSN;
use candle_server::server::db::{pg_config, Database};

fn dsn() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| DEFAULT_DSN.into())
}

fn model() -> RankNet {
    let dir = std::env::var_os("RANKBENCH_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../artifacts"));
    RankNet::load_dir(dir).unwrap_or_else(|e| panic!("{e}"))
}

/// The test's own connection, to read the features the server should have used.
async fn features_client() -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(&dsn(), tokio_postgres::NoTls).await.unwrap_or_else(|e| {
            panic!("database {} unreachable ({e}); run `make db-up seed` first", dsn())
        });
    actix_web::rt::spawn(connection);
    client
}

async fn app(
    scorer: Scorer,
) -> impl Service<
    actix_http::Request,
    Response = ServiceResponse<impl MessageBody>,
    Error = actix_web::Error,
> {
    let state = Data::new(AppState::new(scorer, 1));
    let db = Database::new(pg_config(&dsn()).expect("dsn"), 2).expect("pool");
    let worker = Data::new(WorkerState::new(&state, db));
    test::init_service(build_app(state, worker)).await
}

async fn call<S, B>(app: &S, req: TestRequest) -> (StatusCode, Value)
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let res = test::call_service(app, req.to_request()).await;
    let status = res.status();
    let body = test::read_body(res).await;
    (status, serde_json::from_slice(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}")))
}

fn rank(body: Value) -> TestRequest {
    TestRequest::post()
        .uri("/rank")
        .insert_header((header::CONTENT_TYPE, "application/json"))
        .set_payload(body.to_string())
}

/// What the server should answer, computed from the database rows by the test itself.
async fn expected_items(
    client: &tokio_postgres::Client,
    net: &RankNet,
    user_id: i64,
    item_ids: &[i64],
    top_k: usize,
) -> Vec<(i64, f32)> {
    let user: Vec<f32> = client
        .query_one("SELECT features FROM users WHERE id = $1", &[&user_id])
        .await
        .expect("user row")
        .get(0);
    let mut rows: HashMap<i64, Vec<f32>> = HashMap::new();
    for row in client
        .query("SELECT id, features FROM items WHERE id = ANY($1)", &[&item_ids])
        .await
        .expect("item rows")
    {
        rows.insert(row.get(0), row.get(1));
    }
    let mut scored: Vec<(i64, f32)> = rows
        .iter()
        .map(|(&id, features)| {
            let x = input_rows(&user, [features.as_slice()]).expect("row");
            (id, net.score_rows(x).expect("score")[0])
        })
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    scored.truncate(top_k);
    scored
}

#[actix_web::test]
async fn rank_scores_the_right_features_in_the_right_order() {
    let client = features_client().await;
    let net = model();
    let app = app(Scorer::Candle(net.clone())).await;
    // Known and unknown ids, duplicates, several sizes and top_k values.
    let cases: [(i64, Vec<i64>, Option<usize>); 4] = [
        (7, vec![12, 99_999, 5, 12, 100_000, 40_000, 1], None),
        (199_999, vec![3, 1_000_000, -4, 77, 78, 79, 80, 81, 82, 83, 84, 85, 86], Some(4)),
        (1, (1..=300).map(|i| i * 331).collect(), Some(1000)),
        (42, vec![100_001, 5], Some(1)),
    ];
    for (user_id, item_ids, top_k) in cases {
        let mut body = json!({"user_id": user_id, "item_ids": item_ids, "ignored": [1, 2]});
        if let Some(k) = top_k {
            body["top_k"] = json!(k);
        }
        let (status, value) = call(&app, rank(body)).await;
        assert_eq!(status, StatusCode::OK, "{value}");
        assert_eq!(value["user_id"], json!(user_id));
        let got: Vec<(i64, f64)> = value["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|item| (item["id"].as_i64().expect("id"), item["score"].as_f64().expect("score")))
            .collect();
        let want = expected_items(&client, &net, user_id, &item_ids, top_k.unwrap_or(10)).await;
        assert_eq!(
            got.iter().map(|g| g.0).collect::<Vec<_>>(),
            want.iter().map(|w| w.0).collect::<Vec<_>>(),
            "user {user_id}: ids"
        );
        for ((id, score), (_, want_score)) in got.iter().zip(&want) {
            // Batched and single-row forward passes differ in the last bits only.
            assert!(
                (score - f64::from(*want_score)).abs() < 1e-6,
                "item {id}: {score} vs {want_score}"
            );
        }
    }
}

#[actix_web::test]
async fn unknown_user_404_and_unknown_items_empty() {
    let app = app(Scorer::Candle(model())).await;
    let (status, value) = call(&app, rank(json!({"user_id": 123_456_789, "item_ids": [1]}))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(value, json!({"error": "user 123456789 not found"}));

    let (status, value) =
        call(&app, rank(json!({"user_id": 3, "item_ids": [-1, 0, 100_001]}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(value, json!({"user_id": 3, "items": []}));
}

#[actix_web::test]
async fn health_and_stage_counts() {
    let app = app(Scorer::Candle(model())).await;
    let (status, value) = call(&app, TestRequest::get().uri("/health")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(value, json!({"status": "ok", "server": "candle"}));

    let res = test::call_service(&app, TestRequest::post().uri("/stats/reset").to_request()).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    for user_id in 1..=5 {
        let (status, _) =
            call(&app, rank(json!({"user_id": user_id, "item_ids": [1, 2, 3]}))).await;
        assert_eq!(status, StatusCode::OK);
    }
    // Found user, no items found: 200 without pre/infer. Unknown user: counted as an error.
    call(&app, rank(json!({"user_id": 1, "item_ids": [0]}))).await;
    call(&app, rank(json!({"user_id": 0, "item_ids": [1]}))).await;

    let (_, stats) = call(&app, TestRequest::get().uri("/stats")).await;
    assert_eq!((stats["requests"].as_u64(), stats["errors"].as_u64()), (Some(7), Some(1)));
    let counts: Vec<(String, u64)> = stats["stages"]
        .as_object()
        .expect("stages")
        .iter()
        .map(|(name, s)| (name.clone(), s["count"].as_u64().expect("count")))
        .collect();
    let expect = [("parse", 6), ("db", 6), ("pre", 5), ("infer", 5), ("post", 6), ("total", 6)];
    for (name, count) in expect {
        assert!(counts.contains(&(name.to_owned(), count)), "{name}: {counts:?}");
    }
    let total = &stats["stages"]["total"];
    let parts: f64 = ["parse", "db", "pre", "infer", "post"]
        .iter()
        .map(|s| stats["stages"][s]["sum_us"].as_f64().expect("sum"))
        .sum();
    let total_sum = total["sum_us"].as_f64().expect("sum");
    assert!(parts <= total_sum && total_sum > 0.0, "stages {parts} vs total {total_sum}");
    assert!(total["p50_us"].as_f64() <= total["p99_us"].as_f64());
    assert!(total["p99_us"].as_f64() <= Some(total["max_us"].as_f64().expect("max") * 1.001));
}
