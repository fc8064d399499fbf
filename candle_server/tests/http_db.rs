//! `/rank` end to end in-process, against the seeded database and the real model, compared with
//! the answers of the plain-numpy reference (`artifacts/rank_fixture.json`, written by
//! `make rank-fixture`): the right features reach the right ids, ranking, ties and top-k,
//! unknown ids and users; then `/health` and the stage counts.
//!
//! Needs the private cluster seeded (`make seed`), the artifacts (`make model`) and the fixture;
//! the database is `DATABASE_URL` or the default DSN. Fails with a clear message when one is
//! missing.

mod common;

use actix_web::http::StatusCode;
use actix_web::test::{self, TestRequest};
use serde_json::{json, Value};

use candle_server::model::RankNet;
use candle_server::server::app::AppState;
use candle_server::server::scorer::Scorer;
use common::{call, call_raw, dsn, rank, SERVER_NAME};

fn model() -> RankNet {
    RankNet::load_dir(common::artifacts_dir()).unwrap_or_else(|e| panic!("{e}"))
}

fn named(scorer: Box<dyn Scorer>) -> AppState {
    AppState::new(SERVER_NAME, scorer, 1)
}

/// `(id, score)` of a list of ranked items whose id is under `id_key`.
fn ranked(items: &Value, id_key: &str) -> Vec<(i64, f64)> {
    items
        .as_array()
        .unwrap_or_else(|| panic!("items is not a list: {items}"))
        .iter()
        .map(|item| {
            let id = item[id_key].as_i64().unwrap_or_else(|| panic!("no {id_key} in {item}"));
            (id, item["score"].as_f64().unwrap_or_else(|| panic!("no score in {item}")))
        })
        .collect()
}

/// The number literals after `"score":` in a response body, as sent.
fn score_literals(body: &str) -> Vec<&str> {
    body.split("\"score\":")
        .skip(1)
        .map(|rest| rest.split([',', '}']).next().unwrap_or(rest).trim())
        .collect()
}

/// Significant digits of a JSON number literal (`0.00123` has 3, `1.5e-7` has 2).
fn significant_digits(literal: &str) -> usize {
    let mantissa = literal.split(['e', 'E']).next().unwrap_or(literal);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let digits = digits.trim_start_matches('0').trim_end_matches('0');
    digits.len().max(1)
}

