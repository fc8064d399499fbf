//! Routes, handlers and the per-request flow with its stage timers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::middleware::{from_fn, Next};
use actix_web::web::{self, BytesMut, Data};
use actix_web::{App, Error, HttpMessage, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::Serialize;
use subtle::ConstantTimeEq;

use super::db::Database;
use super::error::ApiError;
use super::request::RankRequest;
use super::scorer::Scorer;
use super::stats::{OrderedMap, Stage, StageSummary, StageTimes, StatsRegistry, WorkerHandle};
use super::{MAX_BODY_BYTES, MAX_HEADER_BYTES};
use crate::model;
use crate::runtime::ThreadSetting;

/// Shared by all workers.
pub struct AppState {
    /// `--server-name`: the `server` field of `/health` and `/stats`.
    pub server: String,
    pub workers: usize,
    pub scorer: Box<dyn Scorer>,
    pub stats: Arc<StatsRegistry>,
    /// `--api-key`: when set, every route but `GET /health` requires it in `X-API-Key`.
    api_key: Option<Box<[u8]>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("AppState")
            .field("server", &self.server)
            .field("workers", &self.workers)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

impl AppState {
    pub fn new(server: impl Into<String>, scorer: Box<dyn Scorer>, workers: usize) -> Self {
        AppState {
            server: server.into(),
            workers,
            scorer,
            stats: Arc::new(StatsRegistry::default()),
            api_key: None,
        }
    }

    /// Requires `key` on every route but `GET /health`. An empty key is refused.
    pub fn with_api_key(mut self, key: &str) -> Result<Self, String> {
        Self::check_api_key(key)?;
        self.api_key = Some(key.as_bytes().into());
        Ok(self)
    }

    pub fn check_api_key(key: &str) -> Result<(), String> {
        if key.is_empty() {
            return Err("--api-key is empty: give a non-empty key, or leave it out to serve \
                        without one"
                .into());
        }
        Ok(())
    }

    /// True when no key is configured, the route is exempt, or the request carries the key
    /// (compared in constant time).
    fn authorised(&self, req: &ServiceRequest) -> bool {
        let Some(key) = &self.api_key else { return true };
        if req.method() == actix_web::http::Method::GET && req.path() == "/health" {
            return true;
        }
        req.headers().get("x-api-key").is_some_and(|sent| bool::from(sent.as_bytes().ct_eq(key)))
    }
}

/// Owned by one worker: its own connection pool and its own statistics.
#[derive(Debug)]
pub struct WorkerState {
    pub db: Database,
    pub stats: WorkerHandle,
}

impl WorkerState {
    pub fn new(state: &AppState, db: Database) -> Self {
        WorkerState { db, stats: state.stats.register() }
    }
}

/// The application of one worker. Called by actix on each worker thread, and by the tests.
pub fn build_app(
    state: Data<AppState>,
    worker: Data<WorkerState>,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(state)
        .app_data(worker)
        .wrap(from_fn(guard))
        .service(
            web::resource("/rank")
                .route(web::post().to(rank))
                .default_service(web::to(|req, body| wrong_method(req, body, "POST"))),
        )
        .service(
            web::resource("/health")
                .route(web::get().to(health))
                .default_service(web::to(|req, body| wrong_method(req, body, "GET"))),
        )
        .service(
            web::resource("/stats")
                .route(web::get().to(stats))
                .default_service(web::to(|req, body| wrong_method(req, body, "GET"))),
        )
        .service(
            web::resource("/stats/reset")
                .route(web::post().to(reset_stats))
                .default_service(web::to(|req, body| wrong_method(req, body, "POST"))),
        )
        .default_service(web::to(not_found))
}

/// Runs around every request: checks the API key when one is configured (before anything else,
/// so an unauthenticated client learns nothing more), answers 431 for request heads over the
/// contract's 16 KiB (actix-http itself only stops at 128 KiB), and counts requests to `/rank`
/// and their non-2xx answers.
async fn guard(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let counter = (req.path() == "/rank")
        .then(|| req.app_data::<Data<WorkerState>>().map(|w| w.stats.clone()))
        .flatten();
    let authorised = req.app_data::<Data<AppState>>().is_none_or(|state| state.authorised(&req));
    let rejection = if !authorised {
        Some(ApiError::Unauthorized)
    } else if head_bytes(&req) > MAX_HEADER_BYTES {
        Some(ApiError::HeadersTooLarge { limit: MAX_HEADER_BYTES })
    } else {
        None
    };
    let result = if let Some(error) = rejection {
        discard_body(req.take_payload()).await;
        Ok(req.error_response(error).map_into_right_body())
    } else {
        next.call(req).await.map(ServiceResponse::map_into_left_body)
    };
    if let Some(counter) = counter {
        let ok = result.as_ref().is_ok_and(|res| res.status().is_success());
        counter.lock().count_request(ok);
    }
    result
}

/// Size of the request head as the Python servers count it: the request target, plus
/// `name: value\r\n` per header line.
fn head_bytes(req: &ServiceRequest) -> usize {
    let target = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    target + header_bytes(req.headers())
}

fn header_bytes(headers: &HeaderMap) -> usize {
    headers.iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum()
}

#[derive(Serialize)]
struct ScoredItem {
    id: i64,
    score: f32,
}

#[derive(Serialize)]
struct RankResponse<'a> {
    user_id: i64,
    items: &'a [ScoredItem],
}

async fn rank(
    req: HttpRequest,
    payload: web::Payload,
    state: Data<AppState>,
    worker: Data<WorkerState>,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload).await?;
    let mut times = StageTimes::default();
    let received = Instant::now();

    let request = RankRequest::from_json(&body)?;
    let parsed = Instant::now();
    times.set(Stage::Parse, parsed - received);

    let features = worker.db.fetch(request.user_id, &request.item_ids).await?;
    let fetched = Instant::now();
    times.set(Stage::Db, fetched - parsed);

    // As in the Python servers: with none of the items found there is nothing to infer, and
    // `pre`/`infer` are not recorded for that request.
    let (scores, scored) = if features.items.is_empty() {
        (Vec::new(), fetched)
    } else {
        let item_rows = features.items.iter().map(|(_, f)| f.as_slice());
        let rows = model::input_rows(&features.user, item_rows)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let prepared = Instant::now();
        times.set(Stage::Pre, prepared - fetched);

        let scores = state.scorer.scores(rows).map_err(|e| ApiError::Internal(e.to_string()))?;
        let inferred = Instant::now();
        times.set(Stage::Infer, inferred - prepared);
        (scores, inferred)
    };

    let mut items: Vec<ScoredItem> = features
        .items
        .iter()
        .zip(scores)
        .map(|((id, _), score)| ScoredItem { id: *id, score })
        .collect();
    keep_top_k(&mut items, request.top_k);
    let body = serde_json::to_vec(&RankResponse { user_id: request.user_id, items: &items })
        .map_err(|e| ApiError::Internal(format!("cannot encode response: {e}")))?;
    let done = Instant::now();
    times.set(Stage::Post, done - scored);
    times.set(Stage::Total, done - received);

    worker.stats.lock().record(&times);
    Ok(json_response(HttpResponse::Ok(), body))
}

