//! A `/rank` answer from scored items: the contract's order (score descending, ties by id
//! ascending), at most `top_k` items, and the JSON body. One code path for a request served alone
//! and for a request of a batch.

use serde::Serialize;

use super::error::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ScoredItem {
    pub id: i64,
    pub score: f32,
}

#[derive(Serialize)]
struct RankResponse<'a> {
    user_id: i64,
    items: &'a [ScoredItem],
}

/// The 200 body: `{"user_id": .., "items": [{"id": .., "score": ..}, ...]}` with the best `top_k`
/// of `items` in the contract's order; scores in their shortest float32 form.
pub fn rank_body(
    user_id: i64,
    mut items: Vec<ScoredItem>,
    top_k: usize,
) -> Result<Vec<u8>, ApiError> {
    keep_top_k(&mut items, top_k);
    serde_json::to_vec(&RankResponse { user_id, items: &items })
        .map_err(|e| ApiError::Internal(format!("cannot encode response: {e}")))
}

/// Sorts by score descending, ties by id ascending, and keeps the first `k`.
fn keep_top_k(items: &mut Vec<ScoredItem>, k: usize) {
    let order = |a: &ScoredItem, b: &ScoredItem| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id));
    if k < items.len() {
        items.select_nth_unstable_by(k, order);
        items.truncate(k);
    }
    items.sort_unstable_by(order);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(pairs: &[(i64, f32)]) -> Vec<ScoredItem> {
        pairs.iter().map(|&(id, score)| ScoredItem { id, score }).collect()
    }

    fn ids(items: &[ScoredItem]) -> Vec<i64> {
        items.iter().map(|i| i.id).collect()
    }

    #[test]
    fn top_k_orders_by_score_then_id() {
        let mut v = items(&[(5, 0.5), (3, 0.9), (9, 0.5), (1, 0.1), (2, 0.5)]);
        keep_top_k(&mut v, 3);
        assert_eq!(ids(&v), vec![3, 2, 5]);
        let mut v = items(&[(5, 0.5), (3, 0.9), (9, 0.5)]);
        keep_top_k(&mut v, 10);
        assert_eq!(ids(&v), vec![3, 5, 9]);
        let mut v = items(&[(4, 0.0), (2, 0.0), (7, 0.0)]);
        keep_top_k(&mut v, 2);
        assert_eq!(ids(&v), vec![2, 4]);
        let mut v = items(&[]);
        keep_top_k(&mut v, 1);
        assert!(v.is_empty());
    }

    #[test]
    fn scores_are_written_in_their_shortest_float32_form() {
        // What a float32 needs to read back exactly, not the float64 expansion of it
        // (0.1f32 widened would print as 0.10000000149011612).
        let items = items(&[(2, 0.1), (3, 1.0 / 3.0), (4, 0.5), (5, 1e-7), (6, 0.0)]);
        let body = String::from_utf8(rank_body(1, items, 10).expect("json")).expect("UTF-8");
        assert_eq!(
            body,
            r#"{"user_id":1,"items":[{"id":4,"score":0.5},{"id":3,"score":0.33333334},"#.to_owned()
                + r#"{"id":2,"score":0.1},{"id":5,"score":1e-7},{"id":6,"score":0.0}]}"#
        );
        assert_eq!(rank_body(9, Vec::new(), 3).expect("json"), br#"{"user_id":9,"items":[]}"#);
    }
}
