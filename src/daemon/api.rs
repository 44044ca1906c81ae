//! The control API (axum): the prototype's endpoints, unchanged, plus undeploy,
//! configuration, health and metrics. The bodies are the types of [`crate::api`].

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};

use super::{http_server, log_stream, upload, valid_name, Daemon, DaemonError};
use crate::api::{
    env_names, ConfigChange, ConfigView, Deployed, Description, ErrorBody, FunctionIp, List,
    ListEntry, LogQuery, Removed, SecretsCompare, SecretsComparison, CONFIG_HEADER,
    CONFIG_LENGTH_HEADER, IMAGE_NAME_HEADER,
};
use crate::image::{ImageError, Limits};

/// Largest configuration read (a `PATCH .../config` body, or the configuration at the
/// start of an upload): room for every secret at its largest, in base64, and the env.
const MAX_CONFIG_BODY: usize = 4 << 20;

pub(super) struct ApiError(pub(super) StatusCode, pub(super) String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

impl From<DaemonError> for ApiError {
    fn from(e: DaemonError) -> Self {
        let status = match &e {
            DaemonError::InvalidName(_)
            | DaemonError::Settings(_)
            | DaemonError::SecretsMountPoint(_) => StatusCode::BAD_REQUEST,
            DaemonError::NotFound(_) => StatusCode::NOT_FOUND,
            DaemonError::Removing(_) => StatusCode::CONFLICT,
            DaemonError::PoolExhausted(_) => StatusCode::SERVICE_UNAVAILABLE,
            DaemonError::Image(ie) => image_status(ie),
            DaemonError::StoreFull { .. } => StatusCode::INSUFFICIENT_STORAGE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

/// Bad uploads are the client's fault (4xx); failing to write our own disk is ours (5xx).
fn image_status(e: &ImageError) -> StatusCode {
    match e {
        ImageError::UploadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        ImageError::InstallsBusy { .. } => StatusCode::SERVICE_UNAVAILABLE,
        ImageError::Staging { .. }
        | ImageError::WriteConfig { .. }
        | ImageError::Commit { .. }
        | ImageError::LoadConfig { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    }
}

pub fn router(d: Arc<Daemon>) -> Router {
    let router = Router::new()
        .route("/api/new", post(new_function))
        // Its JSON (a config change, secrets included) is read whole: bounded.
        .route(
            "/api/pull",
            post(super::api_pull::pull_function).layer(DefaultBodyLimit::max(MAX_CONFIG_BODY)),
        )
        .route("/api/resolve", get(super::api_pull::resolve_image))
        .route(
            "/api/check-config",
            post(check_config).layer(DefaultBodyLimit::max(MAX_CONFIG_BODY)),
        )
        .route(
            "/api/defaults",
            get(|State(d): State<Arc<Daemon>>| async move { Json(d.default_limits()) }),
        )
        .route("/api/ip/{name}", get(function_ip))
        .route("/api/list", get(list))
        .route(
            "/api/functions/{name}",
            get(describe).delete(remove_function),
        )
        // Its body is read whole: bounded (the env itself is bounded far below this).
        .route(
            "/api/functions/{name}/config",
            patch(configure).layer(DefaultBodyLimit::max(MAX_CONFIG_BODY)),
        )
        .route(
            "/api/functions/{name}/secrets/compare",
            post(compare_secrets).layer(DefaultBodyLimit::max(MAX_CONFIG_BODY)),
        )
        .route("/api/functions/{name}/logs", get(logs))
        .route("/metrics", get(metrics))
        // The upload size is enforced while streaming (see new_function).
        .layer(DefaultBodyLimit::disable());
    let router = if d.token.is_some() {
        router.layer(middleware::from_fn_with_state(d.clone(), require_token))
    } else {
        router
    };
    // Health checks need no token.
    router
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(d)
}

async fn require_token(State(d): State<Arc<Daemon>>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match (&d.token, presented) {
        (Some(want), Some(got)) if constant_time_eq(want.as_bytes(), got.trim().as_bytes()) => {
            next.run(req).await
        }
        _ => ApiError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token".into(),
        )
        .into_response(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn new_function(
    State(d): State<Arc<Daemon>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Deployed>, ApiError> {
    // Every check that needs no body comes first: its answer reaches the client through
    // the lingering close (http_server.rs) while the body is still on its way.
    let name = headers
        .get(IMAGE_NAME_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("missing header {IMAGE_NAME_HEADER}"),
            )
        })?
        .to_string();
    if !valid_name(&name) {
        return Err(DaemonError::InvalidName(name).into());
    }
    let idle = d.cfg.body_timeout();
    let (change, prefix, body) = deploy_config(&headers, body, idle).await?;
    d.check_change(&change)?;
    let max = d.cfg.max_upload_mb << 20;
    let too_large = || {
        ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the upload is larger than {max} bytes, the limit for one image"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n.saturating_sub(prefix) > max) {
        return Err(too_large());
    }
    let _slot = d.upload_slot().await?;
    let (upload, verdict) = upload::reader(body, max, idle);
    match d
        .deploy_with(&name, upload, Limits::default(), &change)
        .await
    {
        Ok(done) => Ok(Json(done)),
        Err(_) if verdict.too_large() => Err(too_large()),
        Err(_) if verdict.stalled() => Err(ApiError(
            StatusCode::REQUEST_TIMEOUT,
            format!("the upload stalled: no data for {idle:?} (--body-timeout); nothing was kept"),
        )),
        Err(e) => Err(e.into()),
    }
}

/// The configuration of a deploy, from [`CONFIG_HEADER`] (no secrets: header values
/// are what proxies and access logs keep) or from the first [`CONFIG_LENGTH_HEADER`]
/// bytes of the body; with the length of that prefix and the rest of the body.
async fn deploy_config(
    headers: &HeaderMap,
    body: Body,
    idle: std::time::Duration,
) -> Result<(ConfigChange, u64, Body), ApiError> {
    let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, m);
    match (headers.get(CONFIG_HEADER), headers.get(CONFIG_LENGTH_HEADER)) {
        (Some(_), Some(_)) => Err(bad(format!(
            "give the configuration in {CONFIG_HEADER} or in the body ({CONFIG_LENGTH_HEADER}), not both"
        ))),
        (Some(v), None) => {
            let change = parse_change(v.as_bytes(), CONFIG_HEADER)?;
            if change.touches_secrets() {
                return Err(bad(format!(
                    "secrets may not travel in a header: send the configuration at the start \
                     of the body, its length in {CONFIG_LENGTH_HEADER}"
                )));
            }
            Ok((change, 0, body))
        }
        (None, Some(v)) => {
            let len = v
                .to_str()
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or_else(|| bad(format!("{CONFIG_LENGTH_HEADER} is not a number")))?;
            if len > MAX_CONFIG_BODY {
                return Err(ApiError(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the configuration is {len} bytes; the limit is {MAX_CONFIG_BODY}"),
                ));
            }
            let (json, rest) = upload::split_prefix(body, len, idle)
                .await
                .map_err(|e| match e {
                    upload::PrefixError::Stalled(_) => {
                        ApiError(StatusCode::REQUEST_TIMEOUT, e.to_string())
                    }
                    e => bad(e.to_string()),
                })?;
            let change = parse_change(&json, "the configuration at the start of the body")?;
            Ok((change, len as u64, rest))
        }
        (None, None) => Ok((ConfigChange::default(), 0, body)),
    }
}

impl Daemon {
    /// One of the --max-uploads slots (uploads and registry pulls), waited for at most
    /// --queue-timeout.
    pub(super) async fn upload_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        let wait = self.cfg.queue_timeout();
        match tokio::time::timeout(wait, self.upload_slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{} uploads are in progress, the limit (--max-uploads); none ended within {wait:?}: try again later",
                    self.cfg.max_uploads
                ),
            )),
        }
    }
}

async fn function_ip(
    State(d): State<Arc<Daemon>>,
    Path(name): Path<String>,
) -> Result<Json<FunctionIp>, ApiError> {
    let f = d
        .function(&name)
        .ok_or_else(|| ApiError::from(DaemonError::NotFound(name.clone())))?;
    Ok(Json(FunctionIp { name, ip: f.ip }))
}

async fn list(State(d): State<Arc<Daemon>>) -> Json<List> {
    let images = d.cfg.images_dir();
    let out: List = d
        .records()
        .await
        .into_iter()
        .map(|(name, r)| {
            let rootfs = images.join(&name).join("rootfs");
            let env = super::settings::merge_env(&r.config.env, &r.settings.env);
            let entry = ListEntry {
                ip: r.ip,
                rootfs,
                cmd: r.config.cmd,
                env: env_names(&env),
                secrets: r.settings.secrets.iter().cloned().collect(),
                workdir: r.config.working_dir,
                user: format!("{}:{}", r.config.uid, r.config.gid),
                resources: r.resources,
                warm: Some(d.function(&name).map_or(0, |f| f.prewarmed.len())),
            };
            (name, entry)
        })
        .collect();
    Json(out)
}

async fn remove_function(
    State(d): State<Arc<Daemon>>,
    Path(name): Path<String>,
) -> Result<Json<Removed>, ApiError> {
    d.undeploy(&name).await?;
    Ok(Json(Removed { name }))
}

async fn compare_secrets(
    State(d): State<Arc<Daemon>>,
    Path(name): Path<String>,
    Json(want): Json<SecretsCompare>,
) -> Result<Json<SecretsComparison>, ApiError> {
    let f = d
        .function(&name)
        .ok_or_else(|| ApiError::from(DaemonError::NotFound(name.clone())))?;
    Ok(Json(SecretsComparison {
        same: f.live().secrets.same_as(&want.secrets),
    }))
}

async fn describe(
    State(d): State<Arc<Daemon>>,
    Path(name): Path<String>,
) -> Result<Json<Description>, ApiError> {
    Ok(Json(d.describe(&name).await?))
}

async fn configure(
    State(d): State<Arc<Daemon>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<ConfigView>, ApiError> {
    let change = parse_change(&body, "the body")?;
    Ok(Json(d.configure(&name, &change).await?))
}

/// Whether a function could take `change` (env, the operator's maxima), changing nothing:
/// `faas apply` checks a whole file before it deploys anything.
async fn check_config(
    State(d): State<Arc<Daemon>>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let change = parse_change(&body, "the body")?;
    d.check_change(&change)?;
    Ok(Json(serde_json::json!({})))
}

async fn logs(
    State(d): State<Arc<Daemon>>,
    Path(name): Path<String>,
    query: Result<Query<LogQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    let f = d
        .function(&name)
        .ok_or_else(|| ApiError::from(DaemonError::NotFound(name.clone())))?;
    let body = log_stream::serve(f, query).await.map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading the log of {name:?} failed: {e}"),
        )
    })?;
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

/// A [`ConfigChange`] from JSON; `from` names where it came from in the error.
fn parse_change(json: &[u8], from: &str) -> Result<ConfigChange, ApiError> {
    serde_json::from_slice(json).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("{from} is not a valid configuration: {e}"),
        )
    })
}

async fn metrics(State(d): State<Arc<Daemon>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        d.metrics_text(),
    )
}

/// Serves the control API on the configured address until the daemon stops accepting.
pub async fn serve_api(d: Arc<Daemon>) -> Result<(), DaemonError> {
    let addr = d.cfg.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Listen { addr, source })?;
    tracing::info!(%addr, "control API listening");
    let (stop, header_timeout) = (d.stop_accepting.clone(), d.cfg.header_timeout());
    http_server::serve(listener, router(d), header_timeout, stop).await;
    Ok(())
}
