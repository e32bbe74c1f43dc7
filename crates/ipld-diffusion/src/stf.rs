//! The stable target field (STF; Xu 2024, thesis chapter 3, eq. 3.4 and Algorithm 1) in the
//! eps form of the VP process of eq. (30). Denoising score matching regresses eps_theta(z_k, k)
//! on the one noise eps that made z_k from its own z_0. STF replaces it by the average of that
//! target over a reference batch {x_r}, weighted by how likely each x_r is to have produced z_k:
//!
//!   v(z_k) = sum_r w_r (z_k - sqrt(abar_k) x_r) / sqrt(1 - abar_k),
//!   w_r = softmax_r( -||z_k - sqrt(abar_k) x_r||^2 / (2 (1 - abar_k)) ),
//!
//! which is eq. 3.4 with p(z_k | x) = N(sqrt(abar_k) x, (1 - abar_k) I) and eps = -sqrt(1 - abar_k)
//! times the score. The reference batch must hold each row's own z_0 (Algorithm 1 draws the small
//! batch from it). With a one-element reference the target is eps itself; as the reference grows,
//! the minimiser of the regression tends to the true E[eps | z_k] (thesis Theorem 1) and the
//! target's variance falls.
//!
//! On the CPU the target is one fused pass per row in f64 (direct differences, a running
//! log-sum-exp, rows in parallel): no rows x references intermediate is stored, which at gmm's
//! 8,000 x 8,000 made every matrix half a gigabyte. On other devices distances use the expansion
//! ||z||^2 - 2 a z.x + a^2 ||x||^2 (two matrix products), which in f64 keeps about 12 significant
//! digits at the smallest noise level, where 1 - abar_1 = 1e-4 divides them.

use candle_core::{D, DType, Tensor};
use rayon::prelude::*;

use crate::DiffusionError;

/// STF eps targets for noised rows `zk` [B, ...] at 1-based timesteps `k` \[B\] (u32), against a
/// reference batch `reference` [n, ...] of clean latents (the same trailing shape), under the
/// cumulative products `alpha_bars` (index k - 1). Returns a tensor shaped and typed like `zk`,
/// detached: the target is a constant of the regression.
pub fn stf_eps_targets(
    alpha_bars: &[f64],
    zk: &Tensor,
    k: &Tensor,
    reference: &Tensor,
) -> Result<Tensor, DiffusionError> {
    let rows = zk.dim(0)?;
    let n = reference.dim(0)?;
    if zk.dims()[1..] != reference.dims()[1..] || n == 0 {
        return Err(DiffusionError::Input(format!(
            "the STF reference batch has shape {:?}, which does not hold latents shaped like {:?}",
            reference.dims(),
            zk.dims()
        )));
    }
    let ks: Vec<u32> = k.to_dtype(DType::U32)?.to_vec1()?;
    if ks.len() != rows {
        return Err(DiffusionError::Input(format!(
            "timesteps have shape {:?}, expected [{rows}]",
            k.dims()
        )));
    }
    let mut a = Vec::with_capacity(rows);
    let mut s = Vec::with_capacity(rows);
    for &kk in &ks {
        let ab = *alpha_bars
            .get((kk as usize).wrapping_sub(1))
            .ok_or_else(|| DiffusionError::Input(format!("timestep {kk} outside 1..=K")))?;
        a.push(ab.sqrt());
        s.push((1.0 - ab).max(f64::MIN_POSITIVE).sqrt());
    }
    let dev = zk.device();
    if dev.is_cpu() {
        let d = zk.elem_count() / rows.max(1);
        let z: Vec<f64> = zk.detach().flatten_all()?.to_dtype(DType::F64)?.to_vec1()?;
        let x: Vec<f64> = reference
            .detach()
            .flatten_all()?
            .to_dtype(DType::F64)?
            .to_vec1()?;
        let mut v = vec![0f64; rows * d];
        v.par_chunks_mut(d.max(1))
            .zip(z.par_chunks(d.max(1)))
            .enumerate()
            .for_each(|(i, (out, zi))| row_target(zi, &x, a[i], s[i], out));
        return Ok(Tensor::from_vec(v, zk.shape(), dev)?.to_dtype(zk.dtype())?);
    }
    by_products(&a, &s, zk, reference)
}

