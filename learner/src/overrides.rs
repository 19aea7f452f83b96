//! Overrides of a TOML config: environment variables under a binary's
//! prefix and a few flags, applied to the parsed document *before* the
//! binary's strict parser reads it. An override is therefore checked
//! exactly like a key of the file (unknown key, wrong type, impossible
//! value), and [`load`] names the variable or flag an error comes from.
//! Shared by the `learner` and `param-server` binaries (the param-server
//! depends on this crate's pure part only).
//!
//! Variable syntax: `<PREFIX><KEY>__<KEY>…=<value>`. Keys are the config's
//! keys in upper case, nested keys joined by a double underscore; a key
//! of digits indexes an array (of tables): `STATE__DIR` is `state.dir`,
//! `VERSIONS__0__ALPHA0` is `versions[0].alpha0` (index = length appends).
//! The value is read as a TOML integer, float, boolean, array or quoted
//! string when it is one (`5`, `0.5`, `true`, `[0, 1]`, `"007"`), else
//! taken as a plain string (`/var/lib/posterior`, `127.0.0.1:50051`).
//! Keys containing dots (librdkafka `properties`) have no variable.
//!
//! Also here: [`key_at`], the dotted key at a parse error's position, so
//! both binaries name the key of a wrong type rather than a byte offset.

use std::fmt::Display;
use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::{Table, Value};

/// One path step of an override.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Segment {
    /// A table's key.
    Key(String),
    /// An array's index.
    Index(usize),
}

/// A value to set at a dotted key, and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// The variable's name or the flag, as errors name it.
    pub origin: String,
    /// Where the value goes.
    pub path: Vec<Segment>,
    /// The value.
    pub value: Value,
}

/// Why a config with its overrides cannot be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// The file (or what the overrides left of it) is invalid.
    #[error("{0}")]
    Config(String),
    /// A variable or flag is malformed, cannot be placed, or makes the
    /// config invalid.
    #[error("{origin}: {reason}")]
    Override {
        /// The variable's name or the flag.
        origin: String,
        /// What is wrong.
        reason: String,
    },
}

impl Override {
    /// An override of the dotted `key` (no array indices) from `flag`,
    /// e.g. `Override::flag("--state-dir", "state.dir", path.into())`.
    pub fn flag(flag: &str, key: &str, value: Value) -> Self {
        Self {
            origin: flag.to_owned(),
            path: key.split('.').map(|k| Segment::Key(k.to_owned())).collect(),
            value,
        }
    }

