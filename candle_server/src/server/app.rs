//! Routes, handlers and the per-request flow with its stage timers (the micro-batching flow is in
//! `batching`).

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::middleware::{from_fn, Next};
use actix_web::web::{self, BytesMut, Data};
use actix_web::{App, Error, HttpMessage, HttpRequest, HttpResponse, Resource, Route};
use futures_util::StreamExt;
use serde::Serialize;
use subtle::ConstantTimeEq;

use super::answer::{rank_body, ScoredItem};
use super::batching::{Answer, BatchSettings, Batcher};
use super::db::Database;
use super::error::ApiError;
use super::request::RankRequest;
use super::scorer::Scorer;
use super::stats::{
    BatchSnapshot, OrderedMap, Stage, StageSummary, StageTimes, StatsRegistry, WorkerHandle,
};
use super::{MAX_BODY_BYTES, MAX_HEADER_BYTES};
use crate::model;
use crate::runtime::ThreadSetting;

/// Shared by all workers.
pub struct AppState {
    /// `--server-name`: the `server` field of `/health` and `/stats`.
    pub server: String,
    pub workers: usize,
    pub scorer: Arc<dyn Scorer>,
    pub stats: Arc<StatsRegistry>,
    /// `--batching`: the micro-batching variant's settings.
    pub batching: Option<BatchSettings>,
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
            scorer: Arc::from(scorer),
            stats: Arc::new(StatsRegistry::default()),
            batching: None,
            api_key: None,
        }
    }

    /// The micro-batching variant: valid `/rank` requests are served in batches (`batching`).
    pub fn with_batching(mut self, settings: BatchSettings) -> Self {
        self.stats = Arc::new(StatsRegistry::batching(settings.max_batch));
        self.batching = Some(settings);
        self
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

/// Owned by one worker: its own connection pool, its own statistics and, micro-batching, its
/// own queue and batch slots.
#[derive(Debug)]
pub struct WorkerState {
    pub db: Database,
    pub stats: WorkerHandle,
    batcher: Option<Rc<Batcher>>,
}

impl WorkerState {
    /// The state of worker `index` (0-based), on the thread that runs it.
    pub fn new(state: &AppState, db: Database, index: usize) -> Self {
        let stats = state.stats.register();
        let batcher = state.batching.as_ref().map(|settings| {
            let slots = settings.slots_of(index).min(db.max_size());
            Batcher::new(db.clone(), state.scorer.clone(), stats.clone(), settings, slots)
        });
        WorkerState { db, stats, batcher }
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
        .service(method_resource("/rank", web::post().to(rank), "POST"))
        .service(method_resource("/health", web::get().to(health), "GET"))
        .service(method_resource("/stats", web::get().to(stats), "GET"))
        .service(method_resource("/stats/reset", web::post().to(reset_stats), "POST"))
        .default_service(web::to(not_found))
}

/// `path` answered by `route`; any other method gets 405 with `Allow: allow`.
fn method_resource(path: &str, route: Route, allow: &'static str) -> Resource {
    web::resource(path)
        .route(route)
        .default_service(web::to(move |req, body| wrong_method(req, body, allow)))
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

async fn rank(
    req: HttpRequest,
    payload: web::Payload,
    state: Data<AppState>,
    worker: Data<WorkerState>,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload).await?;
    let received = Instant::now();
    let request = RankRequest::from_json(&body)?;
    let parsed = Instant::now();
    let (body, times) = match &worker.batcher {
        Some(batcher) => batcher.rank(request, received, parsed).await?,
        None => rank_alone(&state, &worker, request, received, parsed).await?,
    };
    worker.stats.lock().record(&times);
    Ok(json_response(HttpResponse::Ok(), body))
}

/// One request on its own: its two queries, its rows, one inference call, its answer.
async fn rank_alone(
    state: &AppState,
    worker: &WorkerState,
    request: RankRequest,
    received: Instant,
    parsed: Instant,
) -> Answer {
    let mut times = StageTimes::default();
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

    let items: Vec<ScoredItem> = features
        .items
        .iter()
        .zip(scores)
        .map(|((id, _), score)| ScoredItem { id: *id, score })
        .collect();
    let body = rank_body(request.user_id, items, request.top_k)?;
    let done = Instant::now();
    times.set(Stage::Post, done - scored);
    times.set(Stage::Total, done - received);
    Ok((body, times))
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
        #[serde(skip_serializing_if = "Option::is_none")]
        batching: Option<Batching<'a>>,
    }
    /// The settings and the merged batch block, under py_servers' keys.
    #[derive(Serialize)]
    struct Batching<'a> {
        max_batch: usize,
        max_wait_us: u128,
        batches_in_flight: usize,
        batches_in_flight_per_worker: &'a [usize],
        batches: u64,
        requests: u64,
        mean_batch_size: f64,
        batch_sizes: &'a [(usize, u64)],
        rows: u64,
        mean_rows: f64,
        batch_stages: OrderedMap<'a, StageSummary>,
    }
    let runtime_threads = state.scorer.runtime_threads();
    let snapshot = state.stats.snapshot();
    let batching = state.batching.as_ref().zip(snapshot.batches.as_ref()).map(
        |(settings, batches): (&BatchSettings, &BatchSnapshot)| Batching {
            max_batch: settings.max_batch,
            max_wait_us: settings.max_wait.as_micros(),
            batches_in_flight: settings.slots.iter().sum(),
            batches_in_flight_per_worker: &settings.slots,
            batches: batches.batches,
            requests: batches.requests,
            mean_batch_size: batches.mean_batch_size,
            batch_sizes: &batches.batch_sizes,
            rows: batches.rows,
            mean_rows: batches.mean_rows,
            batch_stages: OrderedMap(&batches.batch_stages),
        },
    );
    let body = Stats {
        server: &state.server,
        backend: state.scorer.backend(),
        workers: state.workers,
        runtime_threads: OrderedMap(&runtime_threads),
        requests: snapshot.requests,
        errors: snapshot.errors,
        stages: OrderedMap(&snapshot.stages),
        batching,
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
