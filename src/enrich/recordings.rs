//! Recordings archived before the vendor's URL expires: streamed in chunks (memory stays
//! bounded whatever the size) and hashed with SHA-256 on the way, to a directory (`file://`:
//! a temporary file, fsynced, then renamed into place) or an S3-compatible object store
//! (`s3://`, through `object_store`: a multipart upload that counts only once completed).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use actix_web::web::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use object_store::aws::AmazonS3Builder;
use object_store::{ObjectStore, ObjectStoreExt};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::settings::StoreConfig;
use crate::event::{Archive, ArchiveStatus, Timestamp};

/// Where archived recordings are kept, opened once.
#[derive(Clone)]
pub enum ArchiveStore {
    File(PathBuf),
    S3 {
        store: Arc<dyn ObjectStore>,
        bucket: String,
        prefix: String,
    },
}

/// Parts uploaded at once per recording: bounds an upload's memory to a few parts.
const UPLOAD_CONCURRENCY: usize = 2;

impl ArchiveStore {
    pub fn open(config: &StoreConfig) -> anyhow::Result<ArchiveStore> {
        Ok(match config {
            StoreConfig::File { dir } => ArchiveStore::File(dir.clone()),
            StoreConfig::S3 {
                bucket,
                prefix,
                endpoint,
                region,
                access_key_id,
                secret_access_key,
            } => {
                let mut builder = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_region(region);
                if let Some(endpoint) = endpoint {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"))
                        .with_virtual_hosted_style_request(false);
                }
                if let (Some(id), Some(secret)) = (access_key_id, secret_access_key) {
                    builder = builder
                        .with_access_key_id(id.expose_secret())
                        .with_secret_access_key(secret.expose_secret());
                }
                ArchiveStore::S3 {
                    store: Arc::new(builder.build()?),
                    bucket: bucket.clone(),
                    prefix: prefix.clone(),
                }
            }
        })
    }

    /// A session's object name: vendor, then the session id in hex (any id is a plain name).
    fn key(vendor: &str, session_id: &str) -> String {
        format!("{vendor}/{}", hex::encode(session_id.as_bytes()))
    }

    fn s3_path(prefix: &str, vendor: &str, session_id: &str) -> object_store::path::Path {
        let key = Self::key(vendor, session_id);
        match prefix {
            "" => object_store::path::Path::from(key),
            prefix => object_store::path::Path::from(format!("{prefix}/{key}")),
        }
    }

    /// The archived bytes of a session and their size; `None` if there are none.
    pub async fn read(
        &self,
        vendor: &str,
        session_id: &str,
    ) -> Result<Option<(u64, BoxStream<'static, std::io::Result<Bytes>>)>, String> {
        match self {
            ArchiveStore::File(dir) => {
                let path = object_path(dir, vendor, session_id);
                let file = match tokio::fs::File::open(&path).await {
                    Ok(file) => file,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(e.to_string()),
                };
                let size = file.metadata().await.map_err(|e| e.to_string())?.len();
                let stream = futures_util::stream::unfold(file, |mut file| async move {
                    use tokio::io::AsyncReadExt;
                    let mut buffer = vec![0; 64 * 1024];
                    match file.read(&mut buffer).await {
                        Ok(0) => None,
                        Ok(n) => {
                            buffer.truncate(n);
                            Some((Ok(Bytes::from(buffer)), file))
                        }
                        Err(e) => Some((Err(e), file)),
                    }
                });
                Ok(Some((size, stream.boxed())))
            }
            ArchiveStore::S3 { store, prefix, .. } => {
                match store.get(&Self::s3_path(prefix, vendor, session_id)).await {
                    Ok(got) => {
                        let size = got.meta.size;
                        let stream = got.into_stream().map(|chunk| {
                            chunk
                                .map(|b| Bytes::from(b.to_vec()))
                                .map_err(std::io::Error::other)
                        });
                        Ok(Some((size, stream.boxed())))
                    }
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(e.to_string()),
                }
            }
        }
    }

    /// Deletes a session's archived recording (retention); gone already is fine.
    pub async fn delete(&self, vendor: &str, session_id: &str) {
        match self {
            ArchiveStore::File(dir) => remove(&object_path(dir, vendor, session_id)).await,
            ArchiveStore::S3 { store, prefix, .. } => {
                let path = Self::s3_path(prefix, vendor, session_id);
                match store.delete(&path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, %path, "Cannot delete an archived recording")
                    }
                }
            }
        }
    }
}

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
    dir.join(ArchiveStore::key(vendor, session_id))
}