/// Sorts by score descending, ties by id ascending, and keeps the first `k`.
fn keep_top_k(items: &mut Vec<ScoredItem>, k: usize) {
    let order = |a: &ScoredItem, b: &ScoredItem| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id));
    if k < items.len() {
        items.select_nth_unstable_by(k, order);
        items.truncate(k);
    }
    items.sort_unstable_by(order);
}

/// A request's body must arrive within this long of its head (a stalled upload would otherwise
/// hold the connection and its handler forever; the Python servers use the same 5 s).
pub const BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads the whole body, refusing more than the contract's limit before buffering it.
async fn read_body(req: &HttpRequest, mut payload: web::Payload) -> Result<BytesMut, ApiError> {
    let too_large = ApiError::PayloadTooLarge { limit: MAX_BODY_BYTES };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > MAX_BODY_BYTES) {
        return Err(too_large);
    }
    let read = async {
        let mut body = BytesMut::with_capacity(declared.unwrap_or(1024));
        while let Some(chunk) = payload.next().await {
            let chunk =
                chunk.map_err(|e| ApiError::BadRequest(format!("unreadable request body: {e}")))?;
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(too_large);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    tokio::time::timeout(BODY_TIMEOUT, read).await.unwrap_or_else(|_| {
        Err(ApiError::RequestTimeout(format!(
            "request body not received within {} s",
            BODY_TIMEOUT.as_secs()
        )))
    })
}

async fn health(state: Data<AppState>, worker: Data<WorkerState>) -> HttpResponse {
    #[derive(Serialize)]
    struct Health<'a> {
        status: &'a str,
        server: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    }
    // The model is loaded before the socket listens (or not needed with --no-model), so the
    // database is what remains to check.
    let (mut response, health) = match worker.db.ping().await {
        Ok(()) => (HttpResponse::Ok(), Health { status: "ok", server: &state.server, error: None }),
        Err(e) => (
            HttpResponse::ServiceUnavailable(),
            Health { status: "unavailable", server: &state.server, error: Some(e.message()) },
        ),
    };
    json_response_with(&mut response, &health)
}

async fn stats(state: Data<AppState>) -> HttpResponse {
    #[derive(Serialize)]
    struct Stats<'a> {
        server: &'a str,
        backend: &'a str,
        workers: usize,
        runtime_threads: OrderedMap<'a, ThreadSetting>,
        requests: u64,
        errors: u64,
        stages: OrderedMap<'a, StageSummary>,
    }
    let runtime_threads = state.scorer.runtime_threads();
    let snapshot = state.stats.snapshot();
    let body = Stats {
        server: &state.server,
        backend: state.scorer.backend(),
        workers: state.workers,
        runtime_threads: OrderedMap(&runtime_threads),
        requests: snapshot.requests,
        errors: snapshot.errors,
        stages: OrderedMap(&snapshot.stages),
    };
    json_response_with(&mut HttpResponse::Ok(), &body)
}

