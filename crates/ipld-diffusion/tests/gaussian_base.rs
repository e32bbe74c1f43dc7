//! The Gaussian base (module `gaussian_base`) against closed forms: its fit recovers a known
//! Gaussian, its eps equals `GaussianEps` for an isotropic one and the direct matrix formula
//! sqrt(1 - abar) (abar Sigma + (1 - abar) I)^{-1} (z - sqrt(abar) mu) for a full covariance,
//! its closed-form loss matches a Monte Carlo estimate of the simple loss on its own Gaussian,
//! and a residual network's gradients and the latents' gradients flow through it.

use candle_core::{DType, Device, Tensor, Var};
use ipld_diffusion::{
    DiffusionLoss, EpsModel, GaussianBase, GaussianEps, GaussianFit, LossWeighting, NoiseSchedule,
    ResidualEps, ScheduleConfig, loss_weight, sample_timesteps, timestep_tensor,
};
use nalgebra::{DMatrix, DVector};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};

/// Sigma = A A^T for this A (d = 3, eigenvalues spread over two decades), mean MU.
const A: [[f64; 3]; 3] = [[2.0, 0.0, 0.0], [1.2, 0.5, 0.0], [-0.4, 0.3, 0.2]];
const MU: [f64; 3] = [1.0, -2.0, 0.5];

fn sigma() -> DMatrix<f64> {
    let a = DMatrix::from_fn(3, 3, |r, c| A[r][c]);
    &a * a.transpose()
}

/// `n` draws of N(MU, A A^T), row-major f32.
fn draws(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(3 * n);
    for _ in 0..n {
        let e: [f64; 3] = std::array::from_fn(|_| StandardNormal.sample(&mut rng));
        for r in 0..3 {
            out.push((MU[r] + (0..3).map(|c| A[r][c] * e[c]).sum::<f64>()) as f32);
        }
    }
    out
}

fn exact_fit() -> GaussianFit {
    let eig = nalgebra::SymmetricEigen::new(sigma());
    GaussianFit {
        mean: MU.to_vec(),
        eigenvalues: eig.eigenvalues.iter().copied().collect(),
        eigenvectors: (0..3)
            .flat_map(|r| (0..3).map(move |c| (r, c)))
            .map(|(r, c)| eig.eigenvectors[(r, c)])
            .collect(),
    }
}

/// The sample mean within 4 standard errors of MU and the sample covariance's entries within 4
/// of theirs (the s.e. of a covariance entry is sqrt((S_ii S_jj + S_ij^2) / n)).
#[test]
fn the_fit_recovers_a_known_gaussian() {
    let n = 20_000;
    let fit = GaussianFit::of_rows(&draws(n, 1), 3).unwrap();
    let s = sigma();
    for i in 0..3 {
        let se = (s[(i, i)] / n as f64).sqrt();
        assert!(
            (fit.mean[i] - MU[i]).abs() < 4.0 * se,
            "mean {i}: {} against {}",
            fit.mean[i],
            MU[i]
        );
    }
    let u = DMatrix::from_row_slice(3, 3, &fit.eigenvectors);
    let cov =
        &u * DMatrix::from_diagonal(&DVector::from_vec(fit.eigenvalues.clone())) * u.transpose();
    for i in 0..3 {
        for j in 0..3 {
            let se = ((s[(i, i)] * s[(j, j)] + s[(i, j)].powi(2)) / n as f64).sqrt();
            assert!(
                (cov[(i, j)] - s[(i, j)]).abs() < 4.0 * se,
                "cov ({i}, {j}): {} against {} (s.e. {se})",
                cov[(i, j)],
                s[(i, j)]
            );
        }
    }
    // The eigenvectors are orthonormal.
    let eye = u.transpose() * &u;
    assert!((eye - DMatrix::identity(3, 3)).abs().max() < 1e-12);
}

