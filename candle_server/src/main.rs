//! `candle_server`: the rankbench contract served by actix-web, tokio-postgres and Candle.

use std::process::ExitCode;

use actix_web::web::Data;
use clap::Parser;

use candle_server::model::RankNet;
use candle_server::runtime;
use candle_server::server::app::{AppState, Scorer};
use candle_server::server::build_info::build_info;
use candle_server::server::cli::Args;
use candle_server::server::db::{self, Database};
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
    let mut state = AppState::new(server_name, scorer, workers);
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
