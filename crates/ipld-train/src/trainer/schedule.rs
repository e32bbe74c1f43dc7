//! The minibatch schedule as pure functions of the config and the step: each epoch's
//! permutations and minibatches (`train.minibatches`: of the whole data, or per shard of a
//! contiguous slice), which shards, points and particle rows a rank owns (issue 26), the step's
//! particle context (KL weight gamma_t of A.4.1, step size of B.2), and what a resumed state
//! recomputes from the minibatches so far instead of saving it (visit counts; MPGD's caught-up
//! steps).

use std::ops::Range;

use ipld_particles::StepContext;
use rand::seq::SliceRandom;

use crate::config::{MinibatchDraw, RunConfig};
use crate::streams::{Stream, mix_seed};

/// Effective minibatch size min(|B|, M) and steps per epoch for `m` points.
pub(super) fn batching(cfg: &RunConfig, m: usize) -> (usize, u64) {
    let layout = ShardLayout::new(cfg, m);
    (layout.b, layout.steps_per_epoch())
}

/// How a minibatch splits into shards, and, under `per-shard` draws, which slice of the data
/// each shard draws from. Shard s covers minibatch positions `s b / S .. (s + 1) b / S` and data
/// rows `s M / S .. (s + 1) M / S`; rank r of R computes shards `r S / R .. (r + 1) S / R`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ShardLayout {
    /// Shards S (the config's, at most b).
    pub shards: usize,
    /// Points M.
    pub m: usize,
    /// Minibatch size b = min(|B|, M).
    pub b: usize,
    /// `train.shards` as configured (before the clamp to b).
    requested: usize,
    draw: MinibatchDraw,
    seed: u64,
}

impl ShardLayout {
    pub fn new(cfg: &RunConfig, m: usize) -> Self {
        let b = cfg.train.batch_size.min(m).max(1);
        Self {
            shards: cfg.train.shards.clamp(1, b),
            requested: cfg.train.shards,
            m,
            b,
            draw: cfg.train.minibatches,
            seed: cfg.seed,
        }
    }

    /// The same layout for minibatches of `b` points (the prior refit's).
    pub fn with_batch(self, b: usize) -> Self {
        let b = b.min(self.m).max(1);
        Self {
            shards: self.requested.clamp(1, b),
            b,
            ..self
        }
    }

    /// The same layout with `shards` shards (the tests compare shard counts on one state).
    pub fn with_shards(self, shards: usize) -> Self {
        Self {
            shards: shards.clamp(1, self.b),
            ..self
        }
    }

    /// Minibatch positions of shard `s`.
    pub fn part(&self, s: usize) -> Range<usize> {
        s * self.b / self.shards..(s + 1) * self.b / self.shards
    }

    /// Data rows shard `s` draws from (all of them for whole-data draws).
    pub fn slice(&self, s: usize) -> Range<usize> {
        match self.draw {
            MinibatchDraw::WholeData => 0..self.m,
            MinibatchDraw::PerShard => s * self.m / self.shards..(s + 1) * self.m / self.shards,
        }
    }

    /// Steps per epoch: floor(M / b), or under per-shard draws the fewest blocks any slice
    /// holds (at least 1).
    pub fn steps_per_epoch(&self) -> u64 {
        let blocks = match self.draw {
            MinibatchDraw::WholeData => self.m / self.b,
            MinibatchDraw::PerShard => (0..self.shards)
                .map(|s| self.slice(s).len() / self.part(s).len().max(1))
                .min()
                .unwrap_or(0),
        };
        blocks.max(1) as u64
    }

    /// Epoch `epoch`'s permutation of slice `s` (of all points for whole-data draws). Slice 0
    /// uses the whole-data stream, so one shard draws exactly as before shards existed.
    fn permutation(&self, s: usize, epoch: u64) -> Vec<usize> {
        let mut perm: Vec<usize> = self.slice(s).collect();
        let seed = match s {
            0 => self.seed,
            _ => mix_seed(self.seed, Stream::Batch.id(), s as u64),
        };
        perm.shuffle(&mut Stream::Batch.rng(seed, epoch));
        perm
    }

    /// The minibatch of step `t`, shard by shard.
    pub fn minibatch(&self, t: u64) -> Vec<usize> {
        let per_epoch = self.steps_per_epoch();
        let (epoch, pos) = (t / per_epoch, (t % per_epoch) as usize);
        self.epoch_minibatches(epoch, pos + 1).swap_remove(pos)
    }

    /// The first `count` minibatches of epoch `epoch`.
    fn epoch_minibatches(&self, epoch: u64, count: usize) -> Vec<Vec<usize>> {
        match self.draw {
            MinibatchDraw::WholeData => {
                let perm = self.permutation(0, epoch);
                perm[..count * self.b]
                    .chunks(self.b)
                    .map(<[usize]>::to_vec)
                    .collect()
            }
            MinibatchDraw::PerShard => {
                let perms: Vec<Vec<usize>> = (0..self.shards)
                    .map(|s| self.permutation(s, epoch))
                    .collect();
                (0..count)
                    .map(|pos| {
                        (0..self.shards)
                            .flat_map(|s| {
                                let k = self.part(s).len();
                                perms[s][pos * k..(pos + 1) * k].iter().copied()
                            })
                            .collect()
                    })
                    .collect()
            }
        }
    }

