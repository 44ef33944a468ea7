//! The `pgoutput` logical decoding messages runnel reads (protocol version
//! 1): relations and the row changes that refer to them. Begin, Commit and
//! logical messages are framed by the replication client.
//!
//! Column values stay in PostgreSQL's text format, as `pgoutput` sends
//! them; [`Value::Unchanged`] is a TOASTed value an update did not touch,
//! which the server does not send.

use bytes::{Buf, Bytes};

/// A table as `pgoutput` describes it before its first change in a session.
#[derive(Clone, Debug, PartialEq)]
pub struct Relation {
    pub oid: u32,
    pub schema: String,
    pub table: String,
    /// `d` default (the primary key), `n` nothing, `f` full, `i` an index.
    pub replica_identity: u8,
    pub columns: Vec<Column>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
    /// Part of the replica identity (the key `pgoutput` sends old values of).
    pub key: bool,
}

/// One column's value in a tuple.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    /// An unchanged TOASTed value: the server did not send it.
    Unchanged,
    Text(String),
}

/// One decoded message.
#[derive(Debug, PartialEq)]
pub enum Message {
    Relation(Relation),
    Insert {
        relation: u32,
        new: Vec<Value>,
    },
    /// `old` is the replica identity's columns (`K`) or the whole old row
    /// (`O`, with `REPLICA IDENTITY FULL`); absent when the key did not
    /// change and the identity is not full.
    Update {
        relation: u32,
        old: Option<Old>,
        new: Vec<Value>,
    },
    Delete {
        relation: u32,
        old: Old,
    },
    Truncate {
        relations: Vec<u32>,
    },
    /// Types, origins: nothing runnel needs.
    Other(u8),
}

#[derive(Debug, PartialEq)]
pub enum Old {
    /// Only the replica identity's columns are set; the others are null.
    Key(Vec<Value>),
    Full(Vec<Value>),
}

/// Decodes one message; the error says what was malformed.
pub fn decode(mut data: Bytes) -> Result<Message, String> {
    let tag = take_u8(&mut data)?;
    Ok(match tag {
        b'R' => {
            let oid = take_u32(&mut data)?;
            let schema = take_cstr(&mut data)?;
            let table = take_cstr(&mut data)?;
            let replica_identity = take_u8(&mut data)?;
            let count = take_i16(&mut data)?;
            let mut columns = Vec::with_capacity(count.max(0) as usize);
            for _ in 0..count {
                let flags = take_u8(&mut data)?;
                let name = take_cstr(&mut data)?;
                let type_oid = take_u32(&mut data)?;
                let _type_modifier = take_u32(&mut data)?;
                columns.push(Column {
                    name,
                    type_oid,
                    key: flags & 1 == 1,
                });
            }
            Message::Relation(Relation {
                oid,
                schema: if schema.is_empty() {
                    "pg_catalog".to_owned()
                } else {
                    schema
                },
                table,
                replica_identity,
                columns,
            })
        }
        b'I' => {
            let relation = take_u32(&mut data)?;
            expect(&mut data, b'N')?;
            Message::Insert {
                relation,
                new: take_tuple(&mut data)?,
            }
        }
        b'U' => {
            let relation = take_u32(&mut data)?;
            let old = match take_u8(&mut data)? {
                b'K' => Some(Old::Key(take_tuple(&mut data)?)),
                b'O' => Some(Old::Full(take_tuple(&mut data)?)),
                b'N' => None,
                other => return Err(format!("update: unexpected tuple kind {:?}", other as char)),
            };
            if old.is_some() {
                expect(&mut data, b'N')?;
            }
            Message::Update {
                relation,
                old,
                new: take_tuple(&mut data)?,
            }
        }
        b'D' => {
            let relation = take_u32(&mut data)?;
            let old = match take_u8(&mut data)? {
                b'K' => Old::Key(take_tuple(&mut data)?),
                b'O' => Old::Full(take_tuple(&mut data)?),
                other => return Err(format!("delete: unexpected tuple kind {:?}", other as char)),
            };
            Message::Delete { relation, old }
        }
        b'T' => {
            let count = take_u32(&mut data)?;
            let _options = take_u8(&mut data)?;
            let relations = (0..count)
                .map(|_| take_u32(&mut data))
                .collect::<Result<_, _>>()?;
            Message::Truncate { relations }
        }
        other => Message::Other(other),
    })
}

fn short(what: &str) -> String {
    format!("message ends inside {what}")
}

fn take_u8(data: &mut Bytes) -> Result<u8, String> {
    if data.remaining() < 1 {
        return Err(short("a byte"));
    }
    Ok(data.get_u8())
}

fn take_i16(data: &mut Bytes) -> Result<i16, String> {
    if data.remaining() < 2 {
        return Err(short("a count"));
    }
    Ok(data.get_i16())
}

fn take_u32(data: &mut Bytes) -> Result<u32, String> {
    if data.remaining() < 4 {
        return Err(short("a 32-bit field"));
    }
    Ok(data.get_u32())
}

