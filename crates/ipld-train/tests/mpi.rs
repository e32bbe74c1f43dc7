//! Data-parallel ranks over MPI (issue 26): the binary built with `--features mpi` and started by
//! `mpirun -np 2` trains the same state, bit for bit, as one process with the same
//! `train.shards`; each rank's particle file holds its half of the points; a 2-rank run resumes
//! exactly and re-shards to one process and back. Needs `mpirun` (OpenMPI or MPICH; `.ci/run`
//! installs OpenMPI): where it is missing the test says so and checks nothing else.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::tensors;

/// The ipld-train binary with the `mpi` feature, built into its own target directory (the
/// workspace's is locked by the running `cargo test`).
fn mpi_binary() -> PathBuf {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("mpi-build");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "build",
            "-p",
            "ipld-train",
            "--features",
            "mpi",
            "--bin",
            "ipld-train",
        ])
        .arg("--target-dir")
        .arg(&target)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "building ipld-train --features mpi failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    target.join("debug").join("ipld-train")
}

/// The MPI binary, or None (saying why) where `mpirun` is not installed.
fn mpi_binary_or_skip() -> Option<PathBuf> {
    if !mpirun_available() {
        eprintln!(
            "SKIPPED: mpirun is not installed (Debian: apt-get install openmpi-bin \
             libopenmpi-dev libclang-dev clang pkg-config); nothing about MPI was checked"
        );
        return None;
    }
    Some(mpi_binary())
}

fn mpirun_available() -> bool {
    Command::new("mpirun")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `mpirun`, allowed to start ranks as root (CI runs as root; MPICH ignores the variables).
fn mpirun() -> Command {
    let mut c = Command::new("mpirun");
    c.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    c
}

/// Runs `bin args` as one process, or under `mpirun -np ranks`; returns stdout's last line.
fn train(bin: &Path, ranks: usize, args: &[&str]) -> String {
    let mut cmd = match ranks {
        1 => Command::new(bin),
        r => {
            let mut c = mpirun();
            c.args(["-np", &r.to_string(), "--oversubscribe"]).arg(bin);
            c
        }
    };
    let out = cmd.args(args).arg("--quiet").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{ranks} rank(s) {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().last().unwrap_or_default().to_string()
}

/// The config the runs share: a gmm preset run shortened to `steps` steps (the default preset
/// already has `shards = 2` and per-shard draws), with a small evaluation.
fn args<'a>(dir: &'a str, steps: &'a str, resume: bool) -> Vec<&'a str> {
    let mut a = vec![
        if resume { "--resume" } else { "--out" },
        dir,
        "--set",
        steps,
    ];
    if !resume {
        a.extend([
            "--set",
            "eval.samples=500",
            "--set",
            "train.checkpoint_every=50",
        ]);
    }
    a
}

fn summary_value(line: &str, key: &str) -> f64 {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    v[key].as_f64().unwrap_or_else(|| panic!("{key} in {line}"))
}

/// The networks' and optimisers' tensors of a run's main checkpoint (`particles/` aside).
fn network_tensors(dir: &Path) -> HashMap<String, (Vec<usize>, Vec<u8>)> {
    let mut t = tensors(&dir.join(ipld_train::rundir::CHECKPOINT_FILE));
    t.retain(|k, _| !k.starts_with("particles/"));
    t
}

/// The particles (positions and Adam moments) of all points, from the main checkpoint or from
/// the particle files of the step in `step`; with the number of points each file held.
fn particles(dir: &Path, step: u64) -> (HashMap<String, Vec<u8>>, Vec<usize>) {
    let main = tensors(&dir.join(ipld_train::rundir::CHECKPOINT_FILE));
    let files: Vec<PathBuf> = match main.contains_key("particles/z") {
        true => vec![dir.join(ipld_train::rundir::CHECKPOINT_FILE)],
        false => (0..2)
            .map(|r| ipld_train::trainer::particle_shard_file(dir, step, r, 2))
            .collect(),
    };
    let mut all: HashMap<String, Vec<u8>> = HashMap::new();
    let mut rows = Vec::new();
    for f in files {
        let t = tensors(&f);
        rows.push(t["particles/z"].0[0]);
        for name in ["z", "momentum", "second_moment"] {
            let key = format!("particles/{name}");
            all.entry(key.clone()).or_default().extend(&t[&key].1);
        }
    }
    (all, rows)
}

fn metrics_without_clock(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join(ipld_train::rundir::METRICS_FILE))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            for k in ["time", "seconds", "train_seconds_total", "steps_per_second"] {
                v.as_object_mut().unwrap().remove(k);
            }
            v
        })
        .collect()
}

