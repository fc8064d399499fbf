//! Stage timers: one set of HdrHistograms per actix worker, merged on `GET /stats`.
//!
//! A micro-batching server (`--batching`) also records the `queue` stage per request and, once per
//! batch, the batch's size, its inference rows and its own stage durations (`batching` in
//! `/stats`, the keys py_servers reports).
//!
//! Each worker records into its own `Mutex<WorkerStats>`; the lock is only ever contended by a
//! `/stats` or `/stats/reset` request, so a request pays one uncontended lock for all its stages.
//! Values are nanoseconds (3 significant digits, 1 ns .. 60 s); the JSON reports microseconds,
//! with each stage's histogram as `[[value_us, count], ...]` so that runs can be merged.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

/// The stages of `/stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Parse,
    /// Micro-batching only: validated -> its batch starts (before the pool acquire).
    Queue,
    Db,
    Pre,
    Infer,
    Post,
    Total,
}

const STAGE_COUNT: usize = 7;

impl Stage {
    /// The contract's stages, in the order `/stats` lists them.
    pub const PER_REQUEST: [Stage; 6] =
        [Stage::Parse, Stage::Db, Stage::Pre, Stage::Infer, Stage::Post, Stage::Total];
    /// A micro-batching server's stages per request: the contract's and `queue`.
    pub const BATCHING: [Stage; 7] = [
        Stage::Parse,
        Stage::Queue,
        Stage::Db,
        Stage::Pre,
        Stage::Infer,
        Stage::Post,
        Stage::Total,
    ];
    /// A batch's own durations (`batch_stages`): its database work, its rows, its inference,
    /// end of inference -> last body built, and batch start -> last body built.
    pub const PER_BATCH: [Stage; 5] =
        [Stage::Db, Stage::Pre, Stage::Infer, Stage::Post, Stage::Total];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Parse => "parse",
            Stage::Queue => "queue",
            Stage::Db => "db",
            Stage::Pre => "pre",
            Stage::Infer => "infer",
            Stage::Post => "post",
            Stage::Total => "total",
        }
    }
}

/// One request's (or one batch's) stage durations, recorded together once the response is
/// built. A stage that did not run (no `pre`/`infer` when none of the items exists) is left out
/// of its histogram.
#[derive(Debug, Default, Clone, Copy)]
pub struct StageTimes([Option<Duration>; STAGE_COUNT]);

impl StageTimes {
    pub fn set(&mut self, stage: Stage, duration: Duration) {
        self.0[stage as usize] = Some(duration);
    }

    pub fn get(&self, stage: Stage) -> Option<Duration> {
        self.0[stage as usize]
    }
}

const HIGHEST_NS: u64 = 60_000_000_000;

