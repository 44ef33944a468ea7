//! The same pipelines, unchanged, on real infrastructure: Kafka (tansu) for
//! topics and S3 (moto) for buckets, with object-created events from SQS,
//! from a Kafka topic carrying S3 event JSON, and from polling.
#![cfg(all(feature = "kafka", feature = "s3"))]

mod harness;

use std::time::Duration;

use harness::services::{self, Service};
use harness::{Runnel, WebhookReceiver, eventually, photo_jpeg, pipelines};

const WAIT: Duration = Duration::from_secs(90);
const BUCKETS: &[&str] = &["uploads", "thumbnails", "dead-letters"];

struct Infra {
    _dir: tempfile::TempDir,
    kafka: Service,
    s3: Service,
    s3_client: aws_sdk_s3::Client,
    sqs_client: aws_sdk_sqs::Client,
}

impl Infra {
    async fn start(dir: tempfile::TempDir) -> Self {
        let kafka = services::tansu(dir.path());
        let s3 = services::moto(dir.path());
        let (s3_client, sqs_client) =
            services::aws_clients(&format!("http://127.0.0.1:{}", s3.port)).await;
        services::create_topics(
            &format!("127.0.0.1:{}", kafka.port),
            &[
                ("image-processed", 3),
                ("notifications", 3),
                ("s3-events", 1),
            ],
        )
        .await;
        Self {
            _dir: dir,
            kafka,
            s3,
            s3_client,
            sqs_client,
        }
    }

    async fn create_buckets(&self) {
        for bucket in BUCKETS {
            self.s3_client
                .create_bucket()
                .bucket(*bucket)
                .send()
                .await
                .unwrap();
        }
    }

    /// Runtime config binding "storage" and "broker" to these services.
    fn runtime_toml(&self, events: &str) -> String {
        format!(
            "[storage]\ntype = \"s3\"\nendpoint = \"http://127.0.0.1:{}\"\nregion = \"us-east-1\"\nforce_path_style = true\n\
             access_key_id = \"testing\"\nsecret_access_key = \"testing\"\n[storage.events]\n{events}\n\
             [broker]\ntype = \"kafka\"\nbootstrap_servers = \"127.0.0.1:{}\"\n",
            self.s3.port, self.kafka.port
        )
    }
}

fn image_dims(bytes: &[u8]) -> (u32, u32) {
    let image = image::load_from_memory(bytes).unwrap();
    (image.width(), image.height())
}

