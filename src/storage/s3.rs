//! Buckets on S3 and S3-compatible stores (MinIO, RustFS, Ceph, ...).
//!
//! Objects are written with `PutObject` (multipart above a threshold) with
//! their content type and user metadata, and read with `GetObject`, refused
//! by declared size before the body is read. Object-created events come
//! from wherever the store sends its notifications, as the runtime config
//! says ([`S3Events`]): an SQS queue per bucket (AWS's native path;
//! a message is deleted only when its event is done), a topic carrying S3
//! event JSON (MinIO/RustFS Kafka targets), or, for stores without
//! notifications, polling `ListObjectsV2` with a durable checkpoint.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;

use super::{
    NewObject, ObjectStore, StorageError, Version, s3_events, validate_bucket, validate_key,
};
use crate::broker::Broker;
use crate::event::{Consumed, ObjectCreated, Position};
use crate::feed::{Commit, Feed, FeedError, Item};

/// Where object-created notifications come from.
#[derive(Clone, Debug)]
pub enum S3Events {
    /// One SQS queue per bucket, receiving the bucket's S3 notifications.
    Sqs {
        queues: BTreeMap<String, String>,
        /// Long-poll wait (default 20s).
        wait: Duration,
        /// How long a received message stays hidden while its event runs
        /// (default 5m); it reappears (and is deduplicated) after that.
        visibility_timeout: Duration,
    },
    /// A topic on the configured broker carrying S3 event JSON.
    Topic { topic: String },
    /// Notifications POSTed to runnel's `/v1/events/s3` (MinIO's webhook
    /// target); each record is queued on `topic` before the answer, then
    /// consumed like [`S3Events::Topic`].
    Webhook {
        topic: String,
        /// Required as `Authorization: Bearer <token>` when set.
        auth_token: Option<String>,
    },
    /// `ListObjectsV2` every `interval`; what was seen is kept in SQLite.
    Poll {
        interval: Duration,
        checkpoint: PathBuf,
    },
}

#[derive(Clone, Debug)]
pub struct S3Config {
    /// Endpoint URL for S3-compatible stores (default: AWS).
    pub endpoint: Option<String>,
    /// Region (default: the AWS environment/profile chain, else us-east-1).
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), for most non-AWS stores.
    pub force_path_style: bool,
    /// Static credentials; without them the standard AWS chain is used
    /// (environment, profile, web identity, ECS/EC2 metadata).
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Objects above this size are uploaded in parts (default 16 MiB).
    pub multipart_threshold: u64,
    pub events: S3Events,
}

pub struct S3Storage {
    s3: aws_sdk_s3::Client,
    sqs: aws_sdk_sqs::Client,
    config: S3Config,
    broker: Arc<dyn Broker>,
}

/// The part size of multipart uploads (S3's minimum is 5 MiB).
const PART_SIZE: usize = 8 << 20;