/// The target by two matrix products (any device): distances by the expansion in f64.
fn by_products(
    a: &[f64],
    s: &[f64],
    zk: &Tensor,
    reference: &Tensor,
) -> Result<Tensor, DiffusionError> {
    let (rows, dev) = (zk.dim(0)?, zk.device());
    let a = Tensor::from_vec(a.to_vec(), (rows, 1), dev)?;
    let s = Tensor::from_vec(s.to_vec(), (rows, 1), dev)?;
    let z = zk.detach().flatten_from(1)?.to_dtype(DType::F64)?;
    let x = reference.detach().flatten_from(1)?.to_dtype(DType::F64)?;
    let zz = z.sqr()?.sum_keepdim(1)?; // [B, 1]
    let xx = x.sqr()?.sum_keepdim(1)?.t()?; // [1, n]
    let zx = z.matmul(&x.t()?)?; // [B, n]
    let dist = (zz.broadcast_add(&zx.broadcast_mul(&a.affine(-2.0, 0.0)?)?)?
        + xx.broadcast_mul(&a.sqr()?)?)?
    .relu()?;
    let logits = dist.broadcast_div(&s.sqr()?.affine(-2.0, 0.0)?)?;
    let m = logits.max_keepdim(D::Minus1)?;
    let e = logits.broadcast_sub(&m)?.exp()?;
    let w = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
    let xbar = w.matmul(&x)?; // [B, d]
    let v = (z - xbar.broadcast_mul(&a)?)?.broadcast_div(&s)?;
    Ok(v.to_dtype(zk.dtype())?.reshape(zk.shape())?)
}

