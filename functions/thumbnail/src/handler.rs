//! The WIT boundary of the thumbnail function: one event and its context in,
//! the outputs to write (or the reason to give up) out.
//!
//! Every failure here is permanent for this event (bad config, bad image,
//! unknown sink), so every error is non-retryable and goes straight to the
//! dead-letter sink with a message naming what to fix.

use crate::config::Config;
use crate::key::thumbnail_key;
use crate::report::{Report, SourceObject, ThumbnailEntry, user_metadata};
use crate::thumbnails;
use runnel_sdk::{Context, Error, Event, Output};

/// What handling an event produced: the outputs, and a line for the log.
pub struct Handled {
    pub outputs: Vec<Output>,
    pub summary: String,
}

pub fn handle(ctx: &Context, event: &Event) -> Result<Handled, Error> {
    let config = Config::from_pairs(&ctx.config).map_err(|e| reject(e.to_string()))?;
    let thumbnail_bucket = sink_target(ctx, "thumbnail_sink", &config.thumbnail_sink)?;
    sink_target(ctx, "result_sink", &config.result_sink)?;
    let source = SourceObject::from_event(event).ok_or_else(|| {
        reject(format!(
            "event {} names no object (no subject and no `key` attribute)",
            event.id
        ))
    })?;

    let (image, thumbnails) = thumbnails::make(&event.data, &config.widths, config.quality)
        .map_err(|e| reject(format!("{}: {e}", source.key)))?;

    let mut outputs = Vec::with_capacity(thumbnails.len() + 1);
    let mut entries = Vec::with_capacity(thumbnails.len());
    for thumbnail in thumbnails {
        let key = thumbnail_key(&source.key, thumbnail.width, thumbnail.format.extension());
        let content_type = thumbnail.format.content_type();
        entries.push(ThumbnailEntry {
            bucket: thumbnail_bucket.clone(),
            key: key.clone(),
            width: thumbnail.width,
            height: thumbnail.height,
            bytes: thumbnail.data.len(),
            content_type: content_type.into(),
        });
        outputs.push(Output {
            sink: config.thumbnail_sink.clone(),
            key: Some(key),
            content_type: Some(content_type.into()),
            attributes: vec![
                ("width".into(), thumbnail.width.to_string()),
                ("height".into(), thumbnail.height.to_string()),
                ("source-key".into(), source.key.clone()),
            ],
            data: thumbnail.data,
        });
    }

    let summary = format!(
        "{}: {}x{} image, wrote {} to sink `{}`, report to `{}`",
        source.key,
        image.width,
        image.height,
        entries
            .iter()
            .map(|e| format!("{}x{} ({} B)", e.width, e.height, e.bytes))
            .collect::<Vec<_>>()
            .join(", "),
        config.thumbnail_sink,
        config.result_sink,
    );
    let report = Report {
        metadata: user_metadata(event),
        source,
        thumbnails: entries,
    };
    outputs.push(Output {
        sink: config.result_sink,
        key: Some(report.source.key.clone()),
        content_type: Some("application/json".into()),
        attributes: Vec::new(),
        data: serde_json::to_vec(&report).expect("the report is plain data"),
    });
    Ok(Handled { outputs, summary })
}

/// The target (bucket, topic, URL) of the sink a config key names; naming a
/// sink the pipeline does not declare is a config error.
fn sink_target(ctx: &Context, config_key: &str, name: &str) -> Result<String, Error> {
    match ctx.sink(name) {
        Some(sink) => Ok(sink.target.clone()),
        None => Err(Error::reject(format!(
            "config `{config_key}` names sink `{name}`, which pipeline `{}` does not declare (it has: {})",
            ctx.pipeline,
            ctx.sink_names().join(", "),
        ))),
    }
}

