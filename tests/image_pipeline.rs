//! The reference workload end to end, from outside: upload images over
//! HTTP, get thumbnails, the `image-processed` event, a notification on the
//! topic and at a webhook, and the metrics that show it.

mod harness;

use std::time::Duration;

use harness::{Runnel, WebhookReceiver, eventually, fixture, photo_jpeg, pipelines};

const WAIT: Duration = Duration::from_secs(60);

/// Average brightness, 0..=255.
fn mean_luma(bytes: &[u8]) -> u64 {
    let gray = image::load_from_memory(bytes).unwrap().to_luma8();
    gray.pixels().map(|p| p.0[0] as u64).sum::<u64>() / gray.pixels().len() as u64
}

fn dims(bytes: &[u8]) -> (u32, u32, image::ImageFormat) {
    let format = image::guess_format(bytes).unwrap();
    let image = image::load_from_memory(bytes).unwrap();
    (image.width(), image.height(), format)
}

/// A photo uploaded with user metadata yields three JPEG thumbnails, one
/// `image-processed` event, one notification on the topic and one webhook
/// POST, and the metrics count each step.
#[tokio::test(flavor = "multi_thread")]
async fn upload_makes_thumbnails_and_notifies() {
    let dir = tempfile::tempdir().unwrap();
    let webhook = WebhookReceiver::start().await;
    let runnel = Runnel::start(
        dir.path(),
        &pipelines(),
        &[("NOTIFY_WEBHOOK_URL", &webhook.url)],
        "",
    )
    .await;

    let photo = photo_jpeg(1600, 1200);
    let response = runnel
        .upload("uploads", "photos/photo.jpg", photo.clone(), Some("alice"))
        .await;
    assert_eq!(response.status(), 201);
    let created: serde_json::Value = response.json().await.unwrap();
    assert_eq!(created["size"], photo.len());
    assert_eq!(created["key"], "photos/photo.jpg");

    eventually("the webhook notification", WAIT, || async {
        (webhook.count() >= 1).then_some(())
    })
    .await;
    let received = webhook.received.lock().unwrap().clone();
    assert_eq!(received.len(), 1);
    let notification: serde_json::Value = serde_json::from_str(&received[0].body).unwrap();
    assert_eq!(
        notification["message"],
        "photos/photo.jpg for alice: 3 thumbnails ready"
    );
    assert_eq!(received[0].content_type, "application/json");
    assert!(!received[0].idempotency_key.is_empty());

    for (width, height) in [(128, 96), (512, 384), (1024, 768)] {
        let key = format!("photos/photo-{width}.jpg");
        let (headers, bytes) = runnel
            .object("thumbnails", &key)
            .await
            .expect("thumbnail stored");
        assert_eq!(headers["content-type"], "image/jpeg");
        assert_eq!(
            dims(&bytes),
            (width, height, image::ImageFormat::Jpeg),
            "{key}"
        );
        let on_disk = dir.path().join("data/storage/thumbnails").join(&key);
        assert_eq!(std::fs::read(&on_disk).unwrap(), bytes, "{key} on disk");
    }

    let processed = runnel.topic("image-processed").await;
    assert_eq!(processed.len(), 1);
    let event: serde_json::Value =
        serde_json::from_str(processed[0]["payload"].as_str().unwrap()).unwrap();
    assert_eq!(event["source"]["bucket"], "uploads");
    assert_eq!(event["source"]["key"], "photos/photo.jpg");
    assert_eq!(event["source"]["etag"], created["etag"]);
    assert_eq!(event["source"]["size"], photo.len());
    assert_eq!(event["metadata"]["user"], "alice");
    let thumbnails = event["thumbnails"].as_array().unwrap();
    assert_eq!(thumbnails.len(), 3);
    assert_eq!(thumbnails[0]["bucket"], "thumbnails");
    assert_eq!(thumbnails[2]["width"], 1024);
    assert_eq!(thumbnails[2]["height"], 768);
    assert_eq!(processed[0]["headers"]["ce_specversion"], "1.0");

    let notifications = runnel.topic("notifications").await;
    assert_eq!(notifications.len(), 1);
    assert!(
        notifications[0]["payload"]
            .as_str()
            .unwrap()
            .contains("3 thumbnails ready")
    );

    let m = |name: &'static str, labels: &'static [(&'static str, &'static str)]| {
        let runnel = &runnel;
        async move { runnel.metric(name, labels).await }
    };
    assert_eq!(
        m(
            "runnel_events_received_total",
            &[("pipeline", "image-upload")]
        )
        .await,
        1.0
    );
    let thumbnail_runs = || {
        m(
            "runnel_invocations_total",
            &[
                ("pipeline", "image-upload"),
                ("function", "thumbnail"),
                ("outcome", "ok"),
            ],
        )
    };
    assert_eq!(thumbnail_runs().await, 1.0);
    assert_eq!(
        m(
            "runnel_invocations_total",
            &[
                ("pipeline", "notify"),
                ("function", "notify"),
                ("outcome", "ok")
            ]
        )
        .await,
        1.0
    );
    let thumbnails_written = || {
        m(
            "runnel_outputs_total",
            &[("pipeline", "image-upload"), ("sink", "thumbnails")],
        )
    };
    assert_eq!(thumbnails_written().await, 4.0 - 1.0);
    assert_eq!(
        m(
            "runnel_outputs_total",
            &[("pipeline", "notify"), ("sink", "webhook")]
        )
        .await,
        1.0
    );
    assert_eq!(
        m("runnel_inflight_events", &[("pipeline", "image-upload")]).await,
        0.0
    );
    // Billed: the memory limit (512 MiB) times the invocation's seconds,
    // rounded to a byte-second.
    const PF: &[(&str, &str)] = &[("pipeline", "image-upload"), ("function", "thumbnail")];
    let billed = m("runnel_billed_byte_seconds_total", PF).await;
    let seconds = m("runnel_invocation_duration_seconds_sum", PF).await;
    assert!(billed > 0.0);
    assert!(
        (billed - 512.0 * 1024.0 * 1024.0 * seconds).abs() <= 1.0,
        "billed {billed} byte-seconds for {seconds} s"
    );
    let text = runnel.metrics().await;
    assert!(
        text.contains("runnel_invocation_duration_seconds_bucket"),
        "histograms are exported"
    );
    let lint = harness::promtool(&["check", "metrics"], &text);
    assert_eq!(lint, "", "promtool check metrics finds /metrics clean");
    assert!(text.contains("runnel_instantiation_duration_seconds_count{function=\"thumbnail\"} 1"));

    // Where the event's time went: one sample of each stage (acknowledging
    // the source comes last, after the completion counted above).
    let stage = |stage: &'static str| {
        let runnel = &runnel;
        async move {
            let labels = [("pipeline", "image-upload"), ("stage", stage)];
            (
                runnel
                    .metric("runnel_stage_duration_seconds_count", &labels)
                    .await,
                runnel
                    .metric("runnel_stage_duration_seconds_sum", &labels)
                    .await,
            )
        }
    };
    runnel
        .wait_for_metric(
            "runnel_stage_duration_seconds_count",
            &[("pipeline", "image-upload"), ("stage", "ack")],
            1.0,
        )
        .await;
    for name in [
        "queued", "load", "claim", "invoke", "write", "complete", "ack",
    ] {
        assert_eq!(stage(name).await.0, 1.0, "stage {name}");
    }
    // The invoke stage is the call and handing it to a thread.
    let call = m(
        "runnel_invocation_duration_seconds_sum",
        &[("pipeline", "image-upload"), ("function", "thumbnail")],
    )
    .await;
    let invoke = stage("invoke").await.1;
    assert!(
        call > 0.0 && invoke >= call,
        "invoke stage {invoke} s, call {call} s"
    );

    // The same bytes under the same key are the same event: skipped.
    let again = runnel
        .upload("uploads", "photos/photo.jpg", photo, Some("alice"))
        .await;
    assert_eq!(again.status(), 201);
    runnel
        .wait_for_metric(
            "runnel_duplicates_skipped_total",
            &[("pipeline", "image-upload")],
            1.0,
        )
        .await;
    assert_eq!(runnel.topic("notifications").await.len(), 1);
    // The function ran while the claim was looked up (it has no side
    // effects), and its outputs were dropped unwritten.
    assert_eq!(thumbnail_runs().await, 2.0);
    assert_eq!(thumbnails_written().await, 3.0);
    assert_eq!(
        m(
            "runnel_outputs_total",
            &[("pipeline", "image-upload"), ("sink", "processed")]
        )
        .await,
        1.0
    );
}

