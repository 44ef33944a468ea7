//! The `order-status` function: when an order row is inserted or its status
//! changes, a short notification for the customer, to every sink of its
//! pipeline.
//!
//! It reads the Debezium change event (`before`, `after`, `op`, `source`),
//! so it serves runnel's database trigger and Debezium's output on Kafka
//! alike. An update that leaves the status as it was (seen when the table
//! has `REPLICA IDENTITY FULL`, so `before` is the whole row) tells nobody.

use runnel_sdk::{Context, Error, Event, Guest, Output};
use serde_json::{Value, json};

struct OrderStatus;

runnel_sdk::export!(OrderStatus);

impl Guest for OrderStatus {
    fn handle(ctx: Context, event: Event) -> Result<Vec<Output>, Error> {
        let change: Value = event.json_as("a JSON change event")?;
        let Some(message) = notification(&change) else {
            return Ok(Vec::new());
        };
        ctx.sinks
            .iter()
            .map(|sink| {
                Ok(Output::json(sink.name.as_str(), &message)?.with_key(event.subject.clone()))
            })
            .collect()
    }
}

/// What to tell the customer about this change, if anything.
fn notification(change: &Value) -> Option<Value> {
    let after = change.get("after").filter(|a| a.is_object())?;
    let status = after.get("status")?.as_str()?;
    let previous = change
        .get("before")
        .and_then(|b| b.get("status"))
        .and_then(Value::as_str);
    if previous == Some(status) {
        return None;
    }
    let order = after.get("id").cloned().unwrap_or(Value::Null);
    let text = match change.get("op").and_then(Value::as_str) {
        Some("c") => format!("Thank you! Order {order} is {status}."),
        _ => format!("Order {order} is now {status}."),
    };
    Some(json!({
        "order": order,
        "customer": after.get("customer").cloned().unwrap_or(Value::Null),
        "status": status,
        "previous": previous,
        "text": text,
    }))
}
