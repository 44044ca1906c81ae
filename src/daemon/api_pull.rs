//! `POST /api/pull` (`faas new NAME --image REF`): deploys an image from an OCI registry.
//! The request is JSON `{"name", "image", "config"}` (config optional, as the
//! `X-Function-Config` of an upload). What can be known before any layer is fetched
//! (a bad name or reference, an unknown tag, refused credentials, too large) is an
//! ordinary error answer; then the answer is 200 with one JSON object per line:
//! `{"progress": {"bytes", "total"}}` while the layers download, and last either
//! `{"deployed": {"name", "ip", "cmd"}}` or `{"error": "..."}`.
//!
//! `GET /api/resolve?image=REF` (`faas apply`) fetches only the manifest: the image id REF
//! names now, to compare with a deployed function's without pulling.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::api::ApiError;
use super::pull::{self, PullError};
use super::{upload, valid_name, Daemon, DaemonError};
use crate::api::{PullRequest, ResolvedImage};
use crate::image::Limits;

/// How often a progress line is sent at most.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

pub async fn pull_function(
    State(d): State<Arc<Daemon>>,
    Json(req): Json<PullRequest>,
) -> Result<Response, ApiError> {
    if !valid_name(&req.name) {
        return Err(DaemonError::InvalidName(req.name).into());
    }
    // A configuration refused must cost no download.
    d.check_change(&req.config)?;
    let max = d.cfg.max_upload_mb << 20;
    let slot = d.upload_slot().await?;
    let image = d
        .registries
        .resolve(&req.image, max)
        .await
        .map_err(|e| ApiError(pull_status(&e), e.to_string()))?;
    let total = image.size;
    let (progress, mut seen) = watch::channel(0u64);
    let archive = pull::archive(image, progress);
    let (reader, verdict) = upload::reader(Body::from_stream(archive), max, d.cfg.body_timeout());
    let name = req.name.clone();
    // Its own task: the deploy finishes even if the client goes away.
    let mut deploy = tokio::spawn({
        let d = d.clone();
        async move {
            let _slot = slot;
            d.deploy_with(&name, reader, Limits::default(), &req.config)
                .await
        }
    });
    let lines = async_lines(move |tx| async move {
        let mut last = None;
        let result = loop {
            tokio::select! {
                r = &mut deploy => break r,
                changed = seen.changed() => {
                    if changed.is_err() {
                        break (&mut deploy).await;
                    }
                    let bytes = *seen.borrow_and_update();
                    if last.is_some_and(|t: tokio::time::Instant| t.elapsed() < PROGRESS_EVERY) {
                        continue;
                    }
                    last = Some(tokio::time::Instant::now());
                    let _ = tx.send(json!({"progress": {"bytes": bytes, "total": total}})).await;
                }
            }
        };
        let last_line = match result {
            Ok(Ok(done)) => json!({ "deployed": done }),
            Ok(Err(_)) if verdict.stalled() => json!({
                "error": "the registry stalled: no data for --body-timeout; nothing was kept"
            }),
            Ok(Err(e)) => json!({ "error": e.to_string() }),
            Err(e) => json!({ "error": format!("the deploy task failed: {e}") }),
        };
        let _ = tx.send(last_line).await;
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}

#[derive(serde::Deserialize)]
pub struct ResolveQuery {
    image: String,
}

pub async fn resolve_image(
    State(d): State<Arc<Daemon>>,
    query: Result<Query<ResolveQuery>, QueryRejection>,
) -> Result<Json<ResolvedImage>, ApiError> {
    let Query(ResolveQuery { image }) =
        query.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    let digest = d
        .registries
        .config_digest(&image)
        .await
        .map_err(|e| ApiError(pull_status(&e), e.to_string()))?;
    Ok(Json(ResolvedImage { image, digest }))
}

/// The lines `produce` sends, as a response body (one JSON object per line).
fn async_lines<F, Fut>(produce: F) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Value>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(produce(tx));
    futures::stream::unfold(rx, |mut rx| async move {
        let v = rx.recv().await?;
        Some((Ok(Bytes::from(format!("{v}\n"))), rx))
    })
}

fn pull_status(e: &PullError) -> StatusCode {
    match e {
        PullError::Reference { .. } => StatusCode::BAD_REQUEST,
        PullError::NotFound { .. } => StatusCode::NOT_FOUND,
        PullError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        PullError::Denied { .. }
        | PullError::Manifest { .. }
        | PullError::BadManifest { .. }
        | PullError::Config { .. } => StatusCode::BAD_GATEWAY,
    }
}