/// Upload through runnel's API (written through to S3), notification via
/// SQS, thumbnails in S3, events and notifications on Kafka, webhook POST.
#[tokio::test(flavor = "multi_thread")]
async fn image_pipeline_on_kafka_and_s3_with_sqs_notifications() {
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let infra = Infra::start(dir).await;
    let queue =
        services::s3_with_notifications(&infra.s3_client, &infra.sqs_client, BUCKETS, "uploads")
            .await;
    let webhook = WebhookReceiver::start().await;
    let events = format!("type = \"sqs\"\nwait = \"1s\"\nqueues = {{ uploads = \"{queue}\" }}");
    let runnel = Runnel::start(
        work.path(),
        &pipelines(),
        &[("NOTIFY_WEBHOOK_URL", &webhook.url)],
        &infra.runtime_toml(&events),
    )
    .await;

    let response = runnel
        .upload(
            "uploads",
            "photos/photo.jpg",
            photo_jpeg(1200, 900),
            Some("alice"),
        )
        .await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    eventually("the webhook notification", WAIT, || async {
        (webhook.count() >= 1).then_some(())
    })
    .await;
    let notification: serde_json::Value =
        serde_json::from_str(&webhook.received.lock().unwrap()[0].body).unwrap();
    assert_eq!(
        notification["message"],
        "photos/photo.jpg for alice: 3 thumbnails ready"
    );

    // The thumbnails are in S3 itself, not only behind runnel's API.
    let object = infra
        .s3_client
        .get_object()
        .bucket("thumbnails")
        .key("photos/photo-512.jpg")
        .send()
        .await
        .unwrap();
    assert_eq!(object.content_type(), Some("image/jpeg"));
    let bytes = object.body.collect().await.unwrap().into_bytes();
    assert_eq!(image_dims(&bytes), (512, 384));

    let processed = runnel.topic("image-processed").await;
    assert_eq!(processed.len(), 1, "{processed:?}");
    let event: serde_json::Value =
        serde_json::from_str(processed[0]["payload"].as_str().unwrap()).unwrap();
    assert_eq!(event["metadata"]["user"], "alice");
    assert_eq!(event["thumbnails"].as_array().unwrap().len(), 3);
    assert_eq!(processed[0]["headers"]["ce_specversion"], "1.0");
    assert_eq!(runnel.topic("notifications").await.len(), 1);

    // Large objects go up in parts and come back whole, metadata included.
    let big: Vec<u8> = (0..17u32 << 20).map(|i| (i % 251) as u8).collect();
    let response = runnel
        .upload("thumbnails", "big/blob.bin", big.clone(), Some("alice"))
        .await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let head = infra
        .s3_client
        .head_object()
        .bucket("thumbnails")
        .key("big/blob.bin")
        .send()
        .await
        .unwrap();
    assert!(
        head.e_tag().unwrap().contains('-'),
        "a multipart etag: {:?}",
        head.e_tag()
    );
    assert_eq!(head.metadata().unwrap()["user"], "alice");
    let (_, fetched) = runnel.object("thumbnails", "big/blob.bin").await.unwrap();
    assert!(fetched == big, "the object round-trips");

    // The SQS message is deleted once its event is done.
    eventually("the queue to drain", WAIT, || async {
        let attributes = infra
            .sqs_client
            .get_queue_attributes()
            .queue_url(&queue)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
            .send()
            .await
            .unwrap();
        let attributes = attributes.attributes().unwrap();
        let count = |name| attributes[&name].parse::<u64>().unwrap();
        (count(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages) == 0
            && count(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
                == 0)
            .then_some(())
    })
    .await;
}

/// Object-created events as S3 event JSON on a Kafka topic (how MinIO and
/// RustFS deliver them), for objects written to S3 directly, with the
/// runtime config shipped in `deploy/`.
#[tokio::test(flavor = "multi_thread")]
async fn events_from_a_kafka_topic_carrying_s3_event_json() {
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let infra = Infra::start(dir).await;
    infra.create_buckets().await;
    // The same runtime config docker-compose.yml uses, bound by environment.
    let deploy =
        std::fs::read_to_string(harness::repo().join("deploy/runnel.kafka-s3.toml")).unwrap();
    let s3_endpoint = format!("http://127.0.0.1:{}", infra.s3.port);
    let bootstrap = format!("127.0.0.1:{}", infra.kafka.port);
    let env = [
        ("RUNNEL_API_TOKEN", harness::API_TOKEN),
        ("RUNNEL_METRICS_TOKEN", harness::METRICS_TOKEN),
        ("S3_ENDPOINT", s3_endpoint.as_str()),
        ("KAFKA_BOOTSTRAP_SERVERS", bootstrap.as_str()),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
    ];
    let runnel = Runnel::start(work.path(), &pipelines(), &env, &deploy).await;

    let photo = photo_jpeg(600, 400);
    let put = infra
        .s3_client
        .put_object()
        .bucket("uploads")
        .key("my photos/a b.jpg")
        .body(photo.clone().into())
        .metadata("user", "erin")
        .send()
        .await
        .unwrap();
    let etag = put.e_tag().unwrap().trim_matches('"').to_owned();
    let event = serde_json::json!({"EventName": "s3:ObjectCreated:Put", "Records": [{
        "eventName": "s3:ObjectCreated:Put",
        "s3": {"bucket": {"name": "uploads"}, "object": {
            "key": "my+photos/a+b.jpg", "size": photo.len(), "eTag": etag,
            "userMetadata": {"X-Amz-Meta-User": "erin"}}}}]});
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set(
            "bootstrap.servers",
            format!("127.0.0.1:{}", infra.kafka.port),
        )
        .create()
        .unwrap();
    let payload = event.to_string();
    producer
        .send(
            rdkafka::producer::FutureRecord::<(), _>::to("s3-events").payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .unwrap();

    let notifications = eventually("the notification", WAIT, || async {
        let n = runnel.topic("notifications").await;
        (!n.is_empty()).then_some(n)
    })
    .await;
    assert!(
        notifications[0]["payload"]
            .as_str()
            .unwrap()
            .contains("my photos/a b.jpg for erin: 2 thumbnails ready"),
        "{notifications:?}"
    );
    let (_, bytes) = runnel
        .object("thumbnails", "my photos/a b-128.jpg")
        .await
        .expect("thumbnail in S3");
    assert_eq!(image_dims(&bytes), (128, 85));
}

/// A store without notifications: runnel lists the bucket and processes
/// what is new, once.
#[tokio::test(flavor = "multi_thread")]
async fn events_by_polling_the_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let infra = Infra::start(dir).await;
    infra.create_buckets().await;
    let runnel = Runnel::start(
        work.path(),
        &pipelines()[..1],
        &[],
        &infra.runtime_toml("type = \"poll\"\ninterval = \"300ms\""),
    )
    .await;
    for i in 0..3 {
        infra
            .s3_client
            .put_object()
            .bucket("uploads")
            .key(format!("polled/{i}.jpg"))
            .body(photo_jpeg(300, 200).into())
            .send()
            .await
            .unwrap();
    }
    for i in 0..3 {
        let key = format!("polled/{i}-128.jpg");
        eventually(&key, WAIT, || async {
            runnel.object("thumbnails", &key).await
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        runnel
            .metric(
                "runnel_invocations_total",
                &[
                    ("pipeline", "image-upload"),
                    ("function", "thumbnail"),
                    ("outcome", "ok")
                ]
            )
            .await,
        3.0,
        "each object is processed once, however often it is listed"
    );
}

/// Notifications POSTed to runnel (MinIO's webhook target) are queued and
/// processed; a wrong token is refused and the same notification twice is
/// processed once. The broker here is the embedded one: the webhook only
/// needs somewhere durable to queue.
#[tokio::test(flavor = "multi_thread")]
async fn events_from_the_s3_webhook_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let s3 = services::moto(dir.path());
    let (s3_client, _) = services::aws_clients(&format!("http://127.0.0.1:{}", s3.port)).await;
    for bucket in BUCKETS {
        s3_client
            .create_bucket()
            .bucket(*bucket)
            .send()
            .await
            .unwrap();
    }
    let storage = format!(
        "[storage]\ntype = \"s3\"\nendpoint = \"http://127.0.0.1:{}\"\nforce_path_style = true\n\
         access_key_id = \"testing\"\nsecret_access_key = \"testing\"\n\
         [storage.events]\ntype = \"webhook\"\ntopic = \"s3-events\"\nauth_token = \"sesame\"\n",
        s3.port
    );
    let runnel = Runnel::start(work.path(), &pipelines()[..1], &[], &storage).await;
    let photo = photo_jpeg(400, 300);
    let put = s3_client
        .put_object()
        .bucket("uploads")
        .key("hooked.jpg")
        .body(photo.clone().into())
        .send()
        .await
        .unwrap();
    let notification = serde_json::json!({"EventName": "s3:ObjectCreated:Put", "Records": [{
        "eventName": "s3:ObjectCreated:Put",
        "s3": {"bucket": {"name": "uploads"}, "object": {
            "key": "hooked.jpg", "size": photo.len(), "eTag": put.e_tag().unwrap(), "sequencer": "1"}}}]});
    let post = |token: &'static str| {
        runnel
            .client
            .post(runnel.url("/v1/events/s3"))
            .bearer_auth(token)
            .json(&notification)
            .send()
    };
    assert_eq!(post("wrong").await.unwrap().status(), 401);
    assert_eq!(post("sesame").await.unwrap().status(), 204);
    assert_eq!(
        post("sesame").await.unwrap().status(),
        204,
        "a repeat is accepted"
    );
    let (_, bytes) = eventually("the thumbnail", WAIT, || async {
        runnel.object("thumbnails", "hooked-128.jpg").await
    })
    .await;
    assert_eq!(image_dims(&bytes), (128, 96));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        runnel
            .metric(
                "runnel_events_received_total",
                &[("pipeline", "image-upload")]
            )
            .await,
        1.0,
        "the repeated notification was queued once"
    );
    let bad = runnel
        .client
        .post(runnel.url("/v1/events/s3"))
        .bearer_auth("sesame")
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    // Limits before work: a request declaring a 10 GB body is answered at
    // once, before any of it is sent — 401 without the token (the token is
    // checked before the body is read), 413 with it — and so is one whose
    // streamed body passes the limit without declaring its length.
    for (auth, status) in [("", "401"), ("authorization: Bearer sesame\r\n", "413")] {
        let request = format!(
            "POST /v1/events/s3 HTTP/1.1\r\nhost: x\r\n{auth}content-length: 10000000000\r\nconnection: close\r\n\r\n"
        );
        let response = raw_response(runnel.addr, request.as_bytes()).await;
        assert!(
            response.starts_with(&format!("HTTP/1.1 {status}")),
            "{auth:?}: {response}"
        );
    }
    let mut chunked = b"POST /v1/events/s3 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer sesame\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".to_vec();
    for _ in 0..3 {
        // Three chunks of 512 KiB: over the 1 MiB default of http.max_body_size.
        chunked.extend_from_slice(b"80000\r\n");
        chunked.extend(std::iter::repeat_n(b' ', 512 << 10));
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let response = raw_response(runnel.addr, &chunked).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("1MiB (http.max_body_size)"), "{response}");
}

/// Writes `request` (as much of it as the server takes) while reading the
/// response, and returns the response, within 10 s.
async fn raw_response(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let request = request.to_vec();
    // The server may answer and close before taking the whole body: read
    // at once, so the answer is in hand before the close resets the socket.
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&request).await;
        write
    });
    let mut response = Vec::new();
    let mut buffer = [0u8; 4096];
    let read_all = async {
        while let Ok(n) = read.read(&mut buffer).await {
            if n == 0 {
                break;
            }
            response.extend_from_slice(&buffer[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read_all)
        .await
        .expect("answered within 10 s");
    writer.abort();
    String::from_utf8_lossy(&response).into_owned()
}
