//! Issue 22: `ipld-train eval --latents particles` decodes the first particle of evenly spaced
//! training points (their reconstructions, the ceiling a perfect prior could reach), and `eval`
//! takes another sampler than the run's; `--latents gaussian` decodes draws of the cloud's Gaussian.

mod common;

use candle_core::Tensor;
use common::{bin, last_json, method_sets, plan, stderr, tiny};
use ipld_data::Dataset;
use ipld_models::Decoder;

/// The decoder's output for latents `z`, in the data's units.
fn decoded(trainer: &ipld_train::Trainer, z: &Tensor) -> Vec<f32> {
    let mut x: Vec<f32> = trainer
        .decoder()
        .decode(z)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    trainer.normalizer().invert(&mut x);
    x
}

/// `eval --latents L --samples 100` on run `run` under `cwd` succeeds and reports what it
/// decoded, the count and a finite MMD².
fn eval_reports(cwd: &std::path::Path, run: &str, latents: &str) {
    let out = bin(
        &[
            "eval",
            "--run",
            run,
            "--latents",
            latents,
            "--samples",
            "100",
            "--quiet",
        ],
        cwd,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let v = last_json(&out);
    assert_eq!(v["latents"], latents);
    assert_eq!(v["samples"], 100);
    assert!(v["mmd"].as_f64().unwrap().is_finite());
}

#[test]
fn particle_reconstructions_are_the_decoded_first_particles() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("r");
    ipld_train::run(plan(tiny(20), &dir, false)).unwrap();
    let trainer = ipld_train::rundir::open_run(&dir, &[]).unwrap();
    let s = ipld_train::eval::decode_particles(&trainer, 7).unwrap();
    let (m, dz, dx) = (300, trainer.config().data.latent_dim, 8);
    let cloud = trainer.synced_cloud().unwrap().unwrap();
    let n = cloud.particles();
    assert_eq!(n, 2);
    let mut all = Vec::new();
    cloud
        .gather_into(&(0..m).collect::<Vec<_>>(), &mut all)
        .unwrap();
    // Points 0, 42, 85, ... (i * 300 / 7), particle 0 of each.
    for i in 0..7 {
        let p = i * m / 7;
        assert_eq!(
            &s.latent[i * dz..(i + 1) * dz],
            &all[p * n * dz..p * n * dz + dz],
            "point {p}"
        );
    }
    let z = Tensor::from_vec(s.latent.clone(), (7, dz), trainer.device()).unwrap();
    assert_eq!(s.data, decoded(&trainer, &z));
    assert_eq!(trainer.data().dim(), dx);
    // More points than the data: every point once.
    let s = ipld_train::eval::decode_particles(&trainer, 10_000).unwrap();
    assert_eq!(s.data.len(), m * dx);

    // The command reports which latents it decoded.
    eval_reports(tmp.path(), "r", "particles");

    // Another sampler than the run's (DDIM-20 in `tiny`), reported with the result.
    let out = bin(
        &[
            "eval",
            "--run",
            "r",
            "--samples",
            "50",
            "--sampler",
            "ddim",
            "--ddim-steps",
            "10",
            "--eta",
            "1",
            "--quiet",
        ],
        tmp.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let v = last_json(&out);
    assert_eq!(v["latents"], "prior");
    assert_eq!(v["sampler"]["steps"], 10);
    assert_eq!(v["sampler"]["eta"], 1.0);
    let out = bin(
        &["eval", "--run", "r", "--eta", "0.5", "--quiet"],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--sampler ddim"), "{}", stderr(&out));

    // DiffusionVAE keeps no particles: refused, naming the method.
    let vae = tmp.path().join("vae");
    let cfg = tiny(10)
        .with_overrides(&method_sets("diffusion-vae"), "test")
        .unwrap();
    ipld_train::run(plan(cfg, &vae, false)).unwrap();
    let out = bin(
        &["eval", "--run", "vae", "--latents", "particles", "--quiet"],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("keeps no particles"),
        "{}",
        stderr(&out)
    );
}

/// `--latents gaussian` decodes draws of N(mu, Sigma) fitted to every particle: their mean and
/// covariance match the cloud's within 4 standard errors, the decoded data are the decoder's
/// output, the draws are a function of the seed, and the command says which latents it decoded.
#[test]
fn gaussian_latents_have_the_clouds_moments() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("g");
    ipld_train::run(plan(tiny(20), &dir, false)).unwrap();
    let trainer = ipld_train::rundir::open_run(&dir, &[]).unwrap();
    let dz = trainer.config().data.latent_dim;
    let cloud = trainer.synced_cloud().unwrap().unwrap();
    let rows = cloud.z().len() / dz;
    let moments = |z: &[f32], n: usize| -> (Vec<f64>, Vec<f64>) {
        let mean: Vec<f64> = (0..dz)
            .map(|j| (0..n).map(|r| z[r * dz + j] as f64).sum::<f64>() / n as f64)
            .collect();
        let cov = (0..dz * dz)
            .map(|jl| {
                let (j, l) = (jl / dz, jl % dz);
                (0..n)
                    .map(|r| (z[r * dz + j] as f64 - mean[j]) * (z[r * dz + l] as f64 - mean[l]))
                    .sum::<f64>()
                    / (n - 1) as f64
            })
            .collect();
        (mean, cov)
    };
    let (mu, sigma) = moments(cloud.z(), rows);
    let n = 20_000;
    let s = ipld_train::eval::decode_gaussian(&trainer, n, 3).unwrap();
    let (m, c) = moments(&s.latent, n);
    for j in 0..dz {
        let se = (sigma[j * dz + j] / n as f64).sqrt();
        assert!(
            (m[j] - mu[j]).abs() < 4.0 * se,
            "mean {j}: {} against {}",
            m[j],
            mu[j]
        );
        for l in 0..dz {
            let (jj, ll, jl) = (sigma[j * dz + j], sigma[l * dz + l], sigma[j * dz + l]);
            let se = ((jj * ll + jl * jl) / n as f64).sqrt();
            assert!(
                (c[j * dz + l] - jl).abs() < 4.0 * se,
                "cov ({j}, {l}): {} against {jl}",
                c[j * dz + l]
            );
        }
    }
    let z = Tensor::from_vec(s.latent.clone(), (n, dz), trainer.device()).unwrap();
    assert_eq!(s.data, decoded(&trainer, &z));
    let again = ipld_train::eval::decode_gaussian(&trainer, n, 3).unwrap();
    assert_eq!(s.latent, again.latent, "same seed, same draws");
    let other = ipld_train::eval::decode_gaussian(&trainer, n, 4).unwrap();
    assert_ne!(s.latent, other.latent, "another seed, other draws");

    eval_reports(tmp.path(), "g", "gaussian");
}
