//! `data.normalize` on a user's file: a run on offset (and anisotropically scaled) data with
//! `center` (`standardize`) trains like the run on the already-normalised copy, and its samples
//! are that run's samples mapped back to the data's units; the resolved choice is saved with the
//! run, reported, checked on resume, and refused for image data.

mod common;

use std::path::{Path, PathBuf};

use common::plan;
use ipld_data::{Dataset, InMemoryDataset, SyntheticConfig, SyntheticKind, save_matrix};
use ipld_train::eval::generate;
use ipld_train::rundir::{CONFIG_FILE, METRICS_FILE, open_run};
use ipld_train::{RunConfig, run};

const STEPS: u64 = 20;

/// The tiny config's gmm data, 300 x 8.
fn gmm() -> InMemoryDataset {
    SyntheticConfig {
        kind: SyntheticKind::Gmm,
        points: 300,
        ambient_dim: 8,
        seed: 0,
    }
    .generate()
    .unwrap()
    .observed
}

/// Feature j offset by 100 + 10 j and, when `anisotropic`, scaled by 10^((j - 3.5) / 2)
/// (0.018 to 56): raw measurements in mixed units.
fn raw_units(x: &InMemoryDataset, anisotropic: bool) -> InMemoryDataset {
    let d = x.dim();
    let v = x
        .as_slice()
        .chunks_exact(d)
        .flat_map(|row| {
            row.iter().enumerate().map(move |(j, &v)| {
                let a = if anisotropic {
                    10f64.powf((j as f64 - 3.5) / 2.0)
                } else {
                    1.0
                };
                (a * v as f64 + 100.0 + 10.0 * j as f64) as f32
            })
        })
        .collect();
    InMemoryDataset::new(v, x.len(), d, "raw").unwrap()
}

/// Per-feature mean and population sd, computed here in f64 independently of the library.
fn moments(x: &InMemoryDataset) -> (Vec<f64>, Vec<f64>) {
    let (n, d) = (x.len() as f64, x.dim());
    let rows = || x.as_slice().chunks_exact(d);
    let mean: Vec<f64> = (0..d)
        .map(|j| rows().map(|r| r[j] as f64).sum::<f64>() / n)
        .collect();
    let sd = (0..d)
        .map(|j| (rows().map(|r| (r[j] as f64 - mean[j]).powi(2)).sum::<f64>() / n).sqrt())
        .collect();
    (mean, sd)
}

fn save(dir: &Path, name: &str, x: &InMemoryDataset) -> PathBuf {
    let p = dir.join(name);
    save_matrix(&p, x).unwrap();
    p
}

fn config(file: &Path, extra: &[&str]) -> RunConfig {
    let sets: Vec<String> = std::iter::once(format!("data.path={}", file.display()))
        .chain(extra.iter().map(|s| s.to_string()))
        .collect();
    common::tiny(STEPS).with_overrides(&sets, "test").unwrap()
}

