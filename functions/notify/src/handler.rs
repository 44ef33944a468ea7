//! The WIT boundary of the notify function: one `image-processed` message in,
//! one notification per available notification sink out.
//!
//! Configured sinks the pipeline does not declare are skipped, so one
//! config serves deployments with and without a webhook; but a pipeline that
//! declares none of them is misconfigured, and that never fixes itself, so
//! every error here is non-retryable.

use crate::config::Config;
use crate::notification::{Notification, Processed};
use runnel_sdk::{Context, Error, Event, Output};

/// What handling an event produced: the outputs, and a line for the log.
pub struct Handled {
    pub outputs: Vec<Output>,
    pub summary: String,
}

pub fn handle(ctx: &Context, event: &Event) -> Result<Handled, Error> {
    let config = Config::from_context(ctx)?;
    let sinks: Vec<&String> = config
        .sinks
        .iter()
        .filter(|name| ctx.sinks.iter().any(|s| &s.name == *name))
        .collect();
    if sinks.is_empty() {
        return Err(Error::reject(format!(
            "none of the sinks in config `sinks` ({}) is declared by pipeline `{}` (it has: {})",
            config.sinks.join(", "),
            ctx.pipeline,
            ctx.sink_names().join(", "),
        )));
    }

    let report: Processed = event.json_as("an image-processed report")?;
    let key = report.source.key.clone();
    let notification = Notification::for_report(report);
    let data = serde_json::to_vec(&notification).expect("the notification is plain data");

    let outputs = sinks
        .iter()
        .map(|sink| {
            Output::new(sink.as_str(), data.clone())
                .with_key(Some(key.clone()))
                .with_content_type("application/json")
        })
        .collect();
    let summary = format!(
        "{} -> {}",
        notification.message,
        sinks
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(Handled { outputs, summary })
}

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_sdk::Sink;

    fn context(sinks: &[&str], config: &[(&str, &str)]) -> Context {
        Context {
            pipeline: "notify".into(),
            config: config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            sinks: sinks
                .iter()
                .map(|name| Sink {
                    name: name.to_string(),
                    kind: "topic".into(),
                    target: format!("{name}-target"),
                })
                .collect(),
            attempt: 1,
        }
    }

    fn message(data: &[u8]) -> Event {
        Event {
            id: "evt-7".into(),
            source: "topic://image-processed".into(),
            event_type: "runnel.message".into(),
            subject: Some("photos/photo.jpg".into()),
            content_type: Some("application/json".into()),
            attributes: Vec::new(),
            data: data.to_vec(),
        }
    }

    const REPORT: &str = r#"{"source":{"bucket":"uploads","key":"photos/photo.jpg","etag":"e","size":5},
        "metadata":{"user":"alice"},
        "thumbnails":[{"key":"a"},{"key":"b"},{"key":"c"}]}"#;

    /// The notification goes to every default sink the pipeline declares, keyed by the object.
    #[test]
    fn notifies_every_declared_sink() {
        let handled = handle(
            &context(&["notifications", "webhook"], &[]),
            &message(REPORT.as_bytes()),
        )
        .unwrap();
        let sinks: Vec<_> = handled.outputs.iter().map(|o| o.sink.as_str()).collect();
        assert_eq!(sinks, ["notifications", "webhook"]);
        let output = &handled.outputs[0];
        assert_eq!(output.key.as_deref(), Some("photos/photo.jpg"));
        assert_eq!(output.content_type.as_deref(), Some("application/json"));
        let json: serde_json::Value = serde_json::from_slice(&output.data).unwrap();
        assert_eq!(
            json["message"],
            "photos/photo.jpg for alice: 3 thumbnails ready"
        );
        assert_eq!(json["user"], "alice");
        assert_eq!(json["source"]["size"], 5);
        assert_eq!(json["thumbnails"].as_array().unwrap().len(), 3);
    }

    /// A deployment without the webhook still notifies; only configured sinks are used.
    #[test]
    fn skips_undeclared_sinks() {
        let handled = handle(
            &context(&["notifications", "audit"], &[]),
            &message(REPORT.as_bytes()),
        )
        .unwrap();
        let sinks: Vec<_> = handled.outputs.iter().map(|o| o.sink.as_str()).collect();
        assert_eq!(sinks, ["notifications"]);

        let handled = handle(
            &context(&["audit"], &[("sinks", r#"["audit"]"#)]),
            &message(REPORT.as_bytes()),
        )
        .unwrap();
        assert_eq!(handled.outputs[0].sink, "audit");
    }

    /// When no configured sink exists the event is rejected, naming the key.
    #[test]
    fn no_sink_at_all_is_rejected() {
        let err = handle(&context(&["other"], &[]), &message(REPORT.as_bytes()))
            .err()
            .unwrap();
        assert!(!err.retryable);
        assert!(err.message.contains("config `sinks`"), "{}", err.message);
    }

    /// Bad JSON is rejected, naming the event.
    #[test]
    fn bad_json_is_rejected() {
        let err = handle(&context(&["notifications"], &[]), &message(b"{not json"))
            .err()
            .unwrap();
        assert!(!err.retryable);
        assert!(
            err.message.starts_with(
                "event evt-7 (subject photos/photo.jpg): not an image-processed report"
            ),
            "{}",
            err.message
        );
    }
}
