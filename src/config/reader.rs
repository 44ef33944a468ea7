//! Reading TOML into typed config while collecting every problem.
//!
//! serde stops at the first error; users fixing a pipeline file want all of
//! them at once, each with its place. So config is parsed into a spanned
//! tree and read field by field through [`Table`]: each accessor checks the
//! type, converts units (durations, sizes) once at this boundary, expands
//! `${ENV}` references, and records a [`Diagnostic`] with file, line, column
//! and the dotted field path when something is wrong. Keys that nobody read
//! are reported as unknown when the table is finished.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::units;

/// One problem in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// Dotted path of the field, e.g. `sinks.thumbnails.bucket`.
    pub path: String,
    pub message: String,
}

impl Diagnostic {
    /// A problem with a file as a whole (it cannot be read, it is missing).
    pub fn whole_file(file: &Path, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            line: 1,
            column: 1,
            path: String::new(),
            message: message.into(),
        }
    }
}

/// Reads a config file's text, or the diagnostic saying why it cannot be.
pub fn read_text(file: &Path) -> Result<String, Vec<Diagnostic>> {
    std::fs::read_to_string(file)
        .map_err(|e| vec![Diagnostic::whole_file(file, format!("cannot read: {e}"))])
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// A config file being read; collects diagnostics.
pub struct Document<'a> {
    file: PathBuf,
    text: &'a str,
    diagnostics: RefCell<Vec<Diagnostic>>,
    /// Looks up `${NAME}` references; the process environment in production.
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl<'a> Document<'a> {
    pub fn new(file: &Path, text: &'a str, env: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Self {
            file: file.to_owned(),
            text,
            diagnostics: RefCell::default(),
            env,
        }
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Parses the text, recording syntax errors; returns the root table
    /// (possibly partial when the syntax was broken).
    pub fn parse(&self) -> Spanned<DeTable<'a>> {
        let (root, errors) = DeTable::parse_recoverable(self.text);
        for error in errors {
            let span = error.span().unwrap_or(0..0);
            self.error(span, "", error.message().trim().to_owned());
        }
        root
    }

    pub fn error(&self, span: Range<usize>, path: &str, message: impl Into<String>) {
        let (line, column) = line_column(self.text, span.start);
        self.diagnostics.borrow_mut().push(Diagnostic {
            file: self.file.clone(),
            line,
            column,
            path: path.to_owned(),
            message: message.into(),
        });
    }

    pub fn into_diagnostics(self) -> Vec<Diagnostic> {
        self.diagnostics.into_inner()
    }

    pub fn has_errors(&self) -> bool {
        !self.diagnostics.borrow().is_empty()
    }

    /// The root table of a parsed document.
    pub fn root<'d>(&'d self, root: &'d Spanned<DeTable<'a>>) -> Table<'d, 'a> {
        Table {
            doc: self,
            path: String::new(),
            span: root.span(),
            entries: root.get_ref(),
            seen: RefCell::default(),
        }
    }
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// A TOML table being read. Call [`Table::finish`] to report unknown keys.
pub struct Table<'d, 'a> {
    doc: &'d Document<'a>,
    path: String,
    span: Range<usize>,
    entries: &'d DeTable<'a>,
    seen: RefCell<BTreeSet<String>>,
}

/// One value, with what is needed to report a problem with it.
pub struct Field<'d, 'a> {
    pub doc: &'d Document<'a>,
    pub path: String,
    pub value: &'d Spanned<DeValue<'a>>,
}

