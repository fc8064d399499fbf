//! Micro-batching (`--batching`): valid `/rank` requests that arrive together share one database
//! round trip and one inference call, and each still gets exactly the answer it would get alone.
//! The same design as py_servers/batching.py, with the same flags and `/stats` keys.
//!
//! Per worker, one [`Batcher`]:
//! - a validated request joins the worker's queue (bad input is answered by the handler and never
//!   enters a batch);
//! - a slot is one batch in flight and holds at most one pooled connection: a worker has its
//!   share of `--batches-in-flight` slots (default: its share of `--pool-size`), never more than
//!   its connections. When a slot is free, up to `--max-batch` queued requests go out together:
//!   whatever is queued when the slot's task first runs (requests the worker read in the same
//!   turn of its event loop), or, with `--max-wait-us W` > 0, once `--max-batch` are queued or the
//!   oldest has waited W microseconds. A slot that finishes a batch takes the next one at once;
//! - a batch sends the contract's two queries widened to the batch on ONE pooled connection
//!   ([`Database::fetch_batch`]): all its users (`= ANY($1)`), then the items of the requests
//!   whose user exists. Then ONE inference call over the rows of every request (a request's
//!   items are its own rows, each found item once; the same item asked for by two requests is two
//!   rows), and each request is answered from its own rows: its found items, its `top_k`, the
//!   same order and tie rule ([`super::answer`]), 404 for an unknown user while the rest of the
//!   batch is answered, 503 for every request of a batch whose database work failed.
//!
//! Stages: a request records the durations it lived through: `parse`, `queue` (validated -> its
//! batch starts, before the pool acquire), `db` (the batch's pool acquire and both queries), `pre`
//! and `infer` (the batch's rows and inference, when the request has rows), `post` (end of
//! inference, or of the database work for a request without rows -> this request's body built, so
//! it includes the bodies built before it in the batch) and `total`. Once per batch, its size,
//! rows and own durations go to the batch block of `/stats`.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Notify};

use super::answer::{rank_body, ScoredItem};
use super::db::{BatchFeatures, Database};
use super::error::ApiError;
use super::request::RankRequest;
use super::scorer::Scorer;
use super::stats::{Stage, StageTimes, WorkerHandle};
use crate::model::{self, INPUT_FEATURES};

/// `--max-batch`'s default and largest value (py_servers' too).
pub const DEFAULT_MAX_BATCH: usize = 64;
pub const MAX_MAX_BATCH: usize = 1024;
/// `--max-wait-us`'s largest value.
pub const MAX_WAIT_US: u64 = 1_000_000;

/// The batching flags, over all workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchSettings {
    pub max_batch: usize,
    pub max_wait: Duration,
    /// Slots (batches in flight) of each worker.
    pub slots: Vec<usize>,
}

impl BatchSettings {
    /// `batches_in_flight` in total (default: the pool size) split over the workers like the
    /// pool, at least one each; never more than `pool_size` in total.
    pub fn new(
        max_batch: usize,
        max_wait_us: u64,
        batches_in_flight: Option<usize>,
        pool_size: usize,
        workers: usize,
    ) -> Result<Self, String> {
        if !(1..=MAX_MAX_BATCH).contains(&max_batch) {
            return Err(format!("--max-batch must be 1..{MAX_MAX_BATCH}, got {max_batch}"));
        }
        if max_wait_us > MAX_WAIT_US {
            return Err(format!("--max-wait-us must be 0..{MAX_WAIT_US}, got {max_wait_us}"));
        }
        let total = batches_in_flight.unwrap_or(pool_size);
        if !(1..=pool_size).contains(&total) {
            return Err(format!(
                "--batches-in-flight must be 1..--pool-size ({pool_size}): a batch holds one \
                 pooled connection, got {total}"
            ));
        }
        let workers = workers.max(1);
        let slots = (0..workers)
            .map(|w| (total / workers + usize::from(w < total % workers)).max(1))
            .collect();
        Ok(BatchSettings { max_batch, max_wait: Duration::from_micros(max_wait_us), slots })
    }

