//! The `rankbench-ceiling` binary: the request ids it prints (the ones wrk's rank.lua sends), its
//! one-line errors, and a short run against the seeded database (`make db-up seed`).

mod common;

use std::process::{Command, Output};

use serde_json::{json, Value};

const BINARY: &str = env!("CARGO_BIN_EXE_rankbench-ceiling");

fn ceiling(flags: &[&str]) -> Output {
    Command::new(BINARY).args(flags).output().expect("run rankbench-ceiling")
}

fn stdout_lines(out: &Output) -> Vec<Value> {
    String::from_utf8(out.stdout.clone())
        .expect("UTF-8 stdout")
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

#[test]
fn print_requests_draws_items_then_user_from_park_miller() {
    // Seed 1: the generator's states are 48271, 182605794, 1291394886, 1914720637, ...
    // items = 1 + state mod 100000, then user = 1 + state mod 200000.
    let out = ceiling(&["--print-requests", "2", "--items", "3", "--dsn", "postgresql://unused"]);
    assert!(out.status.success(), "{out:?}");
    let lines = stdout_lines(&out);
    assert_eq!(
        lines,
        [
            json!({"user_id": 120638, "item_ids": [48272, 5795, 94887]}),
            json!({"user_id": 116506, "item_ids": [69042, 55684, 2162]}),
        ]
    );
    // Exactly those keys, in that order: the Lua side's JSON lines are compared as text.
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    assert!(text.starts_with(r#"{"user_id":120638,"item_ids":[48272,5795,94887]}"#), "{text}");
}

#[test]
fn print_requests_skips_repeated_ids_and_follows_the_seed() {
    // Three ids out of 1..3, seed 1: states mod 3 are 1, 0, 0, 1, 1, 2 -> ids 2, 1, (1), (2),
    // (2), 3; the user is drawn after the items.
    let out = ceiling(&[
        "--print-requests",
        "1",
        "--items",
        "3",
        "--item-min",
        "1",
        "--item-max",
        "3",
        "--user-min",
        "5",
        "--user-max",
        "5",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout_lines(&out), [json!({"user_id": 5, "item_ids": [2, 1, 3]})]);

    // Seed 0 starts from M - 1 = 2147483646: 2147483646 * 48271 mod M = M - 48271 = 2147435376.
    let out = ceiling(&["--print-requests", "1", "--items", "1", "--seed", "0"]);
    let first = &stdout_lines(&out)[0];
    assert_eq!(first["item_ids"], json!([1 + 2_147_435_376_i64 % 100_000]));
    // Every request of a long pool has distinct ids of the asked count, within the ranges.
    let out = ceiling(&["--print-requests", "500", "--items", "50", "--seed", "7"]);
    let lines = stdout_lines(&out);
    assert_eq!(lines.len(), 500);
    for request in &lines {
        let ids: Vec<i64> = serde_json::from_value(request["item_ids"].clone()).expect("ids");
        let distinct: std::collections::BTreeSet<i64> = ids.iter().copied().collect();
        assert_eq!((ids.len(), distinct.len()), (50, 50), "{request}");
        assert!(ids.iter().all(|id| (1..=100_000).contains(id)), "{request}");
        let user = request["user_id"].as_i64().expect("user");
        assert!((1..=200_000).contains(&user), "{request}");
    }
}

/// One line on stderr, starting with the tool's name or clap's `error:`.
fn assert_one_line_error(out: &Output, code: i32, says: &str) {
    assert_eq!(out.status.code(), Some(code), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(says), "{stderr}");
    assert!(out.stdout.is_empty(), "{out:?}");
}

#[test]
fn bad_flags_and_unreachable_database_are_one_line_errors() {
    let out =
        ceiling(&["--items", "11", "--item-min", "5", "--item-max", "15", "--print-requests", "1"]);
    assert!(out.status.success(), "11 ids out of 5..15 is every one of them: {out:?}");
    let out =
        ceiling(&["--items", "12", "--item-min", "5", "--item-max", "15", "--print-requests", "1"]);
    assert_one_line_error(
        &out,
        2,
        "rankbench-ceiling: --items 12 is more than the 11 distinct ids",
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
    let out = ceiling(&["--user-min", "9", "--user-max", "3", "--print-requests", "1"]);
    assert_one_line_error(&out, 2, "--user-min 9 is above --user-max 3");
    let out = ceiling(&["--items", "0"]);
    assert_one_line_error(&out, 2, "error: invalid value '0' for '--items <ITEMS>'");
    let out = ceiling(&["--duration", "0"]);
    assert_one_line_error(&out, 2, "must be more than 0 seconds");

    let dsn = common::unreachable_dsn();
    let out = ceiling(&["--dsn", &dsn, "--duration", "0.2", "--warmup", "0"]);
    assert_one_line_error(&out, 1, "rankbench-ceiling: database unavailable: ");
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1, "{out:?}");
}

#[test]
fn missing_table_is_a_one_line_error() {
    // A database without the tables: the server's statements cannot be prepared.
    let dsn = format!("{}?options=-c%20search_path%3Drankbench_no_such_schema", common::dsn());
    let out = ceiling(&["--dsn", &dsn, "--duration", "0.2", "--warmup", "0"]);
    assert_one_line_error(&out, 1, "relation \"users\" does not exist");
}

#[test]
fn short_run_reports_one_json_line() {
    let dsn = common::dsn();
    let out = ceiling(&[
        "--dsn",
        &dsn,
        "--connections",
        "2",
        "--clients",
        "3",
        "--items",
        "5",
        "--duration",
        "0.5",
        "--warmup",
        "0.2",
        "--seed",
        "3",
    ]);
    assert!(out.status.success(), "{out:?} (run `make db-up seed` first)");
    let lines = stdout_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let report = &lines[0];
    for (key, want) in [
        ("tool", json!("rankbench-ceiling")),
        ("connections", json!(2)),
        ("clients", json!(3)),
        ("items", json!(5)),
        ("seed", json!(3)),
        ("errors", json!(0)),
        ("duration_us", json!(500_000)),
        ("warmup_us", json!(200_000)),
    ] {
        assert_eq!(report[key], want, "{key}: {report}");
    }
    let transactions = report["transactions"].as_u64().expect("transactions");
    assert!(transactions > 0, "{report}");
    assert!(report["warmup_transactions"].as_u64().is_some_and(|n| n > 0), "{report}");
    let histogram: Vec<(u64, u64)> =
        serde_json::from_value(report["histogram"].clone()).expect("[[latency_us, count], ...]");
    assert_eq!(histogram.iter().map(|b| b.1).sum::<u64>(), transactions);
    assert!(histogram.windows(2).all(|w| w[0].0 < w[1].0), "{histogram:?}");
    let latency = &report["latency_us"];
    let at = |key: &str| latency[key].as_f64().unwrap_or_else(|| panic!("{key}: {latency}"));
    assert!(
        at("p50") <= at("p90") && at("p90") <= at("p99") && at("p99") <= at("max"),
        "{latency}"
    );
    assert!(at("mean") > 0.0 && at("mean") <= at("max"), "{latency}");
    // A transaction is two statements on a pooled connection: more than 1 us, less than 0.5 s.
    assert!(histogram[0].0 >= 1 && at("max") < 500_000.0, "{latency}");
}
