//! Idempotency key expressions: `source.idempotency_key` in a pipeline
//! file, text with `{placeholders}` filled from each event.
//!
//! Storage sources: `{bucket}`, `{key}`, `{etag}`, `{size}`, `{meta.NAME}`
//! (user metadata). Topic sources: `{topic}`, `{partition}`, `{offset}`,
//! `{key}` (the message key), `{header.NAME}`, `{json.PATH}` (a field of a
//! JSON payload, `PATH` dotted: `{json.order.id}`). `{{` and `}}` are
//! literal braces. An event lacking a field the expression names cannot be
//! deduplicated as asked: it goes to the dead letters, saying which.

use crate::config::reader::Table;
use crate::event::{Consumed, ObjectCreated};

/// Reads `idempotency_key` from a source table: `Some(None)` when it is
/// absent, `None` when it is wrong (reported at its value).
pub fn read(table: &Table<'_, '_>, kind: Kind) -> Option<Option<KeyExpression>> {
    let Some(field) = table.get("idempotency_key") else {
        return Some(None);
    };
    let text = field.string()?;
    match KeyExpression::parse(&text, kind) {
        Ok(expression) => Some(Some(expression)),
        Err(error) => {
            field.error(error);
            None
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct KeyExpression {
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq)]
enum Part {
    Text(String),
    Field(Field),
}

#[derive(Clone, Debug, PartialEq)]
enum Field {
    Bucket,
    ObjectKey,
    Etag,
    Size,
    Meta(String),
    Topic,
    Partition,
    Offset,
    MessageKey,
    Header(String),
    Json(Vec<String>),
}

/// Which placeholders an expression may use.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Storage,
    Topic,
}

impl KeyExpression {
    pub fn parse(text: &str, kind: Kind) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    let mut closed = false;
                    for c in chars.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        name.push(c);
                    }
                    if !closed {
                        return Err(format!("unclosed placeholder {{{name}"));
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Field(field(&name, kind)?));
                }
                '}' => return Err("unmatched '}' (write '}}' for a literal brace)".to_owned()),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        if !parts.iter().any(|p| matches!(p, Part::Field(_))) {
            return Err(
                "names no field of the event: every event would get the same key".to_owned(),
            );
        }
        Ok(Self { parts })
    }

    pub fn for_object(&self, object: &ObjectCreated) -> Result<String, String> {
        self.render(|field| match field {
            Field::Bucket => Ok(object.bucket.clone()),
            Field::ObjectKey => Ok(object.key.clone()),
            Field::Etag => Ok(object.etag.clone()),
            Field::Size => Ok(object.size.to_string()),
            Field::Meta(name) => object
                .metadata
                .get(name)
                .cloned()
                .ok_or_else(|| format!("the object has no metadata {name:?}")),
            _ => unreachable!("checked when parsed"),
        })
    }

    pub fn for_message(&self, consumed: &Consumed) -> Result<String, String> {
        let message = &consumed.message;
        self.render(|field| match field {
            Field::Topic => Ok(consumed.topic.clone()),
            Field::Partition => Ok(consumed.position.partition.to_string()),
            Field::Offset => Ok(consumed.position.offset.to_string()),
            Field::MessageKey => message
                .key
                .clone()
                .ok_or_else(|| "the message has no key".to_owned()),
            Field::Header(name) => message
                .headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .ok_or_else(|| format!("the message has no header {name:?}")),
            Field::Json(path) => json_field(&message.payload, path),
            _ => unreachable!("checked when parsed"),
        })
    }

    fn render(&self, value: impl Fn(&Field) -> Result<String, String>) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Field(field) => out.push_str(
                    &value(field).map_err(|e| format!("idempotency key expression: {e}"))?,
                ),
            }
        }
        Ok(out)
    }
}

