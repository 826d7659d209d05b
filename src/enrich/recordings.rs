//! Recordings archived before the vendor's URL expires: streamed to a `file://` store in
//! chunks (memory stays bounded whatever the size), hashed with SHA-256 on the way, fsynced,
//! and only then renamed into place.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::event::{Archive, ArchiveStatus, Timestamp};

/// What one download came to.
#[derive(Debug, PartialEq)]
pub enum Downloaded {
    Archived(Archive),
    /// It will not be archived: `too_large`, `io`.
    Final(String),
    /// Worth another try before the URL expires; `http_<status>` when the host answered.
    Retry(String),
}

/// Where a session's recording is kept in a `file://` store.
pub fn object_path(dir: &Path, vendor: &str, session_id: &str) -> PathBuf {
    // Session ids are the vendor's: hex keeps any of them a plain file name.
    dir.join(vendor).join(hex::encode(session_id.as_bytes()))
}

/// Downloads `url` into the store at `dir`, within `timeout`.
pub async fn download(
    client: &reqwest::Client,
    url: &str,
    target: &Path,
    max_bytes: u64,
    timeout: Duration,
) -> Downloaded {
    let response = match client.get(url).timeout(timeout).send().await {
        Ok(response) => response,
        Err(e) => return Downloaded::Retry(format!("the recording host did not answer: {e}")),
    };
    let status = response.status().as_u16();
    if !(200..300).contains(&status) {
        return Downloaded::Retry(format!("http_{status}"));
    }
    if response.content_length().is_some_and(|n| n > max_bytes) {
        return Downloaded::Final("too_large".into());
    }
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    match stream_to(response, target, max_bytes).await {
        Ok(Streamed::Done { sha256, bytes }) => Downloaded::Archived(Archive {
            status: ArchiveStatus::Archived,
            reason: None,
            url: Some(format!("file://{}", target.display())),
            sha256: Some(sha256),
            bytes: Some(bytes),
            content_type: Some(content_type),
            archived_at: Some(Timestamp::now()),
        }),
        Ok(Streamed::TooLarge) => Downloaded::Final("too_large".into()),
        Ok(Streamed::Interrupted(e)) => Downloaded::Retry(format!("the download broke off: {e}")),
        Err(e) => {
            tracing::error!(error = %e, path = %target.display(), "Cannot write a recording to the store");
            Downloaded::Final("io".into())
        }
    }
}

enum Streamed {
    Done { sha256: String, bytes: u64 },
    TooLarge,
    Interrupted(reqwest::Error),
}

/// Streams the body to a temporary file beside `target`, fsyncs it, renames it into place
/// and fsyncs the directory; a partial file is removed.
async fn stream_to(
    mut response: reqwest::Response,
    target: &Path,
    max_bytes: u64,
) -> std::io::Result<Streamed> {
    let dir = target.parent().expect("an object path has a directory");
    tokio::fs::create_dir_all(dir).await?;
    let partial = dir.join(format!(".partial-{:016x}", rand::random::<u64>()));
    let mut file = tokio::fs::File::create(&partial).await?;
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    let outcome = loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                bytes += chunk.len() as u64;
                if bytes > max_bytes {
                    break Streamed::TooLarge;
                }
                hasher.update(&chunk);
                if let Err(e) = file.write_all(&chunk).await {
                    drop(file);
                    remove(&partial).await;
                    return Err(e);
                }
            }
            Ok(None) => {
                break Streamed::Done {
                    sha256: hex::encode(hasher.finalize()),
                    bytes,
                };
            }
            Err(e) => break Streamed::Interrupted(e),
        }
    };
    if !matches!(outcome, Streamed::Done { .. }) {
        drop(file);
        remove(&partial).await;
        return Ok(outcome);
    }
    let durable = async {
        file.sync_all().await?;
        drop(file);
        tokio::fs::rename(&partial, target).await?;
        tokio::fs::File::open(dir).await?.sync_all().await
    };
    if let Err(e) = durable.await {
        remove(&partial).await;
        return Err(e);
    }
    Ok(outcome)
}

/// Deletes a session's archived recording (retention); gone already is fine.
pub async fn delete(config: &super::settings::RecordingsConfig, vendor: &str, session_id: &str) {
    remove(&object_path(&config.dir, vendor, session_id)).await;
}

async fn remove(path: &Path) {
    if let Err(e) = tokio::fs::remove_file(path).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(error = %e, path = %path.display(), "Cannot remove a partial recording");
    }
}