#[test]
fn significant_digits_counts_what_a_reader_needs() {
    assert_eq!(significant_digits("0.1"), 1);
    assert_eq!(significant_digits("0.33333334"), 8);
    assert_eq!(significant_digits("0.10000000149011612"), 17);
    assert_eq!(significant_digits("1.5e-7"), 2);
    assert_eq!(significant_digits("0.0"), 1);
    assert_eq!(
        score_literals(r#"{"items":[{"id":1,"score":0.5},{"id":2,"score":1e-7}]}"#),
        ["0.5", "1e-7"]
    );
}

#[actix_web::test]
async fn rank_answers_match_the_numpy_reference() {
    assert_answers_match_the_numpy_reference(Box::new(model()), "candle").await;
}

#[actix_web::test]
async fn rank_answers_on_onnx_runtime_match_the_numpy_reference() {
    assert_answers_match_the_numpy_reference(Box::new(common::onnx_model(1)), "onnx").await;
}

/// Every case of `artifacts/rank_fixture.json` through `/rank` with `scorer`: the same ids in the
/// same order as the reference, scores within its tolerance, 404 for its unknown users.
async fn assert_answers_match_the_numpy_reference(scorer: Box<dyn Scorer>, runtime: &str) {
    let fixture = common::artifact_json("rank_fixture.json", "rank-fixture");
    let tolerance = fixture["tolerance"].as_f64().expect("fixture has a numeric `tolerance`");
    let cases = fixture["cases"].as_array().expect("fixture has a list of `cases`");
    assert!(!cases.is_empty(), "the fixture has no cases");
    let app = common::app(named(scorer), &dsn()).await;

    let (mut answered, mut unknown_users) = (0, 0);
    for (index, case) in cases.iter().enumerate() {
        let request = &case["request"];
        let (status, _, body) = call_raw(&app, rank(request)).await;
        let text = std::str::from_utf8(&body).expect("UTF-8 body");
        let value: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
        let expected = &case["expected"];
        if expected.is_null() {
            // The reference found no such user.
            assert_eq!(status, StatusCode::NOT_FOUND, "case {index}: {value}");
            let user_id = request["user_id"].as_i64().expect("user_id");
            assert_eq!(value, json!({"error": format!("user {user_id} not found")}));
            unknown_users += 1;
            continue;
        }
        assert_eq!(status, StatusCode::OK, "case {index}: {value}");
        assert_eq!(value["user_id"], expected["user_id"], "case {index}");

        let got = ranked(&value["items"], "id");
        let want = ranked(&expected["items"], "item_id");
        let ids = |items: &[(i64, f64)]| items.iter().map(|i| i.0).collect::<Vec<_>>();
        assert_eq!(ids(&got), ids(&want), "case {index} (user {}): ids", value["user_id"]);
        for ((id, score), (_, want_score)) in got.iter().zip(&want) {
            assert!(
                (score - want_score).abs() <= tolerance,
                "case {index}, item {id}: {runtime} {score} vs numpy {want_score}"
            );
        }
        // Scores are float32 written in their shortest form (at most 9 significant digits),
        // not widened to float64 (0.1f32 would become 0.10000000149011612).
        for literal in score_literals(text) {
            assert!(significant_digits(literal) <= 9, "case {index}: score written as {literal}");
        }
        answered += 1;
    }
    assert!(answered > 0, "no case of the fixture expects an answer");
    eprintln!(
        "{runtime}: {answered} answers and {unknown_users} unknown users as the reference says"
    );
}

#[actix_web::test]
async fn unknown_user_404_and_unknown_items_empty() {
    let app = common::app(named(Box::new(model())), &dsn()).await;
    let (status, _, value) =
        call(&app, rank(json!({"user_id": 123_456_789, "item_ids": [1]}))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(value, json!({"error": "user 123456789 not found"}));

    let (status, _, value) =
        call(&app, rank(json!({"user_id": 3, "item_ids": [-1, 0, 100_001]}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(value, json!({"user_id": 3, "items": []}));
}

/// A number of `/stats`, required: a missing key fails the test instead of comparing `None`s.
fn number(stats: &Value, path: &[&str]) -> f64 {
    let value = path.iter().fold(stats, |v, key| &v[*key]);
    value.as_f64().unwrap_or_else(|| panic!("/stats has no number at {path:?}: {stats}"))
}

#[actix_web::test]
async fn health_and_stage_counts() {
    let app = common::app(named(Box::new(model())), &dsn()).await;
    let (status, _, value) = call(&app, TestRequest::get().uri("/health")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(value, json!({"status": "ok", "server": SERVER_NAME}));

    let res = test::call_service(&app, TestRequest::post().uri("/stats/reset").to_request()).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    for user_id in 1..=5 {
        let (status, _, _) =
            call(&app, rank(json!({"user_id": user_id, "item_ids": [1, 2, 3]}))).await;
        assert_eq!(status, StatusCode::OK);
    }
    // Found user, no items found: 200 without pre/infer. Unknown user: counted as an error.
    call(&app, rank(json!({"user_id": 1, "item_ids": [0]}))).await;
    call(&app, rank(json!({"user_id": 0, "item_ids": [1]}))).await;

    let (_, _, stats) = call(&app, TestRequest::get().uri("/stats")).await;
    assert_eq!((number(&stats, &["requests"]), number(&stats, &["errors"])), (7.0, 1.0));
    let expect: [(&str, u32); 6] =
        [("parse", 6), ("db", 6), ("pre", 5), ("infer", 5), ("post", 6), ("total", 6)];
    for (name, count) in expect {
        let stage = &stats["stages"][name];
        assert_eq!(number(stage, &["count"]), f64::from(count), "{name}: {stage}");
        // The histogram holds every recorded value once, ascending.
        let histogram: Vec<(u64, u64)> = serde_json::from_value(stage["histogram"].clone())
            .unwrap_or_else(|e| panic!("{name}: histogram is not [[value_us, count], ...]: {e}"));
        assert_eq!(histogram.iter().map(|b| b.1).sum::<u64>(), u64::from(count), "{name}");
        assert!(histogram.iter().all(|b| b.1 > 0), "{name}: {histogram:?}");
        assert!(histogram.windows(2).all(|w| w[0].0 < w[1].0), "{name}: {histogram:?}");
    }
    let parts: f64 = ["parse", "db", "pre", "infer", "post"]
        .iter()
        .map(|s| number(&stats, &["stages", s, "sum_us"]))
        .sum();
    let total_sum = number(&stats, &["stages", "total", "sum_us"]);
    assert!(parts <= total_sum && total_sum > 0.0, "stages {parts} vs total {total_sum}");
    let total = |key: &str| number(&stats, &["stages", "total", key]);
    assert!(total("p50_us") <= total("p90_us"), "{}", stats["stages"]["total"]);
    assert!(total("p90_us") <= total("p99_us"), "{}", stats["stages"]["total"]);
    assert!(total("p99_us") <= total("max_us"), "{}", stats["stages"]["total"]);
}
