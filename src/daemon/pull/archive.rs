//! A resolved image as the byte stream of a classic `docker save` archive (manifest.json,
//! then the config and each layer as `blobs/sha256/<hex>`), made while the layers download:
//! the installer reads it like an upload, so nothing about installing is duplicated.

use std::io;

use axum::body::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, watch};

use super::Resolved;

/// Chunks in flight between the download and the installer.
const CHANNEL: usize = 8;
const BLOCK: usize = 512;

/// The archive of `image` as a stream; `progress` counts the blob bytes downloaded so far.
/// A layer that fails its digest, or is longer or shorter than its manifest says, ends the
/// stream with an error (and so the install, which leaves nothing).
pub fn archive(
    image: Resolved,
    progress: watch::Sender<u64>,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let (tx, rx) = mpsc::channel(CHANNEL);
    tokio::spawn(async move {
        if let Err(e) = write(&image, &tx, &progress).await {
            // The installer may already have stopped reading: then nobody is told.
            let _ = tx.send(Err(e)).await;
        }
    });
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) })
}

type Tx = mpsc::Sender<io::Result<Bytes>>;

async fn write(image: &Resolved, tx: &Tx, progress: &watch::Sender<u64>) -> io::Result<()> {
    let path = |digest: &str| format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
    let manifest = serde_json::json!([{
        "Config": path(&image.config_digest),
        "Layers": image.layers.iter().map(|l| path(&l.digest)).collect::<Vec<_>>(),
    }]);
    let manifest = serde_json::to_vec(&manifest).expect("JSON serializes");
    member(tx, "manifest.json", Bytes::from(manifest)).await?;
    member(
        tx,
        &path(&image.config_digest),
        Bytes::from(image.config.clone()),
    )
    .await?;
    progress.send_modify(|n| *n += image.config.len() as u64);
    let mut written = std::collections::HashSet::new();
    for layer in &image.layers {
        // A layer listed twice is one member (the manifest names it twice).
        if !written.insert(layer.digest.clone()) {
            continue;
        }
        let size = layer.size as u64;
        send(tx, header(&path(&layer.digest), size)?).await?;
        let mut blob = image
            .client
            .pull_blob_stream(&image.reference, layer)
            .await
            .map_err(|e| io::Error::other(format!("fetching layer {}: {e}", layer.digest)))?;
        let mut got = 0u64;
        // oci-client checks the digest as the stream ends (an error item on a mismatch).
        while let Some(chunk) = blob.next().await {
            let chunk =
                chunk.map_err(|e| io::Error::other(format!("layer {}: {e}", layer.digest)))?;
            got += chunk.len() as u64;
            if got > size {
                return Err(io::Error::other(format!(
                    "layer {}: the registry sent more than the {size} bytes its manifest gives",
                    layer.digest
                )));
            }
            progress.send_modify(|n| *n += chunk.len() as u64);
            send(tx, chunk).await?;
        }
        if got != size {
            return Err(io::Error::other(format!(
                "layer {}: the registry sent {got} of the {size} bytes its manifest gives",
                layer.digest
            )));
        }
        send(tx, padding(size)).await?;
    }
    // The end of a tar archive: two zero blocks.
    send(tx, Bytes::from(vec![0u8; 2 * BLOCK])).await
}

/// A whole small member: header, data, padding.
async fn member(tx: &Tx, name: &str, data: Bytes) -> io::Result<()> {
    let size = data.len() as u64;
    send(tx, header(name, size)?).await?;
    send(tx, data).await?;
    send(tx, padding(size)).await
}

fn header(name: &str, size: u64) -> io::Result<Bytes> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name)?;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    Ok(Bytes::copy_from_slice(h.as_bytes()))
}

fn padding(size: u64) -> Bytes {
    let rest = (size as usize) % BLOCK;
    Bytes::from(vec![0u8; if rest == 0 { 0 } else { BLOCK - rest }])
}

/// Fails when the installer has stopped reading (its error is what the client gets).
async fn send(tx: &Tx, chunk: Bytes) -> io::Result<()> {
    tx.send(Ok(chunk))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the install stopped reading"))
}
