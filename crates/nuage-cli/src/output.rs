//! Rendering of API answers: the raw JSON for scripts (`--json`), or a few
//! columns for people. Views name fields by path into the JSON so that what
//! the API returns is shown as-is, without a second model to keep in sync.

use comfy_table::{presets, ContentArrangement, Table};
use serde_json::Value;

use crate::client::Listing;

/// A column or a row of a key/value view: a header and a dotted path.
pub type Field = (&'static str, &'static str);

pub fn json(value: &Value) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(_) => println!("{value}"),
    }
}

/// Follows a dotted path (`subject.name`) into a value.
pub fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, key| v.get(key))
}

pub fn text(value: &Value, path: &str) -> String {
    lookup(value, path).map(cell).unwrap_or_else(|| "-".into())
}

/// One value as a table cell.
pub fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::Bool(true) => "yes".into(),
        Value::Bool(false) => "no".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Array(items) if items.is_empty() => "-".into(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(", "),
        Value::Object(map) if map.is_empty() => "-".into(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("{k}={}", cell(v)))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// A byte count for people, in powers of 1024 (`4.0 MiB`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

fn new_table() -> Table {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled);
    table
}

pub fn table_string(items: &[Value], columns: &[Field]) -> String {
    let mut table = new_table();
    table.set_header(columns.iter().map(|(header, _)| *header));
    for item in items {
        table.add_row(columns.iter().map(|(_, path)| text(item, path)));
    }
    trim_lines(&table.to_string())
}

pub fn record_string(value: &Value, fields: &[Field]) -> String {
    let mut table = new_table();
    for (label, path) in fields {
        table.add_row(vec![label.to_string(), text(value, path)]);
    }
    trim_lines(&table.to_string())
}

/// comfy-table pads every cell, leaving a leading space and trailing blanks.
fn trim_lines(s: &str) -> String {
    s.lines()
        .map(|l| l.strip_prefix(' ').unwrap_or(l).trim_end())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A list: a table (or a note that there is nothing), then a hint on stderr
/// when more pages follow.
pub fn list(json_out: bool, listing: &Listing, columns: &[Field]) {
    if json_out {
        json(&listing.raw);
        return;
    }
    items(&listing.items, columns);
    if let Some(token) = &listing.next_page_token {
        eprintln!("(more results: add --all, or --page-token {token})");
    }
}

/// A plain array of items, such as roles or group members.
pub fn items(items: &[Value], columns: &[Field]) {
    if items.is_empty() {
        eprintln!("(none)");
    } else {
        println!("{}", table_string(items, columns));
    }
}

/// A single resource as a key/value table.
pub fn show(json_out: bool, value: &Value, fields: &[Field]) {
    if json_out {
        json(value);
    } else {
        println!("{}", record_string(value, fields));
    }
}

/// Confirmation of an action without a body (204), for people only.
pub fn done(json_out: bool, message: &str) {
    if json_out {
        json(&serde_json::json!({ "ok": true }));
    } else {
        println!("{message}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cells() {
        assert_eq!(cell(&json!(null)), "-");
        assert_eq!(cell(&json!("")), "-");
        assert_eq!(cell(&json!(true)), "yes");
        assert_eq!(cell(&json!(["a", "b"])), "a, b");
        assert_eq!(
            cell(&json!({"env": "prod", "team": "web"})),
            "env=prod, team=web"
        );
    }

    #[test]
    fn byte_counts_for_people() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(4 << 20), "4.0 MiB");
        assert_eq!(human_bytes(10 << 30), "10.0 GiB");
        assert_eq!(human_bytes(1536 << 20), "1.5 GiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn nested_paths() {
        let v = json!({"subject": {"kind": "user", "name": "alice"}});
        assert_eq!(text(&v, "subject.name"), "alice");
        assert_eq!(text(&v, "subject.missing"), "-");
    }

    #[test]
    fn tables_have_headers_and_rows() {
        let items = vec![
            json!({"name": "web", "id": "prj_1"}),
            json!({"name": "db", "id": "prj_2"}),
        ];
        let out = table_string(&items, &[("NAME", "name"), ("ID", "id")]);
        let lines: Vec<_> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].starts_with("NAME"), "{out}");
        assert!(lines[2].starts_with("db"), "{out}");
        assert!(lines[2].ends_with("prj_2"), "{out}");
    }
}
