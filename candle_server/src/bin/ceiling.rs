//! `rankbench-ceiling`: what the database alone does for the servers, measured with the servers'
//! own database code.
//!
//! Per transaction it does exactly a server's database stage and nothing else: one pooled
//! connection, the contract's two prepared statements with the server's parameters (the user's
//! features by id, then the features of the items `= ANY($1)`, sorted ids as the server sends
//! them), binary results decoded into `Vec<f32>`, the connection returned to the pool. The SQL,
//! the pool and the decoding are `candle_server::server::db`'s, not a copy. An unknown user ends
//! the transaction after the first statement, as the server's 404 does, and counts as completed.
//!
//! Request ids come from the generator of `wrk_scripts/rank.lua` (Park-Miller minimal standard,
//! thread 0's pool, taken round-robin), so the ceiling and wrk ask for the same ids.
//!
//! One current-thread tokio runtime runs every client and connection task, as one server worker
//! does: on 2 cores PostgreSQL's backends need the CPU, and a single thread with no cross-thread
//! wake-ups is the cheapest client (a multi-thread runtime would put two busy threads next to
//! the backends and pay work-stealing wake-ups on every answer).
//!
//! Output: one JSON line on stdout (see [`Report`]). Errors: one line on stderr, exit 1; bad
//! flags: one line on stderr, exit 2.

use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde::Serialize;

use candle_server::server::cli::DEFAULT_DSN;
use candle_server::server::db::{pg_config, Database};
use candle_server::server::error::ApiError;
use candle_server::server::stats::LatencyHistogram;
use candle_server::server::MAX_ITEMS;

const TOOL: &str = "rankbench-ceiling";

/// Ids stay below 2^53: the Lua side computes in doubles.
const MAX_ID: i64 = 1 << 53;
const MAX_ITEMS_FLAG: i64 = MAX_ITEMS as i64;

#[derive(Debug, Parser)]
#[command(
    name = "rankbench-ceiling",
    version,
    about = "The database work of one /rank request, alone, at full speed: the ceiling any \
             rankbench server can reach (one JSON line on stdout)"
)]
struct Args {
    /// PostgreSQL connection URL.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DSN, hide_env_values = true)]
    dsn: String,

    /// Pooled database connections (a server's --pool-size).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1000))]
    connections: u16,

    /// Concurrent clients, each running one transaction at a time [default: --connections].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    clients: Option<u32>,

    /// Seconds measured, after the warm-up.
    #[arg(long, default_value = "10", value_parser = positive_seconds)]
    duration: Duration,

    /// Seconds run before the measured window (not counted in the histogram).
    #[arg(long, default_value = "2", value_parser = seconds)]
    warmup: Duration,

    /// Distinct item ids per request.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=MAX_ITEMS_FLAG))]
    items: u16,

    /// Users are drawn uniformly from --user-min..=--user-max (as rank.lua's `user_min=`).
    #[arg(long = "user-min", default_value_t = 1, value_parser = id_or_seed)]
    user_min: i64,
    #[arg(long = "user-max", default_value_t = 200_000, value_parser = id_or_seed)]
    user_max: i64,
    /// Items are drawn uniformly from --item-min..=--item-max (as rank.lua's `item_min=`).
    #[arg(long = "item-min", default_value_t = 1, value_parser = id_or_seed)]
    item_min: i64,
    #[arg(long = "item-max", default_value_t = 100_000, value_parser = id_or_seed)]
    item_max: i64,

    /// Base seed of the request generator (as rank.lua's `seed=`).
    #[arg(long, default_value_t = 1, value_parser = id_or_seed)]
    seed: i64,

    /// Requests built before the run and taken round-robin (as rank.lua's `pool=`).
    #[arg(
        long = "pool-requests",
        default_value_t = 1000,
        value_parser = clap::value_parser!(u32).range(1..=10_000_000)
    )]
    pool_requests: u32,

    /// Print the first N requests of the pool as JSON lines and exit (no database needed).
    #[arg(long = "print-requests", value_name = "N")]
    print_requests: Option<u32>,

    /// Time N steps of the generator and print `{"ns_per_iter": ...}` (the harness's native
    /// calibration loop, the same loop it times in CPython), then exit (no database needed).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=10_000_000_000))]
    calibrate: Option<u64>,
}