fn take_cstr(data: &mut Bytes) -> Result<String, String> {
    let end = data
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| short("a name"))?;
    let text = String::from_utf8_lossy(&data[..end]).into_owned();
    data.advance(end + 1);
    Ok(text)
}

fn expect(data: &mut Bytes, tag: u8) -> Result<(), String> {
    match take_u8(data)? {
        found if found == tag => Ok(()),
        found => Err(format!(
            "expected tuple kind {:?}, found {:?}",
            tag as char, found as char
        )),
    }
}

fn take_tuple(data: &mut Bytes) -> Result<Vec<Value>, String> {
    let count = take_i16(data)?;
    let mut values = Vec::with_capacity(count.max(0) as usize);
    for _ in 0..count {
        values.push(match take_u8(data)? {
            b'n' => Value::Null,
            b'u' => Value::Unchanged,
            b't' => {
                let length = take_u32(data)? as usize;
                if data.remaining() < length {
                    return Err(short("a column value"));
                }
                let text = String::from_utf8_lossy(&data[..length]).into_owned();
                data.advance(length);
                Value::Text(text)
            }
            // Binary values are only sent when asked for; runnel does not.
            other => return Err(format!("unexpected column kind {:?}", other as char)),
        });
    }
    Ok(values)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tuple in `pgoutput`'s encoding: `None` null, `Some("\u{0}")` an
    /// unchanged TOASTed value, else text.
    pub(crate) fn tuple(values: &[Option<&str>]) -> Vec<u8> {
        let mut out = (values.len() as i16).to_be_bytes().to_vec();
        for value in values {
            match value {
                None => out.push(b'n'),
                Some("\u{0}") => out.push(b'u'),
                Some(text) => {
                    out.push(b't');
                    out.extend((text.len() as u32).to_be_bytes());
                    out.extend(text.as_bytes());
                }
            }
        }
        out
    }

    pub(crate) fn relation(
        oid: u32,
        schema: &str,
        table: &str,
        columns: &[(&str, u32, bool)],
    ) -> Vec<u8> {
        let mut out = vec![b'R'];
        out.extend(oid.to_be_bytes());
        for name in [schema, table] {
            out.extend(name.as_bytes());
            out.push(0);
        }
        out.push(b'd');
        out.extend((columns.len() as i16).to_be_bytes());
        for (name, type_oid, key) in columns {
            out.push(u8::from(*key));
            out.extend(name.as_bytes());
            out.push(0);
            out.extend(type_oid.to_be_bytes());
            out.extend((-1i32).to_be_bytes());
        }
        out
    }

    #[test]
    fn decodes_a_relation_and_its_changes() {
        let rel = relation(
            16384,
            "public",
            "orders",
            &[("id", 23, true), ("note", 25, false)],
        );
        let Message::Relation(r) = decode(Bytes::from(rel)).unwrap() else {
            panic!("a relation")
        };
        assert_eq!((r.oid, &*r.schema, &*r.table), (16384, "public", "orders"));
        assert!(r.columns[0].key);
        assert!(!r.columns[1].key);
        assert_eq!(r.columns[1].type_oid, 25);

        let mut insert = vec![b'I'];
        insert.extend(16384u32.to_be_bytes());
        insert.push(b'N');
        insert.extend(tuple(&[Some("7"), None]));
        assert_eq!(
            decode(Bytes::from(insert)).unwrap(),
            Message::Insert {
                relation: 16384,
                new: vec![Value::Text("7".into()), Value::Null]
            }
        );

        let mut update = vec![b'U'];
        update.extend(16384u32.to_be_bytes());
        update.push(b'K');
        update.extend(tuple(&[Some("7"), None]));
        update.push(b'N');
        update.extend(tuple(&[Some("8"), Some("\u{0}")]));
        assert_eq!(
            decode(Bytes::from(update)).unwrap(),
            Message::Update {
                relation: 16384,
                old: Some(Old::Key(vec![Value::Text("7".into()), Value::Null])),
                new: vec![Value::Text("8".into()), Value::Unchanged]
            }
        );

        let mut delete = vec![b'D'];
        delete.extend(16384u32.to_be_bytes());
        delete.push(b'O');
        delete.extend(tuple(&[Some("8"), Some("x")]));
        assert!(matches!(
            decode(Bytes::from(delete)).unwrap(),
            Message::Delete { relation: 16384, old: Old::Full(values) } if values.len() == 2
        ));
    }

    #[test]
    fn a_cut_message_is_an_error_not_a_panic() {
        let mut insert = vec![b'I'];
        insert.extend(16384u32.to_be_bytes());
        insert.push(b'N');
        let mut values = tuple(&[Some("a long value")]);
        values.truncate(values.len() - 3);
        insert.extend(values);
        assert_eq!(
            decode(Bytes::from(insert)).unwrap_err(),
            "message ends inside a column value"
        );
        assert!(decode(Bytes::from_static(b"R\0\0")).is_err());
    }
}
