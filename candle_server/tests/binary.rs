//! The `candle_server` binary as the harness starts it: `--server-name` is required and is what
//! `/health` and `/stats` report, and the thread settings `main` makes are the ones the runtime
//! reports in `/stats` (`runtime_threads`). No database needed (it is unreachable here); the
//! model run needs `make model`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BINARY: &str = env!("CARGO_BIN_EXE_candle_server");

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(flags: &[&str]) -> Server {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").port()
        };
        let child = Command::new(BINARY)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--dsn", &common::unreachable_dsn()])
            .args(flags)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start candle_server");
        let mut server = Server { child, port };
        server.wait_listening();
        server
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self.child.try_wait().expect("child status") {
                let mut stderr = String::new();
                if let Some(mut pipe) = self.child.stderr.take() {
                    pipe.read_to_string(&mut stderr).ok();
                }
                panic!("candle_server exited ({status}) before listening: {stderr}");
            }
            assert!(Instant::now() < deadline, "candle_server did not listen within 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `GET path` on a fresh connection: status and JSON body.
    fn get(&self, path: &str) -> (u16, Value) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read");
        let (head, body) = response.split_once("\r\n\r\n").expect("a response head");
        let status = head[9..12].parse().expect("status");
        (status, serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}")))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

fn run(flags: &[&str]) -> Output {
    Command::new(BINARY).args(flags).output().expect("run candle_server")
}

#[test]
fn server_name_is_required() {
    let out = run(&["--no-model"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains("--server-name <NAME>"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn model_server_reports_its_name_and_one_compute_thread() {
    let model_dir = common::artifacts_dir();
    let model_dir = model_dir.to_str().expect("UTF-8 path");
    let server = Server::start(&["--server-name", "bin-test", "--model-dir", model_dir]);
    let (status, health) = server.get("/health");
    assert_eq!(status, 503, "{health}");
    assert_eq!((&health["status"], &health["server"]), (&json!("unavailable"), &json!("bin-test")));

    let (status, stats) = server.get("/stats");
    assert_eq!(status, 200);
    assert_eq!((&stats["server"], &stats["backend"]), (&json!("bin-test"), &json!("candle")));
    let threads = &stats["runtime_threads"];
    // What main set (RAYON_NUM_THREADS=1), read back from Candle and rayon on the worker.
    for (key, want) in [
        ("candle_get_num_threads", json!(1)),
        ("rayon_current_num_threads", json!(1)),
        ("RAYON_NUM_THREADS", json!("1")),
        ("CANDLE_NUM_THREADS", json!("1")),
    ] {
        assert_eq!(threads[key], want, "{key}: {threads}");
    }
    assert!(threads["gemm_threading_threshold"].as_u64().is_some_and(|n| n > 0), "{threads}");
    // One worker, the main thread, actix's acceptor, and rayon's one-thread pool that asking
    // its size started: a few threads, not one per core and pool.
    let os_threads = threads["os_threads"].as_u64().expect("os_threads");
    assert!((3..=6).contains(&os_threads), "{threads}");
}

#[test]
fn no_model_server_reports_no_runtime_threads() {
    let server = Server::start(&["--server-name", "bin-floor", "--no-model"]);
    let (status, stats) = server.get("/stats");
    assert_eq!(status, 200);
    assert_eq!((&stats["server"], &stats["backend"]), (&json!("bin-floor"), &json!("none")));
    assert_eq!(stats["runtime_threads"], json!({}));
}

#[test]
fn onnx_server_reports_the_options_onnx_runtime_holds() {
    let model_dir = common::artifacts_dir();
    let library = common::onnx_library();
    let flags = ["--server-name", "bin-onnx", "--runtime", "onnx", "--workers", "2"];
    let paths = ["--model-dir", model_dir.to_str().expect("UTF-8")];
    let library_flag = ["--onnxruntime-lib", library.to_str().expect("UTF-8")];
    let server = Server::start(&[&flags[..], &paths, &library_flag].concat());
    let (status, stats) = server.get("/stats");
    assert_eq!(status, 200);
    assert_eq!((&stats["server"], &stats["backend"]), (&json!("bin-onnx"), &json!("onnx")));
    assert_eq!(stats["workers"], json!(2));
    let threads = &stats["runtime_threads"];
    for (key, want) in [
        ("execution_mode", json!("ORT_SEQUENTIAL")),
        ("session.intra_op.allow_spinning", json!("0")),
        ("session.inter_op.allow_spinning", json!("0")),
        ("intra_op_num_threads_set", json!(1)),
        ("inter_op_num_threads_set", json!(1)),
    ] {
        assert_eq!(threads[key], want, "{key}: {threads}");
    }
    let loaded = std::fs::canonicalize(&library).expect("library path");
    assert_eq!(threads["onnxruntime_library"], json!(loaded.to_str().expect("UTF-8")));
    // Two workers, the main thread, actix's acceptor: one intra-op thread per session is the
    // calling worker itself, so ONNX Runtime starts no pool of its own.
    let os_threads = threads["os_threads"].as_u64().expect("os_threads");
    assert!((4..=6).contains(&os_threads), "{threads}");
}

#[test]
fn an_unusable_onnx_runtime_library_is_one_line_and_exit_1() {
    let model_dir = common::artifacts_dir();
    // The package's other library: a real shared object, but not ONNX Runtime's API.
    let not_onnxruntime =
        common::onnx_library().with_file_name("libonnxruntime_providers_shared.so");
    let missing = model_dir.join("no-such-libonnxruntime.so");
    for (library, message) in [
        (missing.as_path(), "candle_server: no ONNX Runtime library at "),
        (not_onnxruntime.as_path(), "candle_server: ONNX Runtime: "),
    ] {
        let out = run(&[
            "--server-name",
            "bin-onnx",
            "--runtime",
            "onnx",
            "--model-dir",
            model_dir.to_str().expect("UTF-8"),
            "--onnxruntime-lib",
            library.to_str().expect("UTF-8"),
        ]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.starts_with(message), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
}
