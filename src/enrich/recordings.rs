//! Recordings archived before the vendor's URL expires: streamed in chunks (memory stays
//! bounded whatever the size) and hashed with SHA-256 on the way, to a directory (`file://`:
//! a temporary file, fsynced, then renamed into place) or an S3-compatible object store
//! (`s3://`, through `object_store`: a multipart upload that counts only once completed).
//! Every download is bounded (connect, idle read, whole attempt) and fetches only what the
//! host rule of [`super::hosts`] allows.

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

use anyhow::Context as _;

use super::hosts::{self, HostRule, Refused};
use super::settings::{DownloadLimits, RecordingsConfig, StoreConfig};
use crate::event::{Archive, ArchiveStatus, Timestamp};
use crate::telemetry::chain;

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
    /// It will not be archived, and trying again would not change that: `too_large`, `io`,
    /// `invalid_url`, `forbidden_host`.
    Final(String),
    /// Worth another try before the deadline; `http_<status>` when the host answered.
    Retry(String),
}

/// Where a session's recording is kept in a `file://` store.
pub fn object_path(dir: &Path, vendor: &str, session_id: &str) -> PathBuf {
    dir.join(ArchiveStore::key(vendor, session_id))
}

/// The most redirects a recording URL may take (each one checked like the URL).
const MAX_REDIRECTS: usize = 5;

/// Downloads recordings into the archive store, under `[recordings]`' host rule and limits.
pub struct Archiver {
    pub store: ArchiveStore,
    /// HTTP Basic credentials per source (`recordings_auth`), for its recording URLs.
    credentials: std::collections::HashMap<String, crate::ingest::settings::BasicAuth>,
    max_bytes: u64,
    hosts: HostRule,
    limits: DownloadLimits,
    client: reqwest::Client,
}