fn field(name: &str, kind: Kind) -> Result<Field, String> {
    let named = |prefix: &str| {
        name.strip_prefix(prefix)
            .filter(|rest| !rest.is_empty())
            .map(str::to_owned)
    };
    let found = match kind {
        Kind::Storage => match name {
            "bucket" => Some(Field::Bucket),
            "key" => Some(Field::ObjectKey),
            "etag" => Some(Field::Etag),
            "size" => Some(Field::Size),
            _ => named("meta.").map(|n| Field::Meta(n.to_ascii_lowercase())),
        },
        Kind::Topic => match name {
            "topic" => Some(Field::Topic),
            "partition" => Some(Field::Partition),
            "offset" => Some(Field::Offset),
            "key" => Some(Field::MessageKey),
            _ => named("header.").map(Field::Header).or_else(|| {
                named("json.").map(|p| Field::Json(p.split('.').map(str::to_owned).collect()))
            }),
        },
    };
    found.ok_or_else(|| {
        let known = match kind {
            Kind::Storage => "{bucket}, {key}, {etag}, {size}, {meta.NAME}",
            Kind::Topic => "{topic}, {partition}, {offset}, {key}, {header.NAME}, {json.PATH}",
        };
        format!("unknown placeholder {{{name}}}; this source has {known}")
    })
}

/// A scalar field of a JSON payload, as text.
fn json_field(payload: &[u8], path: &[String]) -> Result<String, String> {
    let json: serde_json::Value = serde_json::from_slice(payload).map_err(|e| {
        format!(
            "the payload is not JSON ({e}), so {{json.{}}} has no value",
            path.join(".")
        )
    })?;
    let mut value = &json;
    for step in path {
        value = value
            .get(step.as_str())
            .ok_or_else(|| format!("the payload has no field {}", path.join(".")))?;
    }
    match value {
        serde_json::Value::String(s) => Ok(s.clone()),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        serde_json::Value::Bool(b) => Ok(b.to_string()),
        _ => Err(format!(
            "the payload's field {} is not a string, number or boolean",
            path.join(".")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Message, Position};

    fn message(payload: &str) -> Consumed {
        Consumed {
            topic: "orders".into(),
            position: Position {
                partition: 2,
                offset: 40,
            },
            message: Message {
                key: Some("k1".into()),
                headers: vec![("request-id".into(), "r-9".into())],
                payload: payload.as_bytes().to_vec().into(),
            },
        }
    }

    #[test]
    fn renders_message_fields() {
        let e = KeyExpression::parse(
            "{topic}:{json.order.id}/{header.request-id}/{key}",
            Kind::Topic,
        )
        .unwrap();
        let key = e.for_message(&message(r#"{"order": {"id": 17}}"#)).unwrap();
        assert_eq!(key, "orders:17/r-9/k1");
        let e = KeyExpression::parse("{{{partition}-{offset}}}", Kind::Topic).unwrap();
        assert_eq!(e.for_message(&message("x")).unwrap(), "{2-40}");
    }

    #[test]
    fn a_missing_field_is_an_error_naming_it() {
        let e = KeyExpression::parse("{json.order.id}", Kind::Topic).unwrap();
        let error = e.for_message(&message(r#"{"order": {}}"#)).unwrap_err();
        assert!(error.contains("no field order.id"), "{error}");
        let error = e.for_message(&message("not json")).unwrap_err();
        assert!(error.contains("not JSON"), "{error}");
    }

    #[test]
    fn renders_object_fields() {
        let object = ObjectCreated {
            bucket: "uploads".into(),
            key: "a.jpg".into(),
            etag: "e1".into(),
            size: 5,
            content_type: None,
            metadata: [("user".to_owned(), "ann".to_owned())].into(),
            version_id: None,
        };
        let e = KeyExpression::parse("{bucket}/{key}@{etag}#{meta.User}", Kind::Storage).unwrap();
        assert_eq!(e.for_object(&object).unwrap(), "uploads/a.jpg@e1#ann");
    }

    #[test]
    fn bad_expressions_say_why() {
        let err = |text, kind| KeyExpression::parse(text, kind).unwrap_err();
        assert!(err("{offset}", Kind::Storage).contains("unknown placeholder {offset}"));
        assert!(err("{json.x", Kind::Topic).contains("unclosed"));
        assert!(err("fixed", Kind::Topic).contains("same key"));
        assert!(err("a}b{key}", Kind::Topic).contains("unmatched"));
    }
}
