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
use futures_util::future::join_all;
use serde_json::{json, Value};

use candle_server::model::RankNet;
use candle_server::server::app::AppState;
use candle_server::server::batching::BatchSettings;
use candle_server::server::scorer::{NoModel, Scorer};
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
    answers_match_the_numpy_reference(named(Box::new(model())), "candle", false).await;
}

#[actix_web::test]
async fn rank_answers_on_onnx_runtime_match_the_numpy_reference() {
    let state = named(Box::new(common::onnx_model(1)));
    answers_match_the_numpy_reference(state, "onnx", false).await;
}

/// Micro-batching: the fixture's requests all at once with unknown users and bad input among
/// them, so that they are served in batches; each answer is still the reference's.
#[actix_web::test]
async fn batched_answers_match_the_numpy_reference() {
    for (scorer, runtime) in [
        (Box::new(model()) as Box<dyn Scorer>, "candle"),
        (Box::new(common::onnx_model(1)), "onnx"),
    ] {
        let settings = BatchSettings::new(64, 0, None, 2, 1).expect("settings");
        let state = named(scorer).with_batching(settings);
        answers_match_the_numpy_reference(state, runtime, true).await;
    }
}

/// `--max-wait-us`: a slot waits for a full batch or for its oldest request's deadline. Six
/// requests at once with batches of at most four: four go at once, the other two wait out the
/// 50 ms and go together.
#[actix_web::test]
async fn max_wait_holds_a_partial_batch_until_its_deadline() {
    let settings = BatchSettings::new(4, 50_000, None, 2, 1).expect("settings");
    let app = common::app(named(Box::new(NoModel)).with_batching(settings), &dsn()).await;
    let bodies: Vec<String> =
        (1..=6).map(|user| format!(r#"{{"user_id": {user}, "item_ids": [1, 2]}}"#)).collect();
    let answers = join_all(bodies.iter().map(|body| call(&app, rank(body)))).await;
    for (user, (status, _, value)) in (1..=6).zip(answers) {
        assert_eq!(status, StatusCode::OK, "{value}");
        assert_eq!(value["user_id"], json!(user));
    }
    let (_, _, stats) = call(&app, TestRequest::get().uri("/stats")).await;
    assert_eq!(stats["batching"]["batch_sizes"], json!([[2, 1], [4, 1]]), "{stats}");
    assert_eq!(stats["batching"]["max_wait_us"], json!(50_000));
    let queue = number(&stats, &["stages", "queue", "max_us"]);
    assert!((50_000.0..1_000_000.0).contains(&queue), "queue max {queue} us: {stats}");
}

/// Requests that are not fixture cases, mixed in when sending concurrently: each gets its own
/// error, the rest of its batch its answer.
fn intruders() -> Vec<(Value, StatusCode, Value)> {
    let unknown = |id: i64| {
        (
            json!({"user_id": id, "item_ids": [1, 2]}),
            StatusCode::NOT_FOUND,
            json!({"error": format!("user {id} not found")}),
        )
    };
    vec![
        unknown(1_000_000_007),
        (json!("{broken"), StatusCode::BAD_REQUEST, Value::Null),
        unknown(-3),
        (
            json!({"user_id": 5, "item_ids": []}),
            StatusCode::BAD_REQUEST,
            json!({"error": "item_ids must have 1 to 1000 entries, got 0"}),
        ),
        (
            json!({"user_id": 5, "item_ids": [0, -1]}),
            StatusCode::OK,
            json!({"user_id": 5, "items": []}),
        ),
    ]
}

/// Every case of `artifacts/rank_fixture.json` through `/rank` of `state`: the same ids in the
/// same order as the reference, scores within its tolerance, 404 for its unknown users. With
/// `concurrently`, all requests (and the intruders) are in flight at once, and a micro-batching
/// server must show batches of more than one request in `/stats`.
async fn answers_match_the_numpy_reference(state: AppState, runtime: &str, concurrently: bool) {
    let fixture = common::artifact_json("rank_fixture.json", "rank-fixture");
    let tolerance = fixture["tolerance"].as_f64().expect("fixture has a numeric `tolerance`");
    let cases = fixture["cases"].as_array().expect("fixture has a list of `cases`");
    assert!(!cases.is_empty(), "the fixture has no cases");
    let batching = state.batching.is_some();
    let app = common::app(state, &dsn()).await;

    let mut requests: Vec<&Value> = cases.iter().map(|case| &case["request"]).collect();
    let intruders = if concurrently { intruders() } else { Vec::new() };
    for (k, (request, _, _)) in intruders.iter().enumerate() {
        requests.insert((3 * k + 1).min(requests.len()), request);
    }
    let body =
        |request: &Value| request.as_str().map_or_else(|| request.to_string(), str::to_owned);
    let answers = if concurrently {
        join_all(requests.iter().map(|r| call_raw(&app, rank(body(r))))).await
    } else {
        let mut answers = Vec::new();
        for r in &requests {
            answers.push(call_raw(&app, rank(body(r))).await);
        }
        answers
    };

    let (mut answered, mut unknown_users) = (0, 0);
    for (request, (status, _, body)) in requests.iter().zip(answers) {
        let text = std::str::from_utf8(&body).expect("UTF-8 body");
        let value: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
        if let Some((_, want_status, want)) = intruders.iter().find(|(r, _, _)| r == *request) {
            assert_eq!(status, *want_status, "{request}: {value}");
            assert!(want.is_null() || value == *want, "{request}: {value}");
            continue;
        }
        let (index, case) = cases
            .iter()
            .enumerate()
            .find(|(_, case)| &case["request"] == *request)
            .expect("a fixture case");
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
    if batching {
        let (_, _, stats) = call(&app, TestRequest::get().uri("/stats")).await;
        let batches = &stats["batching"];
        // Every valid request went through a batch (bad input never does), and batches formed.
        let valid = requests.len() - 2;
        assert_eq!(number(batches, &["requests"]), valid as f64, "{batches}");
        let sizes: Vec<(u64, u64)> = serde_json::from_value(batches["batch_sizes"].clone())
            .unwrap_or_else(|e| panic!("batch_sizes is not [[size, count], ...]: {e}"));
        assert_eq!(sizes.iter().map(|s| s.1).sum::<u64>() as f64, number(batches, &["batches"]));
        assert!(sizes.iter().any(|s| s.0 > 1), "no batch of more than one request: {batches}");
        // `queue` is recorded for the 200 answers, as every other stage.
        let ok = answered + 1;
        assert_eq!(number(&stats, &["stages", "queue", "count"]), ok as f64, "{stats}");
        assert_eq!(number(&stats, &["stages", "total", "count"]), ok as f64, "{stats}");
    }
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
    // The sums are microseconds with nanosecond resolution: compare whole nanoseconds, exactly
    // (adding five f64 sums can land a rounding step above the total the stages partition).
    let ns = |value: f64| (value * 1000.0).round() as i64;
    let parts: i64 = ["parse", "db", "pre", "infer", "post"]
        .iter()
        .map(|s| ns(number(&stats, &["stages", s, "sum_us"])))
        .sum();
    let total_sum = ns(number(&stats, &["stages", "total", "sum_us"]));
    assert!(parts <= total_sum && total_sum > 0, "stages {parts} ns vs total {total_sum} ns");
    let total = |key: &str| number(&stats, &["stages", "total", key]);
    assert!(total("p50_us") <= total("p90_us"), "{}", stats["stages"]["total"]);
    assert!(total("p90_us") <= total("p99_us"), "{}", stats["stages"]["total"]);
    assert!(total("p99_us") <= total("max_us"), "{}", stats["stages"]["total"]);
}
