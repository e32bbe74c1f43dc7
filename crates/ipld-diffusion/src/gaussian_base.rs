//! A Gaussian base for an epsilon-network (not in the paper): the exact eps of N(mu, Sigma) with
//! a full covariance fitted to the data, plus a network that learns only the residual,
//! eps_theta(z_k, k) = eps_G(z_k, k) + r_theta(z_k, k).
//!
//! Under eq. (30), z_0 ~ N(mu, Sigma) gives z_k ~ N(sqrt(abar_k) mu, abar_k Sigma + (1 - abar_k) I),
//! so the optimal predictor E[eps | z_k] = sqrt(1 - abar_k) Cov(z_k)^{-1} (z_k - sqrt(abar_k) mu).
//! With Sigma = U diag(lambda) U^T this is
//!
//!   eps_G(z_k, k) = U diag(sqrt(1 - abar_k) / (abar_k lambda_i + 1 - abar_k)) U^T (z_k - sqrt(abar_k) mu),
//!
//! linear in z_k, so it carries gradients to z_k like any network. Its simple loss (eq. 64) is
//! (1/K) sum_k sum_i abar_k lambda_i / (abar_k lambda_i + 1 - abar_k) in closed form
//! ([`GaussianBase::simple_loss`]). Why: on IPLD's mnist5k cloud this Gaussian's loss equals
//! what a DiT prior reached after 4,200 AdamW steps, and its samples decode to better digits
//! than that prior's after 1,200 (docs/results/mnist5k); a network started at zero on top of it
//! spends its steps on the non-Gaussian part.

use candle_core::{DType, Device, Tensor};

use crate::{DiffusionError, EpsModel, NoiseSchedule};

/// N(mu, Sigma) fitted to data, as its mean and Sigma's eigen-decomposition (f64).
#[derive(Debug, Clone, PartialEq)]
pub struct GaussianFit {
    /// mu \[d\].
    pub mean: Vec<f64>,
    /// Sigma's eigenvalues lambda \[d\] (clamped at 0).
    pub eigenvalues: Vec<f64>,
    /// Sigma's eigenvectors, row-major [d, d]: column i belongs to `eigenvalues[i]`.
    pub eigenvectors: Vec<f64>,
}

impl GaussianFit {
    /// The sample mean and covariance (divisor n - 1) of `rows` ([n, d], row-major), decomposed.
    pub fn of_rows(rows: &[f32], d: usize) -> Result<Self, DiffusionError> {
        if d == 0 || !rows.len().is_multiple_of(d) || rows.len() / d < 2 {
            return Err(DiffusionError::Input(format!(
                "a Gaussian fit needs at least 2 rows of dimension {d}, got {} values",
                rows.len()
            )));
        }
        if let Some(i) = rows.iter().position(|v| !v.is_finite()) {
            return Err(DiffusionError::Input(format!(
                "a Gaussian fit got a non-finite value at row {}, column {}",
                i / d,
                i % d
            )));
        }
        let n = rows.len() / d;
        let mut mean = vec![0.0f64; d];
        for r in rows.chunks_exact(d) {
            mean.iter_mut().zip(r).for_each(|(m, &v)| *m += v as f64);
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let mut cov = nalgebra::DMatrix::<f64>::zeros(d, d);
        let mut c = vec![0.0f64; d];
        for r in rows.chunks_exact(d) {
            c.iter_mut()
                .zip(r.iter().zip(&mean))
                .for_each(|(ci, (&v, m))| *ci = v as f64 - m);
            cov.ger(
                1.0,
                &nalgebra::DVector::from_column_slice(&c),
                &nalgebra::DVector::from_column_slice(&c),
                1.0,
            );
        }
        cov /= (n - 1) as f64;
        let eig = nalgebra::SymmetricEigen::new(cov);
        let eigenvalues = eig.eigenvalues.iter().map(|l| l.max(0.0)).collect();
        // nalgebra is column-major; store row-major.
        let u = &eig.eigenvectors;
        let eigenvectors = (0..d)
            .flat_map(|r| (0..d).map(move |c| u[(r, c)]))
            .collect();
        Ok(Self {
            mean,
            eigenvalues,
            eigenvectors,
        })
    }

    /// The dimension d.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// Checks the parts' shapes and values (e.g. after loading them from a file).
    pub fn validate(&self) -> Result<(), DiffusionError> {
        let d = self.dim();
        let bad = d == 0
            || self.eigenvalues.len() != d
            || self.eigenvectors.len() != d * d
            || self
                .mean
                .iter()
                .chain(&self.eigenvectors)
                .any(|v| !v.is_finite())
            || self
                .eigenvalues
                .iter()
                .any(|l| !(*l >= 0.0 && l.is_finite()));
        match bad {
            true => Err(DiffusionError::Input(format!(
                "a Gaussian fit needs a finite mean of length d = {d}, d finite eigenvalues >= 0 and d x d finite eigenvectors (got {} and {})",
                self.eigenvalues.len(),
                self.eigenvectors.len()
            ))),
            false => Ok(()),
        }
    }
}

/// The exact eps of the fitted Gaussian under a schedule (module docs), on a device.
#[derive(Debug, Clone)]
pub struct GaussianBase {
    fit: GaussianFit,
    alpha_bars: Vec<f64>,
    mean: Tensor,
    u: Tensor,
    ut: Tensor,
    lambda: Tensor,
}

impl GaussianBase {
    /// The base for `fit` under `schedule`, its tensors on `device` (f32).
    pub fn new(
        schedule: &NoiseSchedule,
        fit: GaussianFit,
        device: &Device,
    ) -> Result<Self, DiffusionError> {
        fit.validate()?;
        let d = fit.dim();
        let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let mean = Tensor::from_vec(f32s(&fit.mean), (1, d), device)?;
        let u = Tensor::from_vec(f32s(&fit.eigenvectors), (d, d), device)?;
        let ut = u.t()?.contiguous()?;
        let lambda = Tensor::from_vec(f32s(&fit.eigenvalues), (1, d), device)?;
        Ok(Self {
            fit,
            alpha_bars: schedule.alpha_bars().to_vec(),
            mean,
            u,
            ut,
            lambda,
        })
    }

