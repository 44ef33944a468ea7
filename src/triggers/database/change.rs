//! Row changes as Debezium change events: `before`, `after`, `op`,
//! `ts_ms` and `source`, so a function written for Debezium's PostgreSQL
//! connector reads runnel's unchanged.

use std::collections::BTreeMap;

use serde_json::{Map, Value as Json, json};

use super::pgoutput::{Column, Old, Relation, Value};

/// What Debezium puts where PostgreSQL did not send a value (an unchanged
/// TOASTed column): its default `unavailable.value.placeholder`.
pub const UNAVAILABLE: &str = "__debezium_unavailable_value";

/// A table's shape in the stream: its relation, and which columns form
/// the event's key (the primary key, else the replica identity).
#[derive(Clone, Debug)]
pub struct Table {
    pub relation: Relation,
    pub key: Vec<usize>,
}

impl Table {
    /// `primary_key` names the table's primary key columns, as the catalog
    /// has them; without one, the replica identity's columns are the key.
    pub fn new(relation: Relation, primary_key: &[String]) -> Self {
        let by_name: Vec<usize> = primary_key
            .iter()
            .filter_map(|name| relation.columns.iter().position(|c| &c.name == name))
            .collect();
        let key = if by_name.is_empty() {
            (0..relation.columns.len())
                .filter(|i| relation.columns[*i].key)
                .collect()
        } else {
            by_name
        };
        Self { relation, key }
    }

    pub fn name(&self) -> String {
        format!("{}.{}", self.relation.schema, self.relation.table)
    }
}

/// Debezium's `op`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Create,
    Update,
    Delete,
    Truncate,
}

impl Op {
    pub fn code(self) -> &'static str {
        match self {
            Self::Create => "c",
            Self::Update => "u",
            Self::Delete => "d",
            Self::Truncate => "t",
        }
    }

    /// The pipeline file's name for it (`operations`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Create => "insert",
            Self::Update => "update",
            Self::Delete => "delete",
            Self::Truncate => "truncate",
        }
    }
}

/// One changed row, shaped.
#[derive(Debug, PartialEq)]
pub struct Change {
    pub op: Op,
    pub before: Option<Map<String, Json>>,
    pub after: Option<Map<String, Json>>,
    /// The key's columns, for the event's subject and ordering.
    pub key: Map<String, Json>,
    /// Columns whose values the server did not send (unchanged TOAST).
    pub unavailable: Vec<String>,
}

impl Change {
    pub fn insert(table: &Table, new: &[Value]) -> Self {
        let mut unavailable = Vec::new();
        let after = row(&table.relation.columns, new, &mut unavailable);
        Self {
            op: Op::Create,
            key: key_of(table, &after),
            before: None,
            after: Some(after),
            unavailable,
        }
    }

    /// Without a full old row, `before` holds the key's columns only: the
    /// old key when it changed, else the (same) new one.
    pub fn update(table: &Table, old: Option<&Old>, new: &[Value]) -> Self {
        let mut unavailable = Vec::new();
        let after = row(&table.relation.columns, new, &mut unavailable);
        let before = match old {
            Some(Old::Full(values)) => row(&table.relation.columns, values, &mut Vec::new()),
            Some(Old::Key(values)) => {
                let old = row(&table.relation.columns, values, &mut Vec::new());
                key_of(table, &old)
            }
            None => key_of(table, &after),
        };
        Self {
            op: Op::Update,
            key: key_of(table, &after),
            before: Some(before),
            after: Some(after),
            unavailable,
        }
    }

    pub fn delete(table: &Table, old: &Old) -> Self {
        let before = match old {
            Old::Full(values) => row(&table.relation.columns, values, &mut Vec::new()),
            Old::Key(values) => {
                let old = row(&table.relation.columns, values, &mut Vec::new());
                key_of(table, &old)
            }
        };
        Self {
            op: Op::Delete,
            key: key_of(table, &before),
            before: Some(before),
            after: None,
            unavailable: Vec::new(),
        }
    }

    pub fn truncate() -> Self {
        Self {
            op: Op::Truncate,
            before: None,
            after: None,
            key: Map::new(),
            unavailable: Vec::new(),
        }
    }
}

/// Where a change sits in the log, for `source`.
pub struct Source<'a> {
    /// The runtime config's name for the database (Debezium's topic prefix).
    pub name: &'a str,
    pub db: &'a str,
    pub schema: &'a str,
    pub table: &'a str,
    pub tx_id: u32,
    pub lsn: u64,
    pub commit_lsn: u64,
    pub commit_ms: i64,
}

/// PostgreSQL's text form of a log position: `16/B374D848`.
pub fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn as u32)
}

/// What a change event's attributes say, whichever way it came (from
/// the slot, or from Debezium through a topic): the same names, so one
/// function serves both.
pub struct Attributes<'a> {
    pub database: &'a str,
    pub schema: &'a str,
    pub table: &'a str,
    pub op: &'a str,
    pub lsn: Option<u64>,
    pub tx_id: Option<u64>,
    pub unavailable: &'a [String],
}