impl Archiver {
    pub fn new(store: ArchiveStore, config: &RecordingsConfig) -> anyhow::Result<Archiver> {
        let hosts = config.hosts.clone();
        let rule = hosts.clone();
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > MAX_REDIRECTS {
                return attempt.error(Refused::InvalidUrl(format!(
                    "more than {MAX_REDIRECTS} redirects"
                )));
            }
            match rule.check_url(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(refused) => attempt.error(refused),
            }
        });
        let mut builder = reqwest::Client::builder()
            .user_agent(format!("sessiongate/{}", crate::VERSION))
            .connect_timeout(config.limits.connect_timeout)
            .read_timeout(config.limits.read_timeout)
            .redirect(redirects);
        if hosts.restricts() {
            // The checked addresses are the ones connected to; a proxy would resolve the
            // name itself, out of the rule's sight.
            builder = builder.dns_resolver(hosts.resolver()).no_proxy();
        }
        Ok(Archiver {
            store,
            credentials: Default::default(),
            max_bytes: config.max_bytes,
            hosts,
            limits: config.limits,
            client: builder
                .build()
                .context("Failed to build the recordings HTTP client")?,
        })
    }

    /// Fetches the recordings of each named source with its HTTP Basic credentials. They go
    /// to the URL's host only: a redirect elsewhere (Twilio's to its storage) drops them.
    pub fn with_credentials(
        mut self,
        credentials: std::collections::HashMap<String, crate::ingest::settings::BasicAuth>,
    ) -> Archiver {
        self.credentials = credentials;
        self
    }

    /// Downloads `url` into the store as the recording of `(vendor, session_id)`, within
    /// the attempt's limits and `left` (the time to the archive's deadline). `run` names
    /// this run's temporary object, so runs never write into one another's.
    pub async fn download(
        &self,
        url: &str,
        source: &str,
        (vendor, session_id): (&str, &str),
        run: i64,
        left: Duration,
    ) -> Downloaded {
        let shown = hosts::shown(url);
        let parsed = match self.hosts.check(url) {
            Ok(parsed) => parsed,
            Err(refused) => return refusal(&refused, &shown),
        };
        let timeout = self.limits.attempt_timeout.min(left);
        let mut request = self.client.get(parsed).timeout(timeout);
        if let Some(basic) = self.credentials.get(source) {
            request = request.basic_auth(&basic.username, Some(basic.password.expose_secret()));
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                if let Some(refused) = hosts::refused_in(&e) {
                    return refusal(&refused, &shown);
                }
                return Downloaded::Retry(format!(
                    "the recording host did not answer: {}",
                    chain(&e.without_url())
                ));
            }
        };
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            return Downloaded::Retry(format!("http_{status}"));
        }
        if response
            .content_length()
            .is_some_and(|n| n > self.max_bytes)
        {
            return Downloaded::Final("too_large".into());
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_owned();
        match self
            .archive(body_of(response), (vendor, session_id), run, content_type)
            .await
        {
            Ok(archived) => archived,
            Err(e) => Downloaded::Retry(format!("the download broke off: {e}")),
        }
    }

    /// Archives audio the vendor sent in its request's body, base64 (ElevenLabs
    /// `post_call_audio`), decoding it a slice at a time on its way to the store.
    pub async fn archive_base64(
        &self,
        base64: &str,
        session: (&str, &str),
        run: i64,
        content_type: &str,
    ) -> Downloaded {
        match self
            .archive(decoded(base64), session, run, content_type.to_owned())
            .await
        {
            Ok(archived) => archived,
            Err(e) => {
                tracing::warn!(error = %e, "The audio in the body is not base64");
                Downloaded::Final("invalid_audio".into())
            }
        }
    }

    /// Pours `chunks` into the store as the recording of `(vendor, session_id)`: archived,
    /// or final (`too_large`, `io`); `Err` says why the chunks broke off.
    async fn archive(
        &self,
        chunks: impl futures_util::Stream<Item = Result<Bytes, String>> + Unpin,
        (vendor, session_id): (&str, &str),
        run: i64,
        content_type: String,
    ) -> Result<Downloaded, String> {
        let max_bytes = self.max_bytes;
        let (streamed, archived_url) = match &self.store {
            ArchiveStore::File(dir) => {
                let target = object_path(dir, vendor, session_id);
                let url = format!("file://{}", target.display());
                let sink = Sink::file(&target, run).await;
                (pour_into(chunks, sink, max_bytes).await, url)
            }
            ArchiveStore::S3 {
                store,
                bucket,
                prefix,
            } => {
                let path = ArchiveStore::s3_path(prefix, vendor, session_id);
                let url = format!("s3://{bucket}/{path}");
                let sink = Sink::upload(store.as_ref(), &path).await;
                (pour_into(chunks, sink, max_bytes).await, url)
            }
        };
        match streamed {
            Ok(Streamed::Done { sha256, bytes }) => Ok(Downloaded::Archived(Archive {
                status: ArchiveStatus::Archived,
                reason: None,
                url: Some(archived_url),
                sha256: Some(sha256),
                bytes: Some(bytes),
                content_type: Some(content_type),
                archived_at: Some(Timestamp::now()),
            })),
            Ok(Streamed::TooLarge) => Ok(Downloaded::Final("too_large".into())),
            Ok(Streamed::Interrupted(e)) => Err(e),
            Err(e) => {
                tracing::error!(error = %e, vendor, "Cannot write a recording to the store");
                Ok(Downloaded::Final("io".into()))
            }
        }
    }
}

/// A URL the rule refuses: final at once, and the operator hears of it.
fn refusal(refused: &Refused, shown: &str) -> Downloaded {
    match refused {
        Refused::InvalidUrl(why) => {
            tracing::warn!(url = %shown, why = %why, "A recording URL cannot be fetched");
            Downloaded::Final("invalid_url".into())
        }
        Refused::ForbiddenHost { host, why } => {
            tracing::warn!(%host, url = %shown, why = %why, "A recording URL names a forbidden host; not fetched");
            Downloaded::Final("forbidden_host".into())
        }
    }
}

enum Streamed {
    Done {
        sha256: String,
        bytes: u64,
    },
    TooLarge,
    /// Why the chunks broke off.
    Interrupted(String),
}

/// Where a download's bytes go while it runs.
enum Sink {
    /// A temporary file beside its object, named after it and the run, so two runs never
    /// write into one file; a commit removes what runs cut short (kill -9) left behind.
    File {
        file: tokio::fs::File,
        partial: PathBuf,
        target: PathBuf,
    },
    /// A multipart upload, which exists only once completed.
    Upload(object_store::WriteMultipart),
}

