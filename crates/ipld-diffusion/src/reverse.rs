//! The reverse-process sampler interface every sampler implements (k-diffusion's convention):
//! `sample(model, schedule, z_K, rng, progress) -> z_0`, and the progress report it makes after
//! each network evaluation.

use candle_core::Tensor;
use rand::RngCore;

use crate::{DiffusionError, EpsModel, NoiseSchedule};

/// Progress report passed to the callback after each network evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SamplerProgress {
    /// Network evaluations done so far (1-based).
    pub step: usize,
    /// Total network evaluations of this run.
    pub total: usize,
    /// The timestep k just evaluated.
    pub timestep: usize,
}

/// A reverse-process sampler.
pub trait Sampler {
    /// Runs the reverse process from `z_init` (a draw of z_K ~ N(0, I), any shape [B, ...]) to
    /// z_0, calling `progress` after every network evaluation.
    fn sample(
        &self,
        model: &dyn EpsModel,
        schedule: &NoiseSchedule,
        z_init: Tensor,
        rng: &mut dyn RngCore,
        progress: &mut dyn FnMut(SamplerProgress),
    ) -> Result<Tensor, DiffusionError>;

    /// Number of network evaluations a run takes under `schedule`.
    fn evaluations(&self, schedule: &NoiseSchedule) -> usize;
}
