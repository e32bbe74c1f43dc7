//! Issue 23, everything recorded: metrics lines carry their wall-clock time, the training
//! seconds summed across resumes and the rate since the previous line; `summary.json` ends with a
//! newline; `ipld-train eval` prints its keys in the order of the run's summary.

mod common;

use std::path::Path;
use std::process::Command;

use common::{json_lines, plan, tiny};

fn lines(dir: &Path) -> Vec<serde_json::Value> {
    json_lines(&dir.join("metrics.jsonl"))
}

#[test]
fn metrics_lines_carry_times_and_the_total_across_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("r");
    ipld_train::run(plan(tiny(20), &dir, false)).unwrap();
    let first = lines(&dir);
    assert_eq!(first.len(), 4, "log_every = 5");
    for l in &first {
        let t = l["time"].as_str().unwrap();
        assert!(
            t.len() == 24 && t.ends_with('Z') && t.as_bytes()[10] == b'T',
            "{t}"
        );
        assert!(l["steps_per_second"].as_f64().unwrap() > 0.0, "{l}");
        assert_eq!(
            l["train_seconds_total"], l["seconds"],
            "one invocation: {l}"
        );
    }
    let end_of_first = first[3]["train_seconds_total"].as_f64().unwrap();
    let times: Vec<&str> = first.iter().map(|l| l["time"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");

    let more = tiny(30);
    ipld_train::run(plan(more, &dir, true)).unwrap();
    let all = lines(&dir);
    assert_eq!(all.len(), 6);
    for l in &all[4..] {
        let (secs, total) = (
            l["seconds"].as_f64().unwrap(),
            l["train_seconds_total"].as_f64().unwrap(),
        );
        // The total continues from the first invocation's last line; `seconds` restarts.
        assert!(
            (total - (end_of_first + secs)).abs() < 1e-9,
            "{total} != {end_of_first} + {secs}"
        );
    }
    let summary = std::fs::read_to_string(dir.join("summary.json")).unwrap();
    assert!(summary.ends_with("}\n"), "{summary:?}");
}

#[test]
fn eval_prints_its_keys_in_the_order_of_the_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("r");
    ipld_train::run(plan(tiny(10), &dir, false)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ipld-train"))
        .args(["eval", "--run", "r", "--samples", "100", "--quiet"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let keys = |json: &str| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
        v.as_object().unwrap().keys().cloned().collect()
    };
    let eval_keys = keys(text.lines().last().unwrap());
    let summary_keys = keys(&std::fs::read_to_string(dir.join("summary.json")).unwrap());
    let common: Vec<&String> = summary_keys
        .iter()
        .filter(|k| eval_keys.contains(k))
        .collect();
    let in_eval: Vec<&String> = eval_keys
        .iter()
        .filter(|k| summary_keys.contains(k))
        .collect();
    assert!(common.len() >= 10, "{common:?}");
    assert_eq!(common, in_eval, "shared keys in the same order");
}