fn losses(dir: &Path) -> Vec<f64> {
    std::fs::read_to_string(dir.join(METRICS_FILE))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

/// Trains on `raw` with `normalize` and on the copy normalised here with `standardize`'s or
/// `center`'s moments under `normalize = "none"`; compares losses and samples.
fn matches_the_normalised_copy(anisotropic: bool, normalize: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let raw = raw_units(&gmm(), anisotropic);
    let (mean, sd) = moments(&raw);
    let standardize = normalize == "standardize";
    let d = raw.dim();
    let copy: Vec<f32> = raw
        .as_slice()
        .chunks_exact(d)
        .flat_map(|r| {
            let (mean, sd) = (&mean, &sd);
            r.iter().enumerate().map(move |(j, &v)| {
                let s = if standardize { sd[j] } else { 1.0 };
                ((v as f64 - mean[j]) / s) as f32
            })
        })
        .collect();
    let copy = InMemoryDataset::new(copy, raw.len(), d, "copy").unwrap();
    let (raw_file, copy_file) = (
        save(tmp.path(), "raw.npy", &raw),
        save(tmp.path(), "copy.npy", &copy),
    );
    let set = format!("data.normalize={normalize}");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let sa = run(plan(config(&raw_file, &[&set]), &a, false)).unwrap();
    let sb = run(plan(
        config(&copy_file, &["data.normalize=none"]),
        &b,
        false,
    ))
    .unwrap();
    assert_eq!(sa.data_normalize, normalize);
    assert_eq!(sb.data_normalize, "none");
    let (la, lb) = (losses(&a), losses(&b));
    assert_eq!(la.len(), lb.len());
    for (i, (x, y)) in la.iter().zip(&lb).enumerate() {
        assert!(
            (x - y).abs() <= 1e-3 * y.abs(),
            "log line {i}: loss {x} vs {y}"
        );
    }
    // Samples: the normalised run's are the copy's run's mapped back to raw units.
    let (ta, tb) = (open_run(&a, &[]).unwrap(), open_run(&b, &[]).unwrap());
    let sampler = &ta.config().eval.sampler;
    let (xa, xb) = (
        generate(&ta, 100, sampler, 3, &mut |_| {}).unwrap(),
        generate(&tb, 100, sampler, 3, &mut |_| {}).unwrap(),
    );
    for (i, (ra, rb)) in xa
        .data
        .chunks_exact(d)
        .zip(xb.data.chunks_exact(d))
        .enumerate()
    {
        for j in 0..d {
            let s = if standardize { sd[j] } else { 1.0 };
            let back = rb[j] as f64 * s + mean[j];
            // Raw values are ~100 + 10 j: f32 rounding alone is ~1e-5 of them.
            let tol = 1e-3 * sd[j] + 2e-5 * mean[j].abs();
            assert!(
                (ra[j] as f64 - back).abs() <= tol,
                "sample {i}, feature {j}: {} vs {back} (tolerance {tol})",
                ra[j]
            );
        }
    }
}

#[test]
fn centered_run_on_offset_data_matches_the_run_on_the_centered_copy() {
    matches_the_normalised_copy(false, "center");
}

#[test]
fn standardized_run_on_anisotropic_data_matches_the_run_on_the_standardized_copy() {
    matches_the_normalised_copy(true, "standardize");
}

#[test]
fn the_default_is_by_source_and_the_run_saves_what_it_resolved() {
    let tmp = tempfile::tempdir().unwrap();
    let file = save(tmp.path(), "x.npy", &raw_units(&gmm(), true));
    let dir = tmp.path().join("u");
    let s = run(plan(config(&file, &[]), &dir, false)).unwrap();
    assert_eq!(s.data_normalize, "standardize");
    let saved = RunConfig::from_file(&dir.join(CONFIG_FILE)).unwrap();
    assert_eq!(
        saved.data.normalize,
        Some(ipld_data::Normalize::Standardize)
    );
    // Synthetic data and images default to none, so the presets' runs are unchanged.
    for preset in ["gmm", "circles", "mnist5k"] {
        let v = RunConfig::preset(preset)
            .unwrap()
            .validated(preset)
            .unwrap();
        assert_eq!(
            v.data.normalize,
            Some(ipld_data::Normalize::None),
            "{preset}"
        );
    }
    let e = RunConfig::preset("mnist5k")
        .unwrap()
        .with_overrides(&["data.normalize=center".into()], "test")
        .unwrap_err()
        .to_string();
    assert!(e.contains("data.normalize") && e.contains("image"), "{e}");
    let e = common::tiny(1)
        .with_overrides(&["data.normalize=zscore".into()], "test")
        .unwrap_err()
        .to_string();
    assert!(e.contains("zscore") || e.contains("normalize"), "{e}");
}

#[test]
fn resume_continues_bit_for_bit_and_refuses_other_units() {
    let tmp = tempfile::tempdir().unwrap();
    let file = save(tmp.path(), "x.npy", &raw_units(&gmm(), true));
    let (whole, split) = (tmp.path().join("whole"), tmp.path().join("split"));
    run(plan(config(&file, &[]), &whole, false)).unwrap();
    let half = config(&file, &[&format!("train.steps={}", STEPS / 2)]);
    run(plan(half, &split, false)).unwrap();
    // Resume from the saved config, which names the resolved `standardize`.
    let saved = RunConfig::from_file(&split.join(CONFIG_FILE))
        .unwrap()
        .with_overrides(&[format!("train.steps={STEPS}")], "test")
        .unwrap();
    run(plan(saved, &split, true)).unwrap();
    common::assert_same_checkpoints(&whole, &split, "resumed standardized run");

    // The saved run in other units: named, with the fix.
    let cfg_path = whole.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&cfg_path).unwrap();
    let changed = text.replace("normalize = \"standardize\"", "normalize = \"center\"");
    assert_ne!(text, changed, "the saved config names the resolved choice");
    std::fs::write(&cfg_path, changed).unwrap();
    let e = open_run(&whole, &[])
        .err()
        .expect("other units refused")
        .to_string();
    assert!(
        e.contains("data.normalize = \"standardize\"") && e.contains("center"),
        "{e}"
    );
    std::fs::write(&cfg_path, text).unwrap();

    // Different data under the same path: the fitted statistics no longer match.
    let other = raw_units(&gmm(), false);
    save_matrix(&file, &other).unwrap();
    let e = open_run(&whole, &[])
        .err()
        .expect("changed data refused")
        .to_string();
    assert!(e.contains("data differ") && e.contains("feature"), "{e}");
}
