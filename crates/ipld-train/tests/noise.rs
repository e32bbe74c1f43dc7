//! The particle noise's generator (`particles.noise`): the presets draw with Philox4x32-7, a
//! config written before the key means Philox4x32-10, and the generator is part of a run.

mod common;

use common::plan;
use ipld_particles::NoiseGenerator;
use ipld_train::{RunConfig, run};

fn tiny(noise: &str) -> RunConfig {
    common::tiny(20)
        .with_overrides(&[format!("particles.noise={noise}")], "t")
        .unwrap()
}

#[test]
fn presets_use_seven_rounds_and_an_old_config_means_ten() {
    for name in ["gmm", "circles", "mnist5k", "cifar10", "svhn", "celeba64"] {
        let cfg = RunConfig::preset(name).unwrap();
        assert_eq!(cfg.particles.noise, NoiseGenerator::Philox4x32_7, "{name}");
        // The same config written without the key (as before it existed) reads back as 10.
        let text = cfg.to_toml();
        let old: String = text
            .lines()
            .filter(|l| !l.starts_with("noise ="))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_ne!(old, text, "{name}: no `noise =` line written");
        let old = RunConfig::from_toml(&old, "old").unwrap();
        assert_eq!(old.particles.noise, NoiseGenerator::Philox4x32_10, "{name}");
    }
    // What the benchmarks time.
    assert_eq!(
        RunConfig::presets_noise().unwrap(),
        NoiseGenerator::Philox4x32_7
    );
    let e = common::tiny(10)
        .with_overrides(&["particles.noise=philox4x32-5".into()], "t")
        .unwrap_err()
        .to_string();
    assert!(e.contains("noise") && e.contains("philox4x32-5"), "{e}");
}

#[test]
fn the_generator_changes_the_bits_not_the_training_and_is_fixed_on_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("ten"), tmp.path().join("seven"));
    let sa = run(plan(tiny("philox4x32-10"), &a, false)).unwrap();
    let sb = run(plan(tiny("philox4x32-7"), &b, false)).unwrap();
    let (la, lb) = (sa.final_loss.unwrap(), sb.final_loss.unwrap());
    assert_ne!(la, lb, "the generator left every bit unchanged");
    assert!((la - lb).abs() < 1e-2 * la.abs(), "final loss {la} vs {lb}");
    // Resuming with the other generator would not continue the saved run.
    let e = run(plan(tiny("philox4x32-10"), &b, true))
        .unwrap_err()
        .to_string();
    assert!(e.contains("particles.noise"), "{e}");
}
