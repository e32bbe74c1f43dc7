//! The training state's checkpoint: each component saves and restores itself
//! ([`crate::checkpoint::Checkpointed`]) under its name, and the state adds the step counters,
//! the seed and the method. Layout (unchanged by the architecture refactor, so checkpoints from
//! before it load): `theta/`, `opt_theta/` (+ `opt_theta_steps`), `phi/`, `opt_phi/`
//! (+ `opt_phi_steps`), `ema/`, then `particles/` (+ `particles_start`) or `encoder/`,
//! `opt_encoder/` (+ `opt_encoder_steps`), and `step`, `joint_steps`, `seed`, `method`, `rng`.
//!
//! With more than one rank (issue 26) the particles leave the main file: each rank writes its
//! slice to [`particle_shard_file`] and the main file, written by rank 0 after every shard file
//! is in place, names them by `particle_shards` (the rank count) and its step; the main file's
//! rename is what commits a checkpoint. Any rank count reads either layout, re-sharding.

use std::path::Path;

use candle_core::{Device, Tensor};
use ipld_data::{Dataset, InMemoryDataset};

use super::Trainer;
use crate::checkpoint::{CheckpointReader, CheckpointWriter, Checkpointed};
use crate::error::TrainError;

impl Trainer {
    /// The checkpoint as safetensors bytes: every tensor plus metadata (step, optimiser steps,
    /// seed, and the rule that regenerates all random draws from them).
    pub fn checkpoint_bytes(&self) -> Result<Vec<u8>, TrainError> {
        let mut out = CheckpointWriter::new(self.step);
        if let Some(prior) = &self.prior {
            prior.save("theta", &mut out)?;
        }
        self.decoder.save("phi", &mut out)?;
        if let Some(ema) = &self.ema {
            ema.save("ema", &mut out)?;
        }
        self.save_base(&mut out)?;
        match self.sharded() {
            false => self.latents.save("particles", &mut out)?,
            true => {
                out.meta("particle_shards", self.comm.size());
                out.meta("particles_start", 0);
                out.meta("opt_encoder_steps", 0);
            }
        }
        let norm = &self.normalizer;
        out.meta("data_normalize", norm.kind().name());
        if !norm.is_identity() {
            let vec = |v: &[f32]| Tensor::from_slice(v, v.len(), &Device::Cpu);
            out.tensor("data_normalize/shift".into(), vec(norm.shift())?);
            out.tensor("data_normalize/scale".into(), vec(norm.scale())?);
        }
        out.meta("joint_steps", self.joint_steps());
        out.meta("seed", self.cfg.seed);
        out.meta("method", self.cfg.method.name());
        out.meta(
            "rng",
            "counter-based: every draw is a function of (seed, step)",
        );
        out.to_bytes()
    }

    /// Whether the particles are saved in per-rank files (more than one rank, with particles).
    pub fn sharded(&self) -> bool {
        self.comm.size() > 1 && self.latents.cloud().is_some()
    }

    /// This rank's particle file for a sharded checkpoint ([`particle_shard_file`]): its slice
    /// of the cloud, `particles/...` as in a one-process checkpoint with `particles_start` at
    /// the slice's first point.
    pub fn particle_shard_bytes(&self) -> Result<Vec<u8>, TrainError> {
        let mut out = CheckpointWriter::new(self.step);
        self.latents.save("particles", &mut out)?;
        out.meta("particle_shard", self.comm.rank());
        out.meta("particle_shards", self.comm.size());
        out.meta("points", self.data.len());
        out.to_bytes()
    }

