//! Unbiased MMD² (Gretton et al. 2012, Lemma 6; the estimator written in Appendix B.1):
//!
//! MMD²_u = 1/(m(m-1)) sum_{i != j} k(x_i, x_j) + 1/(n(n-1)) sum_{i != j} k(y_i, y_j)
//!          - 2/(mn) sum_{i,j} k(x_i, y_j),   k(x, y) = exp(-gamma ||x - y||²).
//!
//! Pairs are processed in [block, block] tiles: one matrix product gives the inner products,
//! ||x - y||² = ||x||² + ||y||² - 2 x.y, then a fused exp-and-sum pass. Everything is f64 and the
//! two samples are first centred on their joint mean (distances are translation invariant), which
//! keeps the expansion's cancellation error small. Symmetric sums visit only tiles on and above
//! the diagonal. Memory beyond the inputs is O(block²) per worker.

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::EvalError;

/// MMD settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MmdConfig {
    /// RBF kernel parameter gamma in exp(-gamma ||x - y||²) (0.1 in Appendix B.1).
    pub gamma: f64,
    /// Tile edge: rows of each sample processed per matrix product.
    pub block: usize,
}

impl Default for MmdConfig {
    fn default() -> Self {
        Self {
            gamma: 0.1,
            block: 1024,
        }
    }
}

impl MmdConfig {
    /// Checks gamma > 0 and block >= 1.
    pub fn validate(&self) -> Result<(), EvalError> {
        if !(self.gamma > 0.0 && self.gamma.is_finite()) {
            return Err(EvalError::Param {
                key: "gamma".into(),
                reason: format!("must be finite and > 0, got {}", self.gamma),
            });
        }
        if self.block == 0 {
            return Err(EvalError::Param {
                key: "block".into(),
                reason: "must be at least 1".into(),
            });
        }
        Ok(())
    }
}

/// A sample as f64 rows plus squared norms.
struct Sample {
    rows: Vec<f64>,
    norms: Vec<f64>,
    n: usize,
}

impl Sample {
    fn new(x: &[f32], dim: usize, center: &[f64]) -> Self {
        let rows: Vec<f64> = x
            .chunks_exact(dim)
            .flat_map(|r| r.iter().zip(center).map(|(v, c)| *v as f64 - c))
            .collect();
        let norms = rows
            .chunks_exact(dim)
            .map(|r| r.iter().map(|v| v * v).sum())
            .collect();
        Self {
            n: x.len() / dim,
            rows,
            norms,
        }
    }

    fn block(&self, start: usize, len: usize, dim: usize) -> candle_core::Result<Tensor> {
        Tensor::from_slice(
            &self.rows[start * dim..(start + len) * dim],
            (len, dim),
            &Device::Cpu,
        )
    }
}

/// Sum of k over the tile rows [i0, i0+bi) of `a` x columns [j0, j0+bj) of `b`; when `skip_diag`
/// the entries with equal global index are left out.
#[allow(clippy::too_many_arguments)]
fn tile_sum(
    a: &Sample,
    b: &Sample,
    i0: usize,
    bi: usize,
    j0: usize,
    bj: usize,
    dim: usize,
    gamma: f64,
    skip_diag: bool,
) -> candle_core::Result<f64> {
    let g = a.block(i0, bi, dim)?.matmul(&b.block(j0, bj, dim)?.t()?)?;
    let g: Vec<f64> = g.flatten_all()?.to_vec1()?;
    let mut total = 0.0;
    for (r, row) in g.chunks_exact(bj).enumerate() {
        let na = a.norms[i0 + r];
        let mut s = 0.0;
        for (c, dot) in row.iter().enumerate() {
            if skip_diag && i0 + r == j0 + c {
                continue;
            }
            let d2 = (na + b.norms[j0 + c] - 2.0 * dot).max(0.0);
            s += (-gamma * d2).exp();
        }
        total += s;
    }
    Ok(total)
}

