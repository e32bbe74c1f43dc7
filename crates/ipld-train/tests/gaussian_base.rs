//! The refit's Gaussian base (`train.prior_refit.gaussian_base`): fitted to the whole frozen
//! cloud when the refit begins, the network then starts from the Gaussian's exact eps (its output
//! layer and EMA copy zeroed), the fit is saved and resumes exactly, and it cannot be switched
//! once the refit has begun.

mod common;

use std::path::Path;

use candle_core::{Device, Tensor};
use common::{plan, tensors};
use ipld_diffusion::EpsModel;
use ipld_train::rundir::{CHECKPOINT_FILE, open_run};
use ipld_train::{RunConfig, run};

fn refit(steps: u64, lr: f64, base: bool) -> String {
    format!("train.prior_refit={{steps={steps}, batch_size=100, lr={lr:e}, gaussian_base={base}}}")
}

fn cfg(joint: u64, refit_set: Option<String>) -> RunConfig {
    let mut sets = vec!["train.ema={decay=0.99, start_step=0}".to_string()];
    sets.extend(refit_set);
    common::tiny(joint).with_overrides(&sets, "test").unwrap()
}

/// eps of the run's trained prior, its sampling prior (EMA) and its base alone on fixed inputs.
fn three_eps(dir: &Path) -> [Vec<f32>; 3] {
    let t = open_run(dir, &[]).unwrap();
    let d = t.config().data.latent_dim;
    let z = Tensor::from_vec(
        (0..4 * d)
            .map(|i| (i as f32 * 0.37).sin() * 3.0)
            .collect::<Vec<f32>>(),
        (4, d),
        &Device::Cpu,
    )
    .unwrap();
    let k = Tensor::new(&[1u32, 50, 400, 1000], &Device::Cpu).unwrap();
    let flat = |e: Tensor| e.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let base = t.gaussian_base().expect("a fitted base");
    [
        flat(t.eps_model().unwrap().predict_eps(&z, &k).unwrap()),
        flat(
            t.sampling_prior()
                .unwrap()
                .unwrap()
                .predict_eps(&z, &k)
                .unwrap(),
        ),
        flat(base.predict_eps(&z, &k).unwrap()),
    ]
}

/// The fit is the cloud's sample mean and covariance, and a refit step with a vanishing rate
/// leaves the prior (trained and EMA) equal to the Gaussian's eps: the output layer restarted at
/// zero.
#[test]
fn the_base_is_the_clouds_gaussian_and_the_refit_starts_from_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("r");
    run(plan(cfg(40, None), &dir, false)).unwrap();
    run(plan(cfg(40, Some(refit(1, 1e-30, true))), &dir, true)).unwrap();
    let [trained, ema, base] = three_eps(&dir);
    for (what, got) in [("trained", &trained), ("EMA", &ema)] {
        for (g, b) in got.iter().zip(&base) {
            assert!(
                (g - b).abs() < 1e-6 * (1.0 + b.abs()),
                "{what}: {g} against the base's {b}"
            );
        }
    }
    // The base is N(mean, cov) of the synced cloud in the prior's units, z / latent_scale (the
    // gmm preset's scale is 0.5).
    let t = open_run(&dir, &[]).unwrap();
    let s = t.config().diffusion.latent_scale;
    assert_ne!(s, 1.0, "the test should see the scale applied");
    let cloud = t.synced_cloud().unwrap().unwrap();
    let [m, n, d] = cloud.shape();
    let rows = m * n;
    let z: Vec<f64> = cloud.z().iter().map(|&v| v as f64 / s).collect();
    let mean: Vec<f64> = (0..d)
        .map(|j| (0..rows).map(|r| z[r * d + j]).sum::<f64>() / rows as f64)
        .collect();
    let fit = t.gaussian_base().unwrap().fit();
    for j in 0..d {
        // f32 latents: agreement to f32 rounding of the values, not of their f64 sums.
        assert!(
            (fit.mean[j] - mean[j]).abs() < 1e-6 * (1.0 + mean[j].abs()),
            "mean {j}: {} against {}",
            fit.mean[j],
            mean[j]
        );
        for l in 0..d {
            let cov = (0..rows)
                .map(|r| (z[r * d + j] - mean[j]) * (z[r * d + l] - mean[l]))
                .sum::<f64>()
                / (rows - 1) as f64;
            let rebuilt: f64 = (0..d)
                .map(|i| {
                    fit.eigenvectors[j * d + i] * fit.eigenvalues[i] * fit.eigenvectors[l * d + i]
                })
                .sum();
            assert!(
                (rebuilt - cov).abs() < 1e-6 * (1.0 + cov.abs()),
                "cov ({j}, {l}): {rebuilt} against {cov}"
            );
        }
    }
    let saved = tensors(&dir.join(CHECKPOINT_FILE));
    for key in ["mean", "eigenvalues", "eigenvectors"] {
        assert!(saved.contains_key(&format!("prior_base/{key}")), "{key}");
    }
}

/// A refit with the base moves away from the Gaussian (the network learns a residual), resumes
/// bit for bit when split, and refuses to drop or add the base once it has begun.
#[test]
fn a_based_refit_resumes_exactly_and_cannot_switch() {
    let tmp = tempfile::tempdir().unwrap();
    let (straight, split) = (tmp.path().join("s"), tmp.path().join("p"));
    run(plan(cfg(30, Some(refit(20, 1e-3, true))), &straight, false)).unwrap();
    run(plan(cfg(30, None), &split, false)).unwrap();
    run(plan(cfg(30, Some(refit(7, 1e-3, true))), &split, true)).unwrap();
    run(plan(cfg(30, Some(refit(20, 1e-3, true))), &split, true)).unwrap();
    common::assert_same_checkpoints(&straight, &split, "a based refit split in two");
    let [trained, _, base] = three_eps(&straight);
    assert!(
        trained.iter().zip(&base).any(|(t, b)| (t - b).abs() > 1e-4),
        "after 20 steps the network's residual is not zero"
    );
    for (set, needle) in [
        (
            refit(30, 1e-3, false),
            "gaussian_base must stay true (got false)",
        ),
        (
            "train.prior_refit={steps=30, batch_size=100, lr=1e-3}".to_string(),
            "gaussian_base must stay true",
        ),
    ] {
        let e = run(plan(cfg(30, Some(set)), &split, true))
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{e}");
    }
    // Nor can a refit begun without a base add one.
    let plain = tmp.path().join("n");
    run(plan(cfg(30, Some(refit(5, 1e-3, false))), &plain, false)).unwrap();
    let e = run(plan(cfg(30, Some(refit(10, 1e-3, true))), &plain, true))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("gaussian_base must stay false (got true)"),
        "{e}"
    );
}

/// DiffusionVAE keeps no cloud to fit: refused at validation, naming the key.
#[test]
fn the_base_needs_particles() {
    let mut sets = common::method_sets("diffusion-vae");
    sets.push(refit(5, 1e-3, true));
    let e = common::tiny(10)
        .with_overrides(&sets, "t")
        .unwrap_err()
        .to_string();
    assert!(e.contains("train.prior_refit.gaussian_base"), "{e}");
}