/// A thumbnail expected: key suffix, width, height, format.
type Expected = (&'static str, u32, u32, image::ImageFormat);

/// The formats people really upload: progressive, grayscale and CMYK JPEG,
/// EXIF orientation, 16-bit and alpha PNG, WebP, GIF, and an image smaller
/// than every width.
#[tokio::test(flavor = "multi_thread")]
async fn real_world_formats_get_correct_thumbnails() {
    let dir = tempfile::tempdir().unwrap();
    let runnel = Runnel::start(dir.path(), &pipelines()[..1], &[], "").await;
    // (fixture, expected thumbnails as key suffix -> (width, height, format))
    let cases: &[(&str, &[Expected])] = &[
        (
            "baseline.jpg",
            &[
                ("-128.jpg", 128, 96, image::ImageFormat::Jpeg),
                ("-512.jpg", 512, 384, image::ImageFormat::Jpeg),
            ],
        ),
        (
            "progressive.jpg",
            &[("-128.jpg", 128, 96, image::ImageFormat::Jpeg)],
        ),
        (
            "gray.jpg",
            &[("-128.jpg", 128, 96, image::ImageFormat::Jpeg)],
        ),
        (
            "cmyk.jpg",
            &[("-128.jpg", 128, 96, image::ImageFormat::Jpeg)],
        ),
        // Stored 600x400 with orientation 6: upright it is 400x600.
        (
            "exif-orientation-6.jpg",
            &[("-128.jpg", 128, 192, image::ImageFormat::Jpeg)],
        ),
        (
            "rgb16.png",
            &[("-128.jpg", 128, 96, image::ImageFormat::Jpeg)],
        ),
        (
            "alpha.png",
            &[("-128.png", 128, 96, image::ImageFormat::Png)],
        ),
        (
            "small.png",
            &[("-100.jpg", 100, 80, image::ImageFormat::Jpeg)],
        ),
        (
            "photo.webp",
            &[("-128.jpg", 128, 96, image::ImageFormat::Jpeg)],
        ),
        (
            "anim.gif",
            &[("-128.jpg", 128, 96, image::ImageFormat::Jpeg)],
        ),
    ];
    for (name, _) in cases {
        let response = runnel
            .upload("uploads", &format!("in/{name}"), fixture(name), None)
            .await;
        assert_eq!(response.status(), 201, "{name}");
    }
    for (name, expected) in cases {
        let stem = name.rsplit_once('.').unwrap().0;
        for (suffix, width, height, format) in expected.iter() {
            let key = format!("in/{stem}{suffix}");
            let bytes = eventually(&key, WAIT, || async {
                runnel.object("thumbnails", &key).await.map(|(_, b)| b)
            })
            .await;
            let (w, h, f) = dims(&bytes);
            assert_eq!((w, h, f), (*width, *height, *format), "{key}");
        }
    }
    // The CMYK photo must not come out inverted: its fixture is mostly light.
    let (_, cmyk) = runnel
        .object("thumbnails", "in/cmyk-128.jpg")
        .await
        .unwrap();
    let mean = mean_luma(&cmyk);
    let (_, rgb) = runnel
        .object("thumbnails", "in/baseline-128.jpg")
        .await
        .unwrap();
    let reference = mean_luma(&rgb);
    assert!(
        mean.abs_diff(reference) < 40,
        "cmyk mean luma {mean} vs rgb {reference}"
    );
    assert_eq!(
        runnel
            .metric("runnel_dead_letters_total", &[("pipeline", "image-upload")])
            .await,
        0.0,
        "log:\n{}",
        runnel.log_text()
    );
}

/// Files that are not images, or are broken, end in the dead-letter sink
/// with their error, are counted, and the next upload still works.
#[tokio::test(flavor = "multi_thread")]
async fn bad_images_go_to_dead_letters_and_processing_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut runnel = Runnel::start(dir.path(), &pipelines()[..1], &[], "").await;
    for name in ["not-an-image.jpg", "truncated.jpg"] {
        assert_eq!(
            runnel
                .upload("uploads", &format!("bad/{name}"), fixture(name), None)
                .await
                .status(),
            201
        );
    }
    runnel
        .wait_for_metric(
            "runnel_dead_letters_total",
            &[("pipeline", "image-upload")],
            2.0,
        )
        .await;
    for name in ["not-an-image.jpg", "truncated.jpg"] {
        // Dead letters are named after the idempotency key, bucket/key@etag.
        let etag = hex::encode(<md5::Md5 as md5::Digest>::digest(fixture(name)));
        let key = format!("image-upload/uploads_bad_{name}@{etag}.json");
        let (_, body) = runnel
            .object("dead-letters", &key)
            .await
            .unwrap_or_else(|| panic!("dead letter {key}; log:\n{}", runnel.log_text()));
        let record: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(record["pipeline"], "image-upload");
        assert_eq!(record["stage"], "invoke");
        assert_eq!(record["attempts"], 1, "a bad image is not retried");
        assert_eq!(record["retryable"], false);
        assert!(
            record["error"]
                .as_str()
                .unwrap()
                .contains(&format!("bad/{name}")),
            "{record}"
        );
        assert_eq!(record["event"]["subject"], format!("bad/{name}"));
    }
    assert_eq!(
        runnel
            .metric(
                "runnel_invocations_total",
                &[
                    ("pipeline", "image-upload"),
                    ("function", "thumbnail"),
                    ("outcome", "error")
                ]
            )
            .await,
        2.0
    );
    assert!(runnel.is_running());
    assert_eq!(
        runnel
            .upload("uploads", "good.jpg", photo_jpeg(300, 200), None)
            .await
            .status(),
        201
    );
    let bytes = eventually("a thumbnail after the bad ones", WAIT, || async {
        runnel
            .object("thumbnails", "good-128.jpg")
            .await
            .map(|(_, b)| b)
    })
    .await;
    assert_eq!(dims(&bytes).0, 128);
}

