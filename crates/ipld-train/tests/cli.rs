//! The `ipld-train` binary end to end: a tiny run on a user's file, the `sample` and `eval`
//! subcommands, and bad input (each must exit 1 with a message naming the file or key, never
//! panic, and leave existing files untouched).

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::last_json;

const TINY: &[&str] = &[
    "--set",
    "data.points=300",
    "--set",
    "data.ambient_dim=8",
    "--set",
    "particles.count=2",
    "--set",
    "train.batch_size=50",
    "--set",
    "train.steps=20",
    "--set",
    "train.log_every=5",
    "--set",
    "train.checkpoint_every=10",
    "--set",
    "model.prior.hidden=32",
    "--set",
    "model.prior.time_embedding=16",
    "--set",
    "eval.samples=200",
    "--set",
    "eval.sampler.type=ddim",
    "--set",
    "eval.sampler.steps=10",
    "--quiet",
];

fn bin(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ipld-train"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

fn failed_with(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected exit 1 (not a panic); stderr: {err}"
    );
    for n in needles {
        assert!(err.contains(n), "expected `{n}` in stderr: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

fn npy(path: &Path, rows: usize, cols: usize, f: impl Fn(usize) -> f32) {
    let data: Vec<f32> = (0..rows * cols).map(f).collect();
    let m = ipld_data::InMemoryDataset::new(data.clone(), rows, cols, "test");
    match m {
        Ok(m) => ipld_data::save_matrix(path, &m).unwrap(),
        Err(_) => {
            // Non-finite data cannot pass through InMemoryDataset: write the .npy by hand.
            let mut header =
                format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
            while (10 + header.len() + 1) % 64 != 0 {
                header.push(' ');
            }
            header.push('\n');
            let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
            bytes.extend((header.len() as u16).to_le_bytes());
            bytes.extend(header.as_bytes());
            bytes.extend(data.iter().flat_map(|v| v.to_le_bytes()));
            std::fs::write(path, bytes).unwrap();
        }
    }
}

#[test]
fn tiny_run_on_user_data_then_sample_and_eval() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("points.npy");
    // A 2-cluster dataset in 6-d.
    npy(
        &data,
        400,
        6,
        |i| if (i / 6) % 2 == 0 { 3.0 } else { -3.0 } + ((i * 7919) % 13) as f32 * 0.05,
    );
    let mut args = TINY.to_vec();
    args.extend(["--set", "data.path=points.npy", "--out", "run1"]);
    let out = bin(&args, tmp.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j = last_json(&out);
    for key in [
        "method",
        "dataset",
        "particles",
        "steps",
        "train_seconds",
        "steps_per_second",
        "sample_seconds",
        "mmd",
        "run_dir",
    ] {
        assert!(j.get(key).is_some(), "missing `{key}` in {j}");
    }
    assert_eq!(
        (
            j["method"].as_str(),
            j["dataset"].as_str(),
            j["steps"].as_u64()
        ),
        (Some("ipld"), Some("points"), Some(20))
    );
    let run = tmp.path().join("run1");
    for f in [
        "config.toml",
        "metrics.jsonl",
        "checkpoint.safetensors",
        "samples.png",
        "summary.json",
    ] {
        assert!(run.join(f).exists(), "{f} missing");
    }

    let out = bin(
        &[
            "sample",
            "--run",
            "run1",
            "--n",
            "50",
            "--out",
            "s.npy",
            "--sampler",
            "ddim",
            "--ddim-steps",
            "5",
            "--quiet",
        ],
        tmp.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = ipld_data::load_matrix(&tmp.path().join("s.npy")).unwrap();
    assert_eq!(
        (ipld_data::Dataset::len(&s), ipld_data::Dataset::dim(&s)),
        (50, 6)
    );
    assert_eq!(last_json(&out)["samples"], 50);

    // Nothing is lost: an existing file is kept unless --force, and no path inside a run
    // directory is written, even with --force (the checkpoint once got overwritten this way).
    let sample_to = |out: &str, force: bool| {
        let mut a = vec![
            "sample", "--run", "run1", "--n", "5", "--out", out, "--quiet",
        ];
        if force {
            a.push("--force");
        }
        bin(&a, tmp.path())
    };
    let kept = std::fs::read(tmp.path().join("s.npy")).unwrap();
    failed_with(&sample_to("s.npy", false), &["s.npy", "exists", "--force"]);
    assert_eq!(std::fs::read(tmp.path().join("s.npy")).unwrap(), kept);
    let ck = std::fs::read(run.join("checkpoint.safetensors")).unwrap();
    for (target, force) in [
        ("run1/checkpoint.safetensors", true),
        ("run1/extra.npy", false),
        ("run1/sub/extra.npy", true),
    ] {
        failed_with(&sample_to(target, force), &[target, "run directory"]);
    }
    assert_eq!(
        std::fs::read(run.join("checkpoint.safetensors")).unwrap(),
        ck
    );
    assert!(!run.join("extra.npy").exists() && !run.join("sub").exists());
    let out = sample_to("s.npy", true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = ipld_data::load_matrix(&tmp.path().join("s.npy")).unwrap();
    assert_eq!(ipld_data::Dataset::len(&s), 5);

    let out = bin(
        &["eval", "--run", "run1", "--samples", "100", "--quiet"],
        tmp.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let eval = last_json(&out);
    assert!(eval["mmd"].as_f64().unwrap().is_finite());
    // The data-vs-data floor beside it; a user's file has no known modes or rings.
    assert!(eval["mmd_data_halves"].as_f64().unwrap().is_finite());
    assert!(eval.get("modes").is_none() && eval.get("rings").is_none());

    // Resume to 30 steps, then refuse to start a new run over the existing directory.
    let out = bin(
        &["--resume", "run1", "--set", "train.steps=30", "--quiet"],
        tmp.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(last_json(&out)["steps"], 30);
    // A resume that would shorten the run, or train nothing on a finished one, is refused and
    // leaves every record as it was.
    let records = |f: &str| std::fs::read(run.join(f)).unwrap();
    let kept: Vec<Vec<u8>> = ["config.toml", "summary.json", "metrics.jsonl"]
        .iter()
        .map(|f| records(f))
        .collect();
    let out = bin(&["--resume", "run1", "--set", "train.steps=10"], tmp.path());
    failed_with(
        &out,
        &["run1", "step 30", "train.steps = 10", "cannot be shortened"],
    );
    failed_with(
        &bin(&["--resume", "run1"], tmp.path()),
        &[
            "already at step 30",
            "nothing to train",
            "ipld-train eval --run run1",
        ],
    );
    for (f, k) in ["config.toml", "summary.json", "metrics.jsonl"]
        .iter()
        .zip(&kept)
    {
        assert_eq!(&records(f), k, "{f} changed");
    }
    // A run interrupted after its last checkpoint but before its summary is evaluated, and
    // the resume says where it starts.
    std::fs::remove_file(run.join("summary.json")).unwrap();
    let out = bin(&["--resume", "run1"], tmp.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("resuming run1 from step 30 of 30"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(last_json(&out)["steps_this_invocation"], 0);
    assert!(run.join("summary.json").exists());

    let before = std::fs::read(run.join("checkpoint.safetensors")).unwrap();
    let out = bin(&args, tmp.path());
    failed_with(&out, &["run1", "--resume"]);
    assert_eq!(
        std::fs::read(run.join("checkpoint.safetensors")).unwrap(),
        before
    );
}

#[test]
fn bad_configs_name_the_file_or_key() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("bad.toml"), "method = \"ipld\"\nseed = [\n").unwrap();
    failed_with(&bin(&["--config", "bad.toml"], tmp.path()), &["bad.toml"]);
    failed_with(
        &bin(&["--config", "missing.toml"], tmp.path()),
        &["missing.toml"],
    );
    failed_with(
        &bin(&["--set", "particles.count=0"], tmp.path()),
        &["particles.count"],
    );
    failed_with(
        &bin(&["--set", "train.stesp=5"], tmp.path()),
        &["train.stesp", "train.steps"],
    );
    failed_with(&bin(&["--set", "method=vae"], tmp.path()), &["vae", "ipld"]);
    failed_with(&bin(&["--preset", "mnist"], tmp.path()), &["mnist", "gmm"]);
    failed_with(
        &bin(&["--set", "data.path=nowhere.npy"], tmp.path()),
        &["nowhere.npy"],
    );
    assert!(
        !tmp.path().join("runs").exists(),
        "failed runs must not create run directories"
    );
}

#[test]
fn bad_data_and_checkpoints_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    npy(&tmp.path().join("nan.npy"), 10, 3, |i| {
        if i == 7 { f32::NAN } else { 1.0 }
    });
    let mut args = TINY.to_vec();
    args.extend(["--set", "data.path=nan.npy"]);
    failed_with(&bin(&args, tmp.path()), &["nan.npy", "row 2"]);
    std::fs::write(tmp.path().join("junk.safetensors"), b"not a tensor file").unwrap();
    let mut args = TINY.to_vec();
    args.extend(["--set", "data.path=junk.safetensors"]);
    failed_with(&bin(&args, tmp.path()), &["junk.safetensors"]);

    // A truncated checkpoint on --resume: clear error, file left as it was.
    let mut args = TINY.to_vec();
    args.extend(["--out", "r"]);
    assert!(bin(&args, tmp.path()).status.success());
    let ck = tmp.path().join("r").join("checkpoint.safetensors");
    let bytes = std::fs::read(&ck).unwrap();
    std::fs::write(&ck, &bytes[..bytes.len() / 2]).unwrap();
    let cut = std::fs::read(&ck).unwrap();
    failed_with(
        &bin(&["--resume", "r", "--set", "train.steps=40"], tmp.path()),
        &["checkpoint.safetensors", "truncated"],
    );
    assert_eq!(std::fs::read(&ck).unwrap(), cut);
    failed_with(
        &bin(&["--resume", "nothing-here"], tmp.path()),
        &["nothing-here"],
    );
    failed_with(
        &bin(&["eval", "--run", "nothing-here"], tmp.path()),
        &["nothing-here"],
    );
}

#[test]
fn print_config_shows_the_resolved_default() {
    let tmp = tempfile::tempdir().unwrap();
    let out = bin(
        &["--print-config", "--set", "particles.count=16"],
        tmp.path(),
    );
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let cfg = ipld_train::RunConfig::from_toml(&text, "stdout").unwrap();
    assert_eq!(
        (
            cfg.particles.count,
            cfg.train.steps,
            cfg.data.name().as_str()
        ),
        (16, 1000, "gmm")
    );
    // Resolved as a run saves it: the synthetic data's normalisation is named.
    assert_eq!(cfg.data.normalize, Some(ipld_data::Normalize::None));
}

#[test]
fn every_method_runs_on_user_data() {
    let tmp = tempfile::tempdir().unwrap();
    npy(&tmp.path().join("u.npy"), 200, 5, |i| {
        ((i * 31) % 17) as f32 * 0.3 - 2.0
    });
    let methods: [&[&str]; 4] = [
        &["--set", "method=ipld"],
        &["--set", "method=diffusion-vae"],
        &[
            "--set",
            "method=pgd",
            "--set",
            "particles.update={ type = \"batch-langevin\" }",
            "--set",
            "particles.step_size.initial=0.01",
            "--set",
            "train.phi_update={ step_size = 0.03, preconditioner = \"rmsprop\" }",
        ],
        &[
            "--set",
            "method=mpgd",
            "--set",
            "particles.update={ type = \"underdamped-langevin\", gamma = 0.9, eta = 500.0, catch_up = true }",
            "--set",
            "particles.step_size.initial=0.0003",
            "--set",
            "train.phi_update={ step_size = 0.03, preconditioner = \"rmsprop\", momentum = { gamma = 1.0, eta = 1.5 } }",
        ],
    ];
    for (i, m) in methods.iter().enumerate() {
        let mut args = TINY.to_vec();
        args.extend(["--set", "data.path=u.npy"]);
        args.extend(m.iter().copied());
        let out_dir = format!("m{i}");
        args.extend(["--out", out_dir.as_str()]);
        let out = bin(&args, tmp.path());
        assert!(
            out.status.success(),
            "{m:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let j = last_json(&out);
        assert_eq!(
            j["method"].as_str(),
            Some(m[1].trim_start_matches("method="))
        );
        assert!(j["mmd"].as_f64().unwrap().is_finite());
    }
}

#[test]
fn fid_errors_name_the_input_and_the_missing_weights() {
    let tmp = tempfile::tempdir().unwrap();
    failed_with(
        &bin(&["fid", "no-such-dir", "other", "--quiet"], tmp.path()),
        &["no-such-dir"],
    );
    // Two image folders but no Inception weights: the hint says how to get them.
    for d in ["a", "b"] {
        let dir = tmp.path().join(d);
        std::fs::create_dir(&dir).unwrap();
        for i in 0..2u8 {
            image::RgbImage::from_pixel(4, 4, image::Rgb([i * 50, 3, 9]))
                .save(dir.join(format!("{i}.png")))
                .unwrap();
        }
    }
    failed_with(
        &bin(
            &[
                "fid",
                "a",
                "b",
                "--inception",
                "missing.safetensors",
                "--quiet",
            ],
            tmp.path(),
        ),
        &["missing.safetensors", "fetch-inception"],
    );
    // A corrupt statistics file is named.
    std::fs::write(tmp.path().join("stats.safetensors"), b"junk").unwrap();
    failed_with(
        &bin(
            &["fid", "stats.safetensors", "stats.safetensors", "--quiet"],
            tmp.path(),
        ),
        &["stats.safetensors"],
    );
    failed_with(
        &bin(&["fid", "a", "b", "--limit", "1", "--quiet"], tmp.path()),
        &["--limit"],
    );
}