fn assert_same_run(a: &Path, b: &Path, step: u64, what: &str) {
    assert_eq!(
        network_tensors(a),
        network_tensors(b),
        "{what}: network tensors differ"
    );
    assert_eq!(
        particles(a, step).0,
        particles(b, step).0,
        "{what}: particles differ"
    );
    assert_eq!(
        metrics_without_clock(a),
        metrics_without_clock(b),
        "{what}: metrics differ"
    );
}

#[test]
fn two_ranks_train_what_one_process_trains_and_resume_across_rank_counts() {
    let Some(bin) = mpi_binary_or_skip() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let path = |name: &str| tmp.path().join(name);
    let s = |p: &PathBuf| p.display().to_string();
    let (one, two) = (path("one"), path("two"));

    // 100 steps: 2 ranks against one process, both with train.shards = 2.
    let l1 = train(&bin, 1, &args(&s(&one), "train.steps=100", false));
    let l2 = train(&bin, 2, &args(&s(&two), "train.steps=100", false));
    assert_eq!(summary_value(&l1, "mmd"), summary_value(&l2, "mmd"));
    assert_eq!(
        summary_value(&l1, "final_loss"),
        summary_value(&l2, "final_loss")
    );
    assert_same_run(&one, &two, 100, "2 ranks vs 1 process, 100 steps");
    // The gmm preset's 10,000 points: each rank's file holds its half.
    assert_eq!(particles(&one, 100).1, [10_000]);
    assert_eq!(particles(&two, 100).1, [5_000, 5_000]);
    let z_bytes =
        tensors(&ipld_train::trainer::particle_shard_file(&two, 100, 0, 2))["particles/z"]
            .1
            .len();
    assert_eq!(z_bytes * 2, particles(&one, 100).0["particles/z"].len());

    // Resume to 150 steps: 2 ranks from the 2-rank run, 1 process from a copy of it (re-shard
    // 2 -> 1), 2 ranks from the one-process run (1 -> 2), and the one-process run itself.
    let copy = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap().flatten() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    };
    let (two_to_one, one_to_two) = (path("two-to-one"), path("one-to-two"));
    copy(&two, &two_to_one);
    copy(&one, &one_to_two);
    let steps = "train.steps=150";
    let r2 = train(&bin, 2, &args(&s(&two), steps, true));
    let r21 = train(&bin, 1, &args(&s(&two_to_one), steps, true));
    let r12 = train(&bin, 2, &args(&s(&one_to_two), steps, true));
    let r1 = train(&bin, 1, &args(&s(&one), steps, true));
    for (line, what) in [(&r2, "2 ranks"), (&r21, "2 -> 1"), (&r12, "1 -> 2")] {
        assert_eq!(
            summary_value(line, "mmd"),
            summary_value(&r1, "mmd"),
            "{what}"
        );
    }
    assert_same_run(&one, &two, 150, "resumed: 2 ranks vs 1 process");
    assert_same_run(&one, &two_to_one, 150, "re-sharded 2 -> 1");
    assert_same_run(&one, &one_to_two, 150, "re-sharded 1 -> 2");
    // A one-process save removes the particle files it no longer uses.
    let stale = std::fs::read_dir(&two_to_one)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("particles-"))
        .count();
    assert_eq!(stale, 0, "the 2 -> 1 run kept stale particle files");
}

#[test]
fn what_two_ranks_cannot_train_is_refused_by_name() {
    let Some(bin) = mpi_binary_or_skip() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    for (set, key) in [
        ("train.shards=3", "train.shards"),
        ("train.minibatches=whole-data", "train.minibatches"),
    ] {
        let dir = tmp.path().join(key);
        let out = mpirun()
            .args(["-np", "2", "--oversubscribe"])
            .arg(&bin)
            .args(["--out", &dir.display().to_string(), "--quiet", "--set", set])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{set} was accepted");
        assert!(err.contains(key) && err.contains("2 ranks"), "{set}: {err}");
        assert!(!dir.join(ipld_train::rundir::CHECKPOINT_FILE).exists());
    }
    // Ranks started with different seeds (MPMD launch): every rank stops, nothing is written.
    let dir = tmp.path().join("seeds").display().to_string();
    let mut cmd = mpirun();
    cmd.arg("--oversubscribe");
    for seed in ["1", "2"] {
        if seed == "2" {
            cmd.arg(":");
        }
        cmd.args(["-np", "1"])
            .arg(&bin)
            .args(["--out", &dir, "--quiet", "--seed", seed]);
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "different seeds were accepted");
    assert!(err.contains("differ from rank 0's"), "{err}");
    assert!(!Path::new(&dir).exists());
}