    /// The fit it was built from.
    pub fn fit(&self) -> &GaussianFit {
        &self.fit
    }

    /// The simple loss (eq. 64, summed over dimensions, k uniform on 1..K) of this predictor on
    /// its own Gaussian: (1/K) sum_k sum_i abar_k lambda_i / (abar_k lambda_i + 1 - abar_k).
    pub fn simple_loss(&self) -> f64 {
        let per_k = |a: f64| {
            self.fit
                .eigenvalues
                .iter()
                .map(|l| a * l / (a * l + 1.0 - a))
                .sum::<f64>()
        };
        self.alpha_bars.iter().map(|&a| per_k(a)).sum::<f64>() / self.alpha_bars.len() as f64
    }

    /// eps_G for the rows of `z` ([B, d]), row b at abar = `a[b]`.
    fn eps_rows(&self, z: &Tensor, a: &[f64]) -> candle_core::Result<Tensor> {
        let (_, d) = z.dims2()?;
        if d != self.fit.dim() {
            candle_core::bail!(
                "the Gaussian base has dimension {} but z_k is {:?}",
                self.fit.dim(),
                z.dims()
            );
        }
        let dev = z.device();
        let col = |f: &dyn Fn(f64) -> f64| -> candle_core::Result<Tensor> {
            Tensor::from_vec(
                a.iter().map(|&x| f(x) as f32).collect::<Vec<_>>(),
                (a.len(), 1),
                dev,
            )?
            .to_dtype(z.dtype())
        };
        let (sa, s1, ab, one_minus) = (
            col(&|x| x.sqrt())?,
            col(&|x| (1.0 - x).sqrt())?,
            col(&|x| x)?,
            col(&|x| 1.0 - x)?,
        );
        let centred = z.broadcast_sub(&sa.broadcast_mul(&self.mean.to_dtype(z.dtype())?)?)?;
        let y = centred.matmul(&self.u.to_dtype(z.dtype())?)?;
        let denom = ab
            .broadcast_mul(&self.lambda.to_dtype(z.dtype())?)?
            .broadcast_add(&one_minus)?;
        let scale = denom.recip()?.broadcast_mul(&s1)?;
        (y * scale)?.matmul(&self.ut.to_dtype(z.dtype())?)
    }
}

impl EpsModel for GaussianBase {
    fn predict_eps(&self, z_k: &Tensor, k: &Tensor) -> candle_core::Result<Tensor> {
        let ks: Vec<u32> = k.to_dtype(DType::U32)?.to_vec1()?;
        let a: Vec<f64> = ks
            .iter()
            .map(|&k| self.alpha_bars[k as usize - 1])
            .collect();
        self.eps_rows(z_k, &a)
    }

    fn predict_eps_uniform(&self, z_k: &Tensor, k: usize) -> candle_core::Result<Tensor> {
        let a = vec![self.alpha_bars[k - 1]; z_k.dim(0)?];
        self.eps_rows(z_k, &a)
    }
}

/// eps_G + r_theta: a network that predicts the residual over a [`GaussianBase`] (module docs).
pub struct ResidualEps<'a> {
    /// The Gaussian's exact eps.
    pub base: &'a GaussianBase,
    /// The learned residual.
    pub residual: &'a dyn EpsModel,
}

impl EpsModel for ResidualEps<'_> {
    fn predict_eps(&self, z_k: &Tensor, k: &Tensor) -> candle_core::Result<Tensor> {
        self.base.predict_eps(z_k, k)? + self.residual.predict_eps(z_k, k)?
    }

    fn predict_eps_uniform(&self, z_k: &Tensor, k: usize) -> candle_core::Result<Tensor> {
        self.base.predict_eps_uniform(z_k, k)? + self.residual.predict_eps_uniform(z_k, k)?
    }
}