/// One row's target: `out` = sum_r w_r (z - a x_r) / s with w = softmax(-||z - a x_r||^2 / 2s^2),
/// accumulated with a running maximum so no weight vector is stored.
fn row_target(z: &[f64], x: &[f64], a: f64, s: f64, out: &mut [f64]) {
    let d = z.len();
    let scale = -0.5 / (s * s);
    let (mut m, mut total) = (f64::NEG_INFINITY, 0.0);
    let mut mean = vec![0f64; d];
    for xr in x.chunks_exact(d) {
        let dist: f64 = z.iter().zip(xr).map(|(zj, xj)| (zj - a * xj).powi(2)).sum();
        let l = dist * scale;
        if l > m {
            // Rescale what has been accumulated to the new maximum.
            let c = (m - l).exp();
            total *= c;
            mean.iter_mut().for_each(|v| *v *= c);
            m = l;
        }
        // Weights below e^-40 of the largest change the sum by less than 1e-17 relative per
        // reference: skipping their exp is most of the work at small noise.
        if l > m - 40.0 {
            let w = (l - m).exp();
            total += w;
            mean.iter_mut().zip(xr).for_each(|(v, xj)| *v += w * xj);
        }
    }
    for ((o, zj), mj) in out.iter_mut().zip(z).zip(&mean) {
        *o = (zj - a * mj / total) / s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ScheduleConfig;
    use candle_core::Device;

    /// The target against an independent per-row f64 loop over the reference (direct differences,
    /// log-sum-exp), at the smallest, a middle and the largest noise level.
    #[test]
    fn matches_a_direct_f64_computation() {
        let s = ScheduleConfig::default().build().unwrap();
        let dev = Device::Cpu;
        let d = 3;
        let refv: Vec<f32> = (0..7 * d)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.4)
            .collect();
        let zv: Vec<f32> = vec![0.3, -1.0, 2.0, 1.5, 0.2, -0.7, -2.0, 0.0, 0.9];
        let ks = [1u32, 300, 1000];
        let reference = Tensor::from_vec(refv.clone(), (7, d), &dev).unwrap();
        let zk = Tensor::from_vec(zv.clone(), (3, d), &dev).unwrap();
        let k = Tensor::new(&ks, &dev).unwrap();
        let got: Vec<Vec<f32>> = stf_eps_targets(s.alpha_bars(), &zk, &k, &reference)
            .unwrap()
            .to_vec2()
            .unwrap();
        for (i, &kk) in ks.iter().enumerate() {
            let ab = s.alpha_bar(kk as usize);
            let (a, sd) = (ab.sqrt(), (1.0 - ab).sqrt());
            let z: Vec<f64> = zv[i * d..(i + 1) * d].iter().map(|&v| v as f64).collect();
            let logit: Vec<f64> = (0..7)
                .map(|r| {
                    -(0..d)
                        .map(|j| (z[j] - a * refv[r * d + j] as f64).powi(2))
                        .sum::<f64>()
                        / (2.0 * sd * sd)
                })
                .collect();
            let m = logit.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let norm: f64 = logit.iter().map(|l| (l - m).exp()).sum();
            for j in 0..d {
                let want: f64 = (0..7)
                    .map(|r| (logit[r] - m).exp() / norm * (z[j] - a * refv[r * d + j] as f64) / sd)
                    .sum();
                let tol = 1e-5 * want.abs().max(1.0);
                assert!(
                    (got[i][j] as f64 - want).abs() < tol,
                    "row {i} (k = {kk}) coordinate {j}: {} vs {want}",
                    got[i][j]
                );
            }
        }
    }

    /// A one-element reference holding the row's own z_0 gives back the noise itself: STF
    /// reduces to denoising score matching (thesis, after eq. 3.5).
    #[test]
    fn one_element_reference_is_the_dsm_target() {
        let s = ScheduleConfig::default().build().unwrap();
        let dev = Device::Cpu;
        let z0 = [0.5f64, -1.25];
        let eps = [0.3f64, 1.1];
        for kk in [1usize, 40, 999] {
            let ab = s.alpha_bar(kk);
            let zk: Vec<f32> = (0..2)
                .map(|j| (ab.sqrt() * z0[j] + (1.0 - ab).sqrt() * eps[j]) as f32)
                .collect();
            let v: Vec<Vec<f32>> = stf_eps_targets(
                s.alpha_bars(),
                &Tensor::from_vec(zk, (1, 2), &dev).unwrap(),
                &Tensor::new(&[kk as u32], &dev).unwrap(),
                &Tensor::new(&[[z0[0] as f32, z0[1] as f32]], &dev).unwrap(),
            )
            .unwrap()
            .to_vec2()
            .unwrap();
            for j in 0..2 {
                // At k = 1, 1/sqrt(1 - abar_1) = 100 magnifies z_k's f32 rounding.
                let tol = if kk == 1 { 2e-3 } else { 1e-5 };
                assert!((v[0][j] as f64 - eps[j]).abs() < tol, "k = {kk}: {v:?}");
            }
        }
    }

    /// The fused CPU pass and the matrix-product path (what other devices run) agree.
    #[test]
    fn fused_and_matrix_product_paths_agree() {
        let s = ScheduleConfig::default().build().unwrap();
        let dev = Device::Cpu;
        let (rows, n, d) = (6, 40, 5);
        let zv: Vec<f32> = (0..rows * d)
            .map(|i| ((i * 7919 % 97) as f32 - 48.0) * 0.05)
            .collect();
        let xv: Vec<f32> = (0..n * d)
            .map(|i| ((i * 104_729 % 89) as f32 - 44.0) * 0.04)
            .collect();
        let ks = [1u32, 20, 150, 400, 700, 1000];
        let zk = Tensor::from_vec(zv, (rows, d), &dev).unwrap();
        let reference = Tensor::from_vec(xv, (n, d), &dev).unwrap();
        let k = Tensor::new(&ks, &dev).unwrap();
        let fused: Vec<Vec<f32>> = stf_eps_targets(s.alpha_bars(), &zk, &k, &reference)
            .unwrap()
            .to_vec2()
            .unwrap();
        let a: Vec<f64> = ks.iter().map(|&k| s.alpha_bar(k as usize).sqrt()).collect();
        let sd: Vec<f64> = ks
            .iter()
            .map(|&k| (1.0 - s.alpha_bar(k as usize)).sqrt())
            .collect();
        let prod: Vec<Vec<f32>> = by_products(&a, &sd, &zk, &reference)
            .unwrap()
            .to_vec2()
            .unwrap();
        for (r, (f, p)) in fused.iter().zip(&prod).enumerate() {
            for (x, y) in f.iter().zip(p) {
                assert!(
                    (x - y).abs() <= 1e-4 * x.abs().max(1.0),
                    "row {r}: {f:?} vs {p:?}"
                );
            }
        }
    }

    #[test]
    fn mismatched_reference_is_an_error() {
        let s = ScheduleConfig::default().build().unwrap();
        let dev = Device::Cpu;
        let zk = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
        let k = Tensor::new(&[1u32, 2], &dev).unwrap();
        let bad = Tensor::zeros((4, 2), DType::F32, &dev).unwrap();
        let e = stf_eps_targets(s.alpha_bars(), &zk, &k, &bad).unwrap_err();
        assert!(e.to_string().contains("reference batch"), "{e}");
        let zero = Tensor::zeros((0, 3), DType::F32, &dev).unwrap();
        assert!(stf_eps_targets(s.alpha_bars(), &zk, &k, &zero).is_err());
    }
}
