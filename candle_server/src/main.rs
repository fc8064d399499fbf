//! `candle_server`: the rankbench contract served by actix-web, tokio-postgres and Candle.

use std::process::ExitCode;

use actix_web::web::Data;
use clap::Parser;

use candle_server::model::RankNet;
use candle_server::runtime;
use candle_server::server::app::AppState;
use candle_server::server::batching::{BatchSettings, DEFAULT_MAX_BATCH};
use candle_server::server::build_info::build_info;
use candle_server::server::cli::{Args, Runtime};
use candle_server::server::db::{self, Database};
use candle_server::server::onnx::{self, OnnxRankNet};
use candle_server::server::scorer::{NoModel, Scorer};
use candle_server::server::transport::{serve, Listen, Settings};

fn main() -> ExitCode {
    // Before any other thread exists: Candle computes on the calling worker thread only.
    let candle_threads = runtime::use_single_compute_thread();
    runtime::keep_freed_memory();
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
    // clap requires the name unless --build-info was given, which returned before this.
    let server_name = args.server_name.clone().ok_or("--server-name is required")?;
    let workers = usize::from(args.workers);
    if let Some(key) = &args.api_key {
        AppState::check_api_key(key)?;
    }
    let scorer = load_scorer(&args, workers)?;
    let pg_config = db::pg_config(&args.dsn)?;
    let pool_size = usize::from(args.pool_size);
    let batching = args
        .batching
        .enabled
        .then(|| {
            let flags = &args.batching;
            BatchSettings::new(
                flags.max_batch.unwrap_or(DEFAULT_MAX_BATCH),
                flags.max_wait_us.unwrap_or(0),
                flags.batches_in_flight,
                pool_size,
                workers,
            )
        })
        .transpose()?;
    let databases = db::split_pool(pool_size, workers)?
        .into_iter()
        .map(|size| {
            let database = Database::new(pg_config.clone(), size)?;
            Ok(if batching.is_some() { database.for_batches() } else { database })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let mut state = AppState::new(server_name, scorer, workers);
    if let Some(settings) = batching {
        state = state.with_batching(settings);
    }
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
        let backend = state.scorer.backend();
        // Candle's thread count is what matters only when Candle computes.
        let threads = if backend == "candle" {
            format!(", candle threads {candle_threads}")
        } else {
            String::new()
        };
        let batching = state.batching.as_ref().map_or(String::new(), |b| {
            format!(
                ", batching: max batch {}, max wait {} us, batches in flight {}",
                b.max_batch,
                b.max_wait.as_micros(),
                b.slots.iter().sum::<usize>()
            )
        });
        eprintln!(
            "candle_server: {} listening on http://{}:{} (workers {workers}, pool {}, backend \
             {backend}{threads}{batching})",
            state.server, args.host, args.port, args.pool_size,
        );
        server.await.map_err(|e| format!("server failed: {e}"))
    })
}

/// The scorer of `--runtime` (or none with `--no-model`), loaded before the socket listens.
fn load_scorer(args: &Args, workers: usize) -> Result<Box<dyn Scorer>, String> {
    if args.no_model {
        return Ok(Box::new(NoModel));
    }
    Ok(match args.runtime {
        Runtime::Candle => Box::new(RankNet::load_dir(&args.model_dir).map_err(|e| e.to_string())?),
        Runtime::Onnx => {
            let library = args.onnxruntime_lib.clone().or_else(onnx::find_library).ok_or(
                "no ONNX Runtime library: none found in a .venv (its onnxruntime package ships \
                 one: `make setup`); name one with --onnxruntime-lib or ORT_DYLIB_PATH",
            )?;
            // One session per worker: each worker runs its own.
            Box::new(
                OnnxRankNet::load(&library, &args.model_dir, workers).map_err(|e| e.to_string())?,
            )
        }
    })
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