/// Sigma = s^2 I: the base is `GaussianEps` (the isotropic closed form), within f32 rounding.
#[test]
fn an_isotropic_base_is_the_isotropic_closed_form() {
    let schedule = ScheduleConfig::default().build().unwrap();
    let (mu, s) = (vec![0.5, -1.0, 2.0], 1.7);
    let fit = GaussianFit {
        mean: mu.clone(),
        eigenvalues: vec![s * s; 3],
        eigenvectors: DMatrix::<f64>::identity(3, 3).as_slice().to_vec(),
    };
    let base = GaussianBase::new(&schedule, fit, &Device::Cpu).unwrap();
    let iso = GaussianEps::new(&schedule, mu, s).unwrap();
    let z = Tensor::new(
        &[[0.3f32, 1.0, -2.0], [4.0, 0.0, 0.1], [-1.0, -1.0, 3.0]],
        &Device::Cpu,
    )
    .unwrap();
    for k in [1u32, 10, 500, 1000] {
        let ks = Tensor::new(&[k, k, k], &Device::Cpu).unwrap();
        let got: Vec<Vec<f32>> = base.predict_eps(&z, &ks).unwrap().to_vec2().unwrap();
        let want: Vec<Vec<f32>> = iso.predict_eps(&z, &ks).unwrap().to_vec2().unwrap();
        let uniform: Vec<Vec<f32>> = base
            .predict_eps_uniform(&z, k as usize)
            .unwrap()
            .to_vec2()
            .unwrap();
        for (g, (w, u)) in got
            .iter()
            .flatten()
            .zip(want.iter().flatten().zip(uniform.iter().flatten()))
        {
            assert!(
                (g - w).abs() < 1e-5 * (1.0 + w.abs()),
                "k = {k}: {g} against {w}"
            );
            assert_eq!(g, u, "per-row and uniform timesteps give the same bits");
        }
    }
}

/// A full covariance: every row (at its own k) equals the direct formula in f64 within f32
/// rounding (relative 1e-4).
#[test]
fn a_full_covariance_base_is_the_matrix_formula() {
    let schedule = ScheduleConfig::default().build().unwrap();
    let base = GaussianBase::new(&schedule, exact_fit(), &Device::Cpu).unwrap();
    let z = [
        [0.3f32, 1.0, -2.0],
        [4.0, 0.0, 0.1],
        [-1.0, -1.0, 3.0],
        [1.0, -2.0, 0.5],
    ];
    let ks = [1u32, 37, 400, 1000];
    let got: Vec<Vec<f32>> = base
        .predict_eps(
            &Tensor::new(&z, &Device::Cpu).unwrap(),
            &Tensor::new(&ks, &Device::Cpu).unwrap(),
        )
        .unwrap()
        .to_vec2()
        .unwrap();
    for ((row, &k), g) in z.iter().zip(&ks).zip(&got) {
        let a = schedule.alpha_bars()[k as usize - 1];
        let cov = sigma() * a + DMatrix::identity(3, 3) * (1.0 - a);
        let x = DVector::from_fn(3, |i, _| row[i] as f64 - a.sqrt() * MU[i]);
        let want = cov.try_inverse().unwrap() * x * (1.0 - a).sqrt();
        let norm = want.norm();
        for i in 0..3 {
            assert!(
                (g[i] as f64 - want[i]).abs() < 1e-4 * (1.0 + norm),
                "k = {k}, coordinate {i}: {} against {}",
                g[i],
                want[i]
            );
        }
    }
}

/// The closed-form loss against the simple loss of eq. (41) estimated on 40,000 draws of the
/// Gaussian itself (one (k, eps) each): within 4 standard errors. Eq. (41) weighs k = 1 by
/// beta_1 / (2 alpha_1), not 1, so the expectation is taken with the same weights.
#[test]
fn the_closed_form_loss_matches_monte_carlo() {
    let schedule: NoiseSchedule = ScheduleConfig::default().build().unwrap();
    let base = GaussianBase::new(&schedule, exact_fit(), &Device::Cpu).unwrap();
    let lam = &base.fit().eigenvalues;
    let per_k = |k: usize| {
        let a = schedule.alpha_bars()[k - 1];
        lam.iter().map(|l| a * l / (a * l + 1.0 - a)).sum::<f64>()
    };
    let steps = schedule.steps();
    let expected: f64 = (1..=steps)
        .map(|k| loss_weight(&schedule, LossWeighting::Simple, k) * per_k(k))
        .sum::<f64>()
        / steps as f64;
    // Unit weights everywhere differ only at k = 1, by under 3 / K.
    assert!((base.simple_loss() - expected).abs() < 3.0 / steps as f64);
    let n = 40_000;
    let mut rng = StdRng::seed_from_u64(7);
    let z0 = Tensor::from_vec(draws(n, 2), (n, 3), &Device::Cpu).unwrap();
    let eps = ipld_diffusion::gaussian(&mut rng, (n, 3), DType::F32, &Device::Cpu).unwrap();
    let k = timestep_tensor(&sample_timesteps(&mut rng, n, steps), steps, &Device::Cpu).unwrap();
    let loss = DiffusionLoss::new(&schedule, LossWeighting::Simple, &Device::Cpu).unwrap();
    let per: Vec<f32> = loss
        .per_sample(&base, &z0, &eps, &k)
        .unwrap()
        .denoise
        .to_vec1()
        .unwrap();
    let mean = per.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
    let var = per.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let se = (var / n as f64).sqrt();
    assert!(
        (mean - expected).abs() < 4.0 * se,
        "Monte Carlo {mean} against the closed form {expected} (s.e. {se})"
    );
}