impl S3Storage {
    pub async fn connect(config: S3Config, broker: Arc<dyn Broker>) -> Self {
        use aws_smithy_http_client::tls;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader =
            aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(http);
        if let Some(region) = &config.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
            loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
                id.clone(),
                secret.clone(),
                None,
                None,
                "runnel-config",
            ));
        }
        if let Some(endpoint) = &config.endpoint {
            loader = loader.endpoint_url(endpoint.clone());
        }
        let shared = loader.load().await;
        let mut s3 =
            aws_sdk_s3::config::Builder::from(&shared).force_path_style(config.force_path_style);
        if shared.region().is_none() {
            s3 = s3.region(aws_config::Region::new("us-east-1"));
        }
        let mut sqs = aws_sdk_sqs::config::Builder::from(&shared);
        if shared.region().is_none() {
            sqs = sqs.region(aws_config::Region::new("us-east-1"));
        }
        Self {
            s3: aws_sdk_s3::Client::from_conf(s3.build()),
            sqs: aws_sdk_sqs::Client::from_conf(sqs.build()),
            config,
            broker,
        }
    }

    async fn put_multipart(
        &self,
        bucket: &str,
        key: &str,
        object: &NewObject,
    ) -> Result<String, StorageError> {
        let what = || format!("uploading {bucket}/{key} in parts");
        let created = self
            .s3
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .set_content_type(object.content_type.clone())
            .set_metadata(Some(object.metadata.clone().into_iter().collect()))
            .send()
            .await
            .map_err(|e| classify(bucket, key, &what(), e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_owned();
        let mut parts = Vec::new();
        for (i, chunk) in object.body.chunks(PART_SIZE).enumerate() {
            let number = i as i32 + 1;
            let part = self
                .s3
                .upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(&upload_id)
                .part_number(number)
                .body(ByteStream::from(object.body.slice_ref(chunk)))
                .send()
                .await;
            match part {
                Ok(part) => parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(part.e_tag().map(str::to_owned))
                        .build(),
                ),
                Err(e) => {
                    // Leave no half upload behind to be billed for.
                    let _ = self
                        .s3
                        .abort_multipart_upload()
                        .bucket(bucket)
                        .key(key)
                        .upload_id(&upload_id)
                        .send()
                        .await;
                    return Err(classify(bucket, key, &what(), e));
                }
            }
        }
        let part_count = parts.len();
        let done = self
            .s3
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await;
        match done {
            Ok(done) => Ok(done
                .e_tag()
                .unwrap_or_default()
                .trim_matches('"')
                .to_owned()),
            // Some S3-compatible stores answer 200 with a body the SDK cannot
            // parse (moto names the root element differently). The upload
            // is then complete: confirm it by the object's multipart etag.
            Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 200 => {
                let head = self
                    .s3
                    .head_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                    .map_err(|e| classify(bucket, key, &what(), e))?;
                let etag = head
                    .e_tag()
                    .unwrap_or_default()
                    .trim_matches('"')
                    .to_owned();
                if etag.ends_with(&format!("-{part_count}")) {
                    Ok(etag)
                } else {
                    Err(StorageError::Unavailable(format!(
                        "{}: the store's completion answer was unreadable and the object is not the upload",
                        what()
                    )))
                }
            }
            Err(e) => Err(classify(bucket, key, &what(), e)),
        }
    }
}

/// Classifies an SDK error once, where it arises: missing objects, refusals
/// that retrying cannot fix (4xx), and outages worth retrying (5xx,
/// throttling, timeouts, connection failures).
fn classify<E>(
    bucket: &str,
    key: &str,
    what: &str,
    error: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = match &error {
        SdkError::ServiceError(e) => Some(e.raw().status().as_u16()),
        _ => None,
    };
    let message = format!("{what}: {}", DisplayErrorContext(&error));
    match status {
        Some(404) if error.code() != Some("NoSuchBucket") => StorageError::NotFound {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        },
        Some(s) if s == 408 || s == 429 || s >= 500 => StorageError::Unavailable(message),
        Some(_) => StorageError::Rejected(message),
        None => StorageError::Unavailable(message),
    }
}

#[async_trait]
impl ObjectStore for S3Storage {
    /// Any HTTP answer means the store is reachable: a 403 for a policy
    /// without `ListAllMyBuckets` is as good as a list.
    async fn check(&self) -> Result<(), String> {
        let answer = tokio::time::timeout(
            std::time::Duration::from_secs(3),
            self.s3.list_buckets().max_buckets(1).send(),
        )
        .await
        .map_err(|_| "S3 did not answer within 3s".to_owned())?;
        match answer {
            Ok(_) => Ok(()),
            Err(error) => match classify("", "", "S3 ListBuckets", error) {
                StorageError::Unavailable(message) => Err(message),
                _ => Ok(()),
            },
        }
    }

    async fn put(
        &self,
        bucket: &str,
        key: &str,
        object: NewObject,
    ) -> Result<ObjectCreated, StorageError> {
        validate_bucket(bucket)?;
        validate_key(key)?;
        let metadata: BTreeMap<String, String> = object
            .metadata
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        let object = NewObject { metadata, ..object };
        let etag = if object.body.len() as u64 > self.config.multipart_threshold {
            self.put_multipart(bucket, key, &object).await?
        } else {
            let put = self
                .s3
                .put_object()
                .bucket(bucket)
                .key(key)
                .body(ByteStream::from(object.body.clone()))
                .set_content_type(object.content_type.clone())
                .set_metadata(Some(
                    object
                        .metadata
                        .clone()
                        .into_iter()
                        .collect::<HashMap<_, _>>(),
                ))
                .send()
                .await
                .map_err(|e| classify(bucket, key, &format!("writing {bucket}/{key}"), e))?;
            put.e_tag().unwrap_or_default().trim_matches('"').to_owned()
        };
        Ok(ObjectCreated {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            etag,
            size: object.body.len() as u64,
            content_type: object.content_type,
            metadata: object.metadata,
            version_id: None,
        })
    }

