//! Issue 23, nothing silent: settings that are accepted but do not do what they say warn with
//! the key named (log and summary), a loss that explodes warns, conflicting or meaningless flags
//! are errors, a particle cloud larger than the machine's memory is refused before it is
//! allocated, and a run starts by saying what it is. Each case runs the binary.

mod common;

use std::path::Path;

use common::{bin, stderr, tiny};

fn summary_warnings(dir: &Path) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    v["warnings"]
        .as_array()
        .map(|a| a.iter().map(|w| w.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

#[test]
fn settings_that_do_less_than_they_say_warn_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny(10)
        .with_overrides(
            &[
                // 300 points of 8 values.
                "train.batch_size=500".into(),
                "train.shards=400".into(),
                "particles.warm_start_steps=10".into(),
                "data.latent_dim=12".into(),
            ],
            "test",
        )
        .unwrap();
    std::fs::write(tmp.path().join("c.toml"), cfg.to_toml()).unwrap();
    let out = bin(&["--config", "c.toml", "--out", "r"], tmp.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    let expected = [
        "train.batch_size = 500 exceeds the 300 data points",
        "train.shards = 400 exceeds the 300 points of a minibatch",
        "particles.warm_start_steps = 10 is not below train.steps = 10",
        "data.latent_dim = 12 exceeds the data's 8 dimensions",
    ];
    let warnings = summary_warnings(&tmp.path().join("r"));
    assert_eq!(warnings.len(), expected.len(), "{warnings:?}");
    for (e, w) in expected.iter().zip(&warnings) {
        assert!(err.contains(e), "stderr lacks `{e}`: {err}");
        assert!(w.contains(e), "{w}");
    }
    // The start banner says what the run is.
    assert!(
        err.contains("run r: ipld on gmm (300 points x 8 values), N = 2, prior ")
            && err.contains("parameters, particle cloud ")
            && err.contains("threads, steps 0 of 10"),
        "{err}"
    );
    // A tidy config warns about nothing.
    std::fs::write(tmp.path().join("t.toml"), tiny(10).to_toml()).unwrap();
    let out = bin(&["--config", "t.toml", "--out", "t", "--quiet"], tmp.path());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(summary_warnings(&tmp.path().join("t")).is_empty());
    assert!(!stderr(&out).contains("WARN"), "{}", stderr(&out));
}

#[test]
fn an_exploding_loss_warns_in_the_log_and_the_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny(30)
        .with_overrides(&["particles.step_size.initial=1e6".into()], "test")
        .unwrap();
    std::fs::write(tmp.path().join("c.toml"), cfg.to_toml()).unwrap();
    let out = bin(&["--config", "c.toml", "--out", "r", "--quiet"], tmp.path());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the loss exploded"),
        "{}",
        stderr(&out)
    );
    let w = summary_warnings(&tmp.path().join("r"));
    assert!(w.iter().any(|w| w.contains("the loss exploded")), "{w:?}");
}

#[test]
fn conflicting_or_meaningless_flags_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = bin(
        &["--seed", "3", "--set", "seed=4", "--print-config"],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--seed 3 and --set seed=4 both set the seed"),
        "{}",
        stderr(&out)
    );
    std::fs::write(tmp.path().join("c.toml"), tiny(5).to_toml()).unwrap();
    let out = bin(&["--config", "c.toml", "--out", "r", "--quiet"], tmp.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let sample = |extra: &[&str]| {
        let mut a = vec![
            "sample", "--run", "r", "--n", "4", "--out", "s.npy", "--quiet",
        ];
        a.extend(extra);
        bin(&a, tmp.path())
    };
    for extra in [
        &["--ddim-steps", "20"][..],
        &["--eta", "0.5"],
        &["--sampler", "ddpm", "--eta", "1"],
    ] {
        let out = sample(extra);
        assert_eq!(out.status.code(), Some(1), "{extra:?}");
        assert!(
            stderr(&out).contains("add --sampler ddim"),
            "{}",
            stderr(&out)
        );
    }
    let out = sample(&["--sampler", "ddim", "--eta", "5"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("eta") && stderr(&out).contains("must lie in [0, 1], got 5"),
        "{}",
        stderr(&out)
    );
    assert!(!tmp.path().join("s.npy").exists());
    let out = sample(&["--sampler", "ddim", "--ddim-steps", "10", "--eta", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The ODE samplers' and guidance's flags need their sampler or guidance named.
    for (extra, want) in [
        (&["--rho", "5"][..], "add --sampler heun"),
        (
            &["--sampler", "heun", "--t-min", "0.1"],
            "add --sampler restart",
        ),
        (&["--guidance-strength", "1"], "add --guidance particle"),
        (
            &["--guidance", "none", "--guidance-set", "5"],
            "add --guidance particle",
        ),
    ] {
        let out = sample(extra);
        assert_eq!(out.status.code(), Some(1), "{extra:?}");
        assert!(stderr(&out).contains(want), "{extra:?}: {}", stderr(&out));
    }
    let out = sample(&[
        "--sampler",
        "restart",
        "--t-min",
        "0.5",
        "--t-max",
        "0.3",
        "--force",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("restart.t_min"), "{}", stderr(&out));
    for extra in [
        &["--sampler", "heun", "--steps", "6"][..],
        &["--sampler", "dpm-solver++", "--steps", "8"],
        &[
            "--sampler",
            "restart",
            "--steps",
            "6",
            "--restart-repetitions",
            "2",
        ],
        &[
            "--sampler",
            "ddim",
            "--steps",
            "10",
            "--guidance",
            "particle",
            "--guidance-set",
            "2",
        ],
    ] {
        let mut a = extra.to_vec();
        a.push("--force");
        let out = sample(&a);
        assert!(out.status.success(), "{extra:?}: {}", stderr(&out));
    }
}

#[test]
fn a_cloud_larger_than_memory_is_refused_before_allocating() {
    let tmp = tempfile::tempdir().unwrap();
    // 300 points x 10^9 particles x 2 latent values x 3 buffers x 4 bytes: about 6.5 TiB.
    let cfg = tiny(5)
        .with_overrides(&["particles.count=1000000000".into()], "test")
        .unwrap();
    std::fs::write(tmp.path().join("c.toml"), cfg.to_toml()).unwrap();
    let out = bin(&["--config", "c.toml", "--out", "r", "--quiet"], tmp.path());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let e = stderr(&out);
    assert!(
        e.contains("particles.count: the particle cloud needs 6705.")
            && e.contains("GiB available"),
        "{e}"
    );
    assert!(!tmp.path().join("r").exists(), "nothing written");
}
