//! `candle_server`: the rankbench contract served by actix-web, tokio-postgres and Candle.

use std::process::ExitCode;

use actix_web::web::Data;
use clap::Parser;

use candle_server::model::{self, RankNet};
use candle_server::server::app::{AppState, Scorer};
use candle_server::server::build_info::build_info;
use candle_server::server::cli::Args;
use candle_server::server::db::{self, Database};
use candle_server::server::transport::{serve, Listen, Settings};

fn main() -> ExitCode {
    // Before any other thread exists: Candle computes on the calling worker thread only.
    let candle_threads = model::use_single_compute_thread();
    keep_freed_memory();
    let args = Args::parse();
    if args.build_info {
        println!("{}", build_info());
        return ExitCode::SUCCESS;
    }
    match run(args, candle_threads) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("candle_server: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args, candle_threads: usize) -> Result<(), String> {
    let workers = usize::from(args.workers);
    if let Some(key) = &args.api_key {
        AppState::check_api_key(key)?;
    }
    let scorer = if args.no_model {
        Scorer::Constant
    } else {
        Scorer::Candle(RankNet::load_dir(&args.model_dir).map_err(|e| e.to_string())?)
    };
    let pg_config = db::pg_config(&args.dsn)?;
    let databases = db::split_pool(usize::from(args.pool_size), workers)?
        .into_iter()
        .map(|size| Database::new(pg_config.clone(), size))
        .collect::<Result<Vec<_>, _>>()?;
    let mut state = AppState::new(scorer, workers);
    if let Some(key) = &args.api_key {
        state = state.with_api_key(key)?;
    }
    let state = Data::new(state);
    let settings = Settings { workers, ..Settings::default() };

    actix_web::rt::System::new().block_on(async move {
        check_database(&pg_config).await;
        let server =
            serve(state.clone(), databases, Listen::Bind(args.host.clone(), args.port), settings)
                .map_err(|e| format!("cannot listen on {}:{}: {e}", args.host, args.port))?;
        eprintln!(
            "candle_server: {} listening on http://{}:{} (workers {workers}, pool {}, backend {}, \
             candle threads {candle_threads})",
            state.server,
            args.host,
            args.port,
            args.pool_size,
            state.scorer.backend(),
        );
        server.await.map_err(|e| format!("server failed: {e}"))
    })
}

/// Every Candle op allocates its output; at 1,000 rows a forward pass allocates about 4.5 MB in
/// 0.5-1 MB tensors. With glibc's default, adaptive thresholds those come from fresh `mmap`s or a
/// heap top that is trimmed back to the kernel after each request, so every request page-faults
/// its tensors in again: measured, the forward pass at 1,000 rows took 1.7 ms instead of 0.9 ms
/// (`examples/infer_bench.rs`, thread CPU time). Fixed thresholds keep freed blocks for reuse.
/// ONNX Runtime (its own arena) and PyTorch (its CPU allocator cache) avoid the same cost.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const THRESHOLD: libc::c_int = 32 << 20;
        // SAFETY: mallopt only sets allocator parameters; called before any other thread runs.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, THRESHOLD);
        }
    }
}

/// One throwaway connection at start-up so that a wrong DSN or a missing schema is reported at
/// once. The server starts anyway: requests get 503 and `/health` says so until the database
/// answers, and it recovers by itself.
async fn check_database(config: &tokio_postgres::Config) {
    let probe = async {
        let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
        let connection = actix_web::rt::spawn(connection);
        let result = client
            .simple_query("SELECT (SELECT 1 FROM users LIMIT 1), (SELECT 1 FROM items LIMIT 1)")
            .await;
        drop(client);
        let _ = connection.await;
        result.map(|_| ())
    };
    match tokio::time::timeout(db::DB_STAGE_TIMEOUT, probe).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("candle_server: warning: database check failed: {}", db::describe(&e))
        }
        Err(_) => eprintln!("candle_server: warning: database check timed out"),
    }
}