async fn reset_stats(state: Data<AppState>) -> HttpResponse {
    state.stats.reset();
    HttpResponse::NoContent().finish()
}

async fn wrong_method(
    req: HttpRequest,
    body: web::Payload,
    allow: &'static str,
) -> Result<HttpResponse, ApiError> {
    discard_body(body.into_inner()).await;
    Err(ApiError::MethodNotAllowed { path: req.path().to_owned(), allow })
}

async fn not_found(req: HttpRequest, body: web::Payload) -> Result<HttpResponse, ApiError> {
    discard_body(body.into_inner()).await;
    Err(ApiError::NotFound(format!("unknown path {}", shorten(req.path(), MAX_ECHOED_PATH))))
}

/// Error messages quote at most this much of a request path (as the Python servers do): an error
/// body stays small and does not echo what a client sent back at it.
const MAX_ECHOED_PATH: usize = 100;

fn shorten(text: &str, max_bytes: usize) -> &str {
    let mut end = text.len().min(max_bytes);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Reads and drops a body we answer without using, so that the connection stays usable for the
/// next request (actix closes a connection whose Content-Length body was left unread). Gives up
/// past the body limit or [`BODY_TIMEOUT`]: then the connection is closed instead.
async fn discard_body(mut payload: Payload) {
    let drain = async {
        let mut seen = 0usize;
        while let Some(Ok(chunk)) = payload.next().await {
            seen += chunk.len();
            if seen > MAX_BODY_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(BODY_TIMEOUT, drain).await;
}

fn json_response(mut builder: actix_web::HttpResponseBuilder, body: Vec<u8>) -> HttpResponse {
    builder
        .insert_header((header::CONTENT_TYPE, HeaderValue::from_static("application/json")))
        .body(body)
}

fn json_response_with<T: Serialize>(
    builder: &mut actix_web::HttpResponseBuilder,
    value: &T,
) -> HttpResponse {
    match serde_json::to_vec(value) {
        Ok(body) => builder
            .insert_header((header::CONTENT_TYPE, HeaderValue::from_static("application/json")))
            .body(body),
        Err(e) => actix_web::ResponseError::error_response(&ApiError::Internal(format!(
            "cannot encode response: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(pairs: &[(i64, f32)]) -> Vec<ScoredItem> {
        pairs.iter().map(|&(id, score)| ScoredItem { id, score }).collect()
    }

    fn ids(items: &[ScoredItem]) -> Vec<i64> {
        items.iter().map(|i| i.id).collect()
    }

    #[test]
    fn top_k_orders_by_score_then_id() {
        let mut v = items(&[(5, 0.5), (3, 0.9), (9, 0.5), (1, 0.1), (2, 0.5)]);
        keep_top_k(&mut v, 3);
        assert_eq!(ids(&v), vec![3, 2, 5]);
        let mut v = items(&[(5, 0.5), (3, 0.9), (9, 0.5)]);
        keep_top_k(&mut v, 10);
        assert_eq!(ids(&v), vec![3, 5, 9]);
        let mut v = items(&[(4, 0.0), (2, 0.0), (7, 0.0)]);
        keep_top_k(&mut v, 2);
        assert_eq!(ids(&v), vec![2, 4]);
        let mut v = items(&[]);
        keep_top_k(&mut v, 1);
        assert!(v.is_empty());
    }

    #[test]
    fn scores_are_written_in_their_shortest_float32_form() {
        // What a float32 needs to read back exactly, not the float64 expansion of it
        // (0.1f32 widened would print as 0.10000000149011612).
        let items = items(&[(2, 0.1), (3, 1.0 / 3.0), (4, 0.5), (5, 1e-7), (6, 0.0)]);
        let body =
            serde_json::to_string(&RankResponse { user_id: 1, items: &items }).expect("json");
        assert_eq!(
            body,
            r#"{"user_id":1,"items":[{"id":2,"score":0.1},{"id":3,"score":0.33333334},"#.to_owned()
                + r#"{"id":4,"score":0.5},{"id":5,"score":1e-7},{"id":6,"score":0.0}]}"#
        );
    }

    #[test]
    fn shorten_cuts_on_char_boundaries() {
        assert_eq!(shorten("/abc", 100), "/abc");
        assert_eq!(shorten(&"a".repeat(300), 100).len(), 100);
        assert_eq!(shorten("/é", 2), "/");
    }

    #[test]
    fn header_bytes_counts_name_value_and_separators() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("a"));
        headers.append(header::ACCEPT, HeaderValue::from_static("xy"));
        headers.append(header::ACCEPT, HeaderValue::from_static("z"));
        assert_eq!(header_bytes(&headers), (4 + 1 + 4) + (6 + 2 + 4) + (6 + 1 + 4));
    }
}