/// Through [`ResidualEps`]: its output is base + residual, a residual network's parameters and
/// the latents get finite non-zero gradients, and the latents' gradient through the base alone
/// matches finite differences of its loss.
#[test]
fn gradients_flow_through_the_base() {
    let schedule = ScheduleConfig::default().build().unwrap();
    let base = GaussianBase::new(&schedule, exact_fit(), &Device::Cpu).unwrap();
    /// A residual r(z) = w * z, one trainable scalar.
    struct Scaled(Var);
    impl EpsModel for Scaled {
        fn predict_eps(&self, z: &Tensor, _k: &Tensor) -> candle_core::Result<Tensor> {
            z.broadcast_mul(self.0.as_tensor())
        }
    }
    let w = Var::new(&[0.25f32], &Device::Cpu).unwrap();
    let residual = Scaled(w.clone());
    let model = ResidualEps {
        base: &base,
        residual: &residual,
    };
    let z0 = Var::new(&[[0.3f32, 1.0, -2.0], [4.0, 0.0, 0.1]], &Device::Cpu).unwrap();
    let eps = Tensor::new(&[[0.5f32, -0.2, 1.1], [-1.0, 0.3, 0.0]], &Device::Cpu).unwrap();
    let k = Tensor::new(&[20u32, 300], &Device::Cpu).unwrap();
    let sum = (base.predict_eps(z0.as_tensor(), &k).unwrap()
        + residual.predict_eps(z0.as_tensor(), &k).unwrap())
    .unwrap();
    let both = model.predict_eps(z0.as_tensor(), &k).unwrap();
    assert_eq!(
        sum.to_vec2::<f32>().unwrap(),
        both.to_vec2::<f32>().unwrap()
    );
    let loss = DiffusionLoss::new(&schedule, LossWeighting::Simple, &Device::Cpu).unwrap();
    let total = loss
        .per_sample(&model, z0.as_tensor(), &eps, &k)
        .unwrap()
        .denoise
        .sum_all()
        .unwrap();
    let grads = total.backward().unwrap();
    for (name, t) in [("w", w.as_tensor()), ("z0", z0.as_tensor())] {
        let g: Vec<f32> = grads
            .get(t)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(
            g.iter().all(|v| v.is_finite()) && g.iter().any(|v| *v != 0.0),
            "{name}: {g:?}"
        );
    }
    // Finite differences in f64 of the base-only loss in z0[1][2].
    let base_loss = |z: &[[f64; 3]; 2]| -> f64 {
        let z0 = Tensor::new(z, &Device::Cpu).unwrap();
        let l = loss
            .per_sample(&base, &z0, &eps.to_dtype(DType::F64).unwrap(), &k)
            .unwrap();
        l.denoise.sum_all().unwrap().to_scalar::<f64>().unwrap()
    };
    let zf = [[0.3f64, 1.0, -2.0], [4.0, 0.0, 0.1]];
    let zv = Var::new(&zf, &Device::Cpu).unwrap();
    let g = loss
        .per_sample(
            &base,
            zv.as_tensor(),
            &eps.to_dtype(DType::F64).unwrap(),
            &k,
        )
        .unwrap()
        .denoise
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let analytic: Vec<Vec<f64>> = g.get(zv.as_tensor()).unwrap().to_vec2().unwrap();
    let h = 1e-5;
    let (mut up, mut down) = (zf, zf);
    up[1][2] += h;
    down[1][2] -= h;
    let numeric = (base_loss(&up) - base_loss(&down)) / (2.0 * h);
    assert!(
        (analytic[1][2] - numeric).abs() < 1e-5 * (1.0 + numeric.abs()),
        "d loss / d z0[1][2]: {} against {numeric}",
        analytic[1][2]
    );
}

/// Bad fits are refused with a message naming what is wrong.
#[test]
fn bad_fits_are_refused() {
    let one_row = GaussianFit::of_rows(&[1.0, 2.0], 2)
        .unwrap_err()
        .to_string();
    assert!(one_row.contains("at least 2 rows"), "{one_row}");
    let nan = GaussianFit::of_rows(&[1.0, 2.0, f32::NAN, 0.0], 2)
        .unwrap_err()
        .to_string();
    assert!(nan.contains("row 1, column 0"), "{nan}");
    let mut fit = exact_fit();
    fit.eigenvalues[0] = -1.0;
    let schedule = ScheduleConfig::default().build().unwrap();
    let e = GaussianBase::new(&schedule, fit, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("eigenvalues >= 0"), "{e}");
}
