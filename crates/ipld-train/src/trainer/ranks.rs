//! The training state as one of R data-parallel ranks (issue 26): which points and shards this
//! rank holds ([`ShardLayout`]), what more than one rank can train, the minibatch statistics
//! and particles gathered over the ranks, and the variables whose gradients cross them.

use candle_core::Var;
use ipld_data::Dataset;

use super::Trainer;
use super::exchange::{self, sum_shards};
use super::loss::particle_sums;
use super::schedule::ShardLayout;
use crate::collective::Collective;
use crate::config::{MinibatchDraw, RunConfig};
use crate::error::TrainError;

impl Trainer {
    /// The ranks this state trains with.
    pub fn collective(&self) -> &dyn Collective {
        &*self.comm
    }

    /// The data rows whose particles this rank holds.
    pub fn local_rows(&self) -> std::ops::Range<usize> {
        self.layout().rank_rows(self.comm.rank(), self.comm.size())
    }

    pub(super) fn layout(&self) -> ShardLayout {
        ShardLayout::new(&self.cfg, self.data.len())
    }

    /// Every trainable variable (prior, decoder, encoder), each network's sorted by name: the
    /// order gradients cross ranks in.
    pub(super) fn network_vars(&self) -> Vec<Var> {
        let mut maps = Vec::new();
        if let Some(p) = &self.prior {
            maps.push(&p.vars);
        }
        maps.push(&self.decoder.vars);
        if let Some(e) = self.latents.encoder_vars() {
            maps.push(e);
        }
        maps.iter()
            .flat_map(|m| {
                crate::checkpoint::sorted_vars(m)
                    .into_iter()
                    .map(|(_, v)| v)
            })
            .collect()
    }

    /// The particles of `points` ([points, N, d], synced through the current step) and N, from
    /// whichever ranks hold them; None for DiffusionVAE. Collective: every rank must call it
    /// with the same points, and every rank gets them.
    pub fn gather_particles(
        &self,
        points: &[usize],
    ) -> Result<Option<(Vec<f32>, usize)>, TrainError> {
        let Some(cloud) = self.synced_cloud()? else {
            return Ok(None);
        };
        let n = cloud.particles();
        let owned = self.owned(points);
        let mut z = Vec::new();
        cloud.gather_into(&owned, &mut z)?;
        Ok(Some((self.by_owner(points, z, n)?, n)))
    }

    /// The entries of `points` whose particles this rank holds, in order.
    fn owned(&self, points: &[usize]) -> Vec<usize> {
        let mine = self.local_rows();
        points
            .iter()
            .copied()
            .filter(|m| mine.contains(m))
            .collect()
    }

    /// Every rank's `mine` (the rows of its [`Trainer::owned`] points, `n` latents each)
    /// gathered and put in the order of `points`.
    fn by_owner(&self, points: &[usize], mine: Vec<f32>, n: usize) -> Result<Vec<f32>, TrainError> {
        let ranks = self.comm.size();
        if ranks == 1 {
            return Ok(mine);
        }
        let all = self
            .comm
            .all_gather(&crate::collective::f32_bytes(&mine))
            .map_err(exchange::collective)?;
        let parts: Vec<Vec<f32>> = all
            .iter()
            .map(|b| crate::collective::bytes_f32(b))
            .collect();
        let layout = self.layout();
        let w = n * self.cfg.data.latent_dim;
        let mut next = vec![0usize; ranks];
        let mut out = Vec::with_capacity(points.len() * w);
        for &m in points {
            let r = (0..ranks)
                .find(|&r| layout.rank_rows(r, ranks).contains(&m))
                .ok_or_else(|| TrainError::Invalid(format!("point {m} is on no rank")))?;
            let at = next[r];
            out.extend_from_slice(
                parts[r].get(at * w..(at + 1) * w).ok_or_else(|| {
                    TrainError::Invalid(format!("rank {r} sent too few particles"))
                })?,
            );
            next[r] += 1;
        }
        Ok(out)
    }

