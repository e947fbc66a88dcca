//! Reading a declaration from its tree (a built-in's TOML, or `[catalog.<name>]` of the
//! configuration): every field checked, and a problem named by its field and the reason, so an
//! operator declaring a product fixes it from the message alone.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use super::declaration::{ColumnDecl, Declaration, Filter, Kind, Request, Roles, WindowToken};

/// A field of a declaration that is wrong, and why. `field` is relative to the declaration
/// (`columns[2].type`); the configuration prefixes `catalog.<name>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {reason}")]
pub struct DeclarationError {
    pub field: String,
    pub reason: String,
}

fn wrong(field: impl Into<String>, reason: impl Into<String>) -> DeclarationError {
    DeclarationError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// An object's fields, handed out one by one; what is left at the end is a field nobody asked
/// for, and so a typo.
struct Fields<'a> {
    path: String,
    left: BTreeMap<&'a str, &'a Value>,
}

impl<'a> Fields<'a> {
    fn of(path: String, v: &'a Value) -> Result<Self, DeclarationError> {
        let obj: &Map<String, Value> = v
            .as_object()
            .ok_or_else(|| wrong(path.clone(), "expected a table"))?;
        Ok(Self {
            path,
            left: obj.iter().map(|(k, v)| (k.as_str(), v)).collect(),
        })
    }

    fn at(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn take(&mut self, key: &str) -> Option<&'a Value> {
        self.left.remove(key)
    }

    fn text(&mut self, key: &str) -> Result<Option<String>, DeclarationError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
            Some(_) => Err(wrong(self.at(key), "expected a non-empty string")),
        }
    }

    fn required_text(&mut self, key: &str) -> Result<String, DeclarationError> {
        self.text(key)?
            .ok_or_else(|| wrong(self.at(key), "missing"))
    }

    fn flag(&mut self, key: &str, default: bool) -> Result<bool, DeclarationError> {
        match self.take(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            // The environment sets values as text.
            Some(Value::String(s)) if s == "true" || s == "false" => Ok(s == "true"),
            Some(_) => Err(wrong(self.at(key), "expected true or false")),
        }
    }

    fn number(&self, key: &str, v: &Value) -> Result<f64, DeclarationError> {
        match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
        .filter(|f: &f64| f.is_finite())
        .ok_or_else(|| wrong(self.at(key), "expected a number"))
    }

    fn texts(&mut self, key: &str) -> Result<Vec<String>, DeclarationError> {
        match self.take(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| wrong(format!("{}[{i}]", self.at(key)), "expected a string"))
                })
                .collect(),
            Some(_) => Err(wrong(self.at(key), "expected a list of strings")),
        }
    }

    fn tables(&mut self, key: &str) -> Result<Vec<Fields<'a>>, DeclarationError> {
        match self.take(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, v)| Fields::of(format!("{}[{i}]", self.at(key)), v))
                .collect(),
            Some(_) => Err(wrong(self.at(key), "expected a list of tables")),
        }
    }

    fn table(&mut self, key: &str) -> Result<Option<Fields<'a>>, DeclarationError> {
        self.take(key)
            .map(|v| Fields::of(self.at(key), v))
            .transpose()
    }

    fn finish(self) -> Result<(), DeclarationError> {
        match self.left.keys().next() {
            None => Ok(()),
            Some(k) => Err(wrong(self.at(k), "unknown field")),
        }
    }
}