/// Sum of k(a_i, b_j) over all pairs (or over i != j when `symmetric`, with a = b).
fn kernel_sum(
    a: &Sample,
    b: &Sample,
    dim: usize,
    cfg: &MmdConfig,
    symmetric: bool,
) -> Result<f64, EvalError> {
    let bs = cfg.block;
    let tiles: Vec<(usize, usize)> = (0..a.n.div_ceil(bs))
        .flat_map(|ti| {
            let start = if symmetric { ti } else { 0 };
            (start..b.n.div_ceil(bs)).map(move |tj| (ti, tj))
        })
        .collect();
    let sums: Vec<f64> = tiles
        .par_iter()
        .map(|&(ti, tj)| {
            let (i0, j0) = (ti * bs, tj * bs);
            let (bi, bj) = (bs.min(a.n - i0), bs.min(b.n - j0));
            let s = tile_sum(a, b, i0, bi, j0, bj, dim, cfg.gamma, symmetric && ti == tj)?;
            // Off-diagonal tiles of a symmetric sum stand for their mirror image too.
            Ok(if symmetric && ti != tj { 2.0 * s } else { s })
        })
        .collect::<candle_core::Result<_>>()?;
    Ok(sums.iter().sum())
}

fn check(x: &[f32], dim: usize, what: &str) -> Result<usize, EvalError> {
    if dim == 0 || !x.len().is_multiple_of(dim) {
        return Err(EvalError::Input(format!(
            "{what}: {} values are not a whole number of {dim}-dimensional rows",
            x.len()
        )));
    }
    let n = x.len() / dim;
    if n < 2 {
        return Err(EvalError::Input(format!(
            "{what}: the unbiased MMD needs at least 2 rows, got {n}"
        )));
    }
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(EvalError::Input(format!(
            "{what}: row {} holds a non-finite value {}",
            i / dim,
            x[i]
        )));
    }
    Ok(n)
}

/// The unbiased MMD² estimate between samples `x` ([m, dim], row-major) and `y` ([n, dim]).
pub fn mmd2_unbiased(x: &[f32], y: &[f32], dim: usize, cfg: &MmdConfig) -> Result<f64, EvalError> {
    cfg.validate()?;
    let m = check(x, dim, "first sample")?;
    let n = check(y, dim, "second sample")?;
    let mut center = vec![0.0f64; dim];
    for row in x.chunks_exact(dim).chain(y.chunks_exact(dim)) {
        for (c, v) in center.iter_mut().zip(row) {
            *c += *v as f64;
        }
    }
    for c in &mut center {
        *c /= (m + n) as f64;
    }
    let (sx, sy) = (Sample::new(x, dim, &center), Sample::new(y, dim, &center));
    let kxx = kernel_sum(&sx, &sx, dim, cfg, true)?;
    let kyy = kernel_sum(&sy, &sy, dim, cfg, true)?;
    let kxy = kernel_sum(&sx, &sy, dim, cfg, false)?;
    let (m, n) = (m as f64, n as f64);
    Ok(kxx / (m * (m - 1.0)) + kyy / (n * (n - 1.0)) - 2.0 * kxy / (m * n))
}

/// The median heuristic's kernel parameter for `x` and `y` (rows of `dim`): gamma = 1 / median
/// of ||a - b||² over the pairs of a pooled subsample (at most `max_rows / 2` rows of each,
/// evenly strided, so ordered data are covered), which is k's bandwidth sigma with
/// gamma = 1 / (2 sigma²) at sigma² = median / 2 (Gretton et al. 2012).
pub fn median_heuristic_gamma(
    x: &[f32],
    y: &[f32],
    dim: usize,
    max_rows: usize,
) -> Result<f64, EvalError> {
    let m = check(x, dim, "first sample")?;
    let n = check(y, dim, "second sample")?;
    let take = (max_rows / 2).max(1);
    let strided = |s: &[f32], rows: usize| -> Vec<Vec<f64>> {
        let k = rows.min(take);
        (0..k)
            .map(|i| {
                let r = i * rows / k;
                s[r * dim..(r + 1) * dim]
                    .iter()
                    .map(|v| *v as f64)
                    .collect()
            })
            .collect()
    };
    let pool: Vec<Vec<f64>> = strided(x, m).into_iter().chain(strided(y, n)).collect();
    let mut d2: Vec<f64> = (0..pool.len())
        .flat_map(|i| (i + 1..pool.len()).map(move |j| (i, j)))
        .map(|(i, j)| {
            pool[i]
                .iter()
                .zip(&pool[j])
                .map(|(a, b)| (a - b) * (a - b))
                .sum()
        })
        .collect();
    if d2.is_empty() {
        return Err(EvalError::Input(
            "median heuristic: fewer than 2 rows".into(),
        ));
    }
    let mid = d2.len() / 2;
    // Inputs are finite (checked), so the distances hold no NaN.
    let (_, median, _) = d2.select_nth_unstable_by(mid, f64::total_cmp);
    if *median <= 0.0 {
        return Err(EvalError::Input(
            "median heuristic: the median pairwise distance is 0".into(),
        ));
    }
    Ok(1.0 / *median)
}

