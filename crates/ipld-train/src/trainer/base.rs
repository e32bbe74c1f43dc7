//! The refit's Gaussian base (`train.prior_refit.gaussian_base`, not in the paper): when the
//! refit begins, N(mu, Sigma) is fitted to the whole frozen cloud in the prior's units, the
//! network's output layer (and its EMA copy) restarts at zero, and from then on the prior's eps
//! is the Gaussian's exact eps plus the network's (`ipld_diffusion::GaussianBase`, module docs
//! there). Saved as `prior_base/{mean, eigenvalues, eigenvectors}` (f64).

use candle_core::{DType, Device, Tensor};
use ipld_data::Dataset;
use ipld_diffusion::{EpsModel, GaussianBase, GaussianFit, ResidualEps};

use super::Trainer;
use crate::checkpoint::{CheckpointReader, CheckpointWriter};
use crate::error::TrainError;
use crate::nets::PriorNet;

/// The prior's eps as the losses see it: the network, plus the Gaussian base once the refit
/// has fitted one.
#[derive(Clone, Copy)]
pub struct PriorEps<'a> {
    /// The epsilon-network (theta).
    pub net: &'a PriorNet,
    /// The refit's Gaussian base.
    pub base: Option<&'a GaussianBase>,
}

impl EpsModel for PriorEps<'_> {
    fn predict_eps(&self, z_k: &Tensor, k: &Tensor) -> candle_core::Result<Tensor> {
        match self.base {
            Some(base) => ResidualEps {
                base,
                residual: self.net,
            }
            .predict_eps(z_k, k),
            None => self.net.predict_eps(z_k, k),
        }
    }

    fn predict_eps_uniform(&self, z_k: &Tensor, k: usize) -> candle_core::Result<Tensor> {
        match self.base {
            Some(base) => ResidualEps {
                base,
                residual: self.net,
            }
            .predict_eps_uniform(z_k, k),
            None => self.net.predict_eps_uniform(z_k, k),
        }
    }
}

/// The base's tensors under `prior_base/`.
const KEYS: [&str; 3] = ["mean", "eigenvalues", "eigenvectors"];

impl Trainer {
    /// The refit's Gaussian base, if it has been fitted.
    pub fn gaussian_base(&self) -> Option<&GaussianBase> {
        self.base.as_ref()
    }

    /// Whether this refit step must first fit the base: the config asks for one and none exists.
    pub(super) fn base_due(&self) -> bool {
        self.base.is_none() && self.cfg.train.prior_refit.is_some_and(|r| r.gaussian_base)
    }

    /// Fits the base to every point's particles (gathered from all ranks, so every rank fits the
    /// same bits) in the prior's units, and zeroes theta's output layer and its EMA copy so the
    /// prior's eps starts as the Gaussian's. Returns the Gaussian's simple loss.
    pub(super) fn fit_gaussian_base(&mut self) -> Result<f64, TrainError> {
        let all: Vec<usize> = (0..self.data.len()).collect();
        let Some((z, _)) = self.gather_particles(&all)? else {
            return Err(TrainError::Invalid(
                "train.prior_refit.gaussian_base needs a particle cloud".into(),
            ));
        };
        let d = self.cfg.data.latent_dim;
        let s = self.cfg.diffusion.latent_scale;
        let rows: Vec<f32> = z.iter().map(|v| (*v as f64 / s) as f32).collect();
        let fit = GaussianFit::of_rows(&rows, d)?;
        let base = GaussianBase::new(&self.schedule, fit, &self.device)?;
        let loss = base.simple_loss();
        let prefix = match &self.prior {
            Some(p) => format!("eps.{}.", p.net.output_layer()),
            None => return Err(TrainError::Invalid("a Gaussian base needs a prior".into())),
        };
        if let Some(p) = &self.prior {
            for (name, var) in crate::checkpoint::sorted_vars(&p.vars) {
                if name.starts_with(&prefix) {
                    var.set(&var.zeros_like()?)?;
                }
            }
        }
        if let Some(ema) = &mut self.ema {
            ema.zero(&prefix)?;
        }
        self.base = Some(base);
        Ok(loss)
    }

    /// Writes the base's fit, if any.
    pub(super) fn save_base(&self, out: &mut CheckpointWriter) -> Result<(), TrainError> {
        if let Some(b) = &self.base {
            let f = b.fit();
            let d = f.dim();
            let t = |v: &[f64], shape: &[usize]| Tensor::from_slice(v, shape, &Device::Cpu);
            let parts = [
                t(&f.mean, &[d])?,
                t(&f.eigenvalues, &[d])?,
                t(&f.eigenvectors, &[d, d])?,
            ];
            for (key, part) in KEYS.iter().zip(parts) {
                out.tensor(format!("prior_base/{key}"), part);
            }
        }
        Ok(())
    }

    /// Restores the base from `ck` and checks it against the config: a refit that has begun
    /// (`joint` < step) has a base exactly when `train.prior_refit.gaussian_base` says so.
    pub(super) fn load_base(
        &mut self,
        ck: &CheckpointReader,
        joint: u64,
    ) -> Result<(), TrainError> {
        let d = self.cfg.data.latent_dim;
        let saved = ck.get(&format!("prior_base/{}", KEYS[0])).is_some();
        self.base = match saved {
            false => None,
            true => {
                let read = |key: &str, dims: &[usize]| -> Result<Vec<f64>, TrainError> {
                    let t = ck.tensor_shaped(&format!("prior_base/{key}"), dims)?;
                    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?)
                };
                let fit = GaussianFit {
                    mean: read(KEYS[0], &[d])?,
                    eigenvalues: read(KEYS[1], &[d])?,
                    eigenvectors: read(KEYS[2], &[d, d])?,
                };
                fit.validate().map_err(|e| ck.problem(e.to_string()))?;
                Some(GaussianBase::new(&self.schedule, fit, &self.device)?)
            }
        };
        let wanted = self.cfg.train.prior_refit.is_some_and(|r| r.gaussian_base);
        if joint < self.step && wanted != saved {
            return Err(ck.problem(Self::base_change(wanted)));
        }
        Ok(())
    }

    /// The refusal of a change of `train.prior_refit.gaussian_base` once the refit has begun.
    pub(super) fn base_change(wanted: bool) -> String {
        format!(
            "the run's prior refit began {} a Gaussian base, so train.prior_refit.gaussian_base must stay {} (got {wanted})",
            if wanted { "without" } else { "with" },
            !wanted
        )
    }
}