    /// The override a variable `name` (which starts with `prefix`) gives.
    pub fn from_var(prefix: &str, name: &str, raw: &str) -> Result<Self, LoadError> {
        let bad = |reason: &str| LoadError::Override {
            origin: name.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = name
            .strip_prefix(prefix)
            .ok_or_else(|| bad("does not start with the prefix"))?;
        let mut path = Vec::new();
        for segment in rest.split("__") {
            if segment.is_empty() {
                return Err(bad(
                    "empty key (nested keys are joined by exactly two underscores)",
                ));
            }
            path.push(match segment.parse::<usize>() {
                Ok(index) if segment.bytes().all(|b| b.is_ascii_digit()) => Segment::Index(index),
                _ => Segment::Key(segment.to_ascii_lowercase()),
            });
        }
        if !matches!(path.first(), Some(Segment::Key(_))) {
            return Err(bad("must start with a key"));
        }
        Ok(Self {
            origin: name.to_owned(),
            path,
            value: scalar(raw),
        })
    }
}

/// The overrides of the process's environment variables under `prefix`,
/// in path order.
pub fn from_env(prefix: &str) -> Result<Vec<Override>, LoadError> {
    from_vars(prefix, std::env::vars_os())
}

/// The overrides of `vars` under `prefix`, in path order (so an array's
/// element is created before its fields are set, and the result does not
/// depend on the environment's order).
pub fn from_vars(
    prefix: &str,
    vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> Result<Vec<Override>, LoadError> {
    let mut overrides = Vec::new();
    for (name, value) in vars {
        if !name.as_encoded_bytes().starts_with(prefix.as_bytes()) {
            continue;
        }
        let name = name.to_string_lossy().into_owned();
        let Some(value) = value.to_str() else {
            return Err(LoadError::Override {
                origin: name,
                reason: "value is not valid UTF-8".into(),
            });
        };
        overrides.push(Override::from_var(prefix, &name, value)?);
    }
    overrides.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(overrides)
}

/// A variable's value: a TOML integer, float, boolean, array or quoted
/// string when it parses as one, else the text itself.
fn scalar(raw: &str) -> Value {
    let parsed = toml::de::ValueDeserializer::parse(raw)
        .ok()
        .and_then(|de| serde::Deserialize::deserialize(de).ok());
    match parsed {
        Some(
            value @ (Value::Integer(_)
            | Value::Float(_)
            | Value::Boolean(_)
            | Value::Array(_)
            | Value::String(_)),
        ) => value,
        _ => Value::String(raw.to_owned()),
    }
}

/// Parses `text` as a TOML document (the error gives line and column).
pub fn parse_document(text: &str) -> Result<Table, LoadError> {
    text.parse::<Table>()
        .map_err(|e| LoadError::Config(format!("not valid TOML: {e}")))
}

/// Applies `overrides` to `file` in order and hands the result to `parse`.
/// When `parse` refuses it and leaving out one override would make that
/// error go away, the error is that override's.
pub fn load<T, E: Display>(
    file: &Table,
    overrides: &[Override],
    parse: impl Fn(Table) -> Result<T, E>,
) -> Result<T, LoadError> {
    let error = match parse(apply_all(file, overrides.iter())?) {
        Ok(config) => return Ok(config),
        Err(error) => error.to_string(),
    };
    for (i, culprit) in overrides.iter().enumerate().rev() {
        let others = overrides
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != i)
            .map(|(_, o)| o);
        // Without it the others may not place (it created their array
        // element): then it is not the one to blame.
        let Ok(table) = apply_all(file, others) else {
            continue;
        };
        if parse(table).map_or_else(|e| e.to_string() != error, |_| true) {
            return Err(LoadError::Override {
                origin: culprit.origin.clone(),
                reason: error,
            });
        }
    }
    Err(LoadError::Config(error))
}

fn apply_all<'a>(
    file: &Table,
    overrides: impl Iterator<Item = &'a Override>,
) -> Result<Table, LoadError> {
    let mut table = file.clone();
    for o in overrides {
        apply(&mut table, o).map_err(|reason| LoadError::Override {
            origin: o.origin.clone(),
            reason,
        })?;
    }
    Ok(table)
}

/// Sets one override's value, creating the tables (and the array element
/// at index = length) on its path.
pub fn apply(table: &mut Table, o: &Override) -> Result<(), String> {
    let (last, parents) = o.path.split_last().ok_or("empty key")?;
    let mut here = String::new();
    let mut slot = Slot::Table(table);
    for (segment, next) in parents.iter().zip(&o.path[1..]) {
        let empty = match next {
            Segment::Key(_) => Value::Table(Table::new()),
            Segment::Index(_) => Value::Array(Vec::new()),
        };
        slot = slot.child(segment, &mut here, empty)?;
    }
    slot.set(last, &mut here, o.value.clone())
}

/// A place on an override's path: a table or an array.
enum Slot<'a> {
    Table(&'a mut Table),
    Array(&'a mut Vec<Value>),
}

impl<'a> Slot<'a> {
    /// The table or array at `segment`, created as `empty` when missing.
    fn child(self, segment: &Segment, here: &mut String, empty: Value) -> Result<Slot<'a>, String> {
        let value = self.entry(segment, here, empty)?;
        match value {
            Value::Table(t) => Ok(Slot::Table(t)),
            Value::Array(a) => Ok(Slot::Array(a)),
            other => Err(format!(
                "{here} is a {}, not a table or an array",
                other.type_str()
            )),
        }
    }

    fn set(self, segment: &Segment, here: &mut String, value: Value) -> Result<(), String> {
        let slot = self.entry(segment, here, value.clone())?;
        *slot = value;
        Ok(())
    }

    /// The value at `segment` (inserting `missing` when absent: a table's
    /// new key, or an array's next element).
    fn entry(
        self,
        segment: &Segment,
        here: &mut String,
        missing: Value,
    ) -> Result<&'a mut Value, String> {
        match (self, segment) {
            (Slot::Table(t), Segment::Key(k)) => {
                if !here.is_empty() {
                    here.push('.');
                }
                here.push_str(k);
                Ok(t.entry(k.clone()).or_insert(missing))
            }
            (Slot::Array(a), Segment::Index(i)) => {
                let len = a.len();
                here.push_str(&format!("[{i}]"));
                if *i == len {
                    a.push(missing);
                }
                a.get_mut(*i).ok_or_else(|| {
                    format!("index out of range: the array has {len} element(s), append at {len}")
                })
            }
            (Slot::Table(_), Segment::Index(i)) => Err(format!(
                "{} is a table: index {i} needs an array",
                display(here)
            )),
            (Slot::Array(_), Segment::Key(k)) => Err(format!(
                "{here} is an array: give an index before `{k}` (e.g. __0__)"
            )),
        }
    }
}