fn type_name(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

impl<'d, 'a> Field<'d, 'a> {
    pub fn span(&self) -> Range<usize> {
        self.value.span()
    }

    pub fn error(&self, message: impl Into<String>) {
        self.doc.error(self.span(), &self.path, message);
    }

    fn expected(&self, what: &str) {
        self.error(format!(
            "expected {what}, found {}",
            type_name(self.value.get_ref())
        ));
    }

    /// The value's text if it is a string, as written; reports nothing
    /// (for deciding what else to read).
    pub fn peek_str(&self) -> Option<&str> {
        match self.value.get_ref() {
            DeValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// A string, with `${NAME}` and `${NAME:-default}` expanded.
    pub fn string(&self) -> Option<String> {
        match self.value.get_ref() {
            DeValue::String(s) => self.interpolate(s),
            _ => {
                self.expected("a string");
                None
            }
        }
    }

    fn interpolate(&self, text: &str) -> Option<String> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let Some(len) = rest[start..].find('}') else {
                self.error("unterminated ${...} reference");
                return None;
            };
            let reference = &rest[start + 2..start + len];
            let (name, default) = match reference.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (reference, None),
            };
            match ((self.doc.env)(name), default) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => {
                    self.error(format!(
                        "environment variable {name} is not set (write ${{{name}:-}} to allow that)"
                    ));
                    return None;
                }
            }
            rest = &rest[start + len + 1..];
        }
        out.push_str(rest);
        Some(out)
    }

    pub fn integer(&self) -> Option<i64> {
        match self.value.get_ref() {
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => Some(n),
                Err(_) => {
                    self.error("integer out of range");
                    None
                }
            },
            _ => {
                self.expected("an integer");
                None
            }
        }
    }

    /// A number: an integer or a float.
    pub fn number(&self) -> Option<f64> {
        match self.value.get_ref() {
            DeValue::Integer(_) => self.integer().map(|n| n as f64),
            DeValue::Float(f) => match f.as_str().replace('_', "").parse::<f64>() {
                Ok(n) => Some(n),
                Err(_) => {
                    self.error("not a number");
                    None
                }
            },
            _ => {
                self.expected("a number");
                None
            }
        }
    }

    /// An integer within `range`.
    pub fn integer_in(&self, range: std::ops::RangeInclusive<i64>) -> Option<i64> {
        let n = self.integer()?;
        if range.contains(&n) {
            Some(n)
        } else {
            self.error(format!(
                "must be between {} and {}, found {n}",
                range.start(),
                range.end()
            ));
            None
        }
    }

    pub fn boolean(&self) -> Option<bool> {
        match self.value.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.expected("a boolean");
                None
            }
        }
    }

    pub fn duration(&self) -> Option<Duration> {
        let text = self.string_for("a duration such as \"10s\" or \"250ms\"")?;
        units::parse_duration(&text).map_err(|e| self.error(e)).ok()
    }

    pub fn size(&self) -> Option<u64> {
        let text = self.string_for("a size such as \"64MiB\"")?;
        units::parse_size(&text).map_err(|e| self.error(e)).ok()
    }

    fn string_for(&self, what: &str) -> Option<String> {
        match self.value.get_ref() {
            DeValue::String(s) => self.interpolate(s),
            _ => {
                self.expected(what);
                None
            }
        }
    }

    pub fn table(&self) -> Option<Table<'d, 'a>> {
        match self.value.get_ref() {
            DeValue::Table(entries) => Some(Table {
                doc: self.doc,
                path: self.path.clone(),
                span: self.span(),
                entries,
                seen: RefCell::default(),
            }),
            _ => {
                self.expected("a table");
                None
            }
        }
    }

    /// A list of strings (a single string is accepted as a list of one).
    pub fn strings(&self) -> Option<Vec<String>> {
        match self.value.get_ref() {
            DeValue::String(s) => Some(vec![self.interpolate(s)?]),
            DeValue::Array(items) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let field = Field {
                        doc: self.doc,
                        path: format!("{}[{i}]", self.path),
                        value: item,
                    };
                    out.push(field.string()?);
                }
                Some(out)
            }
            _ => {
                self.expected("a list of strings");
                None
            }
        }
    }

    /// The value as a string for a function: strings as they are, anything
    /// else as JSON.
    pub fn to_config_string(&self) -> Option<String> {
        match self.value.get_ref() {
            DeValue::String(s) => self.interpolate(s),
            other => Some(to_json(other).to_string()),
        }
    }
}

fn to_json(value: &DeValue<'_>) -> serde_json::Value {
    use serde_json::Value;
    match value {
        DeValue::String(s) => Value::String(s.to_string()),
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
            .map(Value::from)
            .unwrap_or(Value::Null),
        DeValue::Float(f) => f
            .as_str()
            .parse::<f64>()
            .map(Value::from)
            .unwrap_or(Value::Null),
        DeValue::Boolean(b) => Value::Bool(*b),
        DeValue::Datetime(d) => Value::String(d.to_string()),
        DeValue::Array(items) => items.iter().map(|v| to_json(v.get_ref())).collect(),
        DeValue::Table(t) => t
            .iter()
            .map(|(k, v)| (k.get_ref().to_string(), to_json(v.get_ref())))
            .collect::<serde_json::Map<_, _>>()
            .into(),
    }
}

impl<'d, 'a> Table<'d, 'a> {
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn doc(&self) -> &'d Document<'a> {
        self.doc
    }

    fn child_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// Whether the table has `key`, without marking it as known.
    pub fn has(&self, key: &str) -> bool {
        self.entries
            .iter()
            .any(|(k, _)| k.get_ref().as_ref() == key)
    }

