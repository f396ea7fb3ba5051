//! Reads a YAML document field by field while tracking each field's path.
//!
//! Why walk a `serde_yaml::Value` instead of `#[derive(Deserialize)]` (+ `serde_ignored`):
//! - errors must name the field path (`clientConnection.qps`), and serde_yaml's type errors
//!   carry a line/column at best; reading by hand gives the path for free;
//! - unknown fields must become warnings, not errors: every object records which keys were
//!   read, and whatever was not read is reported with its full path, so the known-field set
//!   cannot drift away from the fields actually read;
//! - several errors are reported at once (as kube-proxy's validation does), instead of
//!   stopping at serde's first failure;
//! - the document must be a `Value` anyway to dispatch multi-document files on
//!   `apiVersion`/`kind`, and no extra dependency is needed in this shared crate.

use std::time::Duration;

use serde_yaml::{Mapping, Value};

use super::duration::parse_go_duration;
use super::{FieldError, Origin, Warning};

/// Collects the errors and warnings of one document.
pub(super) struct Ctx {
    pub origin: Origin,
    pub errors: Vec<FieldError>,
    pub warnings: Vec<Warning>,
}

impl Ctx {
    pub fn new(origin: Origin) -> Self {
        Self {
            origin,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    pub fn error(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(FieldError {
            origin: self.origin.clone(),
            field: field.into(),
            reason: reason.into(),
        });
    }

    pub fn warn(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Warning {
            origin: self.origin.clone(),
            field: field.into(),
            message: message.into(),
        });
    }
}

pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// `!!str 5` and friends: the tag adds nothing the reader needs.
fn untag(v: &Value) -> &Value {
    match v {
        Value::Tagged(t) => untag(&t.value),
        other => other,
    }
}

pub(super) fn kind_of(v: &Value) -> &'static str {
    match untag(v) {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// One YAML mapping being read; keys not asked for are reported by [`Obj::finish`].
pub(super) struct Obj<'v> {
    path: String,
    map: &'v Mapping,
    read: Vec<&'static str>,
}

impl<'v> Obj<'v> {
    /// `null` (and absence, handled by the caller) mean "all defaults", as Go's JSON decoding
    /// leaves a struct zero-valued for `null`.
    pub fn new(value: &'v Value, path: String, cx: &mut Ctx) -> Option<Self> {
        match untag(value) {
            Value::Mapping(map) => Some(Self {
                path,
                map,
                read: Vec::new(),
            }),
            Value::Null => None,
            other => {
                cx.error(path, format!("expected a mapping, got {}", kind_of(other)));
                None
            }
        }
    }

