//! A trained network: its parameters (a `VarMap`), the network built on them, and their update
//! (AdamW, or the published PGD's and MPGD's [`PhiUpdate`] for their decoder). Used for the
//! prior's theta, the decoder's phi and DiffusionVAE's encoder; in a checkpoint its parameters
//! are `<name>/...` and its optimiser `opt_<name>/...` with `opt_<name>_steps`.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};

use crate::checkpoint::{CheckpointReader, CheckpointWriter, Checkpointed, sorted_vars};
use crate::error::TrainError;
use crate::optim::{AdamW, AdamWConfig, Optimizer, PhiUpdate, PhiUpdateConfig};

/// A network with its parameters and optimiser.
pub(crate) struct Trained<N> {
    /// The parameters, named by their VarBuilder paths.
    pub vars: VarMap,
    /// The network built on them.
    pub net: N,
    /// Their update.
    pub opt: Optimizer,
}

/// Which update a [`Trained`] network gets.
#[derive(Debug, Clone, Copy)]
pub(crate) enum OptimizerChoice {
    /// AdamW.
    AdamW(AdamWConfig),
    /// The published PGD's or MPGD's decoder update.
    Phi(PhiUpdateConfig),
}

impl<N> Trained<N> {
    /// Builds the network with `build(vars, vb)` under the VarBuilder prefix `path` (the
    /// parameters' names, e.g. `eps`), then its optimiser.
    pub fn new(
        device: &Device,
        path: &str,
        opt: OptimizerChoice,
        build: impl FnOnce(&VarMap, VarBuilder) -> Result<N, ipld_models::ModelError>,
    ) -> Result<Self, TrainError> {
        let vars = VarMap::new();
        let net = build(
            &vars,
            VarBuilder::from_varmap(&vars, DType::F32, device).pp(path),
        )?;
        let opt = match opt {
            OptimizerChoice::AdamW(c) => Optimizer::AdamW(AdamW::new(c, sorted_vars(&vars))?),
            OptimizerChoice::Phi(c) => Optimizer::Phi(PhiUpdate::new(c, sorted_vars(&vars))?),
        };
        Ok(Self { vars, net, opt })
    }

    /// One AdamW step with learning rate `lr` on the gradients in `grads`.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<(), TrainError> {
        match &mut self.opt {
            Optimizer::AdamW(o) => Ok(o.step(grads, lr)?),
            Optimizer::Phi(_) => Err(TrainError::Invalid(
                "an AdamW step on a network that PGD/MPGD's update trains".into(),
            )),
        }
    }

    /// PGD's or MPGD's update (None for an AdamW network).
    pub fn phi_update(&mut self) -> Option<&mut PhiUpdate> {
        match &mut self.opt {
            Optimizer::Phi(o) => Some(o),
            Optimizer::AdamW(_) => None,
        }
    }
}

impl<N> Checkpointed for Trained<N> {
    fn save(&self, prefix: &str, out: &mut CheckpointWriter) -> Result<(), TrainError> {
        Checkpointed::save(&self.vars, prefix, out)?;
        self.opt.save(&format!("opt_{prefix}"), out)
    }

    fn load(&mut self, prefix: &str, ck: &CheckpointReader) -> Result<(), TrainError> {
        Checkpointed::load(&mut self.vars, prefix, ck)?;
        self.opt.load(&format!("opt_{prefix}"), ck)
    }
}
