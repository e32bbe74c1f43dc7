//! The minibatch schedule as pure functions of the config and the step: each epoch's
//! permutation of the M points, the step's particle context (KL weight gamma_t of A.4.1, step
//! size of B.2), and what a resumed state recomputes from the minibatches so far instead of
//! saving it (visit counts; MPGD's caught-up steps).

use ipld_particles::StepContext;
use rand::seq::SliceRandom;

use crate::config::RunConfig;
use crate::streams::Stream;

/// Effective minibatch size min(|B|, M) and steps per epoch floor(M / |B|) for `m` points.
pub(super) fn batching(cfg: &RunConfig, m: usize) -> (usize, u64) {
    let b = cfg.train.batch_size.min(m);
    (b, (m / b).max(1) as u64)
}

/// Epoch `epoch`'s permutation of the `m` points; its first |B| floor(M / |B|) entries are the
/// epoch's minibatches.
pub(super) fn epoch_permutation(seed: u64, m: usize, epoch: u64) -> Vec<usize> {
    let mut perm: Vec<usize> = (0..m).collect();
    perm.shuffle(&mut Stream::Batch.rng(seed, epoch));
    perm
}

/// Calls `f(t, batch)` for each of the first `steps` minibatches, in order (t from 0).
fn for_each_minibatch(cfg: &RunConfig, m: usize, steps: u64, mut f: impl FnMut(u64, &[usize])) {
    let (b, per_epoch) = batching(cfg, m);
    for epoch in 0..steps.div_ceil(per_epoch) {
        let done = (steps - epoch * per_epoch).min(per_epoch) as usize;
        let perm = epoch_permutation(cfg.seed, m, epoch);
        for (pos, batch) in perm[..done * b].chunks(b).enumerate() {
            f(epoch * per_epoch + pos as u64, batch);
        }
    }
}

/// How many of the first `steps` minibatches each of the `m` points was in.
pub(super) fn visit_counts(cfg: &RunConfig, m: usize, steps: u64) -> Vec<u32> {
    let mut visits = vec![0u32; m];
    for_each_minibatch(cfg, m, steps, |_, batch| {
        for &i in batch {
            visits[i] += 1;
        }
    });
    visits
}

/// MPGD's catch-up state after the first `steps` minibatches: per point, the step after its last
/// visit (0 if never visited).
pub(super) fn caught_up(cfg: &RunConfig, m: usize, steps: u64) -> Vec<u64> {
    let mut after = vec![0u64; m];
    for_each_minibatch(cfg, m, steps, |t, batch| {
        for &i in batch {
            after[i] = t + 1;
        }
    });
    after
}

/// The particle update's context at step `t` for `m` points.
pub(super) fn step_context(cfg: &RunConfig, m: usize, t: u64) -> StepContext {
    let (b, per_epoch) = batching(cfg, m);
    let epoch = t / per_epoch;
    StepContext {
        step: t,
        epoch,
        // The published PGD and MPGD have no KL weight: their noise is at temperature 1.
        gamma: match cfg.method.is_published() {
            true => 1.0,
            false => cfg.train.kl.gamma(t),
        },
        step_size: cfg.particles.step_size.at_epoch(epoch),
        batch_size: b,
        total_points: m,
        noise_scale: cfg.particles.noise_scale,
    }
}
