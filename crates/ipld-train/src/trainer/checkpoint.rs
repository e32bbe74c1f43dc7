//! The training state's checkpoint: each component saves and restores itself
//! ([`crate::checkpoint::Checkpointed`]) under its name, and the state adds the step counters,
//! the seed and the method. Layout (unchanged by the architecture refactor, so checkpoints from
//! before it load): `theta/`, `opt_theta/` (+ `opt_theta_steps`), `phi/`, `opt_phi/`
//! (+ `opt_phi_steps`), `ema/`, then `particles/` (+ `particles_start`) or `encoder/`,
//! `opt_encoder/` (+ `opt_encoder_steps`), and `step`, `joint_steps`, `seed`, `method`, `rng`.

use std::path::Path;

use ipld_data::Dataset;

use super::Trainer;
use crate::checkpoint::{CheckpointReader, CheckpointWriter, Checkpointed};
use crate::error::TrainError;

impl Trainer {
    /// The checkpoint as safetensors bytes: every tensor plus metadata (step, optimiser steps,
    /// seed, and the rule that regenerates all random draws from them).
    pub fn checkpoint_bytes(&self) -> Result<Vec<u8>, TrainError> {
        let mut out = CheckpointWriter::new(self.step);
        self.prior.save("theta", &mut out)?;
        self.decoder.save("phi", &mut out)?;
        if let Some(ema) = &self.ema {
            ema.save("ema", &mut out)?;
        }
        self.latents.save("particles", &mut out)?;
        out.meta("joint_steps", self.joint_steps());
        out.meta("seed", self.cfg.seed);
        out.meta("method", self.cfg.method.name());
        out.meta(
            "rng",
            "counter-based: every draw is a function of (seed, step)",
        );
        out.to_bytes()
    }

    /// Restores the state saved in `path` (written by [`Trainer::checkpoint_bytes`]).
    pub fn load_checkpoint(&mut self, path: &Path) -> Result<(), TrainError> {
        let ck = CheckpointReader::open(path, &self.device)?;
        let method = self.cfg.method.name();
        if ck.meta_str("method") != Some(method) {
            return Err(ck.problem(format!(
                "was written by method `{}`, but the config says `{method}`",
                ck.meta_str("method").unwrap_or("?"),
            )));
        }
        self.prior.load("theta", &ck)?;
        self.decoder.load("phi", &ck)?;
        if let Some(ema) = &mut self.ema {
            ema.load("ema", &ck)?;
        }
        self.latents.load("particles", &ck)?;
        self.step = ck.step()?;
        // Older checkpoints predate the prior refit: all their steps were joint steps.
        let joint = match ck.meta_str("joint_steps") {
            Some(_) => ck.meta_u64("joint_steps")?,
            None => self.step,
        };
        self.check_joint_steps(joint).map_err(|e| ck.problem(e))?;
        let (cfg, m) = (&self.cfg, self.data.len());
        self.latents
            .replay_noise_variances(joint, &cfg.particles.update, |s| {
                super::step_context(cfg, m, s)
            })?;
        self.latents
            .set_visits(&super::visit_counts(cfg, m, joint))?;
        Ok(())
    }
}
