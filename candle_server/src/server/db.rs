//! PostgreSQL access: one deadpool pool per actix worker, the contract's two prepared queries on
//! one pooled connection, one after the other. The micro-batching variant sends the same two
//! queries widened to a batch (`fetch_batch`: the user query becomes `= ANY($1)` too).
//!
//! Each worker owns its share of `--pool-size`, so a connection's tokio-postgres task runs on the
//! worker thread that uses it: no cross-thread wake-ups, and no runtime besides the workers'.

use std::collections::HashMap;
use std::time::Duration;

use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use super::error::ApiError;
use crate::model::{ITEM_FEATURES, USER_FEATURES};

const USER_QUERY: &str = "SELECT features FROM users WHERE id = $1";
const ITEMS_QUERY: &str = "SELECT id, features FROM items WHERE id = ANY($1)";
/// Micro-batching: the user query widened to a batch's users (docs/contract.md).
const BATCH_USERS_QUERY: &str = "SELECT id, features FROM users WHERE id = ANY($1)";

/// Server-side limit per statement, set on every connection: a slow database gives 503.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(2);
/// Client-side limit on the whole database stage, for a database that stops answering at all
/// (stopped process, lost network) and so never enforces its statement timeout.
pub const DB_STAGE_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const POOL_WAIT_TIMEOUT: Duration = Duration::from_secs(5);

/// The connection settings of `--dsn`, with the statement timeout and connect timeout added.
pub fn pg_config(dsn: &str) -> Result<tokio_postgres::Config, String> {
    let mut config: tokio_postgres::Config =
        dsn.parse().map_err(|e| format!("invalid --dsn {dsn:?}: {e}"))?;
    let timeout = format!("-c statement_timeout={}", STATEMENT_TIMEOUT.as_millis());
    let options = match config.get_options() {
        Some(existing) if !existing.trim().is_empty() => format!("{existing} {timeout}"),
        _ => timeout,
    };
    config.options(options);
    config.connect_timeout(CONNECT_TIMEOUT);
    if config.get_application_name().is_none() {
        config.application_name("candle_server");
    }
    Ok(config)
}

/// How `total` connections are shared by `workers` pools (the first ones get the remainder).
pub fn split_pool(total: usize, workers: usize) -> Result<Vec<usize>, String> {
    if workers == 0 || total < workers {
        return Err(format!(
            "--pool-size ({total}) must be at least --workers ({workers}): each worker owns its \
             own connections"
        ));
    }
    Ok((0..workers).map(|i| total / workers + usize::from(i < total % workers)).collect())
}

/// Features of one request, decoded into native values.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    pub user: Vec<f32>,
    /// `(item id, features)` for the requested ids that exist, in the database's order.
    pub items: Vec<(i64, Vec<f32>)>,
}

/// Features of a batch: the users found, and the items found for them, each once.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BatchFeatures {
    pub users: HashMap<i64, Vec<f32>>,
    pub items: HashMap<i64, Vec<f32>>,
}

/// One worker's pool.
#[derive(Clone, Debug)]
pub struct Database {
    pool: Pool,
    /// Which user statement the connections prepare when warming up: the one that is sent.
    batching: bool,
}

impl Database {
    /// A lazily connecting pool of `size` connections (nothing is opened here).
    pub fn new(config: tokio_postgres::Config, size: usize) -> Result<Self, String> {
        let manager = Manager::from_config(
            config,
            NoTls,
            // Fast: a connection is checked for being closed, not with an extra round trip.
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| format!("cannot build the connection pool: {e}"))?;
        Ok(Database { pool, batching: false })
    }

    /// The same pool for a micro-batching server (it prepares the batch statements).
    pub fn for_batches(self) -> Self {
        Database { batching: true, ..self }
    }

    pub fn max_size(&self) -> usize {
        self.pool.status().max_size
    }

