//! A trivial HTTP/1.1 server that answers `POST /rank` with a fixed body: the target against which
//! load generators are measured (bench/loadgen_compare.py, tests/slo). It does no work per request,
//! so what a generator costs and how fast it can send is what the measurement sees.
//!
//!     rustc -O --edition 2021 -o trivial_server tests/slo/trivial_server.rs
//!     trivial_server --port 18300 [--host 127.0.0.1] [--server-name trivial]
//!
//! Routes:
//!   POST /rank          the fixed answer (a 10-item rank answer, the size the real servers send)
//!   GET  /health        {"status":"ok","server":NAME}
//!   GET  /counters      {"requests":N,"stall_arrivals":M}: /rank requests read so far, and those
//!                       that arrived during the last stall
//!   POST /stall?ms=N    every /rank answer is held until N ms from now (a server that stops
//!                       answering); /rank requests that arrive meanwhile are counted: an open-loop
//!                       generator keeps sending them, a closed loop stops once its connections wait
//!
//! Standard library only (one thread per connection, blocking I/O), so that it builds with rustc
//! alone wherever cargo is installed.
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

static REQUESTS: AtomicU64 = AtomicU64::new(0);
static STALL_ARRIVALS: AtomicU64 = AtomicU64::new(0);
static STALL_UNTIL_US: AtomicU64 = AtomicU64::new(0);
static START: OnceLock<Instant> = OnceLock::new();
static NAME: OnceLock<String> = OnceLock::new();

const RANK_BODY: &[u8] = br#"{"user_id":7,"items":[{"id":42000,"score":0.98},{"id":42007,"score":0.98},{"id":100,"score":0.9},{"id":101,"score":0.9},{"id":5000,"score":0.8},{"id":5001,"score":0.8},{"id":3,"score":0.7},{"id":99990,"score":0.6},{"id":99991,"score":0.6},{"id":12,"score":0.5}]}"#;

fn now_us() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

fn respond(stream: &mut TcpStream, status: &str, body: &[u8], close: bool) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n",
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    );
    let mut out = Vec::with_capacity(head.len() + body.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(body);
    stream.write_all(&out)
}

fn header_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn handle(method: &str, target: &str) -> (&'static str, Vec<u8>) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match (method, path) {
        ("POST", "/rank") => {
            REQUESTS.fetch_add(1, Ordering::Relaxed);
            let until = STALL_UNTIL_US.load(Ordering::Relaxed);
            let now = now_us();
            if now < until {
                STALL_ARRIVALS.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_micros(until - now));
            }
            ("200 OK", RANK_BODY.to_vec())
        }
        ("GET", "/health") => {
            let name = NAME.get().map(String::as_str).unwrap_or("trivial");
            ("200 OK", format!(r#"{{"status":"ok","server":"{name}"}}"#).into_bytes())
        }
        ("GET", "/counters") => {
            let body = format!(
                r#"{{"requests":{},"stall_arrivals":{}}}"#,
                REQUESTS.load(Ordering::Relaxed),
                STALL_ARRIVALS.load(Ordering::Relaxed)
            );
            ("200 OK", body.into_bytes())
        }
        ("POST", "/stall") => {
            let ms = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("ms="))
                .and_then(|v| v.parse::<u64>().ok());
            match ms {
                Some(ms) => {
                    STALL_ARRIVALS.store(0, Ordering::Relaxed);
                    STALL_UNTIL_US.store(now_us() + ms * 1000, Ordering::Relaxed);
                    ("204 No Content", Vec::new())
                }
                None => ("400 Bad Request", br#"{"error":"ms=<integer> is required"}"#.to_vec()),
            }
        }
        _ => ("404 Not Found", br#"{"error":"no such route"}"#.to_vec()),
    }
}

fn serve(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = [0u8; 16384];
    loop {
        // One whole request (head and Content-Length body) in buf, then answer it.
        let (head_len, body_len, method, target, close) = loop {
            if let Some(end) = header_end(&buf) {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                let mut lines = head.split("\r\n");
                let mut first = lines.next().unwrap_or("").split(' ');
                let method = first.next().unwrap_or("").to_string();
                let target = first.next().unwrap_or("").to_string();
                let mut length = 0usize;
                let mut close = false;
                for line in lines {
                    if let Some((name, value)) = line.split_once(':') {
                        let name = name.trim().to_ascii_lowercase();
                        if name == "content-length" {
                            length = value.trim().parse().unwrap_or(0);
                        } else if name == "connection" && value.trim().eq_ignore_ascii_case("close") {
                            close = true;
                        }
                    }
                }
                break (end, length, method, target, close);
            }
            match stream.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        };
        while buf.len() < head_len + body_len {
            match stream.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
        buf.drain(..head_len + body_len);
        let (status, body) = handle(&method, &target);
        if respond(&mut stream, status, &body, close).is_err() || close {
            return;
        }
    }
}

fn main() {
    let mut host = "127.0.0.1".to_string();
    let mut port: Option<u16> = None;
    let mut name = "trivial".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next();
        match (flag.as_str(), value) {
            ("--host", Some(v)) => host = v,
            ("--port", Some(v)) => port = v.parse().ok(),
            ("--server-name", Some(v)) => name = v,
            _ => {
                eprintln!("trivial_server: usage: --port N [--host H] [--server-name NAME]");
                std::process::exit(2);
            }
        }
    }
    let Some(port) = port else {
        eprintln!("trivial_server: --port N is required");
        std::process::exit(2);
    };
    NAME.set(name).ok();
    now_us();
    let listener = match TcpListener::bind((host.as_str(), port)) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("trivial_server: cannot listen on {host}:{port}: {e}");
            std::process::exit(1);
        }
    };
    for stream in listener.incoming().flatten() {
        let spawned = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || serve(stream));
        if spawned.is_err() {
            eprintln!("trivial_server: cannot start a connection thread");
        }
    }
}
