//! The listening side: actix-server workers running actix-http's HTTP/1 service over each TCP
//! connection, with one addition that actix-web's `HttpServer` cannot express.
//!
//! When actix-http cannot read a request at all (malformed request line or framing, a request head
//! over its 128 KiB buffer or with more than 96 headers, a request head not finished in time), its
//! dispatcher answers by itself with a hard-coded, body-less response (`400`, `431`, `500`, `408`,
//! `content-length: 0`, `connection: close`) that never reaches the application. The contract wants
//! every error as JSON, so [`JsonProtocolErrors`] wraps the TCP stream and, on the way out, gives
//! exactly those responses a JSON body. The application itself never sends an empty 400/408/431/500
//! (all its errors carry a body), so nothing else can match; other writes pass through untouched.

use std::io;
use std::net::TcpListener;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use actix_http::{HttpService, KeepAlive};
use actix_service::{fn_service, map_config, ServiceFactoryExt};
use actix_web::dev::{AppConfig, Server};
use actix_web::rt::net::TcpStream;
use actix_web::web::Data;
use memchr::memmem;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::app::{build_app, AppState, WorkerState};
use super::db::Database;
use super::error::error_body;
use super::MAX_HEADER_BYTES;

/// Connection-level settings (timeouts are actix-http's; see `serve`).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub workers: usize,
    /// Idle keep-alive connections are closed after this long.
    pub keep_alive: Duration,
    /// A client has this long to send a complete request head (slow-header protection).
    pub request_head_timeout: Duration,
    /// On SIGTERM/SIGINT, in-flight requests get this long before the workers stop.
    pub shutdown_grace: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            workers: 1,
            keep_alive: Duration::from_secs(30),
            request_head_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(3),
        }
    }
}

/// Where to listen: an address to bind, or a socket bound by the caller (tests bind port 0).
pub enum Listen {
    Bind(String, u16),
    Listener(TcpListener),
}

/// Builds the server: `settings.workers` worker threads, each owning one of `databases` (pool
/// shares) and running the app; stops gracefully on SIGTERM and SIGINT. Await the result to run.
pub fn serve(
    state: Data<AppState>,
    databases: Vec<Database>,
    listen: Listen,
    settings: Settings,
) -> io::Result<Server> {
    if databases.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "no database pools"));
    }
    let builder = Server::build()
        .workers(settings.workers)
        .shutdown_timeout(settings.shutdown_grace.as_secs())
        .shutdown_signal(termination_signal());
    let drain_idle = builder.graceful_shutdown_signal();
    let next_worker = Arc::new(AtomicUsize::new(0));

    let factory = move || {
        // Called once on each worker thread: the worker owns the pool it picks here, so the
        // connections' tokio-postgres tasks run on this thread.
        let index = next_worker.fetch_add(1, Ordering::Relaxed) % databases.len();
        let db = databases[index].clone();
        let warm = db.clone();
        actix_web::rt::spawn(async move {
            // A failure is reported by the requests and `/health` that meet it.
            let _ = warm.warm_up().await;
        });
        let worker = Data::new(WorkerState::new(&state, db, index));
        let app = build_app(state.clone(), worker);

        let drain_idle = drain_idle.clone();
        let http = HttpService::build()
            .keep_alive(KeepAlive::Timeout(settings.keep_alive))
            .client_request_timeout(settings.request_head_timeout)
            .client_disconnect_timeout(Duration::from_secs(1))
            // Close idle keep-alive connections as soon as a graceful shutdown starts.
            .graceful_shutdown_signal(move || {
                let signal = drain_idle.clone();
                async move { signal.notified().await }
            })
            .h1(map_config(app, |_| AppConfig::default()));

        fn_service(|io: TcpStream| async move {
            // One write per response already; no Nagle delay on top of it.
            let _ = io.set_nodelay(true);
            let peer = io.peer_addr().ok();
            Ok((JsonProtocolErrors::new(io), peer))
        })
        .and_then(http)
    };

    let builder = match listen {
        Listen::Bind(host, port) => {
            builder.bind("candle_server", (host.as_str(), port), factory)?
        }
        Listen::Listener(listener) => builder.listen("candle_server", listener, factory)?,
    };
    Ok(builder.run())
}

/// Resolves on SIGTERM or SIGINT (actix-server on its own treats SIGINT as a forced stop).
async fn termination_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            eprintln!("candle_server: warning: cannot install signal handlers; stop with SIGKILL");
            std::future::pending::<()>().await
        }
    }
}