#[test]
fn diffusion_vae_lazy_noise_a_warm_start_the_refit_and_stf_match_one_process_too() {
    let Some(bin) = mpi_binary_or_skip() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let refit = "train.prior_refit={ steps = 20, batch_size = 64, lr = 1e-3 }";
    let cases: [(&[&str], u64); 6] = [
        (&["method=diffusion-vae"], 60),
        (&["particles.lazy_noise=true"], 60),
        (&["particles.warm_start_steps=20"], 60),
        // 60 joint steps, then 20 prior-refit steps (per-shard refit batches).
        (&[refit], 80),
        (&["method=diffusion-vae", refit], 80),
        // The STF reference batch gathers other points' particles from the ranks that hold
        // them (lazy noise: the owners sync them first, as one process does).
        (
            &["diffusion.loss=stf", "particles.lazy_noise=true", refit],
            80,
        ),
    ];
    for (i, (sets, last)) in cases.into_iter().enumerate() {
        let (one, two) = (
            tmp.path().join(format!("{i}-1")),
            tmp.path().join(format!("{i}-2")),
        );
        let run = |dir: &Path, ranks: usize| {
            let d = dir.display().to_string();
            let mut a = args(&d, "train.steps=60", false);
            sets.iter().for_each(|s| a.extend(["--set", s]));
            train(&bin, ranks, &a)
        };
        let (l1, l2) = (run(&one, 1), run(&two, 2));
        let what = format!("{sets:?}");
        assert_eq!(summary_value(&l1, "steps"), last as f64, "{what}");
        assert_eq!(
            summary_value(&l1, "mmd"),
            summary_value(&l2, "mmd"),
            "{what}"
        );
        assert_eq!(network_tensors(&one), network_tensors(&two), "{what}");
        assert_eq!(
            metrics_without_clock(&one),
            metrics_without_clock(&two),
            "{what}"
        );
        if !sets.contains(&"method=diffusion-vae") {
            assert_eq!(particles(&one, last).0, particles(&two, last).0, "{what}");
        }
    }
}

#[test]
fn a_two_rank_run_keeps_its_history_and_rolls_back_exactly() {
    let Some(bin) = mpi_binary_or_skip() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (kept, reference) = (tmp.path().join("kept"), tmp.path().join("reference"));
    let keep = ["--set", "train.keep_checkpoints=2"];
    for (dir, ranks) in [(&kept, 2), (&reference, 1)] {
        let d = dir.display().to_string();
        let mut a = args(&d, "train.steps=100", false);
        a.extend(keep);
        train(&bin, ranks, &a);
    }
    // Checkpoints at steps 50 and 100, each with its two particle files.
    let history = kept.join(ipld_train::history::HISTORY_DIR);
    for step in [50, 100] {
        for r in 0..2 {
            let f = ipld_train::trainer::particle_shard_file(&history, step, r, 2);
            assert!(f.exists(), "{} is missing", f.display());
        }
    }
    // Roll back to step 50 and train to 100 again, on 2 ranks: the run it was.
    let d = kept.display().to_string();
    let mut a = args(&d, "train.steps=100", true);
    a.extend(["--from-step", "50"]);
    train(&bin, 2, &a);
    assert_same_run(&reference, &kept, 100, "rolled back to 50 on 2 ranks");
}

#[test]
fn an_image_run_draws_the_same_pictures_on_two_ranks() {
    let Some(bin) = mpi_binary_or_skip() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("digits.csv");
    common::write_image_csv(&csv);
    // The particle pictures (clouds/ at epochs 0 and 2, interpolation.png) gather their points
    // from the rank that holds them.
    let sets = [
        "train.shards=2",
        "train.minibatches=per-shard",
        "eval.cloud_epochs=[0, 2]",
    ];
    let cfg = common::image_config(&csv, 24, &sets);
    let toml = tmp.path().join("config.toml");
    std::fs::write(&toml, cfg.to_toml()).unwrap();
    // The same directory name on both sides: picture titles name it.
    let (one, two) = (tmp.path().join("a/run"), tmp.path().join("b/run"));
    for (dir, ranks) in [(&one, 1), (&two, 2)] {
        let (c, d) = (toml.display().to_string(), dir.display().to_string());
        train(&bin, ranks, &["--config", &c, "--out", &d]);
    }
    assert_same_run(&one, &two, 24, "image run");
    let pictures = [
        "samples.png",
        "interpolation.png",
        "clouds/epoch-0000.png",
        "clouds/epoch-0002.png",
    ];
    for p in pictures {
        let read = |d: &Path| std::fs::read(d.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert!(read(&one) == read(&two), "{p} differs");
    }
}
