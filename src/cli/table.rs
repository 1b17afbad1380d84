//! What client commands print: a list as a table, one object as `key: value` lines and the
//! tables of its nested lists, for people; the API's JSON as it came, for scripts (`--json`).

use super::client::query;
use super::{ClientArgs, ClientError};
use reqwest::Method;
use serde_json::Value;
use std::fmt::Write;

/// A list for people (a table) or scripts (`--json`): the items of the `data` of `path`,
/// asked with the `filters` that have a value.
pub async fn list(
    args: &ClientArgs,
    path: &str,
    filters: &[(&str, Option<String>)],
    columns: &[(&str, &str)],
) -> Result<(), ClientError> {
    let q = query(filters);
    let path = if q.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{q}")
    };
    let v = args.client()?.call(Method::GET, &path, None).await?;
    if args.json {
        print_json(&v);
        return Ok(());
    }
    print!("{}", table(&array(&v, "data"), columns));
    Ok(())
}

/// A list inside the object [`show`] prints: its title, and its items as a table.
pub struct Nested<'a> {
    pub title: &'a str,
    /// The items, taken from the object.
    pub items: fn(&Value) -> Vec<Value>,
    pub columns: &'a [(&'a str, &'a str)],
}

/// One object for people (its `keys` as `key: value` lines, then each nested list under its
/// title) or scripts (`--json`).
pub async fn show(
    args: &ClientArgs,
    path: &str,
    keys: &[(&str, &str)],
    nested: &[Nested<'_>],
) -> Result<(), ClientError> {
    let v = args.client()?.call(Method::GET, path, None).await?;
    if args.json {
        print_json(&v);
        return Ok(());
    }
    print!("{}", fields(&v, keys));
    for list in nested {
        println!("\n{}", list.title);
        print!("{}", table(&(list.items)(&v), list.columns));
    }
    Ok(())
}

/// The API's JSON, indented, for scripts.
pub fn print_json(v: &Value) {
    println!("{v:#}");
}

/// Columns of a list for people: the header, then one line per item, padded to fit.
pub fn table(items: &[Value], columns: &[(&str, &str)]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|item| columns.iter().map(|(_, p)| cell(item, p)).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (h, _))| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([h.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                let _ = write!(out, "{c:<w$}  ", w = widths[i]);
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(columns.iter().map(|(h, _)| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r));
    }
    if items.is_empty() {
        out.push_str("(none)\n");
    }
    out
}

/// A single object for people: `key: value` lines.
pub fn fields(item: &Value, keys: &[(&str, &str)]) -> String {
    let mut out = String::new();
    let width = keys.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (label, pointer) in keys {
        let value = cell(item, pointer);
        let _ = writeln!(out, "{label:<width$}  {value}");
    }
    out
}

/// The text of the value at `pointer` in `item`: a string as it is, `-` for none or null.
fn cell(item: &Value, pointer: &str) -> String {
    match item.pointer(pointer) {
        None | Some(Value::Null) => "-".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// The items of the array at `key` in `v`; none when there is no array there.
pub fn array(v: &Value, key: &str) -> Vec<Value> {
    v[key].as_array().cloned().unwrap_or_default()
}