impl Attributes<'_> {
    pub fn into_map(self) -> BTreeMap<String, String> {
        let mut attributes = BTreeMap::from([
            ("database".to_owned(), self.database.to_owned()),
            ("schema".to_owned(), self.schema.to_owned()),
            ("table".to_owned(), self.table.to_owned()),
            ("op".to_owned(), self.op.to_owned()),
        ]);
        if let Some(lsn) = self.lsn {
            attributes.insert("lsn".to_owned(), lsn_text(lsn));
        }
        if let Some(tx_id) = self.tx_id {
            attributes.insert("tx_id".to_owned(), tx_id.to_string());
        }
        if !self.unavailable.is_empty() {
            attributes.insert("unavailable_columns".to_owned(), self.unavailable.join(","));
        }
        attributes
    }
}

/// The Debezium change event's payload.
pub fn payload(change: &Change, source: &Source<'_>) -> Json {
    let now_ms = jiff::Timestamp::now().as_millisecond();
    json!({
        "before": change.before,
        "after": change.after,
        "op": change.op.code(),
        "ts_ms": now_ms,
        "source": {
            "version": concat!("runnel-", env!("CARGO_PKG_VERSION")),
            "connector": "postgresql",
            "name": source.name,
            "ts_ms": source.commit_ms,
            "snapshot": "false",
            "db": source.db,
            "sequence": json!([source.commit_lsn.to_string(), source.lsn.to_string()]).to_string(),
            "schema": source.schema,
            "table": source.table,
            "txId": source.tx_id,
            "lsn": source.lsn,
            "xmin": null,
        },
        "transaction": null,
    })
}

fn key_of(table: &Table, row: &Map<String, Json>) -> Map<String, Json> {
    table
        .key
        .iter()
        .map(|i| {
            let name = &table.relation.columns[*i].name;
            (name.clone(), row.get(name).cloned().unwrap_or(Json::Null))
        })
        .collect()
}

fn row(columns: &[Column], values: &[Value], unavailable: &mut Vec<String>) -> Map<String, Json> {
    columns
        .iter()
        .zip(values)
        .map(|(column, value)| {
            let json = match value {
                Value::Null => Json::Null,
                Value::Unchanged => {
                    unavailable.push(column.name.clone());
                    Json::String(UNAVAILABLE.to_owned())
                }
                Value::Text(text) => typed(column.type_oid, text),
            };
            (column.name.clone(), json)
        })
        .collect()
}

/// Booleans and integers and floats as JSON's, as Debezium sends them;
/// `numeric` (exact), JSON documents, times and everything else as
/// PostgreSQL's text (Debezium's `string` handling modes).
fn typed(type_oid: u32, text: &str) -> Json {
    const BOOL: u32 = 16;
    const INT8: u32 = 20;
    const INT2: u32 = 21;
    const INT4: u32 = 23;
    const OID: u32 = 26;
    const FLOAT4: u32 = 700;
    const FLOAT8: u32 = 701;
    let parsed = match type_oid {
        BOOL => Some(Json::Bool(text == "t")),
        INT2 | INT4 | INT8 | OID => text.parse::<i64>().ok().map(Json::from),
        FLOAT4 | FLOAT8 => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Json::Number),
        _ => None,
    };
    parsed.unwrap_or_else(|| Json::String(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn orders() -> Table {
        let column = |name: &str, type_oid, key| Column {
            name: name.into(),
            type_oid,
            key,
        };
        Table::new(
            Relation {
                oid: 1,
                schema: "public".into(),
                table: "orders".into(),
                replica_identity: b'd',
                columns: vec![
                    column("id", 23, true),
                    column("paid", 16, false),
                    column("total", 1700, false),
                    column("notes", 25, false),
                ],
            },
            &["id".to_owned()],
        )
    }

    fn text(s: &str) -> Value {
        Value::Text(s.into())
    }

    #[test]
    fn values_keep_their_types_and_an_unsent_value_is_marked_not_null() {
        let change = Change::update(
            &orders(),
            None,
            &[text("7"), text("t"), text("12.50"), Value::Unchanged],
        );
        let after = change.after.unwrap();
        assert_eq!(after["id"], json!(7));
        assert_eq!(after["paid"], json!(true));
        assert_eq!(after["total"], json!("12.50"));
        assert_eq!(after["notes"], json!(UNAVAILABLE));
        assert_eq!(change.unavailable, vec!["notes"]);
        // Without REPLICA IDENTITY FULL, `before` is the key alone.
        assert_eq!(
            change.before.unwrap(),
            json!({"id": 7}).as_object().unwrap().clone()
        );
        assert_eq!(change.key, json!({"id": 7}).as_object().unwrap().clone());
    }

    #[test]
    fn a_delete_is_keyed_by_its_old_row() {
        let change = Change::delete(
            &orders(),
            &Old::Key(vec![text("9"), Value::Null, Value::Null, Value::Null]),
        );
        assert_eq!(change.op.code(), "d");
        assert_eq!(change.after, None);
        assert_eq!(
            change.before.unwrap(),
            json!({"id": 9}).as_object().unwrap().clone()
        );
        let full = Change::delete(
            &orders(),
            &Old::Full(vec![text("9"), text("f"), text("1"), text("x")]),
        );
        assert_eq!(full.before.unwrap()["notes"], json!("x"));
    }
}