    /// The slots of worker `index`.
    pub fn slots_of(&self, index: usize) -> usize {
        self.slots.get(index).copied().unwrap_or(1)
    }
}

/// A request's answer from its batch: the 200 body and its stage durations, or the error status.
pub type Answer = Result<(Vec<u8>, StageTimes), ApiError>;

struct Pending {
    request: RankRequest,
    received: Instant,
    parsed: Instant,
    reply: oneshot::Sender<Answer>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Pending>,
    /// Slots not serving a batch.
    free: usize,
    /// A slot task was started and has not taken its batch yet.
    waking: bool,
}

/// One worker's queue and batch slots. Lives on the worker's thread (actix runs each worker on a
/// single-threaded runtime): slots are local tasks, the queue a `RefCell`.
pub struct Batcher {
    queue: RefCell<Queue>,
    /// Wakes slots waiting for a full batch (`--max-wait-us` > 0).
    full: Notify,
    db: Database,
    scorer: Arc<dyn Scorer>,
    stats: WorkerHandle,
    max_batch: usize,
    max_wait: Duration,
}

impl fmt::Debug for Batcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batcher")
            .field("max_batch", &self.max_batch)
            .field("max_wait", &self.max_wait)
            .finish_non_exhaustive()
    }
}

impl Batcher {
    pub fn new(
        db: Database,
        scorer: Arc<dyn Scorer>,
        stats: WorkerHandle,
        settings: &BatchSettings,
        slots: usize,
    ) -> Rc<Self> {
        Rc::new(Batcher {
            queue: RefCell::new(Queue { free: slots.max(1), ..Queue::default() }),
            full: Notify::new(),
            db,
            scorer,
            stats,
            max_batch: settings.max_batch,
            max_wait: settings.max_wait,
        })
    }

    /// Queues a validated request and waits for its answer from a batch.
    pub async fn rank(
        self: &Rc<Self>,
        request: RankRequest,
        received: Instant,
        parsed: Instant,
    ) -> Answer {
        let (reply, answer) = oneshot::channel();
        self.submit(Pending { request, received, parsed, reply });
        answer
            .await
            .unwrap_or_else(|_| Err(ApiError::Internal("its batch ended without an answer".into())))
    }

    fn submit(self: &Rc<Self>, pending: Pending) {
        {
            let mut queue = self.queue.borrow_mut();
            queue.waiting.push_back(pending);
            if !self.max_wait.is_zero() && queue.waiting.len() >= self.max_batch {
                self.full.notify_waiters();
            }
        }
        self.start_slot_if_needed();
    }

    /// Starts a slot when requests wait, a slot is free and no slot started before is still to
    /// take its batch.
    fn start_slot_if_needed(self: &Rc<Self>) {
        let start = {
            let mut queue = self.queue.borrow_mut();
            let start = !queue.waiting.is_empty() && queue.free > 0 && !queue.waking;
            if start {
                queue.free -= 1;
                queue.waking = true;
            }
            start
        };
        if start {
            actix_web::rt::spawn(self.clone().slot());
        }
    }

    /// One slot: serves batches while requests are queued, then gives the slot back.
    async fn slot(self: Rc<Self>) {
        // Gives the slot back however the task ends (also when a stopping worker drops it).
        struct Release(Rc<Batcher>, bool);
        impl Drop for Release {
            fn drop(&mut self) {
                let mut queue = self.0.queue.borrow_mut();
                queue.free += 1;
                if !self.1 {
                    // Ended before taking a batch: let the next request start a slot.
                    queue.waking = false;
                }
            }
        }
        let mut release = Release(self.clone(), false);
        let mut batch = self.take().await;
        self.queue.borrow_mut().waking = false;
        release.1 = true;
        while !batch.is_empty() {
            // More than one batch is queued: another slot serves the next one meanwhile.
            self.start_slot_if_needed();
            self.serve(batch).await;
            let queued = !self.queue.borrow().waiting.is_empty();
            batch = if queued { self.take().await } else { Vec::new() };
        }
    }