    /// The user's features, then the features of the requested items that exist.
    pub async fn fetch(&self, user_id: i64, item_ids: &[i64]) -> Result<Features, ApiError> {
        self.on_connection(async |client| run_queries(client, user_id, item_ids).await).await
    }

    /// A batch's two queries on one pooled connection: every user of `user_ids`, then (when any
    /// was found) the items `items_for` names for the users found (not sent when it names none).
    pub async fn fetch_batch(
        &self,
        user_ids: &[i64],
        items_for: impl FnOnce(&HashMap<i64, Vec<f32>>) -> Vec<i64>,
    ) -> Result<BatchFeatures, ApiError> {
        self.on_connection(async |client| run_batch_queries(client, user_ids, items_for).await)
            .await
    }

    /// Runs `work` on a pooled connection within [`DB_STAGE_TIMEOUT`].
    async fn on_connection<T>(
        &self,
        work: impl AsyncFnOnce(&deadpool_postgres::Client) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let result = tokio::time::timeout(DB_STAGE_TIMEOUT, work(&client)).await;
        result.unwrap_or_else(|_| {
            // The connection may still owe answers: take it out of the pool and close it.
            drop(Object::take(client));
            Err(ApiError::Unavailable(format!("no answer within {} s", DB_STAGE_TIMEOUT.as_secs())))
        })
    }

    /// A round trip on a pooled connection, for `/health`.
    pub async fn ping(&self) -> Result<(), ApiError> {
        let probe = async {
            let client = self.pool.get().await.map_err(pool_error)?;
            client.simple_query("SELECT 1").await.map_err(query_error)?;
            Ok(())
        };
        tokio::time::timeout(DB_STAGE_TIMEOUT, probe).await.unwrap_or_else(|_| {
            Err(ApiError::Unavailable(format!("no answer within {} s", DB_STAGE_TIMEOUT.as_secs())))
        })
    }

    /// Opens every connection of the pool and prepares both statements on each, so that the
    /// first requests do not pay for it. Stops at the first failure and returns it (the server
    /// leaves it for requests and `/health` to report; the ceiling client stops).
    pub async fn warm_up(&self) -> Result<(), ApiError> {
        let mut held = Vec::with_capacity(self.max_size());
        for _ in 0..self.max_size() {
            let client = self.pool.get().await.map_err(pool_error)?;
            let users = if self.batching { BATCH_USERS_QUERY } else { USER_QUERY };
            client.prepare_cached(users).await.map_err(query_error)?;
            client.prepare_cached(ITEMS_QUERY).await.map_err(query_error)?;
            held.push(client);
        }
        Ok(())
    }
}

async fn run_queries(
    client: &deadpool_postgres::Client,
    user_id: i64,
    item_ids: &[i64],
) -> Result<Features, ApiError> {
    let user_statement = client.prepare_cached(USER_QUERY).await.map_err(query_error)?;
    let row = client.query_opt(&user_statement, &[&user_id]).await.map_err(query_error)?;
    let Some(row) = row else {
        return Err(ApiError::NotFound(format!("user {user_id} not found")));
    };
    let user = features(&row, 0, USER_FEATURES, || format!("user {user_id}"))?;
    let items_statement = client.prepare_cached(ITEMS_QUERY).await.map_err(query_error)?;
    let rows = client.query(&items_statement, &[&item_ids]).await.map_err(query_error)?;
    let items = rows.iter().map(|row| id_and_features(row, "item", ITEM_FEATURES));
    Ok(Features { user, items: items.collect::<Result<_, _>>()? })
}

