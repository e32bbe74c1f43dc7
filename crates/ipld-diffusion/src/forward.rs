//! The forward (noising) process q(z_k | z_0) = N(sqrt(abar_k) z_0, (1 - abar_k) I) (eq. 30),
//! sampled by reparameterisation z_k = sqrt(abar_k) z_0 + sqrt(1 - abar_k) eps, and the uniform
//! timestep draw k ~ Unif{1, ..., K} used by the one-sample loss estimates (eqs. 40-42).

use candle_core::{DType, Device, Tensor};
use rand::Rng;

use crate::{DiffusionError, ScheduleTensors};

/// Draws `n` timesteps uniformly from {1, ..., K}.
pub fn sample_timesteps<R: Rng + ?Sized>(rng: &mut R, n: usize, steps: usize) -> Vec<u32> {
    (0..n).map(|_| rng.random_range(1..=steps as u32)).collect()
}

/// Per-row coefficient `table[k_i - 1]` shaped [B, 1, ..., 1] to broadcast against `like`.
pub(crate) fn gather_coef(
    table: &Tensor,
    k: &Tensor,
    like: &Tensor,
) -> Result<Tensor, DiffusionError> {
    let b = like.dim(0)?;
    if k.dims() != [b] {
        return Err(DiffusionError::Input(format!(
            "timesteps have shape {:?}, expected [{b}] to match z of shape {:?}",
            k.dims(),
            like.dims()
        )));
    }
    let c = table
        .index_select(&k.to_dtype(DType::U32)?, 0)?
        .to_dtype(like.dtype())?;
    let mut shape = vec![b];
    shape.resize(like.rank(), 1);
    Ok(c.reshape(shape)?)
}

/// z_k = sqrt(abar_k) z_0 + sqrt(1 - abar_k) eps for a batch: `z0` and `eps` are [B, ...],
/// `k` is a u32 tensor \[B\] of 1-based timesteps. Differentiable in `z0`.
pub fn q_sample(
    tables: &ScheduleTensors,
    z0: &Tensor,
    eps: &Tensor,
    k: &Tensor,
) -> Result<Tensor, DiffusionError> {
    if z0.dims() != eps.dims() {
        return Err(DiffusionError::Input(format!(
            "z0 has shape {:?} but eps has shape {:?}",
            z0.dims(),
            eps.dims()
        )));
    }
    let a = gather_coef(&tables.sqrt_alpha_bars, k, z0)?;
    let s = gather_coef(&tables.sqrt_one_minus_alpha_bars, k, z0)?;
    Ok((z0.broadcast_mul(&a)? + eps.broadcast_mul(&s)?)?)
}

/// A u32 timestep tensor from host values, with a range check against K.
pub fn timestep_tensor(k: &[u32], steps: usize, device: &Device) -> Result<Tensor, DiffusionError> {
    if let Some(bad) = k.iter().find(|&&v| v == 0 || v as usize > steps) {
        return Err(DiffusionError::Input(format!(
            "timestep {bad} outside 1..={steps}"
        )));
    }
    Ok(Tensor::from_slice(k, k.len(), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ScheduleConfig;
    use rand::SeedableRng;

    #[test]
    fn q_sample_matches_closed_form() {
        let s = ScheduleConfig::default().build().unwrap();
        let t = s.tensors(&Device::Cpu).unwrap();
        let z0 = Tensor::new(&[[1.0f32, -2.0], [0.5, 3.0]], &Device::Cpu).unwrap();
        let eps = Tensor::new(&[[0.1f32, 0.2], [-1.0, 0.0]], &Device::Cpu).unwrap();
        let k = timestep_tensor(&[1, 1000], 1000, &Device::Cpu).unwrap();
        let zk: Vec<Vec<f32>> = q_sample(&t, &z0, &eps, &k).unwrap().to_vec2().unwrap();
        let (a1, a2) = (s.alpha_bar(1), s.alpha_bar(1000));
        let want = [
            [
                a1.sqrt() + (1.0 - a1).sqrt() * 0.1,
                -2.0 * a1.sqrt() + (1.0 - a1).sqrt() * 0.2,
            ],
            [0.5 * a2.sqrt() - (1.0 - a2).sqrt(), 3.0 * a2.sqrt()],
        ];
        for i in 0..2 {
            for j in 0..2 {
                assert!((zk[i][j] as f64 - want[i][j]).abs() < 1e-6, "{i},{j}");
            }
        }
    }

    #[test]
    fn q_sample_marginal_moments() {
        // With z0 fixed, z_k ~ N(sqrt(abar) z0, 1 - abar): check mean and variance within 5 s.e.
        let s = ScheduleConfig::default().build().unwrap();
        let t = s.tensors(&Device::Cpu).unwrap();
        let n = 20_000;
        let z0 = Tensor::full(2.0f32, (n, 1), &Device::Cpu).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let eps = crate::gaussian(&mut rng, (n, 1), DType::F32, &Device::Cpu).unwrap();
        let k = Tensor::full(300u32, n, &Device::Cpu).unwrap();
        let v: Vec<f32> = q_sample(&t, &z0, &eps, &k)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let mean = v.iter().map(|x| *x as f64).sum::<f64>() / n as f64;
        let var = v.iter().map(|x| (*x as f64 - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let abar = s.alpha_bar(300);
        let sd = (1.0 - abar).sqrt();
        assert!((mean - 2.0 * abar.sqrt()).abs() < 5.0 * sd / (n as f64).sqrt());
        // s.e. of the sample variance of a Gaussian: sigma^2 sqrt(2/(n-1)).
        assert!((var - sd * sd).abs() < 5.0 * sd * sd * (2.0 / (n - 1) as f64).sqrt());
    }

    #[test]
    fn timesteps_cover_one_to_k_uniformly() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let k = sample_timesteps(&mut rng, 100_000, 4);
        let mut counts = [0usize; 5];
        for v in k {
            counts[v as usize] += 1;
        }
        assert_eq!(counts[0], 0);
        // Each count ~ Binomial(1e5, 1/4): s.d. ~ 137; allow 5 s.d.
        for c in &counts[1..] {
            assert!((*c as f64 - 25_000.0).abs() < 5.0 * 137.0, "{counts:?}");
        }
    }

    #[test]
    fn timestep_range_is_checked() {
        assert!(timestep_tensor(&[0], 10, &Device::Cpu).is_err());
        assert!(timestep_tensor(&[11], 10, &Device::Cpu).is_err());
    }
}