    async fn get(
        &self,
        bucket: &str,
        key: &str,
        max_size: u64,
        version: Option<Version<'_>>,
    ) -> Result<(ObjectCreated, Bytes), StorageError> {
        validate_bucket(bucket)?;
        validate_key(key)?;
        // The version the event names: by version id where the bucket keeps
        // versions (readable after an overwrite), and by ETag always, so an
        // overwritten object is refused (412) rather than read.
        let mut request = self.s3.get_object().bucket(bucket).key(key);
        if let Some(version) = version {
            request = request.set_version_id(version.version_id.map(str::to_owned));
            if !version.etag.is_empty() {
                request = request.if_match(format!("\"{}\"", version.etag));
            }
        }
        let output = request.send().await.map_err(|e| {
            let precondition_failed =
                matches!(&e, SdkError::ServiceError(s) if s.raw().status().as_u16() == 412);
            match version {
                Some(version) if precondition_failed => StorageError::Changed {
                    bucket: bucket.to_owned(),
                    key: key.to_owned(),
                    etag: version.etag.to_owned(),
                },
                _ => classify(bucket, key, &format!("reading {bucket}/{key}"), e),
            }
        })?;
        let size = output.content_length().unwrap_or(0).max(0) as u64;
        if size > max_size {
            return Err(StorageError::TooLarge {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
                size,
                limit: max_size,
            });
        }
        let info = ObjectCreated {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            etag: output
                .e_tag()
                .unwrap_or_default()
                .trim_matches('"')
                .to_owned(),
            size,
            content_type: output.content_type().map(str::to_owned),
            metadata: output
                .metadata()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                        .collect()
                })
                .unwrap_or_default(),
            version_id: output.version_id().map(str::to_owned),
        };
        let body = output
            .body
            .collect()
            .await
            .map_err(|e| StorageError::Unavailable(format!("reading {bucket}/{key}: {e}")))?
            .into_bytes();
        Ok((info, body))
    }

    async fn list(
        &self,
        bucket: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, StorageError> {
        validate_bucket(bucket)?;
        let mut keys = Vec::new();
        let mut pages = self
            .s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page
                .map_err(|e| classify(bucket, prefix, &format!("listing {bucket}/{prefix}"), e))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
            if keys.len() >= limit {
                keys.truncate(limit);
                break;
            }
        }
        Ok(keys)
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<(), StorageError> {
        validate_bucket(bucket)?;
        validate_key(key)?;
        self.s3
            .delete_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map(drop)
            .map_err(|e| classify(bucket, key, &format!("deleting {bucket}/{key}"), e))
    }

    async fn subscribe(
        &self,
        bucket: &str,
        consumer: &str,
    ) -> Result<Box<dyn Feed<ObjectCreated>>, StorageError> {
        validate_bucket(bucket)?;
        match &self.config.events {
            S3Events::Sqs {
                queues,
                wait,
                visibility_timeout,
            } => {
                let queue = queues.get(bucket).ok_or_else(|| {
                    StorageError::Rejected(format!(
                        "no SQS queue configured for bucket {bucket} (storage.events.queues)"
                    ))
                })?;
                Ok(Box::new(SqsFeed {
                    sqs: self.sqs.clone(),
                    queue: queue.clone(),
                    wait: *wait,
                    visibility_timeout: *visibility_timeout,
                    next_seq: 0,
                    committer: Arc::new(SqsCommit {
                        sqs: self.sqs.clone(),
                        queue: queue.clone(),
                        handles: Mutex::default(),
                    }),
                }))
            }
            S3Events::Topic { topic } | S3Events::Webhook { topic, .. } => {
                let feed = self
                    .broker
                    .subscribe(topic, consumer)
                    .await
                    .map_err(|e| StorageError::Unavailable(e.to_string()))?;
                Ok(Box::new(TopicEvents { feed }))
            }
            S3Events::Poll {
                interval,
                checkpoint,
            } => Ok(Box::new(
                super::s3_poll::PollFeed::open(
                    self.s3.clone(),
                    bucket,
                    consumer,
                    *interval,
                    checkpoint,
                )
                .map_err(StorageError::Unavailable)?,
            )),
        }
    }
}

/// S3 notifications from an SQS queue. SQS has no offsets, so received
/// messages are numbered in arrival order; a commit deletes every message
/// whose records are all below the committed number.
struct SqsFeed {
    sqs: aws_sdk_sqs::Client,
    queue: String,
    wait: Duration,
    visibility_timeout: Duration,
    next_seq: u64,
    committer: Arc<SqsCommit>,
}

