//! The HTTP API's refusals: oversized uploads and keys that would escape
//! the storage root.

mod harness;

use std::time::Duration;

use harness::{Runnel, pipelines};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends a request as raw text, so no client normalises the path first,
/// and returns the whole response.
async fn raw_request(runnel: &Runnel, request: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(runnel.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .unwrap()
    .unwrap();
    response
}

async fn raw_status(runnel: &Runnel, method: &str, path: &str) -> u16 {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi"
    );
    let response = raw_request(runnel, &request).await;
    response.split(' ').nth(1).unwrap().parse().unwrap()
}

/// Uploads over the configured limit get 413 with a message naming the
/// limit; keys with `..`, absolute paths or NUL get 400; nothing is written.
#[tokio::test(flavor = "multi_thread")]
async fn refuses_oversized_uploads_and_escaping_keys() {
    let dir = tempfile::tempdir().unwrap();
    let runnel = Runnel::start(
        dir.path(),
        &pipelines()[..1],
        &[],
        "max_upload_size = \"1MiB\"",
    )
    .await;

    // The declared length is enough to refuse, before any body is sent
    // (a client writing the body regardless may see the connection close).
    let request = format!(
        "PUT /v1/objects/uploads/big.bin HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        (1 << 20) + 1
    );
    let response = raw_request(&runnel, &request).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(
        response.contains("1MiB (http.max_upload_size)"),
        "{response}"
    );
    assert!(runnel.object("uploads", "big.bin").await.is_none());
    assert_eq!(
        runnel
            .upload("uploads", "fits.bin", vec![7u8; 1 << 20], None)
            .await
            .status(),
        201
    );

    for path in [
        "/v1/objects/uploads/../../etc/passwd",
        "/v1/objects/uploads/a/%2e%2e/%2e%2e/x",
        "/v1/objects/uploads//etc/passwd",
        "/v1/objects/uploads/a%00b",
        "/v1/objects/Bad_Bucket/x",
    ] {
        assert_eq!(raw_status(&runnel, "PUT", path).await, 400, "{path}");
    }
    assert!(!dir.path().join("etc").exists());
    assert_eq!(
        raw_status(&runnel, "GET", "/v1/objects/uploads/nope").await,
        404
    );
    assert_eq!(raw_status(&runnel, "GET", "/healthz").await, 200);
}

/// `runnel_uploads_total` is labelled only with the buckets the pipelines
/// name: uploads to any other bucket count as `other`, so clients cannot
/// grow the metric's labels without bound.
#[tokio::test(flavor = "multi_thread")]
async fn upload_metrics_are_labelled_with_known_buckets_only() {
    let dir = tempfile::tempdir().unwrap();
    let runnel = Runnel::start(dir.path(), &pipelines()[..1], &[], "").await;
    for bucket in ["random-1", "random-2", "uploads"] {
        let status = runnel
            .upload(bucket, "x.bin", b"not an image".to_vec(), None)
            .await
            .status();
        assert_eq!(status, 201, "{bucket}");
    }
    assert_eq!(
        runnel
            .metric("runnel_uploads_total", &[("bucket", "other")])
            .await,
        2.0
    );
    assert_eq!(
        runnel
            .metric("runnel_uploads_total", &[("bucket", "uploads")])
            .await,
        1.0
    );
    let metrics = runnel.metrics().await;
    assert!(!metrics.contains("random-"), "{metrics}");
}

/// `POST /v1/topics/{topic}` puts a message on the embedded queue with its
/// key and headers, and an `Idempotency-Key` repeat publishes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn messages_are_published_once_per_idempotency_key() {
    let dir = tempfile::tempdir().unwrap();
    let runnel = Runnel::start(dir.path(), &pipelines()[1..], &[], "").await;
    let publish = || {
        runnel
            .client
            .post(runnel.url("/v1/topics/inbox"))
            .header("x-runnel-key", "user-7")
            .header("x-runnel-header-origin", "test")
            .header("idempotency-key", "msg-1")
            .body("hello queue")
            .send()
    };
    let first = publish().await.unwrap();
    assert_eq!(first.status(), 201);
    let first: serde_json::Value = first.json().await.unwrap();
    let again: serde_json::Value = publish().await.unwrap().json().await.unwrap();
    assert_eq!(first["offset"], again["offset"]);
    assert_eq!(first["partition"], again["partition"]);
    let messages = runnel.topic("inbox").await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0]["key"], "user-7");
    assert_eq!(messages[0]["payload"], "hello queue");
    assert_eq!(messages[0]["headers"]["origin"], "test");
    let bad = runnel
        .client
        .post(runnel.url("/v1/topics/no%20spaces"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}
