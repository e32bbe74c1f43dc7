//! The exponential moving average of the prior's parameters theta that samples are drawn with
//! (`train.ema`, Table 2), and the network it is evaluated in. Saved as `ema/<name>` for each
//! parameter of theta.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use ipld_diffusion::{Ema, EmaConfig};

use crate::checkpoint::{CheckpointReader, CheckpointWriter, Checkpointed, sorted_vars};
use crate::config::PriorConfig;
use crate::error::TrainError;
use crate::nets::PriorNet;

/// The EMA of theta, with the names of theta's parameters in their sorted order.
pub(crate) struct EmaPrior {
    ema: Ema,
    names: Vec<String>,
}

/// theta's parameter tensors in name order (the EMA's order).
pub(crate) fn params(theta: &VarMap) -> Vec<Tensor> {
    sorted_vars(theta)
        .into_iter()
        .map(|(_, v)| v.as_tensor().clone())
        .collect()
}

impl EmaPrior {
    /// An average starting at theta's current values.
    pub fn new(cfg: EmaConfig, theta: &VarMap) -> Result<Self, TrainError> {
        Ok(Self {
            ema: Ema::new(cfg, &params(theta))?,
            names: sorted_vars(theta).into_iter().map(|(n, _)| n).collect(),
        })
    }

    /// Folds theta after step `t` into the average.
    pub fn update(&mut self, t: u64, theta: &VarMap) -> Result<(), TrainError> {
        Ok(self.ema.update(t, &params(theta))?)
    }

    /// Sets the averages of the parameters named `prefix...` to zero (a Gaussian base's start).
    pub fn zero(&mut self, prefix: &str) -> Result<(), TrainError> {
        let shadow = self
            .names
            .iter()
            .zip(self.ema.shadow())
            .map(|(n, t)| match n.starts_with(prefix) {
                true => t.zeros_like(),
                false => Ok(t.clone()),
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        self.ema = Ema::from_shadow(*self.ema.config(), shadow)?;
        Ok(())
    }

    /// A fresh prior network (`cfg`, latents of dimension `dz`) holding the averaged weights;
    /// the training state is not touched.
    pub fn network(
        &self,
        cfg: &PriorConfig,
        dz: usize,
        device: &Device,
    ) -> Result<PriorNet, TrainError> {
        let vars = VarMap::new();
        let net = PriorNet::new(
            cfg,
            dz,
            &vars,
            VarBuilder::from_varmap(&vars, DType::F32, device).pp("eps"),
            0,
        )?;
        for ((_, var), avg) in sorted_vars(&vars).iter().zip(self.ema.shadow()) {
            var.set(avg)?;
        }
        Ok(net)
    }
}

impl Checkpointed for EmaPrior {
    fn save(&self, prefix: &str, out: &mut CheckpointWriter) -> Result<(), TrainError> {
        for (name, t) in self.names.iter().zip(self.ema.shadow()) {
            out.tensor(format!("{prefix}/{name}"), t.clone());
        }
        Ok(())
    }

    fn load(&mut self, prefix: &str, ck: &CheckpointReader) -> Result<(), TrainError> {
        let mut shadow = Vec::with_capacity(self.names.len());
        for (name, t) in self.names.iter().zip(self.ema.shadow()) {
            let key = format!("{prefix}/{name}");
            let saved = ck.tensor(&key, " (train.ema is set)")?;
            if saved.dims() != t.dims() {
                return Err(ck.problem(format!(
                    "`{key}` has shape {:?}, expected {:?}",
                    saved.dims(),
                    t.dims()
                )));
            }
            shadow.push(saved.clone());
        }
        self.ema = Ema::from_shadow(*self.ema.config(), shadow)?;
        Ok(())
    }
}