fn display(here: &str) -> &str {
    if here.is_empty() {
        "the document"
    } else {
        here
    }
}

/// The dotted key (`versions[1].dim`) whose key or value covers byte
/// `span.start` of `text`, as a parse error's span points at: the deepest
/// one (a table's span is its header, not its contents, so every entry is
/// searched). `None` when the position is outside every key (the
/// document's own errors, e.g. a missing top-level key).
pub fn key_at(text: &str, span: Range<usize>) -> Option<String> {
    let document = DeTable::parse(text).ok()?;
    find_in_table(document.get_ref(), span.start, "")
}

fn find_in_table(table: &DeTable<'_>, at: usize, prefix: &str) -> Option<String> {
    table.iter().find_map(|(key, value)| {
        let path = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        find_in_value(value.get_ref(), at, &path)
            .or_else(|| (covers(key.span(), at) || covers(value.span(), at)).then_some(path))
    })
}

/// The deepest key inside `value` (a table or an array) covering `at`.
fn find_in_value(value: &DeValue<'_>, at: usize, path: &str) -> Option<String> {
    match value {
        DeValue::Table(table) => find_in_table(table, at, path),
        DeValue::Array(array) => array.iter().enumerate().find_map(|(i, item)| {
            let path = format!("{path}[{i}]");
            find_in_value(item.get_ref(), at, &path)
                .or_else(|| covers(item.span(), at).then_some(path))
        }),
        _ => None,
    }
}

