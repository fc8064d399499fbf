//! Stage timers: one set of HdrHistograms per actix worker, merged on `GET /stats`.
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

/// The contract's stages, in the order `/stats` lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Parse,
    Db,
    Pre,
    Infer,
    Post,
    Total,
}

impl Stage {
    pub const ALL: [Stage; 6] =
        [Stage::Parse, Stage::Db, Stage::Pre, Stage::Infer, Stage::Post, Stage::Total];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Parse => "parse",
            Stage::Db => "db",
            Stage::Pre => "pre",
            Stage::Infer => "infer",
            Stage::Post => "post",
            Stage::Total => "total",
        }
    }
}

/// One request's stage durations, recorded together once the response is built. A stage that
/// did not run (no `pre`/`infer` when none of the items exists) is left out of its histogram.
#[derive(Debug, Default, Clone, Copy)]
pub struct StageTimes([Option<Duration>; 6]);

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

/// One worker's counters and histograms.
#[derive(Debug, Clone)]
pub struct WorkerStats {
    requests: u64,
    errors: u64,
    stages: [LatencyHistogram; 6],
}

impl Default for WorkerStats {
    fn default() -> Self {
        WorkerStats {
            requests: 0,
            errors: 0,
            stages: std::array::from_fn(|_| LatencyHistogram::new()),
        }
    }
}

impl WorkerStats {
    /// Counts one request to `/rank`; `ok` is false when it was answered with a non-2xx status.
    pub fn count_request(&mut self, ok: bool) {
        self.requests += 1;
        if !ok {
            self.errors += 1;
        }
    }

    pub fn record(&mut self, times: &StageTimes) {
        for stage in Stage::ALL {
            if let Some(duration) = times.get(stage) {
                self.stages[stage as usize].record(duration);
            }
        }
    }

    fn merge(&mut self, other: &WorkerStats) {
        self.requests += other.requests;
        self.errors += other.errors;
        for (mine, theirs) in self.stages.iter_mut().zip(&other.stages) {
            mine.merge(theirs);
        }
    }

    fn reset(&mut self) {
        self.requests = 0;
        self.errors = 0;
        self.stages.iter_mut().for_each(LatencyHistogram::reset);
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
}

impl StatsRegistry {
    /// Called once per worker (actix calls the app factory on each worker thread).
    pub fn register(&self) -> WorkerHandle {
        let handle = WorkerHandle(Arc::new(Mutex::new(WorkerStats::default())));
        self.lock_workers().push(handle.clone());
        handle
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let mut merged = WorkerStats::default();
        for worker in self.lock_workers().iter() {
            merged.merge(&worker.lock());
        }
        StatsSnapshot {
            requests: merged.requests,
            errors: merged.errors,
            stages: Stage::ALL.map(|stage| (stage.name(), merged.stages[stage as usize].summary())),
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
    pub stages: [(&'static str, StageSummary); 6],
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
        for stage in Stage::ALL {
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