/// Without `NOTIFY_WEBHOOK_URL` the webhook sink is off: the notification
/// goes to the topic only and the webhook output is counted as dropped.
/// SIGTERM then stops the process cleanly (exit code 0).
#[tokio::test(flavor = "multi_thread")]
async fn webhook_is_optional_and_sigterm_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut runnel = Runnel::start(dir.path(), &pipelines(), &[], "").await;
    let photo = photo_jpeg(200, 100);
    assert_eq!(
        runnel
            .upload("uploads", "a.jpg", photo, None)
            .await
            .status(),
        201
    );
    let notifications = eventually("the notification", WAIT, || async {
        let n = runnel.topic("notifications").await;
        (!n.is_empty()).then_some(n)
    })
    .await;
    assert!(
        notifications[0]["payload"]
            .as_str()
            .unwrap()
            .contains("a.jpg: 1 thumbnail ready")
    );
    assert_eq!(
        runnel
            .metric(
                "runnel_outputs_dropped_total",
                &[("pipeline", "notify"), ("sink", "webhook")]
            )
            .await,
        1.0
    );
    let status = runnel.terminate();
    assert!(status.success(), "{status}; log:\n{}", runnel.log_text());
    assert!(runnel.log_text().contains("stopped"));
}

/// A PNG claiming `width`x`height` with almost no pixel data: the shape
/// of a decompression bomb.
fn png_bomb(width: u32, height: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in bytes {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]); // 8-bit RGBA
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    // A token of pixel data (an empty zlib stream) and the end.
    for (kind, data) in [
        (
            &b"IDAT"[..],
            &[0x78, 0x01, 0x01, 0x00, 0x00, 0xff, 0xff, 0, 0, 0, 1][..],
        ),
        (b"IEND", &[]),
    ] {
        let mut chunk = kind.to_vec();
        chunk.extend_from_slice(data);
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        png.extend_from_slice(&chunk);
        png.extend_from_slice(&crc32(&chunk).to_be_bytes());
    }
    png
}