fn reject(message: String) -> Error {
    Error::reject(message)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use runnel_sdk::Sink;

    pub fn context(config: &[(&str, &str)]) -> Context {
        let sink = |name: &str, kind: &str, target: &str| Sink {
            name: name.into(),
            kind: kind.into(),
            target: target.into(),
        };
        Context {
            pipeline: "thumbnails".into(),
            config: config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            sinks: vec![
                sink("thumbnails", "storage", "thumbs-bucket"),
                sink("processed", "topic", "image-processed"),
            ],
            attempt: 1,
        }
    }

    pub fn upload(key: &str, data: Vec<u8>) -> Event {
        Event {
            id: "evt-1".into(),
            source: "storage://uploads".into(),
            event_type: "runnel.object.created".into(),
            subject: Some(key.into()),
            content_type: Some("image/jpeg".into()),
            attributes: vec![
                ("bucket".into(), "uploads".into()),
                ("key".into(), key.into()),
                ("etag".into(), "\"abc123\"".into()),
                ("size".into(), data.len().to_string()),
                ("meta-user".into(), "alice".into()),
            ],
            data,
        }
    }

    fn jpeg(width: u32, height: u32) -> Vec<u8> {
        let image =
            image::RgbImage::from_fn(width, height, |x, y| image::Rgb([x as u8, y as u8, 9]));
        let mut out = std::io::Cursor::new(Vec::new());
        image.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
        out.into_inner()
    }

    /// A 640x480 upload yields two thumbnails next to it and a report that describes them.
    #[test]
    fn outputs_and_report() {
        let data = jpeg(640, 480);
        let size = data.len();
        let handled = handle(&context(&[]), &upload("photos/photo.jpg", data)).unwrap();
        let outputs = handled.outputs;
        assert_eq!(outputs.len(), 3);
        assert_eq!(outputs[0].sink, "thumbnails");
        assert_eq!(outputs[0].key.as_deref(), Some("photos/photo-128.jpg"));
        assert_eq!(outputs[0].content_type.as_deref(), Some("image/jpeg"));
        assert_eq!(
            outputs[0].attributes,
            vec![
                ("width".to_string(), "128".to_string()),
                ("height".to_string(), "96".to_string()),
                ("source-key".to_string(), "photos/photo.jpg".to_string()),
            ]
        );
        assert_eq!(outputs[1].key.as_deref(), Some("photos/photo-512.jpg"));

        let report = &outputs[2];
        assert_eq!(report.sink, "processed");
        assert_eq!(report.key.as_deref(), Some("photos/photo.jpg"));
        assert_eq!(report.content_type.as_deref(), Some("application/json"));
        let json: serde_json::Value = serde_json::from_slice(&report.data).unwrap();
        assert_eq!(
            json["source"],
            serde_json::json!({"bucket": "uploads", "key": "photos/photo.jpg", "etag": "\"abc123\"", "size": size})
        );
        assert_eq!(json["metadata"], serde_json::json!({"user": "alice"}));
        assert_eq!(
            json["thumbnails"][1],
            serde_json::json!({
                "bucket": "thumbs-bucket", "key": "photos/photo-512.jpg", "width": 512,
                "height": 384, "bytes": outputs[1].data.len(), "content_type": "image/jpeg"
            })
        );
        assert!(
            handled.summary.contains("photos/photo.jpg"),
            "{}",
            handled.summary
        );
    }

    /// Garbage is a permanent failure that names the object and the decoder's reason.
    #[test]
    fn garbage_is_rejected() {
        let err = handle(
            &context(&[]),
            &upload("photos/x.jpg", b"not an image".to_vec()),
        )
        .err()
        .unwrap();
        assert!(!err.retryable);
        assert_eq!(
            err.message,
            "photos/x.jpg: not a supported image (the image format could not be determined)"
        );
    }

    /// Bad config values and unknown sinks are permanent failures naming the config key.
    #[test]
    fn config_errors_are_rejected() {
        let event = upload("a.jpg", jpeg(200, 100));
        for (config, key) in [
            (&[("widths", "[128,abc]")][..], "widths"),
            (&[("quality", "0")][..], "quality"),
            (&[("thumbnail_sink", "nowhere")][..], "thumbnail_sink"),
            (&[("result_sink", "nowhere")][..], "result_sink"),
        ] {
            let err = handle(&context(config), &event).err().unwrap();
            assert!(!err.retryable);
            assert!(err.message.contains(&format!("`{key}`")), "{}", err.message);
        }
    }

    /// Without a subject the `key` attribute names the object.
    #[test]
    fn key_attribute_stands_in_for_subject() {
        let mut event = upload("a/b", jpeg(200, 100));
        event.subject = None;
        let handled = handle(&context(&[("widths", "128")]), &event).unwrap();
        assert_eq!(handled.outputs[0].key.as_deref(), Some("a/b-128.jpg"));
    }
}
