//! Debezium's change events read back from a topic (`[source] type =
//! "topic"`, `format = "debezium"`): what Kafka Connect's JSON converter
//! wrote, with or without its `{"schema", "payload"}` wrapper, becomes the
//! event the database trigger makes, so one function serves both.

use serde_json::{Map, Value as Json};

use super::change::{Attributes, UNAVAILABLE};
use crate::event::{Consumed, DATABASE_CHANGE, Event};

/// The event for one message, or `None` for a tombstone (the empty
/// message Debezium writes after a delete, for compaction).
pub fn decode(consumed: Consumed) -> Result<Option<Event>, String> {
    let place = format!(
        "{}/{}/{}",
        consumed.topic, consumed.position.partition, consumed.position.offset
    );
    if consumed.message.payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let value: Json = serde_json::from_slice(&consumed.message.payload)
        .map_err(|e| format!("not a Debezium change event: the message is not JSON ({e})"))?;
    let Json::Object(payload) = unwrap(value) else {
        return Ok(None); // `{"schema": …, "payload": null}`: a tombstone too
    };
    let op = payload
        .get("op")
        .and_then(Json::as_str)
        .ok_or("not a Debezium change event: no \"op\"")?;
    if !matches!(op, "c" | "u" | "d" | "r" | "t") {
        return Err(format!(
            "Debezium event with op {op:?}: only row changes (c, u, d, r, t) are events"
        ));
    }
    let source = payload
        .get("source")
        .and_then(Json::as_object)
        .ok_or("not a Debezium change event: no \"source\"")?;
    let text = |name: &str| source.get(name).and_then(Json::as_str).unwrap_or("");
    let table = text("table");
    if table.is_empty() && op != "t" {
        return Err("not a Debezium change event: no \"source.table\"".to_owned());
    }
    // PostgreSQL's connector names the schema; MySQL's has only `db`.
    let schema = Some(text("schema"))
        .filter(|s| !s.is_empty())
        .unwrap_or(text("db"));
    let lsn = source.get("lsn").and_then(Json::as_u64);
    let tx_id = source.get("txId").and_then(Json::as_u64);
    let subject = consumed
        .message
        .key
        .as_deref()
        .and_then(|key| serde_json::from_str(key).ok())
        .map(unwrap)
        .filter(|key| !key.is_null())
        .map(|key| key.to_string());
    let unavailable: Vec<String> = payload
        .get("after")
        .and_then(Json::as_object)
        .map(unavailable_columns)
        .unwrap_or_default();
    // A row change's log position names it across Debezium's own
    // redeliveries; snapshot rows share one, so the key is part of it.
    let idempotency_key = match lsn {
        Some(lsn) => format!(
            "{}/debezium/{lsn}/{op}/{}",
            consumed.topic,
            subject.as_deref().unwrap_or("")
        ),
        None => place.clone(),
    };
    let mut attributes = Attributes {
        database: text("name"),
        schema,
        table,
        op,
        lsn,
        tx_id,
        unavailable: &unavailable,
    }
    .into_map();
    attributes.insert("topic".to_owned(), consumed.topic.clone());
    attributes.insert(
        "partition".to_owned(),
        consumed.position.partition.to_string(),
    );
    attributes.insert("offset".to_owned(), consumed.position.offset.to_string());
    Ok(Some(Event {
        id: place,
        source: format!("database://{}/{schema}.{table}", text("name")),
        event_type: DATABASE_CHANGE.to_owned(),
        subject,
        content_type: Some("application/json".to_owned()),
        attributes,
        data: Json::Object(payload).to_string().into(),
        idempotency_key,
    }))
}

/// Kafka Connect's JSON converter with schemas on writes `{"schema": …,
/// "payload": …}`; without, the payload alone.
fn unwrap(value: Json) -> Json {
    match value {
        Json::Object(mut map)
            if map.len() == 2 && map.contains_key("schema") && map.contains_key("payload") =>
        {
            map.remove("payload").unwrap_or(Json::Null)
        }
        other => other,
    }
}