/// The response heads actix-http's dispatcher writes on its own, and the JSON they get.
fn protocol_errors() -> [(&'static [u8], String); 4] {
    [
        (b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n", "malformed HTTP request".into()),
        (
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n",
            format!("request headers over {MAX_HEADER_BYTES} bytes or more than 96 header lines"),
        ),
        (
            b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n",
            "request head not received in time".into(),
        ),
        (
            b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n",
            "unreadable request".into(),
        ),
    ]
}

/// `buf` with each body-less dispatcher error response given a JSON body, or `None` when `buf`
/// holds none (the common case: one substring search).
fn rewrite_protocol_errors(buf: &[u8]) -> Option<Vec<u8>> {
    const EMPTY_BODY: &[u8] = b"\r\ncontent-length: 0\r\n";
    memmem::find(buf, EMPTY_BODY)?;
    let errors = protocol_errors();
    let mut out: Option<Vec<u8>> = None;
    let mut rest = buf;
    loop {
        let found = errors
            .iter()
            .filter_map(|(head, message)| memmem::find(rest, head).map(|at| (at, *head, message)))
            .min_by_key(|(at, _, _)| *at);
        let Some((at, head, message)) = found else { break };
        let after_length = at + head.len();
        // From the CRLF that ends the content-length line, in case no header follows it.
        let Some(end) = memmem::find(&rest[after_length - 2..], b"\r\n\r\n") else { break };
        let head_end = after_length - 2 + end + 4;
        let status_line_len = head.len() - b"content-length: 0\r\n".len();
        let body = error_body(message);
        let out = out.get_or_insert_with(|| Vec::with_capacity(buf.len() + 128));
        out.extend_from_slice(&rest[..at + status_line_len]);
        out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
        out.extend_from_slice(b"content-type: application/json\r\n");
        out.extend_from_slice(&rest[after_length..head_end]);
        out.extend_from_slice(&body);
        rest = &rest[head_end..];
    }
    let mut out = out?;
    out.extend_from_slice(rest);
    Some(out)
}

/// A stream that gives actix-http's own error responses a JSON body (see the module docs).
pub struct JsonProtocolErrors<T> {
    io: T,
    /// Rewritten bytes accepted from the writer but not yet written to `io`.
    pending: Vec<u8>,
    written: usize,
}

impl<T> JsonProtocolErrors<T> {
    pub fn new(io: T) -> Self {
        JsonProtocolErrors { io, pending: Vec::new(), written: 0 }
    }
}

impl<T: AsyncWrite + Unpin> JsonProtocolErrors<T> {
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonProtocolErrors<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonProtocolErrors<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        match rewrite_protocol_errors(buf) {
            None => Pin::new(&mut this.io).poll_write(cx, buf),
            Some(rewritten) => {
                // Take all of `buf`; what the socket does not take now is written on the next
                // write, flush or shutdown (all of which drain `pending` first).
                this.pending = rewritten;
                if let Poll::Ready(Err(e)) = this.poll_pending(cx) {
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(buf.len()))
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: &str = "date: Sun, 29 Nov 2026 18:20:47 GMT\r\n";

    fn split(response: &[u8]) -> (String, serde_json::Value) {
        let text = String::from_utf8(response.to_vec()).expect("utf8");
        let (head, body) = text.split_once("\r\n\r\n").expect("head");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .expect("content-length")
            .parse()
            .expect("number");
        assert_eq!(length, body.len(), "content-length matches the body");
        (head.to_owned(), serde_json::from_str(body).expect("json body"))
    }

    #[test]
    fn empty_400_gets_a_json_body() {
        let raw = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n{DATE}\r\n"
        );
        let out = rewrite_protocol_errors(raw.as_bytes()).expect("rewritten");
        let (head, body) = split(&out);
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert!(
            head.contains("connection: close") && head.contains("content-type: application/json")
        );
        assert_eq!(body, serde_json::json!({"error": "malformed HTTP request"}));
    }

    #[test]
    fn earlier_pipelined_responses_are_kept() {
        let ok = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: application/json\r\n\r\n{}";
        let raw = format!(
            "{ok}HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n{DATE}\r\n"
        );
        let out = rewrite_protocol_errors(raw.as_bytes()).expect("rewritten");
        assert!(out.starts_with(ok.as_bytes()));
        let (head, body) = split(&out[ok.len()..]);
        assert!(head.starts_with("HTTP/1.1 431 "));
        assert!(body["error"]
            .as_str()
            .expect("message")
            .starts_with("request headers over 16384 bytes"));
    }

    #[test]
    fn application_responses_pass_through() {
        let json = "HTTP/1.1 400 Bad Request\r\ncontent-length: 20\r\ncontent-type: application/json\r\n\r\n{\"error\":\"top_k...\"}";
        assert!(rewrite_protocol_errors(json.as_bytes()).is_none());
        let no_content = format!("HTTP/1.1 204 No Content\r\n{DATE}\r\n");
        assert!(rewrite_protocol_errors(no_content.as_bytes()).is_none());
        // A head that ends right after content-length is still found and rewritten.
        let bare =
            rewrite_protocol_errors(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n\r\n")
                .expect("bare head");
        let (_, body) = split(&bare);
        assert_eq!(body, serde_json::json!({"error": "request head not received in time"}));
        // A 200 with an empty body is not a dispatcher error either.
        let empty_ok = format!("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n{DATE}\r\n");
        assert!(rewrite_protocol_errors(empty_ok.as_bytes()).is_none());
    }
}