fn covers(span: Range<usize>, at: usize) -> bool {
    span.contains(&at) || (span.is_empty() && span.start == at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        name: String,
        state: State,
        #[serde(default)]
        versions: Vec<Version>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct State {
        dir: String,
        every: u64,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Version {
        name: String,
        #[serde(default)]
        alpha: f64,
    }

    const FILE: &str =
        "name = \"n\"\n[state]\ndir = \"/a\"\nevery = 5\n[[versions]]\nname = \"v0\"\n";

    fn parse(table: Table) -> Result<Doc, String> {
        let text = toml::to_string(&table).map_err(|e| e.to_string())?;
        let doc: Doc = toml::from_str(&text).map_err(|e| {
            let key = e.span().and_then(|s| key_at(&text, s)).unwrap_or_default();
            format!("{key}: {}", e.message())
        })?;
        if doc.state.every == 0 {
            return Err("state.every: must be >= 1".into());
        }
        Ok(doc)
    }

    fn load_with(pairs: &[(&str, &str)]) -> Result<Doc, LoadError> {
        let overrides = from_vars("P__", vars(pairs))?;
        load(&parse_document(FILE).unwrap(), &overrides, parse)
    }

    #[test]
    fn variables_set_nested_keys_and_array_elements() {
        let doc = load_with(&[
            ("P__STATE__DIR", "/var/lib/x"),
            ("P__STATE__EVERY", "7"),
            ("P__VERSIONS__0__ALPHA", "2.5"),
            ("P__VERSIONS__1__NAME", "v1"),
            ("OTHER__STATE__DIR", "/ignored"),
        ])
        .unwrap();
        assert_eq!(doc.name, "n");
        assert_eq!((doc.state.dir.as_str(), doc.state.every), ("/var/lib/x", 7));
        assert_eq!(doc.versions.len(), 2);
        assert_eq!(
            (doc.versions[0].name.as_str(), doc.versions[0].alpha),
            ("v0", 2.5)
        );
        assert_eq!(doc.versions[1].name, "v1");
    }

    #[test]
    fn values_are_toml_scalars_or_else_strings() {
        assert_eq!(scalar("5"), Value::Integer(5));
        assert_eq!(scalar("0.5"), Value::Float(0.5));
        assert_eq!(scalar("true"), Value::Boolean(true));
        assert_eq!(
            scalar("[0, 1]"),
            Value::Array(vec![Value::Integer(0), Value::Integer(1)])
        );
        assert_eq!(scalar("\"007\""), Value::String("007".into()));
        assert_eq!(
            scalar("127.0.0.1:50051"),
            Value::String("127.0.0.1:50051".into())
        );
        assert_eq!(scalar("/var/lib/x"), Value::String("/var/lib/x".into()));
        // A date is a TOML value but no config key takes one: a string.
        assert_eq!(scalar("2026-11-30"), Value::String("2026-11-30".into()));
    }

    #[test]
    fn errors_of_an_override_name_its_variable() {
        let cases = [
            (("P__STATE__DIRR", "/x"), "state.dirr: unknown field `dirr`"),
            (("P__COLOUR", "1"), "colour: unknown field `colour`"),
            (("P__STATE__EVERY", "often"), "state.every: invalid type"),
            (("P__STATE__EVERY", "0"), "state.every: must be >= 1"),
            (("P__NAME__X", "1"), "name is a string, not a table"),
            (("P__VERSIONS__3__NAME", "v"), "index out of range"),
            (("P__VERSIONS__NAME", "v"), "versions is an array"),
            (("P__STATE____DIR", "/x"), "empty key"),
        ];
        for ((var, value), needle) in cases {
            let err = load_with(&[("P__STATE__DIR", "/fine"), (var, value)]).unwrap_err();
            let LoadError::Override { origin, reason } = &err else {
                panic!("{err:?} is not the override's");
            };
            assert_eq!(origin, var);
            assert!(reason.contains(needle), "{err} lacks {needle}");
        }
    }

    #[test]
    fn an_error_of_the_file_is_the_files() {
        let file = parse_document(&FILE.replace("every = 5", "every = 0")).unwrap();
        let overrides = from_vars("P__", vars(&[("P__STATE__DIR", "/x")])).unwrap();
        let err = load(&file, &overrides, parse).unwrap_err();
        assert_eq!(err, LoadError::Config("state.every: must be >= 1".into()));
        // … unless an override fixes it.
        let overrides = from_vars("P__", vars(&[("P__STATE__EVERY", "1")])).unwrap();
        assert_eq!(load(&file, &overrides, parse).unwrap().state.every, 1);
    }

    #[test]
    fn flags_apply_after_variables() {
        let mut overrides = from_vars("P__", vars(&[("P__STATE__DIR", "/env")])).unwrap();
        overrides.push(Override::flag("--state-dir", "state.dir", "/flag".into()));
        let doc = load(&parse_document(FILE).unwrap(), &overrides, parse).unwrap();
        assert_eq!(doc.state.dir, "/flag");
        overrides.push(Override::flag("--every", "state.every", Value::Integer(0)));
        let err = load(&parse_document(FILE).unwrap(), &overrides, parse).unwrap_err();
        assert!(err.to_string().starts_with("--every: state.every"), "{err}");
    }

    #[test]
    fn key_at_names_the_deepest_key_at_an_error() {
        let text =
            "top = 1\n[state]\ndir = 5\n[[versions]]\nname = \"a\"\n[[versions]]\nname = 3\n";
        for (needle, key) in [
            ("top", "top"),
            ("5", "state.dir"),
            ("dir", "state.dir"),
            ("3", "versions[1].name"),
        ] {
            let start = text.find(needle).unwrap();
            assert_eq!(
                key_at(text, start..start + needle.len()).as_deref(),
                Some(key),
                "{needle}"
            );
        }
        assert_eq!(key_at(text, text.len()..text.len()), None);
    }
}