/// Downloads `url` into the store as the recording of `(vendor, session_id)`, within
/// `timeout`.
pub async fn download(
    client: &reqwest::Client,
    url: &str,
    store: &ArchiveStore,
    (vendor, session_id): (&str, &str),
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
    let (streamed, shown) = match store {
        ArchiveStore::File(dir) => {
            let target = object_path(dir, vendor, session_id);
            let url = format!("file://{}", target.display());
            let sink = Sink::file(&target).await;
            (pour_into(response, sink, max_bytes).await, url)
        }
        ArchiveStore::S3 {
            store,
            bucket,
            prefix,
        } => {
            let path = ArchiveStore::s3_path(prefix, vendor, session_id);
            let url = format!("s3://{bucket}/{path}");
            let sink = Sink::upload(store.as_ref(), &path).await;
            (pour_into(response, sink, max_bytes).await, url)
        }
    };
    match streamed {
        Ok(Streamed::Done { sha256, bytes }) => Downloaded::Archived(Archive {
            status: ArchiveStatus::Archived,
            reason: None,
            url: Some(shown),
            sha256: Some(sha256),
            bytes: Some(bytes),
            content_type: Some(content_type),
            archived_at: Some(Timestamp::now()),
        }),
        Ok(Streamed::TooLarge) => Downloaded::Final("too_large".into()),
        Ok(Streamed::Interrupted(e)) => Downloaded::Retry(format!("the download broke off: {e}")),
        Err(e) => {
            tracing::error!(error = %e, "Cannot write a recording to the store");
            Downloaded::Final("io".into())
        }
    }
}

enum Streamed {
    Done { sha256: String, bytes: u64 },
    TooLarge,
    Interrupted(reqwest::Error),
}

/// Where a download's bytes go while it runs.
enum Sink {
    /// A temporary file beside its object, named after it, so a run cut short (kill -9)
    /// leaves at most one partial file, which the next run of the job overwrites.
    File {
        file: tokio::fs::File,
        partial: PathBuf,
        target: PathBuf,
    },
    /// A multipart upload, which exists only once completed.
    Upload(object_store::WriteMultipart),
}

impl Sink {
    async fn file(target: &Path) -> std::io::Result<Sink> {
        let dir = target.parent().expect("an object path has a directory");
        tokio::fs::create_dir_all(dir).await?;
        let name = target
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("object");
        let partial = dir.join(format!(".partial-{name}"));
        Ok(Sink::File {
            file: tokio::fs::File::create(&partial).await?,
            partial,
            target: target.to_owned(),
        })
    }

    async fn upload(
        store: &dyn ObjectStore,
        path: &object_store::path::Path,
    ) -> std::io::Result<Sink> {
        let multipart = store
            .put_multipart(path)
            .await
            .map_err(std::io::Error::other)?;
        Ok(Sink::Upload(object_store::WriteMultipart::new(multipart)))
    }

    async fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::File { file, .. } => file.write_all(chunk).await,
            Sink::Upload(writer) => {
                writer
                    .wait_for_capacity(UPLOAD_CONCURRENCY)
                    .await
                    .map_err(std::io::Error::other)?;
                writer.write(chunk);
                Ok(())
            }
        }
    }

    /// Makes it durable and visible: the file fsynced, renamed into place and its directory
    /// fsynced; the upload completed.
    async fn commit(self) -> std::io::Result<()> {
        match self {
            Sink::File {
                file,
                partial,
                target,
            } => {
                let durable = async {
                    file.sync_all().await?;
                    drop(file);
                    tokio::fs::rename(&partial, &target).await?;
                    let dir = target.parent().expect("an object path has a directory");
                    tokio::fs::File::open(dir).await?.sync_all().await
                };
                let result = durable.await;
                if result.is_err() {
                    remove(&partial).await;
                }
                result
            }
            Sink::Upload(writer) => writer
                .finish()
                .await
                .map(|_| ())
                .map_err(std::io::Error::other),
        }
    }

    /// Leaves nothing behind: the partial file removed, the upload aborted.
    async fn discard(self) {
        match self {
            Sink::File { file, partial, .. } => {
                drop(file);
                remove(&partial).await;
            }
            Sink::Upload(writer) => {
                if let Err(e) = writer.abort().await {
                    tracing::warn!(error = %e, "Cannot abort a partial recording upload");
                }
            }
        }
    }
}

/// [`pour`] into a sink that could be opened.
async fn pour_into(
    response: reqwest::Response,
    sink: std::io::Result<Sink>,
    max_bytes: u64,
) -> std::io::Result<Streamed> {
    pour(response, sink?, max_bytes).await
}

/// Streams the body into `sink`, counting and hashing it, and commits it only whole.
async fn pour(
    mut response: reqwest::Response,
    mut sink: Sink,
    max_bytes: u64,
) -> std::io::Result<Streamed> {
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
                if let Err(e) = sink.write(&chunk).await {
                    sink.discard().await;
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
    match outcome {
        Streamed::Done { .. } => sink.commit().await.map(|()| outcome),
        _ => {
            sink.discard().await;
            Ok(outcome)
        }
    }
}

async fn remove(path: &Path) {
    if let Err(e) = tokio::fs::remove_file(path).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(error = %e, path = %path.display(), "Cannot remove a partial recording");
    }
}