    /// The field under `key`, if present; marks it as known.
    pub fn get(&self, key: &str) -> Option<Field<'d, 'a>> {
        self.seen.borrow_mut().insert(key.to_owned());
        self.entries
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == key)
            .map(|(_, value)| Field {
                doc: self.doc,
                path: self.child_path(key),
                value,
            })
    }

    /// Reports a problem with the table as a whole, at the table.
    pub fn error(&self, message: impl Into<String>) {
        self.doc.error(self.span.clone(), &self.path, message);
    }

    /// Reports a missing required field at the table itself.
    pub fn missing(&self, key: &str) {
        self.doc.error(
            self.span.clone(),
            &self.child_path(key),
            "missing required field",
        );
    }

    pub fn required(&self, key: &str) -> Option<Field<'d, 'a>> {
        let field = self.get(key);
        if field.is_none() {
            self.missing(key);
        }
        field
    }

    pub fn string(&self, key: &str) -> Option<String> {
        self.get(key)?.string()
    }

    pub fn required_string(&self, key: &str) -> Option<String> {
        self.required(key)?.string()
    }

    /// A required string that `check` accepts (a bucket or topic name);
    /// `check`'s error is reported at the value.
    pub fn required_name<E: fmt::Display>(
        &self,
        key: &str,
        check: impl Fn(&str) -> Result<(), E>,
    ) -> Option<String> {
        let field = self.required(key)?;
        let name = field.string()?;
        check(&name).map_err(|e| field.error(e.to_string())).ok()?;
        Some(name)
    }

    pub fn duration(&self, key: &str) -> Option<Duration> {
        self.get(key)?.duration()
    }

    pub fn size(&self, key: &str) -> Option<u64> {
        self.get(key)?.size()
    }

    pub fn boolean(&self, key: &str) -> Option<bool> {
        self.get(key)?.boolean()
    }

    pub fn table(&self, key: &str) -> Option<Table<'d, 'a>> {
        self.get(key)?.table()
    }

    /// Every entry, for tables whose keys are names (sinks, function config).
    pub fn entries(&self) -> Vec<(String, Field<'d, 'a>)> {
        self.entries
            .iter()
            .map(|(k, value)| {
                let key: &Cow<'_, str> = k.get_ref();
                self.seen.borrow_mut().insert(key.to_string());
                (
                    key.to_string(),
                    Field {
                        doc: self.doc,
                        path: self.child_path(key),
                        value,
                    },
                )
            })
            .collect()
    }

    /// Reports every key that no accessor asked for.
    pub fn finish(self) {
        let seen = self.seen.borrow();
        for (key, _) in self.entries.iter() {
            let name = key.get_ref();
            if !seen.contains(name.as_ref()) {
                let mut known: Vec<_> = seen.iter().map(String::as_str).collect();
                known.sort_unstable();
                self.doc.error(
                    key.span(),
                    &self.child_path(name),
                    format!("unknown field; expected one of: {}", known.join(", ")),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn reports_every_problem_with_its_place() {
        let text = "a = 1\n[t]\nsize = \"12 parsecs\"\nwait = 5\nextra = true\n";
        let doc = Document::new(Path::new("x.toml"), text, &no_env);
        let root = doc.parse();
        let table = doc.root(&root);
        assert_eq!(table.string("a"), None);
        let t = table.table("t").unwrap();
        assert_eq!(t.size("size"), None);
        assert_eq!(t.duration("wait"), None);
        t.finish();
        table.finish();
        let found: Vec<String> = doc
            .into_diagnostics()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            found,
            vec![
                "x.toml:1:5: a: expected a string, found an integer",
                "x.toml:3:8: t.size: unknown size unit \"parsecs\" in \"12 parsecs\"; use B, KiB, MiB, GiB, KB, MB or GB",
                "x.toml:4:8: t.wait: expected a duration such as \"10s\" or \"250ms\", found an integer",
                "x.toml:5:1: t.extra: unknown field; expected one of: size, wait",
            ]
        );
    }

    #[test]
    fn expands_environment_references() {
        let env = |name: &str| (name == "HOST").then(|| "example.org".to_owned());
        let text = "u = \"http://${HOST}/${PATH:-hook}\"\nv = \"${MISSING}\"\n";
        let doc = Document::new(Path::new("x.toml"), text, &env);
        let root = doc.parse();
        let table = doc.root(&root);
        assert_eq!(
            table.string("u").as_deref(),
            Some("http://example.org/hook")
        );
        assert_eq!(table.string("v"), None);
        assert!(
            doc.into_diagnostics()[0]
                .message
                .contains("MISSING is not set")
        );
    }
}
