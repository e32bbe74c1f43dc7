//! A trained network: its parameters (a `VarMap`), the network built on them, and their AdamW.
//! Used for the prior's theta, the decoder's phi and DiffusionVAE's encoder; in a checkpoint its
//! parameters are `<name>/...` and its optimiser `opt_<name>/...` with `opt_<name>_steps`.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};

use crate::checkpoint::{CheckpointReader, CheckpointWriter, Checkpointed, sorted_vars};
use crate::error::TrainError;
use crate::optim::{AdamW, AdamWConfig};

/// A network with its parameters and optimiser.
pub(crate) struct Trained<N> {
    /// The parameters, named by their VarBuilder paths.
    pub vars: VarMap,
    /// The network built on them.
    pub net: N,
    /// AdamW over them.
    pub opt: AdamW,
}

impl<N> Trained<N> {
    /// Builds the network with `build(vars, vb)` under the VarBuilder prefix `path` (the
    /// parameters' names, e.g. `eps`), then its optimiser.
    pub fn new(
        device: &Device,
        path: &str,
        opt: AdamWConfig,
        build: impl FnOnce(&VarMap, VarBuilder) -> Result<N, ipld_models::ModelError>,
    ) -> Result<Self, TrainError> {
        let vars = VarMap::new();
        let net = build(
            &vars,
            VarBuilder::from_varmap(&vars, DType::F32, device).pp(path),
        )?;
        let opt = AdamW::new(opt, sorted_vars(&vars))?;
        Ok(Self { vars, net, opt })
    }

    /// One AdamW step with learning rate `lr` on the gradients in `grads`.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<(), TrainError> {
        Ok(self.opt.step(grads, lr)?)
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
