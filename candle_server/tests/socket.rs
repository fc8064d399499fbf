//! The real listener over a TCP socket (no database needed): requests actix-http cannot read get
//! JSON errors too, bodies of rejected requests do not cost the connection, and SIGTERM-style
//! graceful stop finishes promptly.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use actix_web::web::Data;
use serde_json::Value;

use candle_server::server::app::AppState;
use candle_server::server::db::{pg_config, Database};
use candle_server::server::scorer::NoModel;
use candle_server::server::transport::{serve, Listen, Settings};

struct Running {
    port: u16,
    handle: actix_web::dev::ServerHandle,
    thread: std::thread::JoinHandle<()>,
}

fn start() -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let dsn = common::unreachable_dsn();
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let state = Data::new(AppState::new(common::SERVER_NAME, Box::new(NoModel), 1));
            let db = Database::new(pg_config(&dsn).expect("dsn"), 1).expect("pool");
            let settings = Settings { workers: 1, ..Settings::default() };
            let server =
                serve(state, vec![db], Listen::Listener(listener), settings).expect("serve");
            tx.send(server.handle()).expect("send handle");
            server.await.expect("server ran");
        })
    });
    let handle = rx.recv_timeout(Duration::from_secs(10)).expect("server started");
    Running { port, handle, thread }
}

impl Running {
    fn stop(self) {
        // The command is sent when `stop` is called; the returned future only waits for it.
        drop(self.handle.stop(true));
        self.thread.join().expect("server thread");
    }
}

fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    stream
}

/// Reads one response (head + content-length body); `None` if the server closed first.
fn read_response(stream: &mut TcpStream) -> Option<(u16, String, Value)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8(buf).expect("utf8 head");
    let status = head[9..12].parse().expect("status");
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_owned))
        .map_or(0, |v| v.trim().parse().expect("length"));
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).ok()?;
    let json =
        if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).expect("json") };
    Some((status, head, json))
}

fn closed(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.read(&mut byte), Ok(0) | Err(_))
}

#[test]
fn unreadable_requests_get_json_errors() {
    let server = start();
    let cases: [(&[u8], u16); 3] = [
        (b"THIS IS NOT HTTP\r\n\r\n", 400),
        (b"POST /rank HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n", 400),
        (b"POST /rank HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400),
    ];
    for (raw, want) in cases {
        let mut stream = connect(server.port);
        stream.write_all(raw).expect("write");
        let (status, head, body) = read_response(&mut stream).expect("a response");
        assert_eq!(status, want, "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(body["error"].is_string(), "{body}");
        assert!(closed(&mut stream), "an unreadable request closes the connection");
    }

    // More header lines than actix-http parses (96), each small: 431 with a JSON body.
    let mut raw = b"GET /health HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..120 {
        raw.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    raw.extend_from_slice(b"\r\n");
    let mut stream = connect(server.port);
    stream.write_all(&raw).expect("write");
    let (status, _, body) = read_response(&mut stream).expect("a response");
    assert_eq!(status, 431);
    assert!(body["error"].as_str().expect("message").starts_with("request headers over"), "{body}");

    server.stop();
}

#[test]
fn rejected_bodies_keep_the_connection() {
    let server = start();
    let mut stream = connect(server.port);
    let big_header = "h".repeat(17 * 1024);
    let body = r#"{"user_id": 1, "item_ids": [1]}"#;
    let requests = [
        (format!("PUT /rank HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", body.len()), 405),
        (format!("POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", body.len()), 404),
        (
            format!(
                "POST /rank HTTP/1.1\r\nHost: x\r\nX-Big: {big_header}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
            431,
        ),
        ("GET /stats HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(), 200),
    ];
    for (raw, want) in requests {
        stream.write_all(raw.as_bytes()).expect("write");
        let (status, head, _) = read_response(&mut stream).expect("connection still open");
        assert_eq!(status, want, "{head}");
        assert!(!head.contains("connection: close"), "{head}");
    }
    server.stop();
}

#[test]
fn stalled_body_gets_408_and_is_closed() {
    let server = start();
    let mut stream = connect(server.port);
    stream.set_read_timeout(Some(Duration::from_secs(15))).expect("timeout");
    let started = Instant::now();
    stream
        .write_all(b"POST /rank HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n{\"user_id\": 1")
        .expect("write");
    let (status, head, body) = read_response(&mut stream).expect("a response");
    let waited = started.elapsed();
    assert_eq!(status, 408, "{head}");
    assert_eq!(body["error"], "request body not received within 5 s");
    assert!(waited >= Duration::from_secs(4) && waited < Duration::from_secs(10), "{waited:?}");
    assert!(closed(&mut stream));
    server.stop();
}

#[test]
fn graceful_stop_closes_idle_keep_alive_connections_promptly() {
    let server = start();
    let mut idle = connect(server.port);
    idle.write_all(b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    assert_eq!(read_response(&mut idle).expect("response").0, 200);
    let started = Instant::now();
    server.stop();
    assert!(started.elapsed() < Duration::from_secs(5), "stop took {:?}", started.elapsed());
    assert!(closed(&mut idle));
}
