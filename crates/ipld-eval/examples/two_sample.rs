//! Two-sample checks with the crate's metrics: the unbiased MMD² (RBF kernel, gamma = 0.1 as in
//! Appendix B.1) between samples of the same and of shifted Gaussians, and the Fréchet distance
//! between two Gaussians' statistics against its closed form ||mu_a - mu_b||² for equal
//! covariances.
//!
//! `cargo run --release -p ipld-eval --example two_sample`

use ipld_eval::{GaussianStats, MmdConfig, frechet_distance, mmd2_unbiased};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

fn draw(rng: &mut rand::rngs::StdRng, n: usize, d: usize, shift: f32) -> Vec<f32> {
    (0..n * d)
        .map(|_| StandardNormal.sample(rng))
        .map(|x: f32| x + shift)
        .collect()
}

fn main() -> Result<(), ipld_eval::EvalError> {
    let (n, d) = (2_000, 8);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let cfg = MmdConfig::default();
    let a = draw(&mut rng, n, d, 0.0);
    for shift in [0.0f32, 0.1, 0.3, 1.0] {
        let b = draw(&mut rng, n, d, shift);
        let mmd = mmd2_unbiased(&a, &b, d, &cfg)?;
        println!(
            "MMD² (gamma {}) against N({shift}, I): {mmd:+.5}",
            cfg.gamma
        );
    }
    // Fréchet distance of two Gaussians with equal covariance: ||mu_a - mu_b||².
    let stats = |shift: f32, rng: &mut rand::rngs::StdRng| {
        GaussianStats::from_features(&draw(rng, 20_000, d, shift), d)
    };
    let (sa, sb) = (stats(0.0, &mut rng)?, stats(0.5, &mut rng)?);
    println!(
        "Fréchet distance N(0, I) vs N(0.5, I) in {d}-d: {:.4} (closed form {:.4})",
        frechet_distance(&sa, &sb)?,
        d as f64 * 0.25
    );
    Ok(())
}