impl Sink {
    async fn file(target: &Path, run: i64) -> std::io::Result<Sink> {
        let dir = target.parent().expect("an object path has a directory");
        tokio::fs::create_dir_all(dir).await?;
        let partial = dir.join(format!("{}{run:x}", partial_prefix(target)));
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
                } else {
                    remove_leftovers(&target).await;
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
    chunks: impl futures_util::Stream<Item = Result<Bytes, String>> + Unpin,
    sink: std::io::Result<Sink>,
    max_bytes: u64,
) -> std::io::Result<Streamed> {
    pour(chunks, sink?, max_bytes).await
}

/// A response's body as a stream of chunks; an error says why it broke off.
fn body_of(response: reqwest::Response) -> impl futures_util::Stream<Item = Result<Bytes, String>> {
    Box::pin(futures_util::stream::unfold(
        response,
        |mut response| async move {
            match response.chunk().await {
                Ok(Some(chunk)) => Some((Ok(chunk), response)),
                Ok(None) => None,
                Err(e) => Some((Err(chain(&e.without_url())), response)),
            }
        },
    ))
}

/// Base64 text decoded a slice at a time (a multiple of 4 characters, so every slice
/// decodes on its own): the decoded audio is never whole in memory.
fn decoded(base64: &str) -> impl futures_util::Stream<Item = Result<Bytes, String>> + '_ {
    use base64::Engine as _;
    const SLICE: usize = 64 * 1024;
    let text = base64.trim().as_bytes();
    futures_util::stream::iter(text.chunks(SLICE).map(|slice| {
        base64::engine::general_purpose::STANDARD
            .decode(slice)
            .map(Bytes::from)
            .map_err(|e| format!("invalid_audio: {e}"))
    }))
}

/// Streams the chunks into `sink`, counting and hashing them, and commits it only whole.
async fn pour(
    mut chunks: impl futures_util::Stream<Item = Result<Bytes, String>> + Unpin,
    mut sink: Sink,
    max_bytes: u64,
) -> std::io::Result<Streamed> {
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    let outcome = loop {
        match chunks.next().await {
            Some(Ok(chunk)) => {
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
            None => {
                break Streamed::Done {
                    sha256: hex::encode(hasher.finalize()),
                    bytes,
                };
            }
            Some(Err(e)) => break Streamed::Interrupted(e),
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

/// The name a run's temporary file starts with: `.partial-<object>.`.
fn partial_prefix(target: &Path) -> String {
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("object");
    format!(".partial-{name}.")
}

/// Removes the temporary files of an object's earlier runs that were cut short.
async fn remove_leftovers(target: &Path) {
    let dir = target.parent().expect("an object path has a directory");
    let prefix = partial_prefix(target);
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else {
        return;
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(&prefix))
        {
            remove(&entry.path()).await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::settings::{RawRecordings, RecordingsConfig};

    fn archiver(dir: &Path, keys: &str) -> Archiver {
        let toml = format!("store = \"file://{}\"\n{keys}", dir.display());
        let raw: RawRecordings = config::Config::builder()
            .add_source(config::File::from_str(&toml, config::FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize())
            .unwrap();
        let env = |_: &str| None;
        let config =
            RecordingsConfig::parse(raw, &mut crate::settings::Context::new(&env)).unwrap();
        Archiver::new(ArchiveStore::open(&config.store).unwrap(), &config).unwrap()
    }

    #[tokio::test]
    async fn a_failed_download_never_repeats_the_urls_query() {
        let dir = tempfile::tempdir().unwrap();
        let archiver = archiver(dir.path(), "allow_private_networks = true");
        // Nothing listens on port 9 of loopback: the connection is refused.
        let got = archiver
            .download(
                "http://127.0.0.1:9/rec.wav?token=SECRET-123",
                "pathors",
                ("pathors", "s1"),
                1,
                Duration::from_secs(5),
            )
            .await;
        let Downloaded::Retry(error) = got else {
            panic!("{got:?}")
        };
        assert!(
            !error.contains("SECRET") && !error.contains("token"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn refused_urls_are_final_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let archiver = archiver(dir.path(), "");
        let session = ("pathors", "s1");
        for (url, reason) in [
            ("http://127.0.0.1:9/x", "forbidden_host"),
            ("http://localhost:9/x", "forbidden_host"),
            ("file:///etc/passwd", "invalid_url"),
            ("::not a url", "invalid_url"),
        ] {
            let got = archiver
                .download(url, "src", session, 1, Duration::from_secs(5))
                .await;
            assert_eq!(got, Downloaded::Final(reason.into()), "{url}");
        }
    }
}
