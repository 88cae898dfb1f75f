//! Tables for people: columns as wide as their widest cell, a header, one row a thing.

use serde_json::Value;

/// A cell of `v[field]` (a dotted path), as text.
pub fn cell(v: &Value, field: &str) -> String {
    let mut at = v;
    for part in field.split('.') {
        at = &at[part];
    }
    match at {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

/// The rows under a header; `columns` as (header, field).
pub fn render(rows: &[Value], columns: &[(&str, &str)]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| columns.iter().map(|(_, f)| cell(r, f)).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (h, _))| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([h.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |values: Vec<String>| {
        values
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(
        columns.iter().map(|(h, _)| h.to_uppercase()).collect(),
    )];
    out.extend(cells.into_iter().map(line));
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let rows = [
            json!({"id": "dev_1", "status": "connected", "channel": {"engine": "wa"}}),
            json!({"id": "d2", "status": null, "channel": {"engine": "telegram"}}),
        ];
        let text = render(
            &rows,
            &[
                ("id", "id"),
                ("status", "status"),
                ("engine", "channel.engine"),
            ],
        );
        assert_eq!(
            text,
            "ID     STATUS     ENGINE\ndev_1  connected  wa\nd2     -          telegram"
        );
    }
}