    pub fn path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// Marks keys as known without reading them: fields that are valid in the format but
    /// have no effect on Sluice (Windows-only settings, log buffer tuning).
    pub fn known(&mut self, keys: &[&'static str]) {
        self.read.extend_from_slice(keys);
    }

    /// The raw value of `key`; `null` counts as absent.
    pub fn take(&mut self, key: &'static str) -> Option<&'v Value> {
        self.read.push(key);
        match self.map.get(key).map(untag) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    pub fn object(&mut self, key: &'static str, cx: &mut Ctx) -> Option<Obj<'v>> {
        let path = self.path(key);
        self.take(key).and_then(|v| Obj::new(v, path, cx))
    }

    pub fn string(&mut self, key: &'static str, cx: &mut Ctx) -> Option<String> {
        let path = self.path(key);
        self.take(key).and_then(|v| string_value(v, &path, cx))
    }

    pub fn boolean(&mut self, key: &'static str, cx: &mut Ctx) -> Option<bool> {
        let path = self.path(key);
        bool_value(self.take(key)?, &path, cx)
    }

    /// An integer within `min..=max`.
    pub fn integer(&mut self, key: &'static str, min: i64, max: i64, cx: &mut Ctx) -> Option<i64> {
        let path = self.path(key);
        integer_value(self.take(key)?, &path, min, max, cx)
    }

    pub fn float(&mut self, key: &'static str, cx: &mut Ctx) -> Option<f64> {
        let path = self.path(key);
        match self.take(key)? {
            Value::Number(n) => match n.as_f64() {
                Some(f) if f.is_finite() => Some(f),
                _ => {
                    cx.error(path, format!("expected a finite number, got {n}"));
                    None
                }
            },
            other => {
                cx.error(path, format!("expected a number, got {}", kind_of(other)));
                None
            }
        }
    }

    /// A Go duration string. A bare `0` is also taken: it is unambiguous, and operators
    /// write it for "use the default".
    pub fn duration(&mut self, key: &'static str, cx: &mut Ctx) -> Option<Duration> {
        let path = self.path(key);
        duration_value(self.take(key)?, &path, cx)
    }

    pub fn strings(&mut self, key: &'static str, cx: &mut Ctx) -> Option<Vec<String>> {
        let path = self.path(key);
        let items = sequence(self.take(key)?, &path, cx)?;
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            out.push(string_value(item, &format!("{path}[{i}]"), cx)?);
        }
        Some(out)
    }

    /// Entries in file order, for maps whose keys are data rather than field names
    /// (`featureGates`): such a map has no unknown keys, so its caller skips `finish`.
    pub fn entries(&self, cx: &mut Ctx) -> Vec<(String, &'v Value)> {
        let mut out = Vec::with_capacity(self.map.len());
        for (k, v) in self.map {
            match untag(k) {
                Value::String(k) => out.push((k.clone(), v)),
                other => cx.error(
                    self.path.clone(),
                    format!("keys must be strings, got {}", kind_of(other)),
                ),
            }
        }
        out
    }

    /// Reports every key that was not read as a warning with its full path.
    pub fn finish(self, cx: &mut Ctx) {
        for key in self.map.keys() {
            match untag(key) {
                Value::String(k) if self.read.contains(&k.as_str()) => {}
                Value::String(k) => cx.warn(self.path(k), "unknown field, ignored"),
                other => cx.warn(
                    self.path.clone(),
                    format!(
                        "ignored a key that is {} instead of a string",
                        kind_of(other)
                    ),
                ),
            }
        }
    }
}

pub(super) fn string_value(v: &Value, path: &str, cx: &mut Ctx) -> Option<String> {
    match untag(v) {
        Value::String(s) => Some(s.clone()),
        other => {
            cx.error(path, format!("expected a string, got {}", kind_of(other)));
            None
        }
    }
}

pub(super) fn bool_value(v: &Value, path: &str, cx: &mut Ctx) -> Option<bool> {
    match untag(v) {
        Value::Bool(b) => Some(*b),
        // kube-proxy reads YAML 1.1, where these plain words are booleans; serde_yaml
        // follows YAML 1.2 and hands them over as strings, so map them back.
        Value::String(s) => match s.as_str() {
            "y" | "Y" | "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => {
                Some(true)
            }
            "n" | "N" | "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off"
            | "OFF" => Some(false),
            _ => {
                cx.error(path, format!("expected true or false, got {s:?}"));
                None
            }
        },
        other => {
            cx.error(
                path,
                format!("expected true or false, got {}", kind_of(other)),
            );
            None
        }
    }
}

pub(super) fn sequence<'v>(v: &'v Value, path: &str, cx: &mut Ctx) -> Option<&'v [Value]> {
    match untag(v) {
        Value::Sequence(items) => Some(items),
        other => {
            cx.error(path, format!("expected a list, got {}", kind_of(other)));
            None
        }
    }
}

pub(super) fn integer_value(
    v: &Value,
    path: &str,
    min: i64,
    max: i64,
    cx: &mut Ctx,
) -> Option<i64> {
    match untag(v) {
        Value::Number(n) => match n.as_i64() {
            Some(i) if (min..=max).contains(&i) => Some(i),
            Some(i) if i < 0 && min == 0 => {
                cx.error(path, format!("{i} must not be negative"));
                None
            }
            Some(i) => {
                cx.error(path, format!("{i} must be between {min} and {max}"));
                None
            }
            None => {
                cx.error(path, format!("expected a whole number, got {n}"));
                None
            }
        },
        other => {
            cx.error(
                path,
                format!("expected a whole number, got {}", kind_of(other)),
            );
            None
        }
    }
}

pub(super) fn duration_value(v: &Value, path: &str, cx: &mut Ctx) -> Option<Duration> {
    match untag(v) {
        Value::String(s) => match parse_go_duration(s) {
            Ok(d) => Some(d),
            Err(e) => {
                cx.error(path, e.to_string());
                None
            }
        },
        Value::Number(n) if n.as_u64() == Some(0) => Some(Duration::ZERO),
        Value::Number(n) => {
            cx.error(
                path,
                format!(
                    "expected a duration such as \"30s\" or \"1m30s\", got the bare number {n}"
                ),
            );
            None
        }
        other => {
            cx.error(
                path,
                format!(
                    "expected a duration such as \"30s\", got {}",
                    kind_of(other)
                ),
            );
            None
        }
    }
}