    /// Up to `max_batch` queued requests; with a max wait, once that many are queued or the
    /// oldest has waited that long.
    async fn take(&self) -> Vec<Pending> {
        while !self.max_wait.is_zero() {
            let due = {
                let queue = self.queue.borrow();
                match queue.waiting.front() {
                    Some(oldest) if queue.waiting.len() < self.max_batch => {
                        oldest.parsed + self.max_wait
                    }
                    _ => break,
                }
            };
            if due <= Instant::now() {
                break;
            }
            tokio::select! {
                _ = self.full.notified() => {}
                _ = tokio::time::sleep_until(due.into()) => {}
            }
        }
        let mut queue = self.queue.borrow_mut();
        let n = queue.waiting.len().min(self.max_batch);
        queue.waiting.drain(..n).collect()
    }

    async fn serve(&self, batch: Vec<Pending>) {
        let start = Instant::now();
        let size = batch.len();
        let mut user_ids: Vec<i64> = batch.iter().map(|p| p.request.user_id).collect();
        user_ids.sort_unstable();
        user_ids.dedup();
        let features =
            self.db.fetch_batch(&user_ids, |users| items_of_known_users(&batch, users)).await;
        let features = match features {
            Ok(features) => features,
            Err(error) => {
                self.stats.lock().record_batch(size, 0, None);
                for pending in batch {
                    let _ = pending.reply.send(Err(error.clone()));
                }
                return;
            }
        };
        let fetched = Instant::now();
        let plan = plan_batch(&batch, &features);
        let rows = plan.rows.len() / INPUT_FEATURES;
        let (scores, inferred) = if rows > 0 {
            let prepared = Instant::now();
            let scores = self.scorer.scores(plan.rows);
            let inferred = Instant::now();
            (Some(scores), Some((prepared, inferred)))
        } else {
            (None, None)
        };

        let mut done = fetched;
        for (pending, part) in batch.into_iter().zip(plan.parts) {
            let answer = answer(&pending.request, part.as_ref(), scores.as_ref());
            done = Instant::now();
            let answer = answer.map(|body| {
                let scored =
                    part.as_ref().is_some_and(|p| p.as_ref().is_ok_and(|p| !p.ids.is_empty()));
                let mut times = StageTimes::default();
                times.set(Stage::Parse, pending.parsed - pending.received);
                times.set(Stage::Queue, start.saturating_duration_since(pending.parsed));
                times.set(Stage::Db, fetched - start);
                let post_from = match inferred {
                    Some((prepared, inferred)) if scored => {
                        times.set(Stage::Pre, prepared - fetched);
                        times.set(Stage::Infer, inferred - prepared);
                        inferred
                    }
                    _ => fetched,
                };
                times.set(Stage::Post, done - post_from);
                times.set(Stage::Total, done - pending.received);
                (body, times)
            });
            // The receiver is gone only when its client left: nothing to answer then.
            let _ = pending.reply.send(answer);
        }

        let mut times = StageTimes::default();
        times.set(Stage::Db, fetched - start);
        let post_from = match inferred {
            Some((prepared, inferred)) => {
                times.set(Stage::Pre, prepared - fetched);
                times.set(Stage::Infer, inferred - prepared);
                inferred
            }
            None => fetched,
        };
        times.set(Stage::Post, done - post_from);
        times.set(Stage::Total, done - start);
        self.stats.lock().record_batch(size, rows, Some(&times));
    }
}