    /// The latents of `points` brought up to step `upto` ([points N, d]), as
    /// [`Latents::frozen`](super::latents::Latents::frozen) gives them in one process: each
    /// rank syncs (lazy noise) and reads the particles it holds, and the ranks exchange them;
    /// an encoder's draws (from `rng`) are made on every rank.
    pub(super) fn frozen_everywhere(
        &mut self,
        points: &[usize],
        upto: u64,
        rng: &mut rand_chacha::ChaCha8Rng,
    ) -> Result<candle_core::Tensor, TrainError> {
        let dz = self.cfg.data.latent_dim;
        if self.comm.size() == 1 || self.latents.cloud().is_none() {
            let all = 0..points.len();
            return self
                .latents
                .frozen(points, all, upto, &self.data, rng, dz, &self.device);
        }
        let owned = self.owned(points);
        let n = self.particles_per_point();
        let z = self.latents.frozen(
            &owned,
            0..owned.len(),
            upto,
            &self.data,
            rng,
            dz,
            &self.device,
        )?;
        let z = self.by_owner(points, z.flatten_all()?.to_vec1()?, n)?;
        Ok(candle_core::Tensor::from_vec(
            z,
            (points.len() * n, dz),
            &self.device,
        )?)
    }

    /// The minibatch positions whose points this rank computes.
    pub(super) fn local_points(&self) -> std::ops::Range<usize> {
        self.layout()
            .rank_points(self.comm.rank(), self.comm.size())
    }

    /// The mean latent norm and spread of the step's minibatch from this rank's latents after
    /// the update (`after`, [its points, N, d]), summed per shard in shard order over the ranks.
    pub(super) fn latent_stats(&self, after: &[f32], b: usize) -> Result<(f64, f64), TrainError> {
        let (n, dz) = (self.particles_per_point(), self.cfg.data.latent_dim);
        let layout = self.layout();
        let ranks = (self.comm.rank(), self.comm.size());
        let first = layout.rank_points(ranks.0, ranks.1).start;
        let sums: Vec<(f64, f64)> = layout
            .rank_shards(ranks.0, ranks.1)
            .map(|s| {
                let p = layout.part(s);
                let w = n * dz;
                particle_sums(&after[(p.start - first) * w..(p.end - first) * w], n, dz)
            })
            .collect();
        let (norm, spread) = sum_shards(&*self.comm, &sums)?;
        Ok((norm / (b * n) as f64, spread / (b * dz) as f64))
    }

    /// What more than one rank can train (issue 26): the per-shard draw, whole shards per rank, and
    /// the steps whose every part is sharded (IPLD's and DiffusionVAE's joint steps).
    pub(super) fn check_ranks(
        cfg: &RunConfig,
        ranks: usize,
        points: usize,
    ) -> Result<(), TrainError> {
        if ranks == 1 {
            return Ok(());
        }
        let t = &cfg.train;
        let refuse = |what: String| {
            Err(TrainError::Invalid(format!(
                "{what}; with {ranks} ranks (docs/distributed.md)"
            )))
        };
        if t.minibatches != MinibatchDraw::PerShard {
            return refuse(
                "train.minibatches must be \"per-shard\" (each rank draws from the slice of the data whose particles it holds)".into(),
            );
        }
        if !t.shards.is_multiple_of(ranks) {
            return refuse(format!(
                "train.shards = {} must be a multiple of the rank count",
                t.shards
            ));
        }
        if cfg.method.is_published() {
            return refuse(format!(
                "method `{}` is not yet sharded over ranks: run it as one process",
                cfg.method.name()
            ));
        }
        if let Some(r) = t.prior_refit
            && r.batch_size < t.shards
        {
            return refuse(format!(
                "train.prior_refit.batch_size = {} is below train.shards = {}: every shard draws at least one point",
                r.batch_size, t.shards
            ));
        }
        if points < t.shards {
            return refuse(format!(
                "the data have {points} points, fewer than train.shards = {}",
                t.shards
            ));
        }
        Ok(())
    }
}