/// A column's position by its lake name, or an error naming the field that referred to it.
fn column_named(
    columns: &[ColumnDecl],
    name: &str,
    field: &str,
) -> Result<usize, DeclarationError> {
    columns.iter().position(|c| c.lake == name).ok_or_else(|| {
        wrong(
            field,
            format!(
                "no column has the lake name `{name}` (columns: {})",
                columns
                    .iter()
                    .map(|c| c.lake.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })
}

fn is_lake_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('_')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// A column's `at_most_days_after`, before the other column is known: its lake name, the days,
/// and the field that said so.
type After = Option<(String, i64, String)>;

/// A column, less the cross-references (`at_most_days_after`), which need every column.
fn column(mut f: Fields<'_>) -> Result<(ColumnDecl, After), DeclarationError> {
    let vendor = f.required_text("vendor")?;
    let lake = f.required_text("lake")?;
    if !is_lake_name(&lake) {
        return Err(wrong(
            f.at("lake"),
            format!(
                "`{lake}` is not a lake name: lower-case letters, digits and `_`, not starting with `_`"
            ),
        ));
    }
    let kind_text = f.required_text("type")?;
    let kind = Kind::parse(&kind_text).ok_or_else(|| {
        wrong(
            f.at("type"),
            format!("`{kind_text}` is not one of {}", Kind::NAMES),
        )
    })?;
    let required = !f.flag("nullable", false)?;
    let null_values = f.texts("null_values")?;
    let range = match f.take("range") {
        None => None,
        Some(Value::Array(a)) if a.len() == 2 => {
            let (lo, hi) = (f.number("range", &a[0])?, f.number("range", &a[1])?);
            if lo > hi {
                return Err(wrong(f.at("range"), format!("{lo} is above {hi}")));
            }
            Some((lo, hi))
        }
        Some(_) => return Err(wrong(f.at("range"), "expected [low, high]")),
    };
    if range.is_some() && !(kind.is_integer() || kind == Kind::Float64) {
        return Err(wrong(f.at("range"), "only a number column has a range"));
    }
    let finite = f.flag("finite", false)?;
    if finite && kind != Kind::Float64 {
        return Err(wrong(
            f.at("finite"),
            "only a float64 column can be required finite",
        ));
    }
    let dictionary = f.flag("dictionary", true)?;
    let after = match f.table("at_most_days_after")? {
        None => None,
        Some(mut t) => {
            let other = t.required_text("column")?;
            let days = match t.take("days") {
                Some(v) => t.number("days", v)? as i64,
                None => return Err(wrong(t.at("days"), "missing")),
            };
            let field = t.at("column");
            t.finish()?;
            if !kind.has_day() {
                return Err(wrong(
                    f.at("at_most_days_after"),
                    "only a timestamp or date column has a day",
                ));
            }
            Some((other, days, field))
        }
    };
    f.finish()?;
    Ok((
        ColumnDecl {
            vendor,
            lake,
            kind,
            required,
            null_values,
            range,
            finite,
            at_most_days_after: None,
            dictionary,
            stored: true,
        },
        after,
    ))
}

/// A declaration from its tree; `name` is `[catalog.<name>]`'s (or a built-in's).
pub fn parse(name: &str, tree: &Value) -> Result<Declaration, DeclarationError> {
    if !is_lake_name(name) {
        return Err(wrong(
            "",
            format!("`{name}` is not a product name: lower-case letters, digits and `_`"),
        ));
    }
    let mut f = Fields::of(String::new(), tree)?;
    let data_product = f.required_text("data_product")?;
    let mut window_tokens = Vec::new();
    for mut t in f.tables("window_tokens")? {
        let name = t.required_text("name")?;
        let offset_days = match t.take("offset_days") {
            None => 0,
            Some(v) => t.number("offset_days", v)? as i64,
        };
        t.finish()?;
        window_tokens.push(WindowToken { name, offset_days });
    }
    if window_tokens.is_empty() {
        return Err(wrong(
            "window_tokens",
            "a product needs the token (or tokens) that select a day, e.g. [{ name = \"StartEventDate\", offset_days = 0 }]",
        ));
    }
    let mut filters = Vec::new();
    for mut t in f.tables("filters")? {
        let flag = t.required_text("flag")?;
        if !flag
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(wrong(
                t.at("flag"),
                format!("`{flag}` is not a flag name (lower case, `-`)"),
            ));
        }
        let token = t.required_text("token")?;
        let list = t.flag("list", false)?;
        let time = t.flag("time", false)?;
        t.finish()?;
        filters.push(Filter {
            flag,
            token,
            list,
            time,
        });
    }
    let null_values = f.texts("null_values")?;
    let mut columns = Vec::new();
    let mut afters = Vec::new();
    for (i, t) in f.tables("columns")?.into_iter().enumerate() {
        let (c, after) = column(t)?;
        columns.push(c);
        afters.push((i, after));
    }
    if columns.is_empty() {
        return Err(wrong("columns", "a product needs at least one column"));
    }
    let mut seen = BTreeSet::new();
    for (i, c) in columns.iter().enumerate() {
        if !seen.insert(c.lake.clone()) {
            return Err(wrong(
                format!("columns[{i}].lake"),
                format!("`{}` is declared twice", c.lake),
            ));
        }
    }
    for (i, after) in afters {
        if let Some((other, days, field)) = after {
            let o = column_named(&columns, &other, &field)?;
            if !columns[o].kind.has_day() {
                return Err(wrong(
                    field,
                    format!("`{other}` has no day (not a timestamp or date)"),
                ));
            }
            columns[i].at_most_days_after = Some((o, days));
        }
    }
    let identity: Vec<usize> = f
        .texts("identity")?
        .iter()
        .map(|n| column_named(&columns, n, "identity"))
        .collect::<Result<_, _>>()?;
    if identity.is_empty() {
        return Err(wrong(
            "identity",
            "a product needs the columns that identify a row",
        ));
    }
    if let Some(&c) = identity.iter().find(|c| !columns[**c].required) {
        return Err(wrong(
            "identity",
            format!(
                "`{}` is nullable: an identity column must be required",
                columns[c].lake
            ),
        ));
    }
    let window_name = f.required_text("window")?;
    let window = column_named(&columns, &window_name, "window")?;
    if !columns[window].kind.has_day() || !columns[window].required {
        return Err(wrong(
            "window",
            format!("`{window_name}` must be a required timestamp or date column"),
        ));
    }
    let latest = f
        .text("latest")?
        .map(|n| column_named(&columns, &n, "latest"))
        .transpose()?;
    if let Some(l) = latest
        && (!columns[l].required || matches!(columns[l].kind, Kind::Float64 | Kind::Utf8))
    {
        return Err(wrong(
            "latest",
            "the latest column must be a required timestamp, date or integer column",
        ));
    }
    let order = match f.text("order")? {
        Some(n) => column_named(&columns, &n, "order")?,
        None => window,
    };
    if !columns[order].kind.has_day() || !columns[order].required {
        return Err(wrong(
            "order",
            "the order column must be a required timestamp or date column",
        ));
    }
    let mut p = f.table("partition")?.ok_or_else(|| {
        wrong(
            "partition",
            "missing: { name = \"…_date\", column = \"…\" }",
        )
    })?;
    let partition_name = p.required_text("name")?;
    let source = p.required_text("column")?;
    let partition = column_named(&columns, &source, &p.at("column"))?;
    let partition_field = p.at("name");
    p.finish()?;
    if !is_lake_name(&partition_name) {
        return Err(wrong(
            partition_field,
            format!("`{partition_name}` is not a lake name"),
        ));
    }
    if !columns[partition].kind.has_day() || !columns[partition].required {
        return Err(wrong(
            "partition.column",
            "the partition's column must be a required timestamp or date column",
        ));
    }
    if partition_name == columns[partition].lake {
        // A date column partitioned by its own value lives in the path only (Spark refuses a
        // column that is in both).
        if columns[partition].kind != Kind::Date {
            return Err(wrong(
                partition_field,
                "a partition named as its column must be a date column",
            ));
        }
        columns[partition].stored = false;
    } else if columns.iter().any(|c| c.lake == partition_name) {
        return Err(wrong(
            partition_field,
            format!("`{partition_name}` is already a column"),
        ));
    }
    if latest.is_some() && !identity.contains(&partition) {
        // Copies of one identity could then sit in different partitions, which load apart.
        return Err(wrong(
            "latest",
            format!(
                "needs the partition's column `{}` in the identity",
                columns[partition].lake
            ),
        ));
    }
    if partition == order && !columns[order].stored {
        return Err(wrong(
            "order",
            "the order column must be stored, not the partition's path",
        ));
    }
    let quarantine_partition = f
        .text("quarantine_partition")?
        .unwrap_or_else(|| format!("{}_day", columns[window].lake));
    if !is_lake_name(&quarantine_partition) {
        return Err(wrong(
            "quarantine_partition",
            format!("`{quarantine_partition}` is not a lake name"),
        ));
    }
    f.finish()?;
    Ok(Declaration::new(
        name.to_string(),
        Request {
            data_product,
            window_tokens,
            filters,
        },
        null_values,
        columns,
        Roles {
            identity,
            latest,
            window,
            order,
            partition_name,
            partition,
            quarantine_partition,
        },
    ))
}