async fn run_batch_queries(
    client: &deadpool_postgres::Client,
    user_ids: &[i64],
    items_for: impl FnOnce(&HashMap<i64, Vec<f32>>) -> Vec<i64>,
) -> Result<BatchFeatures, ApiError> {
    let users_statement = client.prepare_cached(BATCH_USERS_QUERY).await.map_err(query_error)?;
    let rows = client.query(&users_statement, &[&user_ids]).await.map_err(query_error)?;
    let users = rows
        .iter()
        .map(|row| id_and_features(row, "user", USER_FEATURES))
        .collect::<Result<HashMap<_, _>, _>>()?;
    let item_ids = if users.is_empty() { Vec::new() } else { items_for(&users) };
    if item_ids.is_empty() {
        return Ok(BatchFeatures { users, items: HashMap::new() });
    }
    let items_statement = client.prepare_cached(ITEMS_QUERY).await.map_err(query_error)?;
    let rows = client.query(&items_statement, &[&item_ids]).await.map_err(query_error)?;
    let items = rows.iter().map(|row| id_and_features(row, "item", ITEM_FEATURES));
    Ok(BatchFeatures { users, items: items.collect::<Result<_, _>>()? })
}

/// `(id, features)` of an `id, features` row, the features checked for their length.
fn id_and_features(
    row: &tokio_postgres::Row,
    what: &str,
    expected: usize,
) -> Result<(i64, Vec<f32>), ApiError> {
    let id: i64 = row
        .try_get(0)
        .map_err(|e| ApiError::Internal(format!("cannot decode a {what} id: {e}")))?;
    Ok((id, features(row, 1, expected, || format!("{what} {id}"))?))
}

/// The `real[]` in column `column`, which must hold `expected` values.
fn features(
    row: &tokio_postgres::Row,
    column: usize,
    expected: usize,
    what: impl Fn() -> String,
) -> Result<Vec<f32>, ApiError> {
    let values: Vec<f32> = row
        .try_get(column)
        .map_err(|e| ApiError::Internal(format!("{}: cannot decode features: {e}", what())))?;
    if values.len() != expected {
        return Err(ApiError::Internal(format!(
            "{} has {} features, expected {expected}",
            what(),
            values.len()
        )));
    }
    Ok(values)
}

fn pool_error(err: PoolError) -> ApiError {
    match err {
        PoolError::Backend(e) => query_error(e),
        PoolError::Timeout(kind) => {
            ApiError::Unavailable(format!("timed out waiting for a connection ({kind:?})"))
        }
        other => ApiError::Unavailable(other.to_string()),
    }
}

/// Every database failure is a 503: the server stays up and retries on the next request.
fn query_error(err: tokio_postgres::Error) -> ApiError {
    ApiError::Unavailable(describe(&err))
}

/// tokio-postgres prints server errors as just "db error"; this includes what the server said.
pub fn describe(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        let what =
            if db.code() == &SqlState::QUERY_CANCELED { "statement timed out: " } else { "" };
        return format!("{what}{} ({})", db.message(), db.code().code());
    }
    match std::error::Error::source(err) {
        Some(source) => format!("{err}: {source}"),
        None => err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_is_split_over_workers() {
        assert_eq!(split_pool(8, 1).expect("1"), vec![8]);
        assert_eq!(split_pool(8, 3).expect("3"), vec![3, 3, 2]);
        assert_eq!(split_pool(2, 2).expect("2"), vec![1, 1]);
        let err = split_pool(1, 2).expect_err("too small");
        assert!(err.contains("--pool-size (1) must be at least --workers (2)"), "{err}");
    }

    #[test]
    fn config_adds_statement_timeout_and_keeps_options() {
        let config = pg_config("postgresql://bench@127.0.0.1:55432/bench").expect("dsn");
        assert_eq!(config.get_options(), Some("-c statement_timeout=2000"));
        assert_eq!(config.get_connect_timeout(), Some(&CONNECT_TIMEOUT));
        let config =
            pg_config("postgresql://bench@127.0.0.1:55432/bench?options=-c%20search_path%3Dx")
                .expect("dsn with options");
        assert_eq!(config.get_options(), Some("-c search_path=x -c statement_timeout=2000"));
        let err = pg_config("postgresql://bench@127.0.0.1:notaport/bench").expect_err("bad dsn");
        assert!(err.starts_with("invalid --dsn"), "{err}");
    }
}
