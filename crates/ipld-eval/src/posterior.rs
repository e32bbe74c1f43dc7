//! Whether particle clouds sample the posterior of a linear-Gaussian model: with a linear
//! decoder p(x | z) = N(W z + b, sigma² I) and the Gaussian N(c, C) fitted to all particles (the
//! aggregate the latent prior is trained on), every point's tilted posterior p(z) p(x | z)^(1 /
//! gamma) (eq. 21 with the KL weight of A.4.1) is Gaussian with the same covariance
//! (C^-1 + W^T W / (gamma sigma²))^-1. [`linear_gaussian_spread`] compares it with the spread of
//! each point's particles (docs/training.md, "Noise scale").

use nalgebra::DMatrix;

use crate::EvalError;

/// Particle spread against the closed-form posterior spread.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PosteriorSpread {
    /// Mean over points of the trace of the (unbiased) covariance of the point's N particles.
    pub particle_trace: f64,
    /// Trace of the closed-form posterior covariance (C^-1 + W^T W / (gamma sigma²))^-1.
    pub posterior_trace: f64,
    /// `particle_trace / posterior_trace`: 1 for a sampler, about 0 for an optimiser.
    pub ratio: f64,
    /// Trace of C, the covariance of all particles.
    pub aggregate_trace: f64,
}

/// The spread of a cloud `z` of shape [M, N, d] (row-major, N >= 2) against the posterior of a
/// decoder with weight `weight` ([d_x, d], row-major: x = W z + b), noise `sigma` and KL weight
/// `gamma`.
pub fn linear_gaussian_spread(
    z: &[f32],
    [m, n, d]: [usize; 3],
    weight: &[f32],
    sigma: f64,
    gamma: f64,
) -> Result<PosteriorSpread, EvalError> {
    let input = |msg: String| EvalError::Input(msg);
    if m == 0 || n < 2 || d == 0 || z.len() != m * n * d {
        return Err(input(format!(
            "need a cloud [M, N >= 2, d] with M N d values, got [{m}, {n}, {d}] and {}",
            z.len()
        )));
    }
    if weight.is_empty() || !weight.len().is_multiple_of(d) {
        return Err(input(format!(
            "decoder weight has {} values, not a multiple of d = {d}",
            weight.len()
        )));
    }
    if !(sigma > 0.0 && gamma > 0.0 && sigma.is_finite() && gamma.is_finite()) {
        return Err(input(format!(
            "sigma and gamma must be > 0, got {sigma}, {gamma}"
        )));
    }
    if let Some(i) = z.iter().chain(weight).position(|v| !v.is_finite()) {
        return Err(input(format!("non-finite value at flat index {i}")));
    }
    let dx = weight.len() / d;
    let w = DMatrix::from_row_slice(dx, d, &weight.iter().map(|&v| v as f64).collect::<Vec<_>>());
    // Per-point covariance traces, and the aggregate mean and covariance.
    let mut trace_sum = 0.0;
    let mut mean = vec![0.0; d];
    for p in z.chunks_exact(n * d) {
        for j in 0..d {
            let xs = p.iter().skip(j).step_by(d).map(|&v| v as f64);
            let mu = xs.clone().sum::<f64>() / n as f64;
            trace_sum += xs.map(|x| (x - mu).powi(2)).sum::<f64>() / (n - 1) as f64;
            mean[j] += mu / m as f64;
        }
    }
    let mut c = DMatrix::<f64>::zeros(d, d);
    for p in z.chunks_exact(d) {
        for i in 0..d {
            for j in 0..d {
                c[(i, j)] += (p[i] as f64 - mean[i]) * (p[j] as f64 - mean[j]);
            }
        }
    }
    c /= (m * n - 1) as f64;
    let c_inv = c
        .clone()
        .try_inverse()
        .ok_or_else(|| input("the particles' covariance is singular".into()))?;
    let precision = c_inv + w.transpose() * &w / (gamma * sigma * sigma);
    let posterior = precision
        .try_inverse()
        .ok_or_else(|| input("the posterior precision is singular".into()))?;
    let (particle_trace, posterior_trace) = (trace_sum / m as f64, posterior.trace());
    Ok(PosteriorSpread {
        particle_trace,
        posterior_trace,
        ratio: particle_trace / posterior_trace,
        aggregate_trace: c.trace(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exact draws from the posterior of a known model give a ratio of 1 within its standard
    /// error; collapsed clouds give 0; bad input is refused.
    #[test]
    fn exact_posterior_draws_score_one() {
        // Prior N(0, I_2), W = 2 [I_2; 0] (4 x 2), sigma = 1, gamma = 1: posterior covariance
        // (I + 4 I)^-1 = I / 5, and the particles' aggregate is the prior, N(0, I).
        let (m, n, d) = (4000usize, 8usize, 2usize);
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut normal = || {
            // Box-Muller on SplitMix64 draws (the test needs no generator crate).
            let mut u = || {
                state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut x = state;
                x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                ((x ^ (x >> 31)) >> 11) as f64 / (1u64 << 53) as f64
            };
            let (a, b) = (u().max(1e-300), u());
            (-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()
        };
        let mut z = Vec::with_capacity(m * n * d);
        for _ in 0..m {
            // Point mean ~ N(0, I - I/5) so the aggregate is N(0, I); particles N(mean, I/5).
            let mu = [normal() * 0.8f64.sqrt(), normal() * 0.8f64.sqrt()];
            for _ in 0..n {
                for mu_j in mu {
                    z.push((mu_j + normal() * 0.2f64.sqrt()) as f32);
                }
            }
        }
        let w = [2.0f32, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0];
        let s = linear_gaussian_spread(&z, [m, n, d], &w, 1.0, 1.0).unwrap();
        assert!((s.posterior_trace - 0.4).abs() < 0.01, "{s:?}");
        // The per-point trace averages 4000 chi-squared(7)-like estimates: s.e. about 0.4 *
        // sqrt(2 / 7 / 4000) = 0.0034 of 0.4, i.e. 0.85%; 4 s.e.
        assert!((s.ratio - 1.0).abs() < 0.034, "{s:?}");
        let collapsed: Vec<f32> = z.chunks(n * d).flat_map(|p| p[..d].repeat(n)).collect();
        let s = linear_gaussian_spread(&collapsed, [m, n, d], &w, 1.0, 1.0).unwrap();
        assert_eq!(s.ratio, 0.0);
        assert!(linear_gaussian_spread(&z[..10], [m, n, d], &w, 1.0, 1.0).is_err());
        assert!(linear_gaussian_spread(&z, [m, n, d], &w[..7], 1.0, 1.0).is_err());
        assert!(linear_gaussian_spread(&z, [m, n, d], &w, 0.0, 1.0).is_err());
        let mut bad = z.clone();
        bad[5] = f32::NAN;
        assert!(linear_gaussian_spread(&bad, [m, n, d], &w, 1.0, 1.0).is_err());
    }
}
