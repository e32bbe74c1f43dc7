//! `particles.noise_scale`: the presets name the posterior's noise, a config without the key
//! means the paper's (so older runs resume bit for bit), the posterior-only options of Algorithm 2 are refused with the paper's noise,
//! the scale is part of a run, and a posterior run with bias correction (which reads each
//! point's visit count, recomputed on load) and lazy noise resumes exactly, also when |B| does
//! not divide M.

mod common;

use common::{assert_same_checkpoints, plan};
use ipld_particles::NoiseScale;
use ipld_train::{RunConfig, run};

#[test]
fn presets_name_the_posterior_scale_and_an_old_config_means_the_paper() {
    for name in ["gmm", "circles", "mnist5k", "cifar10", "svhn", "celeba64"] {
        let cfg = RunConfig::preset(name).unwrap();
        assert_eq!(cfg.particles.noise_scale, NoiseScale::Posterior, "{name}");
        let text = cfg.to_toml();
        let old: String = text
            .lines()
            .filter(|l| !l.starts_with("noise_scale ="))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_ne!(old, text, "{name}: no `noise_scale =` line written");
        let old = RunConfig::from_toml(&old, "old").unwrap();
        assert_eq!(old.particles.noise_scale, NoiseScale::Paper, "{name}");
    }
}

#[test]
fn bad_values_and_paper_mode_options_are_refused_by_name() {
    let set = |s: &[&str]| {
        common::tiny(10).with_overrides(
            &std::iter::once("particles.noise_scale=paper")
                .chain(s.iter().copied())
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
            "t",
        )
    };
    let e = set(&["particles.noise_scale=tempered"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("tempered") && e.contains("posterior"), "{e}");
    for key in [
        "particles.update.bias_correction=true",
        "particles.update.second_moment_of=point",
    ] {
        let e = set(&[key]).unwrap_err().to_string();
        let name = key.split('=').next().unwrap();
        assert!(e.contains(name) && e.contains("posterior"), "{e}");
        set(&[key, "particles.noise_scale=posterior"]).unwrap();
    }
    let e = set(&["particles.update.second_moment_of=everyone"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("everyone"), "{e}");
}

fn posterior(steps: u64) -> RunConfig {
    common::tiny(steps)
        .with_overrides(
            &[
                "particles.noise_scale=posterior".into(),
                "particles.update.bias_correction=true".into(),
                "particles.lazy_noise=true".into(),
                // 300 points in minibatches of 40: 7 steps per epoch, 20 points left out of each
                // epoch (some never visited in the first).
                "train.batch_size=40".into(),
                "train.checkpoint_every=7".into(),
            ],
            "t",
        )
        .unwrap()
}

#[test]
fn posterior_runs_resume_exactly_and_the_scale_is_fixed_on_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let sa = run(plan(posterior(30), &a, false)).unwrap();
    run(plan(posterior(17), &b, false)).unwrap();
    let sb = run(plan(posterior(30), &b, true)).unwrap();
    assert_same_checkpoints(&a, &b, "posterior, bias-corrected, lazy");
    assert_eq!(sa.final_loss, sb.final_loss);
    // The paper's noise would not continue this run.
    let paper = posterior(40)
        .with_overrides(
            &[
                "particles.noise_scale=paper".into(),
                "particles.update.bias_correction=false".into(),
            ],
            "t",
        )
        .unwrap();
    let e = run(plan(paper, &b, true)).unwrap_err().to_string();
    assert!(
        e.contains("noise_scale") || e.contains("bias_correction"),
        "{e}"
    );
}

#[test]
fn the_posterior_noise_changes_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("paper"), tmp.path().join("posterior"));
    let scale = |s: &str| {
        common::tiny(20)
            .with_overrides(&[format!("particles.noise_scale={s}")], "t")
            .unwrap()
    };
    let sa = run(plan(scale("paper"), &a, false)).unwrap();
    let sb = run(plan(scale("posterior"), &b, false)).unwrap();
    assert_ne!(sa.final_loss, sb.final_loss);
}