/// The distinct item ids, ascending, of the requests whose user was found (the widened items
/// query).
fn items_of_known_users(batch: &[Pending], users: &HashMap<i64, Vec<f32>>) -> Vec<i64> {
    let mut ids: Vec<i64> = batch
        .iter()
        .filter(|p| users.contains_key(&p.request.user_id))
        .flat_map(|p| p.request.item_ids.iter().copied())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// One request's share of a batch: rows `start..start + ids.len()` of the input, for these items.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Part {
    start: usize,
    ids: Vec<i64>,
}

/// A batch's model input and each request's part of it (`None`: its user does not exist).
struct Plan {
    rows: Vec<f32>,
    parts: Vec<Option<Result<Part, ApiError>>>,
}

fn plan_batch(batch: &[Pending], features: &BatchFeatures) -> Plan {
    let mut rows = Vec::new();
    let parts = batch
        .iter()
        .map(|pending| {
            let user = features.users.get(&pending.request.user_id)?;
            // The request's ids are distinct and ascending (RankRequest): each found item once.
            let ids: Vec<i64> = pending
                .request
                .item_ids
                .iter()
                .copied()
                .filter(|id| features.items.contains_key(id))
                .collect();
            let start = rows.len() / INPUT_FEATURES;
            let items = ids.iter().filter_map(|id| features.items.get(id).map(Vec::as_slice));
            Some(
                model::push_rows(&mut rows, user, items)
                    .map(|()| Part { start, ids })
                    .map_err(|e| ApiError::Internal(e.to_string())),
            )
        })
        .collect();
    Plan { rows, parts }
}