/// Hostile images — a header claiming 50000x50000 pixels, a zero-byte
/// file — are refused with an error naming the object, before decoding,
/// and the pipeline keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_images_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let runnel = Runnel::start(dir.path(), &pipelines()[..1], &[], "").await;
    let cases: [(&str, Vec<u8>, &str); 2] = [
        ("bomb.png", png_bomb(50_000, 50_000), "pixel limit"),
        ("empty.jpg", Vec::new(), "empty.jpg"),
    ];
    for (name, body, _) in &cases {
        assert_eq!(
            runnel
                .upload("uploads", name, body.clone(), None)
                .await
                .status(),
            201
        );
    }
    for (name, body, expected) in &cases {
        let etag = hex::encode(<md5::Md5 as md5::Digest>::digest(body));
        let key = format!("image-upload/uploads_{name}@{etag}.json");
        let (_, bytes) = eventually(&key, WAIT, || async {
            runnel.object("dead-letters", &key).await
        })
        .await;
        let record: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let error = record["error"].as_str().unwrap();
        assert!(
            error.contains(name) && error.contains(expected),
            "{name}: {error}"
        );
        assert_eq!(record["retryable"], false);
    }
    // Every outcome's series is exported from the start, at zero.
    let ooms: f64 = runnel
        .metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("runnel_invocations_total") && l.contains("outcome=\"oom\""))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum();
    assert_eq!(
        ooms, 0.0,
        "refused by declared size, not by running out of memory"
    );
    assert_eq!(
        runnel
            .upload("uploads", "fine.jpg", photo_jpeg(300, 200), None)
            .await
            .status(),
        201
    );
    eventually("a thumbnail after them", WAIT, || async {
        runnel.object("thumbnails", "fine-128.jpg").await
    })
    .await;
}