/// An id bound or a seed: an integer of at most 2^53 in magnitude.
fn id_or_seed(text: &str) -> Result<i64, String> {
    let value: i64 = text.parse().map_err(|_| format!("{text:?} is not an integer"))?;
    if value.abs() > MAX_ID {
        return Err(format!("{value} is beyond +-2^53 (the Lua side computes in doubles)"));
    }
    Ok(value)
}

fn seconds(text: &str) -> Result<Duration, String> {
    let value: f64 = text.parse().map_err(|_| format!("{text:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(value)
        .map_err(|_| format!("{text:?} is not a number of seconds >= 0"))
}

fn positive_seconds(text: &str) -> Result<Duration, String> {
    let value = seconds(text)?;
    if value.is_zero() {
        return Err("must be more than 0 seconds".into());
    }
    Ok(value)
}

/// Park-Miller's minimal standard generator, exactly as `wrk_scripts/rank.lua` computes it.
#[derive(Debug, Clone)]
struct ParkMiller {
    state: i64,
}

impl ParkMiller {
    const M: i64 = 2_147_483_647;
    const A: i64 = 48_271;

    /// The state is `seed mod M` (floored, as Lua's `%`), moved into 1..M-1.
    fn new(seed: i64) -> Self {
        let mut state = seed.rem_euclid(Self::M);
        if state <= 0 {
            state += Self::M - 1;
        }
        ParkMiller { state }
    }

    fn next(&mut self) -> i64 {
        // state < 2^31 and A < 2^16: the product fits easily.
        self.state = self.state * Self::A % Self::M;
        self.state
    }

    /// `lo + next() mod (hi - lo + 1)`; the caller checks `lo <= hi`.
    fn randint(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.next() % (hi - lo + 1)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Request {
    user_id: i64,
    /// In the order drawn; distinct.
    item_ids: Vec<i64>,
}

#[derive(Debug, Clone, Copy)]
struct RequestShape {
    items: usize,
    users: (i64, i64),
    item_range: (i64, i64),
}

/// wrk's thread whose request pool every connection shares (`wrk -t1`).
const WRK_THREAD: i64 = 0;

/// The request pool of rank.lua's thread 0: `count` requests, each `items` distinct ids drawn
/// first, then the user.
fn request_pool(seed: i64, shape: RequestShape, count: usize) -> Vec<Request> {
    let mut rng = ParkMiller::new(seed + 7919 * WRK_THREAD);
    (0..count)
        .map(|_| {
            let mut item_ids = Vec::with_capacity(shape.items);
            while item_ids.len() < shape.items {
                let id = rng.randint(shape.item_range.0, shape.item_range.1);
                if !item_ids.contains(&id) {
                    item_ids.push(id);
                }
            }
            let user_id = rng.randint(shape.users.0, shape.users.1);
            Request { user_id, item_ids }
        })
        .collect()
}

/// What the flags say, checked beyond what clap checks one flag at a time.
fn request_shape(args: &Args) -> Result<RequestShape, String> {
    let items = usize::from(args.items);
    if args.user_min > args.user_max {
        return Err(format!("--user-min {} is above --user-max {}", args.user_min, args.user_max));
    }
    if args.item_min > args.item_max {
        return Err(format!("--item-min {} is above --item-max {}", args.item_min, args.item_max));
    }
    let distinct = args.item_max - args.item_min + 1;
    if (items as i64) > distinct {
        return Err(format!(
            "--items {items} is more than the {distinct} distinct ids in --item-min..--item-max"
        ));
    }
    Ok(RequestShape {
        items,
        users: (args.user_min, args.user_max),
        item_range: (args.item_min, args.item_max),
    })
}

/// The measured window, `[from, until)` on the monotonic clock; transactions count by the time
/// they complete (as the harness counts pgbench's).
#[derive(Debug, Clone, Copy)]
struct Window {
    from: Instant,
    until: Instant,
}

#[derive(Debug)]
struct ClientTally {
    histogram: LatencyHistogram,
    transactions: u64,
    errors: u64,
    warmup_transactions: u64,
    first_error: Option<String>,
}

impl ClientTally {
    fn new() -> Self {
        ClientTally {
            histogram: LatencyHistogram::new(),
            transactions: 0,
            errors: 0,
            warmup_transactions: 0,
            first_error: None,
        }
    }

    fn merge(&mut self, other: ClientTally) {
        self.histogram.merge(&other.histogram);
        self.transactions += other.transactions;
        self.errors += other.errors;
        self.warmup_transactions += other.warmup_transactions;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// One client: a transaction at a time until the window closes.
async fn client(
    db: Database,
    requests: Arc<[(i64, Vec<i64>)]>,
    next: Arc<AtomicUsize>,
    window: Window,
) -> ClientTally {
    let mut tally = ClientTally::new();
    loop {
        let started = Instant::now();
        if started >= window.until {
            return tally;
        }
        let (user_id, item_ids) = &requests[next.fetch_add(1, Ordering::Relaxed) % requests.len()];
        let outcome = match db.fetch(*user_id, item_ids).await {
            // A missing user is the server's 404: the same database work, completed.
            Ok(_) | Err(ApiError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        };
        let done = Instant::now();
        if done >= window.until {
            return tally;
        }
        match outcome {
            Ok(()) if done < window.from => tally.warmup_transactions += 1,
            Ok(()) => {
                tally.transactions += 1;
                tally.histogram.record(done - started);
            }
            Err(e) => {
                tally.errors += u64::from(done >= window.from);
                tally.first_error.get_or_insert_with(|| e.message());
            }
        }
    }
}

#[derive(Debug, Serialize)]
struct Latency {
    mean: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

/// The one JSON line: latencies in microseconds, the histogram as `[[value_us, count], ...]`
/// sorted by value (mergeable across runs like the servers' stage histograms).
#[derive(Debug, Serialize)]
struct Report {
    tool: &'static str,
    connections: u16,
    clients: u32,
    items: u16,
    seed: i64,
    transactions: u64,
    errors: u64,
    duration_us: u64,
    warmup_us: u64,
    warmup_transactions: u64,
    histogram: Vec<(u64, u64)>,
    latency_us: Latency,
}

async fn measure(args: &Args, requests: Vec<Request>) -> Result<(Report, Option<String>), String> {
    let mut config = pg_config(&args.dsn)?;
    config.application_name(TOOL);
    let db = Database::new(config, usize::from(args.connections))?;
    // Every connection opened and both statements prepared before the clock starts; a database
    // that cannot do that (refused, no such table) ends the run here.
    db.warm_up().await.map_err(|e| e.message())?;

    // The server receives ids in the order drawn and queries them sorted and deduplicated.
    let requests: Arc<[(i64, Vec<i64>)]> = requests
        .into_iter()
        .map(|r| {
            let mut ids = r.item_ids;
            ids.sort_unstable();
            (r.user_id, ids)
        })
        .collect();
    let clients = args.clients.unwrap_or(u32::from(args.connections));
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let window = Window { from: start + args.warmup, until: start + args.warmup + args.duration };
    let tasks: Vec<_> = (0..clients)
        .map(|_| tokio::spawn(client(db.clone(), requests.clone(), next.clone(), window)))
        .collect();
    let mut total = ClientTally::new();
    for task in tasks {
        total.merge(task.await.map_err(|e| format!("a client task failed: {e}"))?);
    }
    let summary = total.histogram.summary();
    let report = Report {
        tool: TOOL,
        connections: args.connections,
        clients,
        items: args.items,
        seed: args.seed,
        transactions: total.transactions,
        errors: total.errors,
        duration_us: micros(args.duration),
        warmup_us: micros(args.warmup),
        warmup_transactions: total.warmup_transactions,
        histogram: summary.histogram,
        latency_us: Latency {
            mean: summary.mean_us,
            p50: summary.p50_us,
            p90: summary.p90_us,
            p99: summary.p99_us,
            max: summary.max_us,
        },
    };
    Ok((report, total.first_error))
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let shape = match request_shape(&args) {
        Ok(shape) => shape,
        Err(message) => {
            eprintln!("{TOOL}: {message}");
            return ExitCode::from(2);
        }
    };
    if let Some(n) = args.print_requests {
        return print_requests(&request_pool(args.seed, shape, n as usize));
    }
    if let Some(n) = args.calibrate {
        println!("{{\"ns_per_iter\":{:.4}}}", calibrate(n));
        return ExitCode::SUCCESS;
    }
    let requests = request_pool(args.seed, shape, args.pool_requests as usize);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the tokio runtime: {e}")),
    };
    match runtime.block_on(measure(&args, requests)) {
        Err(message) => fail(&message),
        Ok((report, first_error)) => {
            match serde_json::to_string(&report) {
                Ok(line) => println!("{line}"),
                Err(e) => return fail(&format!("cannot encode the report: {e}")),
            }
            if let Some(error) = first_error {
                eprintln!("{TOOL}: {} transactions failed; the first: {error}", report.errors);
            }
            if report.transactions == 0 {
                return fail("no transaction completed in the measured window");
            }
            ExitCode::SUCCESS
        }
    }
}

/// Nanoseconds per step of the generator over `iterations` steps: a fixed CPU-bound loop
/// (a dependent multiply and remainder per step) that says how fast the machine is today.
fn calibrate(iterations: u64) -> f64 {
    let mut generator = ParkMiller::new(1);
    let started = Instant::now();
    let mut last = 0;
    for _ in 0..iterations {
        last = generator.next();
    }
    std::hint::black_box(last);
    started.elapsed().as_nanos() as f64 / iterations as f64
}

fn fail(message: &str) -> ExitCode {
    eprintln!("{TOOL}: {message}");
    ExitCode::FAILURE
}

fn print_requests(requests: &[Request]) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for request in requests {
        let line = serde_json::to_string(request).unwrap_or_default();
        if writeln!(out, "{line}").is_err() {
            return ExitCode::FAILURE;
        }
    }
    if out.flush().is_err() {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn park_miller_minimal_standard_from_seed_1() {
        // 48271; 48271^2 = 2330089441 = M + 182605794; then each state times 48271, mod M.
        let mut rng = ParkMiller::new(1);
        let states: Vec<i64> = (0..4).map(|_| rng.next()).collect();
        assert_eq!(states, [48_271, 182_605_794, 1_291_394_886, 1_914_720_637]);
    }

    #[test]
    fn seeds_are_reduced_into_1_to_m_minus_1() {
        // 0 and M both reduce to 0, which becomes M - 1; a negative seed is reduced like Lua's
        // floored `%` (-1 mod M = M - 1); M + 1 is 1 again.
        for (seed, state) in [
            (0, ParkMiller::M - 1),
            (ParkMiller::M, ParkMiller::M - 1),
            (-1, ParkMiller::M - 1),
            (ParkMiller::M + 1, 1),
            (7, 7),
        ] {
            assert_eq!(ParkMiller::new(seed).state, state, "seed {seed}");
        }
        // (M - 1) * A mod M = M - A.
        assert_eq!(ParkMiller::new(0).next(), ParkMiller::M - ParkMiller::A);
    }

    #[test]
    fn randint_is_lo_plus_state_mod_span() {
        let mut rng = ParkMiller::new(1);
        assert_eq!(rng.randint(1, 100_000), 1 + 48_271);
        assert_eq!(rng.randint(10, 19), 10 + 4); // 182605794 mod 10
        assert_eq!(rng.randint(-5, -5), -5);
    }

    #[test]
    fn requests_draw_distinct_items_then_the_user() {
        let shape = RequestShape { items: 2, users: (1, 200_000), item_range: (1, 100_000) };
        let pool = request_pool(1, shape, 1);
        // Items from states 1 and 2, the user from state 3 (1291394886 mod 200000 = 194886).
        assert_eq!(pool, [Request { user_id: 194_887, item_ids: vec![48_272, 5_795] }]);
        // Thread 0's pool is the one shared: the same seed gives the same pool.
        assert_eq!(request_pool(9, shape, 50), request_pool(9, shape, 50));
        assert_ne!(request_pool(9, shape, 50), request_pool(10, shape, 50));
    }
}