fn unavailable_columns(after: &Map<String, Json>) -> Vec<String> {
    after
        .iter()
        .filter(|(_, value)| value.as_str() == Some(UNAVAILABLE))
        .map(|(name, _)| name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::event::{Message, Position};

    fn consumed(key: Option<&str>, payload: &str) -> Consumed {
        Consumed {
            topic: "shop.public.orders".into(),
            position: Position {
                partition: 2,
                offset: 17,
            },
            message: Message {
                key: key.map(str::to_owned),
                headers: Vec::new(),
                payload: payload.to_owned().into(),
            },
        }
    }

    fn change() -> Json {
        json!({
            "before": {"id": 42, "status": "placed", "note": "x"},
            "after": {"id": 42, "status": "shipped", "note": UNAVAILABLE},
            "op": "u",
            "ts_ms": 1_700_000_000_123_u64,
            "source": {
                "version": "2.7.0.Final", "connector": "postgresql", "name": "shop",
                "ts_ms": 1_700_000_000_000_u64, "snapshot": "false", "db": "shop",
                "schema": "public", "table": "orders", "txId": 771, "lsn": 23_456_789,
            },
            "transaction": null,
        })
    }

    #[test]
    fn with_and_without_the_schema_wrapper_give_one_event() {
        let bare = decode(consumed(Some(r#"{"id":42}"#), &change().to_string()))
            .unwrap()
            .unwrap();
        let wrapped = json!({"schema": {"type": "struct", "fields": []}, "payload": change()});
        let key = json!({"schema": {"type": "struct"}, "payload": {"id": 42}}).to_string();
        let wrapped = decode(consumed(Some(&key), &wrapped.to_string()))
            .unwrap()
            .unwrap();
        assert_eq!(bare, wrapped);
        assert_eq!(bare.event_type, DATABASE_CHANGE);
        assert_eq!(bare.subject.as_deref(), Some(r#"{"id":42}"#));
        assert_eq!(bare.source, "database://shop/public.orders");
        assert_eq!(
            bare.idempotency_key,
            r#"shop.public.orders/debezium/23456789/u/{"id":42}"#
        );
        let data: Json = serde_json::from_slice(&bare.data).unwrap();
        assert_eq!(data, change());
        let attributes = &bare.attributes;
        assert_eq!(attributes["database"], "shop");
        assert_eq!(attributes["schema"], "public");
        assert_eq!(attributes["table"], "orders");
        assert_eq!(attributes["op"], "u");
        assert_eq!(attributes["lsn"], "0/165EC15");
        assert_eq!(attributes["tx_id"], "771");
        assert_eq!(attributes["unavailable_columns"], "note");
        assert_eq!(attributes["offset"], "17");
    }

    #[test]
    fn tombstones_are_no_events() {
        assert_eq!(decode(consumed(Some(r#"{"id":42}"#), "")), Ok(None));
        let wrapped = r#"{"schema":null,"payload":null}"#;
        assert_eq!(decode(consumed(Some(r#"{"id":42}"#), wrapped)), Ok(None));
    }

    #[test]
    fn what_is_no_change_event_says_why() {
        let problem = decode(consumed(None, "hello")).unwrap_err();
        assert!(problem.contains("not JSON"), "{problem}");
        let problem = decode(consumed(None, r#"{"after":{}}"#)).unwrap_err();
        assert!(problem.contains("no \"op\""), "{problem}");
        let message = json!({"op": "m", "source": {"table": ""}}).to_string();
        let problem = decode(consumed(None, &message)).unwrap_err();
        assert!(problem.contains("\"m\""), "{problem}");
    }

    #[test]
    fn without_a_log_position_the_message_names_the_event() {
        let mut mysql = change();
        let source = mysql["source"].as_object_mut().unwrap();
        source.remove("lsn");
        source.remove("schema");
        source.insert("connector".into(), json!("mysql"));
        let event = decode(consumed(None, &mysql.to_string())).unwrap().unwrap();
        assert_eq!(event.idempotency_key, "shop.public.orders/2/17");
        assert_eq!(event.attributes["schema"], "shop");
        assert_eq!(event.subject, None);
        assert!(!event.attributes.contains_key("lsn"));
    }
}