#[async_trait]
impl Feed<ObjectCreated> for SqsFeed {
    async fn poll(&mut self, max: usize) -> Result<Vec<Item<ObjectCreated>>, FeedError> {
        loop {
            let received = self
                .sqs
                .receive_message()
                .queue_url(&self.queue)
                .max_number_of_messages(max.clamp(1, 10) as i32)
                .wait_time_seconds(self.wait.as_secs().min(20) as i32)
                .visibility_timeout(self.visibility_timeout.as_secs() as i32)
                .send()
                .await
                .map_err(|e| {
                    FeedError(format!(
                        "receiving from {}: {}",
                        self.queue,
                        DisplayErrorContext(&e)
                    ))
                })?;
            let mut items = Vec::new();
            for message in received.messages() {
                let handle = message.receipt_handle().unwrap_or_default().to_owned();
                let records = s3_events::decode(message.body().unwrap_or_default().as_bytes());
                let records = match records {
                    Ok(records) => records.into_iter().map(Ok).collect(),
                    Err(reason) => vec![Err(reason)],
                };
                let mut last = None;
                for record in records {
                    let position = Position {
                        partition: 0,
                        offset: self.next_seq,
                    };
                    self.next_seq += 1;
                    last = Some(position.offset);
                    items.push(Item {
                        position,
                        item: record,
                    });
                }
                // A message without object-created records (a test event)
                // still gets a number, so its deletion rides on the next commit.
                let seq = match last {
                    Some(seq) => seq,
                    None => {
                        self.next_seq += 1;
                        self.next_seq - 1
                    }
                };
                self.committer
                    .handles
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(seq, handle);
            }
            if !items.is_empty() {
                return Ok(items);
            }
            // Only test events: delete them now, they have no work.
            self.committer.delete_below(self.next_seq).await?;
        }
    }

    fn committer(&self) -> Arc<dyn Commit> {
        self.committer.clone()
    }
}

struct SqsCommit {
    sqs: aws_sdk_sqs::Client,
    queue: String,
    /// Receipt handle of each message, by the number of its last record.
    handles: Mutex<BTreeMap<u64, String>>,
}

impl SqsCommit {
    async fn delete_below(&self, next: u64) -> Result<(), FeedError> {
        let done: Vec<(u64, String)> = {
            let mut handles = self.handles.lock().unwrap_or_else(|e| e.into_inner());
            let rest = handles.split_off(&next);
            std::mem::replace(&mut *handles, rest).into_iter().collect()
        };
        for (seq, handle) in done {
            if let Err(e) = self
                .sqs
                .delete_message()
                .queue_url(&self.queue)
                .receipt_handle(&handle)
                .send()
                .await
            {
                // Put it back: the next commit tries again. If it never
                // succeeds the message reappears and is deduplicated.
                self.handles
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(seq, handle);
                return Err(FeedError(format!(
                    "deleting from {}: {}",
                    self.queue,
                    DisplayErrorContext(&e)
                )));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Commit for SqsCommit {
    async fn commit(&self, _partition: u32, next_offset: u64) -> Result<(), FeedError> {
        self.delete_below(next_offset).await
    }
}

/// S3 notifications on a broker topic, in any shape [`s3_events::decode`]
/// reads: MinIO and RustFS send one record per message; an envelope or a
/// webhook body may hold several, which share the message's position (it
/// is committed once all of them are finished).
struct TopicEvents {
    feed: Box<dyn Feed<Consumed>>,
}

#[async_trait]
impl Feed<ObjectCreated> for TopicEvents {
    async fn poll(&mut self, max: usize) -> Result<Vec<Item<ObjectCreated>>, FeedError> {
        loop {
            let mut out = Vec::new();
            for item in self.feed.poll(max).await? {
                let decoded = item
                    .item
                    .and_then(|consumed| s3_events::decode(&consumed.message.payload));
                match decoded {
                    // Removals and test events carry no work; skipping an
                    // offset is safe because commits only cover what follows.
                    Ok(records) => out.extend(records.into_iter().map(|record| Item {
                        position: item.position,
                        item: Ok(record),
                    })),
                    Err(reason) => out.push(Item {
                        position: item.position,
                        item: Err(reason),
                    }),
                }
            }
            if !out.is_empty() {
                return Ok(out);
            }
        }
    }

    fn committer(&self) -> Arc<dyn Commit> {
        self.feed.committer()
    }
}