/// Durations in an HdrHistogram (nanoseconds, 3 significant digits), with their exact sum and
/// maximum. The stages of `/stats` and the ceiling client's latencies both use it.
#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    histogram: Histogram<u64>,
    sum_ns: u64,
    max_ns: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    pub fn new() -> Self {
        let histogram = Histogram::new_with_bounds(1, HIGHEST_NS, 3)
            .unwrap_or_else(|e| panic!("static histogram bounds are valid: {e}"));
        LatencyHistogram { histogram, sum_ns: 0, max_ns: 0 }
    }

    pub fn record(&mut self, duration: Duration) {
        let ns = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.histogram.saturating_record(ns.max(1));
        self.sum_ns = self.sum_ns.saturating_add(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    pub fn merge(&mut self, other: &LatencyHistogram) {
        // Same bounds on both sides, so `add` cannot run out of range.
        let _ = self.histogram.add(&other.histogram);
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    pub fn reset(&mut self) {
        self.histogram.reset();
        self.sum_ns = 0;
        self.max_ns = 0;
    }

    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// A bucket's highest equivalent value can exceed the largest value recorded: clamped, so
    /// that p50 <= p90 <= p99 <= max always holds.
    fn clamped(&self, ns: u64) -> u64 {
        ns.min(self.max_ns)
    }

    /// The recorded values as `(microseconds, count)`, ascending, every count > 0: each bucket
    /// at its middle value (HdrHistogram's own mean uses it), rounded to the nearest
    /// microsecond; buckets that round to the same microsecond are added together.
    pub fn buckets_us(&self) -> Vec<(u64, u64)> {
        let mut buckets: Vec<(u64, u64)> = Vec::new();
        for bucket in self.histogram.iter_recorded() {
            let middle = self.histogram.median_equivalent(bucket.value_iterated_to());
            let us = (self.clamped(middle) + 500) / 1000;
            let count = bucket.count_at_value();
            match buckets.last_mut() {
                Some((last, total)) if *last == us => *total += count,
                _ => buckets.push((us, count)),
            }
        }
        buckets
    }

    pub fn summary(&self) -> StageSummary {
        let count = self.count();
        let us = |ns: u64| ns as f64 / 1000.0;
        let quantile = |q: f64| {
            if count == 0 {
                0.0
            } else {
                us(self.clamped(self.histogram.value_at_quantile(q)))
            }
        };
        StageSummary {
            count,
            sum_us: us(self.sum_ns),
            mean_us: if count == 0 { 0.0 } else { us(self.sum_ns) / count as f64 },
            p50_us: quantile(0.50),
            p90_us: quantile(0.90),
            p99_us: quantile(0.99),
            max_us: us(self.max_ns),
            histogram: self.buckets_us(),
        }
    }
}

fn histograms<const N: usize>() -> [LatencyHistogram; N] {
    std::array::from_fn(|_| LatencyHistogram::new())
}

/// One worker's counters and histograms.
#[derive(Debug, Clone)]
pub struct WorkerStats {
    requests: u64,
    errors: u64,
    stages: [LatencyHistogram; STAGE_COUNT],
    /// Micro-batching only.
    batches: Option<BatchStats>,
}

/// A micro-batching worker's batches: how many, of which sizes, how many inference rows, and
/// each batch's own stage durations.
#[derive(Debug, Clone)]
struct BatchStats {
    batches: u64,
    rows: u64,
    /// Batches per size (index = requests in the batch, 1..=max_batch).
    sizes: Vec<u64>,
    stages: [LatencyHistogram; STAGE_COUNT],
}

impl WorkerStats {
    /// `max_batch` > 0: a micro-batching worker, with batches of at most that many requests.
    pub fn new(max_batch: usize) -> Self {
        let batches = (max_batch > 0).then(|| BatchStats {
            batches: 0,
            rows: 0,
            sizes: vec![0; max_batch + 1],
            stages: histograms(),
        });
        WorkerStats { requests: 0, errors: 0, stages: histograms(), batches }
    }

    /// Counts one request to `/rank`; `ok` is false when it was answered with a non-2xx status.
    pub fn count_request(&mut self, ok: bool) {
        self.requests += 1;
        if !ok {
            self.errors += 1;
        }
    }

    pub fn record(&mut self, times: &StageTimes) {
        record_into(&mut self.stages, times);
    }

    /// One batch of `size` requests and `rows` inference rows, with its own durations (`None`: a
    /// batch whose database work failed counts its size only). Ignored by a per-request worker.
    pub fn record_batch(&mut self, size: usize, rows: usize, times: Option<&StageTimes>) {
        let Some(batches) = self.batches.as_mut() else { return };
        batches.batches += 1;
        batches.rows += u64::try_from(rows).unwrap_or(u64::MAX);
        if size >= batches.sizes.len() {
            batches.sizes.resize(size + 1, 0);
        }
        batches.sizes[size] += 1;
        if let Some(times) = times {
            record_into(&mut batches.stages, times);
        }
    }

    fn merge(&mut self, other: &WorkerStats) {
        self.requests += other.requests;
        self.errors += other.errors;
        merge_into(&mut self.stages, &other.stages);
        if let (Some(mine), Some(theirs)) = (self.batches.as_mut(), other.batches.as_ref()) {
            mine.batches += theirs.batches;
            mine.rows += theirs.rows;
            if mine.sizes.len() < theirs.sizes.len() {
                mine.sizes.resize(theirs.sizes.len(), 0);
            }
            for (count, theirs) in mine.sizes.iter_mut().zip(&theirs.sizes) {
                *count += theirs;
            }
            merge_into(&mut mine.stages, &theirs.stages);
        }
    }

    fn reset(&mut self) {
        self.requests = 0;
        self.errors = 0;
        self.stages.iter_mut().for_each(LatencyHistogram::reset);
        if let Some(batches) = self.batches.as_mut() {
            batches.batches = 0;
            batches.rows = 0;
            batches.sizes.iter_mut().for_each(|count| *count = 0);
            batches.stages.iter_mut().for_each(LatencyHistogram::reset);
        }
    }
}

fn record_into(histograms: &mut [LatencyHistogram; STAGE_COUNT], times: &StageTimes) {
    for (histogram, duration) in histograms.iter_mut().zip(times.0) {
        if let Some(duration) = duration {
            histogram.record(duration);
        }
    }
}

fn merge_into(
    mine: &mut [LatencyHistogram; STAGE_COUNT],
    theirs: &[LatencyHistogram; STAGE_COUNT],
) {
    for (mine, theirs) in mine.iter_mut().zip(theirs) {
        mine.merge(theirs);
    }
}

/// A worker's handle on its own statistics.
#[derive(Debug, Clone)]
pub struct WorkerHandle(Arc<Mutex<WorkerStats>>);

impl WorkerHandle {
    pub fn lock(&self) -> MutexGuard<'_, WorkerStats> {
        // A panic while holding the lock leaves plain counters behind; they stay usable.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// All workers' statistics, shared by every worker of the server.
#[derive(Debug, Default)]
pub struct StatsRegistry {
    workers: Mutex<Vec<WorkerHandle>>,
    /// 0: per request; else micro-batching with batches of at most this many requests.
    max_batch: usize,
}

impl StatsRegistry {
    /// A micro-batching server's registry: the `queue` stage and the batch block.
    pub fn batching(max_batch: usize) -> Self {
        StatsRegistry { workers: Mutex::default(), max_batch: max_batch.max(1) }
    }

    /// Called once per worker (actix calls the app factory on each worker thread).
    pub fn register(&self) -> WorkerHandle {
        let handle = WorkerHandle(Arc::new(Mutex::new(WorkerStats::new(self.max_batch))));
        self.lock_workers().push(handle.clone());
        handle
    }

    /// The stages this server reports, in `/stats` order.
    pub fn stages(&self) -> &'static [Stage] {
        if self.max_batch > 0 {
            &Stage::BATCHING
        } else {
            &Stage::PER_REQUEST
        }
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let mut merged = WorkerStats::new(self.max_batch);
        for worker in self.lock_workers().iter() {
            merged.merge(&worker.lock());
        }
        let summaries = |histograms: &[LatencyHistogram; STAGE_COUNT], stages: &[Stage]| {
            stages
                .iter()
                .map(|&stage| (stage.name(), histograms[stage as usize].summary()))
                .collect()
        };
        StatsSnapshot {
            requests: merged.requests,
            errors: merged.errors,
            stages: summaries(&merged.stages, self.stages()),
            batches: merged.batches.map(|batches| {
                let sizes: Vec<(usize, u64)> =
                    batches.sizes.iter().copied().enumerate().filter(|&(_, n)| n > 0).collect();
                let requests = sizes.iter().map(|&(size, n)| size as u64 * n).sum();
                BatchSnapshot {
                    batches: batches.batches,
                    requests,
                    mean_batch_size: mean(requests, batches.batches),
                    batch_sizes: sizes,
                    rows: batches.rows,
                    mean_rows: mean(batches.rows, batches.batches),
                    batch_stages: summaries(&batches.stages, &Stage::PER_BATCH),
                }
            }),
        }
    }

    pub fn reset(&self) {
        for worker in self.lock_workers().iter() {
            worker.lock().reset();
        }
    }

    fn lock_workers(&self) -> MutexGuard<'_, Vec<WorkerHandle>> {
        self.workers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `total / count` to three decimals (as py_servers reports it), 0 for no count.
fn mean(total: u64, count: u64) -> f64 {
    if count == 0 {
        0.0
    } else {
        (total as f64 / count as f64 * 1000.0).round() / 1000.0
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageSummary {
    pub count: u64,
    pub sum_us: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// `[[value_us, count], ...]`, see [`LatencyHistogram::buckets_us`].
    pub histogram: Vec<(u64, u64)>,
}

#[derive(Debug, Clone)]
pub struct StatsSnapshot {
    pub requests: u64,
    pub errors: u64,
    pub stages: Vec<(&'static str, StageSummary)>,
    /// Micro-batching only.
    pub batches: Option<BatchSnapshot>,
}

/// The merged batch block of `/stats` (`batching`, beside the settings).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchSnapshot {
    pub batches: u64,
    /// Requests that went through a batch (200, 404 and 503 answers alike).
    pub requests: u64,
    pub mean_batch_size: f64,
    /// `[[size, batches], ...]`, ascending sizes, counts > 0.
    pub batch_sizes: Vec<(usize, u64)>,
    pub rows: u64,
    pub mean_rows: f64,
    /// One sample per batch.
    pub batch_stages: Vec<(&'static str, StageSummary)>,
}

/// Serialises `(name, value)` pairs as a JSON object in their order (the stages in the
/// contract's order, the runtime's thread settings).
pub struct OrderedMap<'a, V>(pub &'a [(&'static str, V)]);

impl<V: Serialize> Serialize for OrderedMap<'_, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times(us: u64) -> StageTimes {
        let mut t = StageTimes::default();
        for stage in Stage::BATCHING {
            t.set(stage, Duration::from_micros(us));
        }
        t
    }

    #[test]
    fn merges_workers_and_resets() {
        let registry = StatsRegistry::default();
        let a = registry.register();
        let b = registry.register();
        for us in 1..=100 {
            a.lock().record(&times(us));
            a.lock().count_request(true);
        }
        b.lock().record(&times(1000));
        b.lock().count_request(true);
        b.lock().count_request(false);
        let mut partial = StageTimes::default();
        partial.set(Stage::Db, Duration::from_micros(7));
        b.lock().record(&partial);

        let snap = registry.snapshot();
        assert_eq!((snap.requests, snap.errors), (102, 1));
        let (name, total) = &snap.stages[5];
        assert_eq!(*name, "total");
        assert_eq!(total.count, 101);
        assert_eq!(total.sum_us, 5050.0 + 1000.0);
        assert!((total.mean_us - 6050.0 / 101.0).abs() < 1e-9);
        assert_eq!(total.max_us, 1000.0);
        assert!(
            total.p50_us <= total.p90_us
                && total.p90_us <= total.p99_us
                && total.p99_us <= total.max_us
        );
        // Percentiles come from the merged histogram (3 significant digits).
        assert!((total.p50_us - 51.0).abs() <= 0.1, "p50 {}", total.p50_us);
        assert!((total.p99_us - 100.0).abs() <= 0.1, "p99 {}", total.p99_us);

        // One bucket per microsecond recorded (exact at this resolution), counts merged.
        let want: Vec<(u64, u64)> = (1..=100).map(|us| (us, 1)).chain([(1000, 1)]).collect();
        assert_eq!(total.histogram, want);

        let (name, db) = &snap.stages[1];
        assert_eq!((*name, db.count), ("db", 102));
        assert_eq!(db.histogram.first(), Some(&(1, 1)));
        assert!(db.histogram.contains(&(7, 2)), "{:?}", db.histogram);

        registry.reset();
        let snap = registry.snapshot();
        assert_eq!((snap.requests, snap.errors), (0, 0));
        assert!(snap.stages.iter().all(|(_, s)| s.count == 0
            && s.sum_us == 0.0
            && s.max_us == 0.0
            && s.histogram.is_empty()));
    }

    #[test]
    fn batching_adds_queue_and_the_batch_block() {
        // Per request: the contract's six stages, no batch block even if a batch is recorded.
        let registry = StatsRegistry::default();
        registry.register().lock().record_batch(3, 9, None);
        let snap = registry.snapshot();
        let names: Vec<&str> = snap.stages.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, ["parse", "db", "pre", "infer", "post", "total"]);
        assert!(snap.batches.is_none());

        let registry = StatsRegistry::batching(4);
        let (a, b) = (registry.register(), registry.register());
        a.lock().record(&times(5));
        let mut batch = StageTimes::default();
        batch.set(Stage::Db, Duration::from_micros(40));
        batch.set(Stage::Total, Duration::from_micros(90));
        a.lock().record_batch(3, 12, Some(&batch));
        a.lock().record_batch(1, 0, None); // database failed: its size only
        b.lock().record_batch(3, 30, Some(&batch));
        let snap = registry.snapshot();
        let names: Vec<&str> = snap.stages.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, ["parse", "queue", "db", "pre", "infer", "post", "total"]);
        assert_eq!(snap.stages[1].1.count, 1, "queue");
        let batches = snap.batches.expect("batch block");
        assert_eq!((batches.batches, batches.requests, batches.rows), (3, 7, 42));
        assert_eq!(batches.batch_sizes, vec![(1, 1), (3, 2)]);
        assert_eq!((batches.mean_batch_size, batches.mean_rows), (2.333, 14.0));
        let stage = |name: &str| {
            batches.batch_stages.iter().find(|(n, _)| *n == name).expect(name).1.clone()
        };
        assert_eq!((stage("db").count, stage("db").sum_us), (2, 80.0));
        assert_eq!((stage("total").count, stage("infer").count), (2, 0));
        let names: Vec<&str> = batches.batch_stages.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, ["db", "pre", "infer", "post", "total"]);

        registry.reset();
        let batches = registry.snapshot().batches.expect("batch block");
        assert_eq!((batches.batches, batches.requests, batches.rows), (0, 0, 0));
        assert!(batches.batch_sizes.is_empty() && batches.mean_batch_size == 0.0);
    }

    #[test]
    fn histogram_buckets_round_to_whole_microseconds() {
        let mut h = LatencyHistogram::new();
        for ns in [300, 1_200, 1_400, 1_600, 2_000_000, 2_000_100, 2_001_600] {
            h.record(Duration::from_nanos(ns));
        }
        // Below 2.048 us every nanosecond has its bucket: 0.3 us -> 0; 1.2 and 1.4 -> 1; 1.6 -> 2.
        // From 1.048576 ms buckets are 1.024 us wide: 2000.0 and 2000.1 share the bucket
        // [1999.872, 2000.895] (middle 2000.384 -> 2000), 2001.6 is in [2000.896, 2001.919]
        // (middle 2001.408 -> 2001).
        assert_eq!(h.buckets_us(), vec![(0, 1), (1, 2), (2, 1), (2000, 2), (2001, 1)]);
        let summary = h.summary();
        assert_eq!(summary.histogram.iter().map(|b| b.1).sum::<u64>(), summary.count);
        assert_eq!(summary.max_us, 2001.6);
    }

    #[test]
    fn stages_serialise_in_contract_order() {
        let registry = StatsRegistry::default();
        let snap = registry.snapshot();
        let json = serde_json::to_string(&OrderedMap(&snap.stages)).expect("json");
        let order: Vec<usize> = ["parse", "db", "pre", "infer", "post", "total"]
            .iter()
            .map(|name| json.find(&format!("\"{name}\"")).expect(name))
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{json}");
        assert!(
            json.contains(r#""parse":{"count":0,"sum_us":0.0,"mean_us":0.0,"p50_us":0.0"#),
            "{json}"
        );
    }
}