/// [`mmd2_unbiased`] for two [rows, dim] tensors on any device.
pub fn mmd2_unbiased_tensors(x: &Tensor, y: &Tensor, cfg: &MmdConfig) -> Result<f64, EvalError> {
    let (_, dx) = x.dims2()?;
    let (_, dy) = y.dims2()?;
    if dx != dy {
        return Err(EvalError::Input(format!(
            "samples have dimensions {dx} and {dy}"
        )));
    }
    let flat = |t: &Tensor| -> candle_core::Result<Vec<f32>> {
        t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
    };
    mmd2_unbiased(&flat(x)?, &flat(y)?, dx, cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use rand_distr::StandardNormal;

    fn gaussian(rng: &mut ChaCha8Rng, n: usize, dim: usize, shift: f32) -> Vec<f32> {
        (0..n * dim)
            .map(|i| rng.sample::<f32, _>(StandardNormal) + if i % dim == 0 { shift } else { 0.0 })
            .collect()
    }

    /// Direct double loop over pairs: an independent reference.
    fn naive(x: &[f32], y: &[f32], dim: usize, gamma: f64) -> f64 {
        let k = |a: &[f32], b: &[f32]| {
            (-gamma
                * a.iter()
                    .zip(b)
                    .map(|(p, q)| (*p as f64 - *q as f64).powi(2))
                    .sum::<f64>())
            .exp()
        };
        let xs: Vec<&[f32]> = x.chunks(dim).collect();
        let ys: Vec<&[f32]> = y.chunks(dim).collect();
        let (m, n) = (xs.len() as f64, ys.len() as f64);
        let mut kxx = 0.0;
        for (i, a) in xs.iter().enumerate() {
            for (j, b) in xs.iter().enumerate() {
                if i != j {
                    kxx += k(a, b);
                }
            }
        }
        let mut kyy = 0.0;
        for (i, a) in ys.iter().enumerate() {
            for (j, b) in ys.iter().enumerate() {
                if i != j {
                    kyy += k(a, b);
                }
            }
        }
        let kxy: f64 = xs
            .iter()
            .flat_map(|a| ys.iter().map(move |b| k(a, b)))
            .sum();
        kxx / (m * (m - 1.0)) + kyy / (n * (n - 1.0)) - 2.0 * kxy / (m * n)
    }

    #[test]
    fn matches_direct_double_loop_for_every_tiling() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (x, y) = (
            gaussian(&mut rng, 53, 5, 0.0),
            gaussian(&mut rng, 31, 5, 0.7),
        );
        let want = naive(&x, &y, 5, 0.1);
        for block in [1, 7, 16, 53, 1024] {
            let got = mmd2_unbiased(&x, &y, 5, &MmdConfig { gamma: 0.1, block }).unwrap();
            assert!((got - want).abs() < 1e-13, "block {block}: {got} vs {want}");
        }
    }

    #[test]
    fn symmetric_in_its_arguments() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let (x, y) = (
            gaussian(&mut rng, 300, 3, 0.0),
            gaussian(&mut rng, 200, 3, 1.0),
        );
        let cfg = MmdConfig {
            gamma: 0.1,
            block: 64,
        };
        let (a, b) = (
            mmd2_unbiased(&x, &y, 3, &cfg).unwrap(),
            mmd2_unbiased(&y, &x, 3, &cfg).unwrap(),
        );
        assert!((a - b).abs() < 1e-14);
    }

    #[test]
    fn near_zero_for_two_samples_of_one_distribution() {
        // Under H0, MMD²_u is a degenerate U-statistic with kernel h in [-2, 2], so its standard
        // deviation is at most sqrt(2 E h² / (m(m-1))) <= 2.83 / m; allow 5 of those.
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let m = 3000;
        let (x, y) = (gaussian(&mut rng, m, 2, 0.0), gaussian(&mut rng, m, 2, 0.0));
        let got = mmd2_unbiased(&x, &y, 2, &MmdConfig::default()).unwrap();
        assert!(got.abs() < 5.0 * 2.83 / m as f64, "{got}");
    }

    #[test]
    fn shifted_gaussians_match_the_closed_form() {
        // For N(0, I) vs N(delta e_1, I) in d dims: E k(X, X') = (1 + 4 gamma)^(-d/2) and
        // E k(X, Y) = (1 + 4 gamma)^(-d/2) exp(-gamma delta² / (1 + 4 gamma)), so
        // MMD² = 2 (1 + 4 gamma)^(-d/2) (1 - exp(-gamma delta² / (1 + 4 gamma))).
        // Five seeded replicates; the closed form must lie within 4 standard errors of their mean.
        let (d, delta, gamma, m) = (2usize, 1.5f64, 0.1f64, 1500usize);
        let c = 1.0 + 4.0 * gamma;
        let want = 2.0 * c.powf(-(d as f64) / 2.0) * (1.0 - (-gamma * delta * delta / c).exp());
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let est: Vec<f64> = (0..5)
            .map(|_| {
                let (x, y) = (
                    gaussian(&mut rng, m, d, 0.0),
                    gaussian(&mut rng, m, d, delta as f32),
                );
                mmd2_unbiased(&x, &y, d, &MmdConfig { gamma, block: 256 }).unwrap()
            })
            .collect();
        let mean = est.iter().sum::<f64>() / 5.0;
        let se = (est.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / 4.0 / 5.0).sqrt();
        assert!(mean > 0.1, "clearly positive: {mean}");
        assert!(
            (mean - want).abs() < 4.0 * se,
            "{mean} +- {se} vs closed form {want}"
        );
    }

    #[test]
    fn rejects_bad_input() {
        let cfg = MmdConfig::default();
        assert!(
            mmd2_unbiased(&[1.0], &[1.0, 2.0], 1, &cfg)
                .unwrap_err()
                .to_string()
                .contains("at least 2")
        );
        assert!(mmd2_unbiased(&[1.0, 2.0, 3.0], &[1.0, 2.0], 2, &cfg).is_err());
        let e = mmd2_unbiased(&[1.0, f32::NAN], &[1.0, 2.0], 1, &cfg)
            .unwrap_err()
            .to_string();
        assert!(e.contains("row 1"), "{e}");
        assert!(
            mmd2_unbiased(
                &[1.0, 2.0],
                &[1.0, 2.0],
                1,
                &MmdConfig {
                    gamma: -1.0,
                    block: 8
                }
            )
            .is_err()
        );
    }

    #[test]
    fn tensor_entry_point_agrees() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let (x, y) = (
            gaussian(&mut rng, 40, 4, 0.0),
            gaussian(&mut rng, 30, 4, 0.3),
        );
        let tx = Tensor::from_slice(&x, (40, 4), &Device::Cpu).unwrap();
        let ty = Tensor::from_slice(&y, (30, 4), &Device::Cpu).unwrap();
        let cfg = MmdConfig::default();
        let a = mmd2_unbiased_tensors(&tx, &ty, &cfg).unwrap();
        assert_eq!(a, mmd2_unbiased(&x, &y, 4, &cfg).unwrap());
        let tz = Tensor::zeros((30, 3), DType::F32, &Device::Cpu).unwrap();
        assert!(mmd2_unbiased_tensors(&tx, &tz, &cfg).is_err());
    }

    /// ||a - b||² of two independent N(0, I_8) rows is 2 chi²_8, whose median is 2 x 7.34412
    /// (python3 stdlib: bisect 1 - exp(-x/2) sum_{i<4} (x/2)^i / i! = 1/2 -> 7.344121497701791),
    /// so gamma = 1 / 14.68824 = 0.0680817. 500 + 500 pooled rows (124,750 pairs) estimate it
    /// within a few percent. Shifting y by 100 makes half the pairs huge: the median is the
    /// cross distances' lower edge, far above.
    #[test]
    fn median_heuristic_matches_the_chi_square_median() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let (x, y) = (
            gaussian(&mut rng, 3000, 8, 0.0),
            gaussian(&mut rng, 2000, 8, 0.0),
        );
        let g = median_heuristic_gamma(&x, &y, 8, 1000).unwrap();
        assert!((g / 0.068_081_66 - 1.0).abs() < 0.03, "{g}");
        let far: Vec<f32> = y.iter().map(|v| v + 100.0).collect();
        assert!(median_heuristic_gamma(&x, &far, 8, 1000).unwrap() < 0.5 * g);
        let e = median_heuristic_gamma(&[1.0; 16], &[1.0; 16], 8, 1000).unwrap_err();
        assert!(e.to_string().contains("median"), "{e}");
        assert!(median_heuristic_gamma(&x[..7], &y, 8, 1000).is_err());
    }
}
