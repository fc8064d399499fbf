//! Command line: the contract's flags, shared by every rankbench server.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// The project's private cluster; `DATABASE_URL` overrides it.
pub const DEFAULT_DSN: &str = "postgresql://bench@127.0.0.1:55432/bench";

#[derive(Debug, Clone, Parser)]
#[command(
    name = "candle_server",
    version,
    about = "rankbench RankNet server: actix-web + tokio-postgres + Candle (see docs/contract.md)"
)]
pub struct Args {
    /// The name this server reports as `server` in `/health` and `/stats` (the registry's name).
    #[arg(
        long = "server-name",
        value_name = "NAME",
        required_unless_present = "build_info",
        value_parser = server_name
    )]
    pub server_name: Option<String>,

    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,

    /// Port to bind.
    #[arg(long, default_value_t = 8003)]
    pub port: u16,

    /// PostgreSQL connection URL.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DSN, hide_env_values = true)]
    pub dsn: String,

    /// actix worker threads; each runs its own requests, database I/O and one Candle compute thread.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: u16,

    /// Database connections in total, split evenly over the workers.
    #[arg(long = "pool-size", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    pub pool_size: u16,

    /// Directory holding ranknet.safetensors (Candle) and ranknet.onnx (ONNX Runtime).
    #[arg(long = "model-dir", default_value = "artifacts")]
    pub model_dir: PathBuf,

    /// The runtime that scores the rows.
    #[arg(long, value_enum, default_value_t = Runtime::Candle)]
    pub runtime: Runtime,

    /// The ONNX Runtime shared library that `--runtime onnx` loads; default: the one the
    /// onnxruntime package in the project's .venv ships.
    #[arg(long = "onnxruntime-lib", value_name = "PATH", env = "ORT_DYLIB_PATH")]
    pub onnxruntime_lib: Option<PathBuf>,

    /// Skip the model: every score is 0.0 (the DB-and-HTTP floor).
    #[arg(long = "no-model", conflicts_with = "runtime")]
    pub no_model: bool,

    #[command(flatten)]
    pub batching: Batching,

    /// Require this key in the `X-API-Key` header on every route but `GET /health` (off by default).
    #[arg(long = "api-key", env = "RANKBENCH_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Print how this binary was built (JSON) and exit.
    #[arg(long = "build-info")]
    pub build_info: bool,
}

/// The micro-batching variant's flags (py_servers' own).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Micro-batching")]
pub struct Batching {
    /// Serve `/rank` in batches: one database round trip and one inference call per batch (the
    /// registry's micro-batching variants).
    #[arg(long = "batching")]
    pub enabled: bool,

    /// Requests per batch at most [default: 64].
    #[arg(long = "max-batch", value_name = "N", requires = "enabled")]
    pub max_batch: Option<usize>,

    /// Wait up to US microseconds for a fuller batch once a slot is free [default: 0: no timer,
    /// whatever is queued goes].
    #[arg(long = "max-wait-us", value_name = "US", requires = "enabled")]
    pub max_wait_us: Option<u64>,

    /// Batches served at once, in total over the workers and split like --pool-size; at most
    /// --pool-size [default: --pool-size].
    #[arg(long = "batches-in-flight", value_name = "N", requires = "enabled")]
    pub batches_in_flight: Option<usize>,
}

/// `--runtime`: what computes the scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Runtime {
    /// Candle (`ranknet.safetensors`), in-process Rust.
    Candle,
    /// ONNX Runtime through the `ort` crate (`ranknet.onnx`), the .venv's libonnxruntime.
    Onnx,
}

/// A server name as the Python servers accept it: printable ASCII without spaces, not empty
/// (results are keyed by it, and it must survive any header or file name it is put in).
fn server_name(name: &str) -> Result<String, String> {
    if name.is_empty() || !name.bytes().all(|b| (b'!'..=b'~').contains(&b)) {
        return Err("must be printable ASCII without spaces".into());
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_flags_parse() {
        let args = Args::try_parse_from([
            "candle_server",
            "--server-name",
            "rust-test",
            "--host",
            "0.0.0.0",
            "--port",
            "9000",
            "--dsn",
            "postgresql://x@y/z",
            "--workers",
            "2",
            "--pool-size",
            "6",
            "--model-dir",
            "/abs/artifacts",
            "--no-model",
        ])
        .expect("flags");
        assert_eq!(args.server_name.as_deref(), Some("rust-test"));
        assert_eq!(args.host, "0.0.0.0");
        assert_eq!(args.port, 9000);
        assert_eq!(args.dsn, "postgresql://x@y/z");
        assert_eq!((args.workers, args.pool_size), (2, 6));
        assert_eq!(args.model_dir, PathBuf::from("/abs/artifacts"));
        assert!(args.no_model);
    }

    #[test]
    fn batching_flags_need_batching() {
        let named = ["candle_server", "--server-name", "x"];
        let args = Args::try_parse_from([&named[..], &["--batching", "--max-batch", "8"]].concat())
            .expect("batching flags");
        let batching = args.batching;
        assert!(batching.enabled);
        assert_eq!(
            (batching.max_batch, batching.max_wait_us, batching.batches_in_flight),
            (Some(8), None, None)
        );
        for flag in ["--max-batch", "--max-wait-us", "--batches-in-flight"] {
            let err = Args::try_parse_from([&named[..], &[flag, "1"]].concat()).expect_err(flag);
            assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument, "{flag}");
            assert!(err.to_string().contains("--batching"), "{err}");
        }
    }

    #[test]
    fn zero_workers_is_refused() {
        let named = ["candle_server", "--server-name", "x"];
        assert!(Args::try_parse_from([&named[..], &["--workers", "0"]].concat()).is_err());
        assert!(Args::try_parse_from([&named[..], &["--pool-size", "0"]].concat()).is_err());
        assert!(Args::try_parse_from([&named[..], &["--workers", "1"]].concat()).is_ok());
    }

    #[test]
    fn server_name_is_required_and_printable() {
        let err = Args::try_parse_from(["candle_server"]).expect_err("no name");
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("--server-name <NAME>"), "{err}");
        for bad in ["", "two words", "tab\there", "caf\u{e9}", "line\n"] {
            let err = Args::try_parse_from(["candle_server", "--server-name", bad]).expect_err(bad);
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{bad:?}");
            assert!(err.to_string().contains("printable ASCII without spaces"), "{err}");
        }
        let args = Args::try_parse_from(["candle_server", "--server-name", "exp-candle_2.x"])
            .expect("punctuation is fine");
        assert_eq!(args.server_name.as_deref(), Some("exp-candle_2.x"));
        // --build-info prints and exits: no name needed.
        let args = Args::try_parse_from(["candle_server", "--build-info"]).expect("build info");
        assert!(args.build_info && args.server_name.is_none());
    }
}
