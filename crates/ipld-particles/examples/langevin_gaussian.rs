//! Langevin dynamics (Algorithm 1, eqs. 19-22) on a Gaussian target: M points with N particles
//! each, and a potential U_m(z) = ||z - c_m||² / (2 s²) per point, so each particle should
//! sample N(c_m, s² I). The discretised chain z' = z - h (z - c) / s² + sqrt(2 h) W is itself
//! Gaussian with the slightly wider stationary variance v = 2 h / (1 - (1 - h / s²)²); the
//! example prints the particles' mean offset and variance against both, in standard errors.
//!
//! `cargo run --release -p ipld-particles --example langevin_gaussian`

use ipld_particles::{Langevin, NoiseStream, ParticleCloud, ParticleUpdate, StepContext};

fn main() -> Result<(), ipld_particles::ParticleError> {
    let (m, n, d) = (1_000usize, 8usize, 2usize);
    let (s2, h) = (0.5f64, 0.05f64);
    // Point m's target mean c_m.
    let center = |row: usize| [row as f32 / m as f32, -2.0 * row as f32 / m as f32];
    let mut cloud = ParticleCloud::gaussian(0, m, n, d, 7)?;
    let noise = NoiseStream::new(7, 1);
    let all: Vec<usize> = (0..m).collect();
    let steps = 500u64;
    for t in 0..steps {
        // The rule moves particles by M N h times the gradient of the minibatch loss
        // L-hat = (1 / (N |B|)) sum U; with the full batch, pass grad U / (M N).
        let grads: Vec<f32> = cloud
            .z()
            .iter()
            .enumerate()
            .map(|(e, z)| (z - center(e / (n * d))[e % d]) / s2 as f32 / (m * n) as f32)
            .collect();
        // Full batch and gamma = 1: Algorithm 1's noise is sqrt(2 h) on every particle.
        let ctx = StepContext {
            step: t,
            epoch: 0,
            gamma: 1.0,
            step_size: h,
            batch_size: m,
            total_points: m,
            noise_scale: ipld_particles::NoiseScale::Paper,
        };
        Langevin {}.step(&mut cloud, &all, &grads, &ctx, &noise)?;
    }
    let (mut mean, mut sq) = ([0f64; 2], [0f64; 2]);
    for (e, z) in cloud.z().iter().enumerate() {
        let off = (z - center(e / (n * d))[e % d]) as f64;
        mean[e % d] += off;
        sq[e % d] += off * off;
    }
    let k = (m * n) as f64;
    let chain = 2.0 * h / (1.0 - (1.0 - h / s2).powi(2));
    println!("{steps} full-batch Langevin steps, M = {m}, N = {n}, h = {h}, s² = {s2}");
    for j in 0..d {
        let mu = mean[j] / k;
        let var = sq[j] / k - mu * mu;
        println!(
            "coordinate {j}: mean offset {mu:+.4} ({:+.1} s.e.), variance {var:.4} against the \
             chain's {chain:.4} ({:+.1} s.e.) and the target's {s2}",
            mu / (chain / k).sqrt(),
            (var - chain) / (chain * (2.0 / k).sqrt()),
        );
    }
    Ok(())
}