    /// The shards rank `rank` of `ranks` computes.
    pub fn rank_shards(&self, rank: usize, ranks: usize) -> Range<usize> {
        rank * self.shards / ranks..(rank + 1) * self.shards / ranks
    }

    /// The minibatch positions rank `rank` of `ranks` computes.
    pub fn rank_points(&self, rank: usize, ranks: usize) -> Range<usize> {
        let s = self.rank_shards(rank, ranks);
        self.part(s.start).start..self.part(s.end - 1).end
    }

    /// The data rows whose particles rank `rank` of `ranks` owns.
    pub fn rank_rows(&self, rank: usize, ranks: usize) -> Range<usize> {
        let s = self.rank_shards(rank, ranks);
        self.slice(s.start).start..self.slice(s.end - 1).end
    }
}

/// Calls `f(t, batch)` for each of the first `steps` minibatches, in order (t from 0).
fn for_each_minibatch(cfg: &RunConfig, m: usize, steps: u64, mut f: impl FnMut(u64, &[usize])) {
    let layout = ShardLayout::new(cfg, m);
    let per_epoch = layout.steps_per_epoch();
    for epoch in 0..steps.div_ceil(per_epoch) {
        let done = (steps - epoch * per_epoch).min(per_epoch) as usize;
        for (pos, batch) in layout.epoch_minibatches(epoch, done).iter().enumerate() {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(shards: usize, draw: &str, m: usize, b: usize) -> RunConfig {
        let sets = [
            format!("train.shards={shards}"),
            format!("train.minibatches={draw}"),
            format!("data.points={m}"),
            format!("train.batch_size={b}"),
        ];
        RunConfig::preset("gmm")
            .unwrap()
            .with_overrides(&sets, "test")
            .unwrap()
    }

    #[test]
    fn one_shard_draws_as_the_whole_data_did() {
        let (a, b) = (
            ShardLayout::new(&cfg(1, "per-shard", 103, 10), 103),
            ShardLayout::new(&cfg(1, "whole-data", 103, 10), 103),
        );
        assert_eq!(a.steps_per_epoch(), 10);
        for t in 0..25 {
            assert_eq!(a.minibatch(t), b.minibatch(t), "step {t}");
        }
    }

    #[test]
    fn each_shard_draws_from_its_own_slice_without_repeats_in_an_epoch() {
        // 103 points in slices of 34, 34, 35; a minibatch of 10 in parts of 3, 3, 4; the
        // epoch ends when a slice runs out of blocks: min(34 / 3, 34 / 3, 35 / 4) = 8 steps.
        let l = ShardLayout::new(&cfg(3, "per-shard", 103, 10), 103);
        assert_eq!(
            (0..3).map(|s| l.slice(s)).collect::<Vec<_>>(),
            [0..34, 34..68, 68..103]
        );
        assert_eq!(
            (0..3).map(|s| l.part(s)).collect::<Vec<_>>(),
            [0..3, 3..6, 6..10]
        );
        assert_eq!(l.steps_per_epoch(), 8);
        for epoch in 0..2 {
            let mut seen = std::collections::HashSet::new();
            for pos in 0..8 {
                let batch = l.minibatch(epoch * 8 + pos);
                assert_eq!(batch.len(), 10);
                for s in 0..3 {
                    for &m in &batch[l.part(s)] {
                        assert!(l.slice(s).contains(&m), "shard {s} drew {m}");
                        assert!(seen.insert(m), "point {m} twice in epoch {epoch}");
                    }
                }
            }
        }
        // Another epoch, another order.
        assert_ne!(l.minibatch(0), l.minibatch(8));
    }

    #[test]
    fn a_rank_holds_the_slices_of_its_shards() {
        let l = ShardLayout::new(&cfg(4, "per-shard", 1000, 100), 1000);
        assert_eq!((l.rank_shards(0, 2), l.rank_shards(1, 2)), (0..2, 2..4));
        assert_eq!((l.rank_rows(0, 2), l.rank_rows(1, 2)), (0..500, 500..1000));
        assert_eq!((l.rank_points(0, 2), l.rank_points(1, 2)), (0..50, 50..100));
        assert_eq!(l.rank_rows(0, 1), 0..1000);
        // Whatever the rank count, the minibatch is the shards' (a function of S alone).
        let batch = l.minibatch(7);
        for r in 0..4 {
            for &m in &batch[l.rank_points(r, 4)] {
                assert!(l.rank_rows(r, 4).contains(&m));
            }
        }
    }
}