/// One request's body from its part of the batch and the batch's scores.
fn answer(
    request: &RankRequest,
    part: Option<&Result<Part, ApiError>>,
    scores: Option<&Result<Vec<f32>, super::scorer::ScorerError>>,
) -> Result<Vec<u8>, ApiError> {
    let Some(part) = part else {
        return Err(ApiError::NotFound(format!("user {} not found", request.user_id)));
    };
    let part = part.as_ref().map_err(Clone::clone)?;
    if part.ids.is_empty() {
        return rank_body(request.user_id, Vec::new(), request.top_k);
    }
    let scores = match scores {
        Some(Ok(scores)) => scores,
        Some(Err(e)) => return Err(ApiError::Internal(e.to_string())),
        None => return Err(ApiError::Internal("a request with rows got no scores".into())),
    };
    let mine = scores.get(part.start..part.start + part.ids.len()).ok_or_else(|| {
        ApiError::Internal(format!("{} scores for the batch's rows", scores.len()))
    })?;
    let items = part.ids.iter().zip(mine).map(|(&id, &score)| ScoredItem { id, score }).collect();
    rank_body(request.user_id, items, request.top_k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ITEM_FEATURES, USER_FEATURES};

    fn pending(user_id: i64, item_ids: &[i64], top_k: usize) -> Pending {
        let now = Instant::now();
        Pending {
            request: RankRequest { user_id, item_ids: item_ids.to_vec(), top_k },
            received: now,
            parsed: now,
            reply: oneshot::channel().0,
        }
    }

    #[test]
    fn settings_split_the_slots_like_the_pool() {
        let s = BatchSettings::new(64, 0, None, 8, 1).expect("defaults");
        assert_eq!((s.max_batch, s.max_wait, s.slots.clone()), (64, Duration::ZERO, vec![8]));
        assert_eq!(BatchSettings::new(64, 250, Some(5), 8, 2).expect("5 of 8").slots, vec![3, 2]);
        assert_eq!(BatchSettings::new(64, 0, Some(1), 8, 2).expect("1").slots, vec![1, 1]);
        assert_eq!(
            BatchSettings::new(8, 250, None, 8, 1).expect("wait").max_wait,
            Duration::from_micros(250)
        );
        for (max_batch, wait, in_flight, message) in [
            (0, 0, None, "--max-batch must be 1..1024, got 0"),
            (1025, 0, None, "--max-batch must be 1..1024, got 1025"),
            (64, 1_000_001, None, "--max-wait-us must be 0..1000000, got 1000001"),
            (64, 0, Some(9), "--batches-in-flight must be 1..--pool-size (8)"),
            (64, 0, Some(0), "--batches-in-flight must be 1..--pool-size (8)"),
        ] {
            let err = BatchSettings::new(max_batch, wait, in_flight, 8, 1).expect_err(message);
            assert!(err.starts_with(message), "{err}");
        }
    }

    #[test]
    fn a_batch_is_planned_per_request_and_answered_from_its_own_rows() {
        // Users 1 and 2 exist, 3 does not; items 10, 11 and 12 exist, 99 does not.
        let user = |v: f32| vec![v; USER_FEATURES];
        let item = |v: f32| vec![v; ITEM_FEATURES];
        let features = BatchFeatures {
            users: HashMap::from([(1, user(1.0)), (2, user(2.0))]),
            items: HashMap::from([(10, item(10.0)), (11, item(11.0)), (12, item(12.0))]),
        };
        let batch = [
            pending(1, &[10, 11, 99], 10),
            pending(3, &[10], 10),
            pending(2, &[11, 12], 1),
            pending(1, &[99], 5),
            pending(1, &[11], 3),
        ];
        let known = HashMap::from([(1, user(1.0)), (2, user(2.0))]);
        assert_eq!(items_of_known_users(&batch, &known), vec![10, 11, 12, 99]);

        let plan = plan_batch(&batch, &features);
        let part = |i: usize| plan.parts[i].clone().map(|p| p.expect("planned"));
        assert_eq!(part(0), Some(Part { start: 0, ids: vec![10, 11] }));
        assert_eq!(part(1), None);
        assert_eq!(part(2), Some(Part { start: 2, ids: vec![11, 12] }));
        assert_eq!(part(3), Some(Part { start: 4, ids: vec![] }));
        assert_eq!(part(4), Some(Part { start: 4, ids: vec![11] }));
        // Five rows: each the user's features then the item's, in the parts' order.
        let row = |i: usize| &plan.rows[i * INPUT_FEATURES..(i + 1) * INPUT_FEATURES];
        assert_eq!(plan.rows.len(), 5 * INPUT_FEATURES);
        for (i, (u, it)) in
            [(1.0, 10.0), (1.0, 11.0), (2.0, 11.0), (2.0, 12.0), (1.0, 11.0)].iter().enumerate()
        {
            assert_eq!(row(i)[..USER_FEATURES], user(*u)[..], "row {i}");
            assert_eq!(row(i)[USER_FEATURES..], item(*it)[..], "row {i}");
        }

        // Scores by row; each request gets its own, ordered, cut to its top_k.
        let scores = Ok(vec![0.2, 0.7, 0.4, 0.9, 0.5]);
        let text = |i: usize| {
            let body = answer(&batch[i].request, plan.parts[i].as_ref(), Some(&scores));
            String::from_utf8(body.expect("200")).expect("UTF-8")
        };
        assert_eq!(
            text(0),
            r#"{"user_id":1,"items":[{"id":11,"score":0.7},{"id":10,"score":0.2}]}"#
        );
        assert_eq!(text(2), r#"{"user_id":2,"items":[{"id":12,"score":0.9}]}"#);
        assert_eq!(text(3), r#"{"user_id":1,"items":[]}"#);
        assert_eq!(text(4), r#"{"user_id":1,"items":[{"id":11,"score":0.5}]}"#);
        let unknown = answer(&batch[1].request, plan.parts[1].as_ref(), Some(&scores));
        assert_eq!(unknown, Err(ApiError::NotFound("user 3 not found".into())));
        // A failed inference fails the requests that needed it, not the others.
        let failed = Err(super::super::scorer::ScorerError("boom".into()));
        assert_eq!(
            answer(&batch[0].request, plan.parts[0].as_ref(), Some(&failed)),
            Err(ApiError::Internal("boom".into()))
        );
        assert!(answer(&batch[3].request, plan.parts[3].as_ref(), Some(&failed)).is_ok());
    }
}
