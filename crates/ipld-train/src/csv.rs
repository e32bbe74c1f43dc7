//! CSV copies of a run's `metrics.jsonl`, for spreadsheets, pandas and gnuplot (issue 23):
//! `metrics.csv` holds the training lines (phases `joint` and `prior-refit`), `evals.csv` the
//! evaluations during training (`eval.every`). They are rewritten from the JSONL at every
//! checkpoint, so they always agree with it; nested values become dotted columns
//! (`modes.precision`, `mmd_bandwidths.0.mmd`), a value a line lacks is an empty field.

use std::path::Path;

use ipld_data::write_atomically;
use serde_json::Value;

use crate::error::RunError;
use crate::rundir::METRICS_FILE;

/// The training lines' CSV.
pub const METRICS_CSV: &str = "metrics.csv";
/// The evaluation lines' CSV.
pub const EVALS_CSV: &str = "evals.csv";

/// The parsed lines of the run's `metrics.jsonl` (a partly written last line is skipped); None
/// when the file cannot be read.
pub fn metrics_lines(dir: &Path) -> Option<Vec<Value>> {
    let text = std::fs::read_to_string(dir.join(METRICS_FILE)).ok()?;
    Some(
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect(),
    )
}

/// The lines split into (evaluation lines, training lines).
pub fn by_phase(lines: &[Value]) -> (Vec<&Value>, Vec<&Value>) {
    lines.iter().partition(|v| v["phase"] == "eval")
}

/// Rewrites `metrics.csv` and (when there are evaluation lines) `evals.csv` from the run's
/// `metrics.jsonl`.
pub fn write_csv(dir: &Path) -> Result<(), RunError> {
    match metrics_lines(dir) {
        Some(lines) => write_csv_of(dir, &lines),
        None => Ok(()),
    }
}

/// [`write_csv`] from lines already read.
pub fn write_csv_of(dir: &Path, lines: &[Value]) -> Result<(), RunError> {
    let (evals, train) = by_phase(lines);
    write_atomically(&dir.join(METRICS_CSV), to_csv(&train).as_bytes())?;
    if !evals.is_empty() {
        write_atomically(&dir.join(EVALS_CSV), to_csv(&evals).as_bytes())?;
    }
    Ok(())
}

/// The lines as CSV: a header of every column in first-seen order, then one row per line.
pub fn to_csv(lines: &[&Value]) -> String {
    let rows: Vec<Vec<(String, String)>> = lines
        .iter()
        .map(|v| {
            let mut cells = Vec::new();
            flatten("", v, &mut cells);
            cells
        })
        .collect();
    let mut columns: Vec<String> = Vec::new();
    for row in &rows {
        for (k, _) in row {
            if !columns.contains(k) {
                columns.push(k.clone());
            }
        }
    }
    let mut out = columns
        .iter()
        .map(|c| quote(c))
        .collect::<Vec<_>>()
        .join(",");
    out.push('\n');
    for row in &rows {
        let cells: Vec<String> = columns
            .iter()
            .map(|c| {
                row.iter()
                    .find(|(k, _)| k == c)
                    .map(|(_, v)| quote(v))
                    .unwrap_or_default()
            })
            .collect();
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}

fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    let key = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                flatten(&key(k), v, out);
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                flatten(&key(&i.to_string()), v, out);
            }
        }
        Value::Null => out.push((prefix.to_string(), String::new())),
        Value::String(s) => out.push((prefix.to_string(), s.clone())),
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

/// A CSV field, quoted when it holds a comma, quote or line break (RFC 4180).
fn quote(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_the_union_in_first_seen_order_and_fields_are_quoted() {
        let a = serde_json::json!({"step": 1, "loss": 2.5, "phase": "joint"});
        let b = serde_json::json!({"step": 2, "loss": null, "modes": {"precision": 0.5},
            "note": "a, \"b\"", "bw": [{"mmd": 0.1}]});
        let csv = to_csv(&[&a, &b]);
        assert_eq!(
            csv,
            "step,loss,phase,modes.precision,note,bw.0.mmd\n1,2.5,joint,,,\n\
             2,,,0.5,\"a, \"\"b\"\"\",0.1\n"
        );
    }
}