    /// Restores the state saved in `path` (written by [`Trainer::checkpoint_bytes`], with the
    /// particle files beside it when the run was sharded).
    pub fn load_checkpoint(&mut self, path: &Path) -> Result<(), TrainError> {
        let ck = CheckpointReader::open(path, &self.device)?;
        self.check_method(&ck)?;
        self.check_normalizer(&ck)?;
        if let Some(prior) = &mut self.prior {
            prior.load("theta", &ck)?;
        }
        self.decoder.load("phi", &ck)?;
        if let Some(ema) = &mut self.ema {
            ema.load("ema", &ck)?;
        }
        match ck.meta_str("particle_shards") {
            Some(_) if self.latents.cloud().is_some() => {
                let (ranks, step) = (ck.meta_u64("particle_shards")? as usize, ck.step()?);
                let dir = path.parent().unwrap_or(Path::new("."));
                let files = (0..ranks)
                    .map(|r| {
                        CheckpointReader::open(
                            &particle_shard_file(dir, step, r, ranks),
                            &Device::Cpu,
                        )
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let refs: Vec<&CheckpointReader> = files.iter().collect();
                self.latents
                    .load_rows("particles", &refs, self.data.len())?;
            }
            _ => self.latents.load("particles", &ck)?,
        }
        self.step = ck.step()?;
        // Older checkpoints predate the prior refit: all their steps were joint steps.
        let joint = match ck.meta_str("joint_steps") {
            Some(_) => ck.meta_u64("joint_steps")?,
            None => self.step,
        };
        self.check_joint_steps(joint).map_err(|e| ck.problem(e))?;
        self.load_base(&ck, joint)?;
        let (cfg, m) = (&self.cfg, self.data.len());
        self.latents
            .replay_noise_variances(joint, &cfg.particles.update, |s| {
                super::schedule::step_context(cfg, m, s)
            })?;
        let visits = super::schedule::visit_counts(cfg, m, joint);
        self.latents.set_visits(&visits[self.local_rows()])?;
        self.latents
            .set_caught_up(&super::schedule::caught_up(cfg, m, joint))?;
        Ok(())
    }

    /// Re-expresses the data in the units of the checkpoint in `path` (its normalisation
    /// statistics replace the ones fitted here), so a run resumed on changed data
    /// (`--accept-data-change`) keeps the units its networks were trained in.
    pub fn adopt_checkpoint_normalizer(&mut self, path: &Path) -> Result<(), TrainError> {
        let ck = CheckpointReader::open(path, &self.device)?;
        if self.check_normalizer(&ck).is_ok() || self.normalizer.is_identity() {
            return Ok(());
        }
        let dim = self.data.dim();
        let stat = |name: &str| -> Result<Vec<f32>, TrainError> {
            Ok(ck
                .tensor_shaped(&format!("data_normalize/{name}"), &[dim])?
                .to_vec1::<f32>()?)
        };
        let saved = ipld_data::Normalizer::from_parts(
            self.normalizer.kind(),
            stat("shift")?,
            stat("scale")?,
        )
        .map_err(|e| ck.problem(e.to_string()))?;
        let mut values = self.data.as_slice().to_vec();
        self.normalizer.invert(&mut values);
        saved.apply(&mut values);
        self.data = InMemoryDataset::new(values, self.data.len(), dim, "the training data")?;
        self.normalizer = saved;
        Ok(())
    }

    /// The checkpoint's `data.normalize` and its statistics must be what this state fitted to
    /// the data: otherwise the networks were trained in other units. Checkpoints from before the
    /// key trained on the raw data.
    fn check_normalizer(&self, ck: &CheckpointReader) -> Result<(), TrainError> {
        let saved = ck.meta_str("data_normalize").unwrap_or("none");
        let now = self.normalizer.kind().name();
        if saved != now {
            return Err(ck.problem(format!(
                "was trained with data.normalize = \"{saved}\" but the config resolves to \"{now}\"; set `normalize = \"{saved}\"` under [data] in the run's config.toml"
            )));
        }
        if self.normalizer.is_identity() {
            return Ok(());
        }
        let dim = self.data.dim();
        for (name, now) in [
            ("shift", self.normalizer.shift()),
            ("scale", self.normalizer.scale()),
        ] {
            let key = format!("data_normalize/{name}");
            let saved = ck.tensor_shaped(&key, &[dim])?.to_vec1::<f32>()?;
            if let Some(i) = (0..dim).find(|&i| saved[i].to_bits() != now[i].to_bits()) {
                return Err(ck.problem(format!(
                    "the data differ from the data this run was trained on: feature {i}'s \
                     normalisation {name} was {} and is now {}",
                    saved[i], now[i]
                )));
            }
        }
        Ok(())
    }

    /// The checkpoint's method must be the config's. Before issue 21, `pgd` and `mpgd` named IPLD
    /// with the `langevin` and `kinetic-langevin` rules (their configs now read as `ipld`): such a
    /// checkpoint, which has a prior (`theta/`), loads as IPLD with that rule.
    fn check_method(&self, ck: &CheckpointReader) -> Result<(), TrainError> {
        use ipld_particles::RuleKind;
        let method = self.cfg.method.name();
        let saved = ck.meta_str("method").unwrap_or("?");
        let has_prior = !ck.under("theta").is_empty();
        let old_name = match self.cfg.particles.update.kind() {
            RuleKind::Langevin => "pgd",
            RuleKind::KineticLangevin => "mpgd",
            _ => "",
        };
        let renamed = method == "ipld" && saved == old_name && has_prior;
        if self.cfg.method.is_published() && has_prior {
            return Err(ck.problem(format!(
                "was written by IPLD (it has a prior network, `theta/`): `{saved}` named IPLD with the {} rule before the published PGD and MPGD existed; resume it with method = \"ipld\"",
                if saved == "mpgd" { "kinetic-langevin" } else { "langevin" }
            )));
        }
        if saved != method && !renamed {
            return Err(ck.problem(format!(
                "was written by method `{saved}`{}, but the config says `{method}`",
                if saved == old_name && !has_prior {
                    " (the published one, without a prior network)"
                } else {
                    ""
                }
            )));
        }
        Ok(())
    }
}

/// Rank `rank` of `ranks`' particle file of the checkpoint at `step` in the run directory `dir`.
pub fn particle_shard_file(dir: &Path, step: u64, rank: usize, ranks: usize) -> std::path::PathBuf {
    dir.join(format!("particles-{step:08}-{rank}-of-{ranks}.safetensors"))
}
