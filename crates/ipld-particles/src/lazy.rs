//! Exact lazy noise for Algorithms 1 and 2: only the minibatch's particles are touched per step.
//!
//! Between two visits of a particle its preconditioner G = (V + eps)^(-1/2) does not change (V
//! only moves when the particle is in the minibatch, eq. 66), and nothing but noise reaches it.
//! The missed steps' noise, sum_s s_s G_s^{1/2} W_s with independent W_s, is therefore one
//! Gaussian with the summed variance sum_s s_s² G_s (per element). [`LazyNoise`] keeps prefix
//! sums of the per-step variances (split into the plain part and the part that multiplies G,
//! since the paper preconditions the noise only from the second epoch on, A.4.2), records for
//! every particle row the step its noise has been applied through, and adds the accumulated
//! noise when the row is next read. A step then costs O(|B| N d) instead of O(M N d) and the
//! cloud has the same distribution as under the eager update.
//!
//! The accumulated draw for row r synced to step t uses the counter-based stream
//! [`LAZY_STREAM`] at (t, element index), so it is independent of the eager noise and of every
//! other sync (a row is synced to a given step at most once).

use rayon::prelude::*;

use crate::rng::prefetch;
use crate::update::{Row, StepVariance, Task, inv_fourth_root};
use crate::{NoiseStream, ParticleCloud, ParticleError, StepContext, UpdateConfig};

/// Below this many elements a minibatch pass runs on the calling thread: waking the thread pool
/// costs more than it saves (a 500 x 16 x 2 minibatch took 0.45 ms in parallel, 0.2 alone).
pub(crate) const PARALLEL_MIN: usize = 1 << 16;

/// Noise-stream id of the accumulated (lazy) draws.
pub const LAZY_STREAM: u32 = 0x1a27;

/// Per-row sync state and per-step variance prefix sums.
#[derive(Debug, Clone, PartialEq)]
pub struct LazyNoise {
    /// For each local row, the step through which its noise is applied (steps < synced[r]).
    synced: Vec<u64>,
    /// First step covered by the prefix sums.
    base: u64,
    /// plain[k] = sum of plain variances of steps base .. base + k.
    plain: Vec<f64>,
    /// pre[k] = sum of preconditioned variances of steps base .. base + k.
    pre: Vec<f64>,
    eps: f32,
}

impl LazyNoise {
    /// Every row of `cloud` up to date at `step` (e.g. a fresh cloud at step 0, or a cloud whose
    /// rows were all synced); `eps` is the preconditioner's epsilon (0 for Algorithm 1).
    pub fn new(cloud: &ParticleCloud, step: u64, eps: f64) -> Self {
        Self::from_synced(vec![step; cloud.rows()], step, eps)
    }

    /// Restores the per-row state (e.g. from a checkpoint); the variances of steps from
    /// `base` on must then be [`record`](Self::record)ed again before rows are synced past them.
    pub fn from_synced(synced: Vec<u64>, base: u64, eps: f64) -> Self {
        Self {
            synced,
            base,
            plain: vec![0.0],
            pre: vec![0.0],
            eps: eps as f32,
        }
    }

    /// The per-row sync steps.
    pub fn synced(&self) -> &[u64] {
        &self.synced
    }

    /// The next step whose variance is to be recorded.
    pub fn recorded_until(&self) -> u64 {
        self.base + self.plain.len() as u64 - 1
    }

    /// Records the noise variance of step `step`, which must be [`recorded_until`](Self::recorded_until).
    pub fn record(&mut self, step: u64, v: StepVariance) -> Result<(), ParticleError> {
        if step != self.recorded_until() {
            return Err(ParticleError::Shape(format!(
                "lazy noise: step {step} recorded out of order (expected {})",
                self.recorded_until()
            )));
        }
        if !(v.plain >= 0.0
            && v.preconditioned >= 0.0
            && v.plain.is_finite()
            && v.preconditioned.is_finite())
        {
            return Err(ParticleError::param(
                "particles.step_size",
                format!("noise variance must be finite and >= 0, got {v:?}"),
            ));
        }
        let (p, q) = (
            self.plain[self.plain.len() - 1],
            self.pre[self.pre.len() - 1],
        );
        self.plain.push(p + v.plain);
        self.pre.push(q + v.preconditioned);
        Ok(())
    }

    /// Summed (plain, preconditioned) variance of steps a .. b.
    fn window(&self, a: u64, b: u64) -> Result<(f64, f64), ParticleError> {
        if a < self.base || b > self.recorded_until() || a > b {
            return Err(ParticleError::Shape(format!(
                "lazy noise: steps {a}..{b} are not recorded (have {}..{})",
                self.base,
                self.recorded_until()
            )));
        }
        let (i, j) = ((a - self.base) as usize, (b - self.base) as usize);
        Ok((self.plain[j] - self.plain[i], self.pre[j] - self.pre[i]))
    }

    fn sync_row(
        &self,
        (z, m2): (&mut [f32], &[f32]),
        row_global: usize,
        from: u64,
        upto: u64,
        noise: &NoiseStream,
        buf: &mut [f32],
    ) -> Result<(), ParticleError> {
        if from >= upto {
            return Ok(());
        }
        let (plain, pre) = self.window(from, upto)?;
        noise.fill(upto, (row_global * z.len()) as u64, buf);
        // Per element: sd = sqrt(plain + pre G), G = (V + eps)^(-1/2), in f32 (the windowed
        // sums are differenced in f64 first) so the loop vectorises.
        let (plain, pre, eps) = (plain as f32, pre as f32, self.eps);
        if pre > 0.0 {
            for ((zi, m2i), wi) in z.iter_mut().zip(m2).zip(buf.iter()) {
                let y = inv_fourth_root(*m2i + eps);
                *zi += (plain + pre * (y * y)).sqrt() * wi;
            }
        } else {
            let sd = plain.sqrt();
            for (zi, wi) in z.iter_mut().zip(buf.iter()) {
                *zi += sd * wi;
            }
        }
        Ok(())
    }

    /// Brings the rows of global indices `rows` up to step `upto` (adds their missed noise).
    pub fn sync(
        &mut self,
        cloud: &mut ParticleCloud,
        rows: &[usize],
        upto: u64,
        noise: &NoiseStream,
    ) -> Result<(), ParticleError> {
        self.check(cloud)?;
        let w = cloud.particles() * cloud.dim();
        let mut local = rows
            .iter()
            .map(|&m| cloud.local(m))
            .collect::<Result<Vec<_>, _>>()?;
        // A repeated row would be synced once anyway (its second visit finds it up to date).
        local.sort_unstable();
        local.dedup();
        let start = cloud.start();
        let (z, _, m2) = cloud.buffers_mut();
        let m2 = &*m2;
        let this = &*self;
        let sync = |buf: &mut Vec<f32>, (&r, z): (&usize, &mut [f32])| {
            let m2 = &m2[r * w..(r + 1) * w];
            this.sync_row((z, m2), start + r, this.synced[r], upto, noise, buf)
        };
        prefetch_rows(&local, w, &[&*z, m2]);
        let items: Vec<_> = local.iter().zip(rows_mut(z, w, &local)).collect();
        rows_pass(items, w, sync)?;
        for &r in &local {
            self.synced[r] = self.synced[r].max(upto);
        }
        Ok(())
    }

    /// Brings every row up to step `upto` (before a checkpoint, export, or reading the cloud).
    pub fn sync_all(
        &mut self,
        cloud: &mut ParticleCloud,
        upto: u64,
        noise: &NoiseStream,
    ) -> Result<(), ParticleError> {
        self.check(cloud)?;
        let w = cloud.particles() * cloud.dim();
        let start = cloud.start();
        let (z, _, m2) = cloud.buffers_mut();
        let this = &*self;
        z.par_chunks_mut(w)
            .zip(m2.par_chunks(w))
            .enumerate()
            .with_min_len((4096 / w).max(1))
            .try_for_each_init(
                || vec![0f32; w],
                |buf, (r, (z, m2))| {
                    this.sync_row((z, m2), start + r, this.synced[r], upto, noise, buf)
                },
            )?;
        for s in &mut self.synced {
            *s = (*s).max(upto);
        }
        Ok(())
    }

    fn check(&self, cloud: &ParticleCloud) -> Result<(), ParticleError> {
        if self.synced.len() != cloud.rows() {
            return Err(ParticleError::Shape(format!(
                "lazy noise tracks {} rows, the cloud has {}",
                self.synced.len(),
                cloud.rows()
            )));
        }
        Ok(())
    }

    /// One lazy step of `rule` at `ctx.step`: syncs the minibatch rows to `ctx.step`, applies the
    /// rule's eager update (drift, moments, this step's noise) to them only, records the step's
    /// variance for everyone else, and marks the minibatch synced through `ctx.step + 1`.
    /// Kinetic Langevin carries a velocity that moves between visits, so it has no lazy form.
    pub fn step(
        &mut self,
        rule: &UpdateConfig,
        cloud: &mut ParticleCloud,
        batch: &[usize],
        grads: &[f32],
        ctx: &StepContext,
        noise: &NoiseStream,
    ) -> Result<(), ParticleError> {
        let t = ctx.step;
        let mut sorted = batch.to_vec();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(ParticleError::Shape(format!(
                "data index {} appears twice in the batch",
                w[0]
            )));
        }
        self.sync(cloud, batch, t, noise)?;
        let v = rule.step_variance(ctx)?;
        let n = cloud.particles();
        match rule {
            UpdateConfig::Langevin(r) => {
                batch_pass(cloud, batch, grads, ctx, noise, r.kernel(ctx, n))?
            }
            UpdateConfig::AdaptiveLangevin(r) => {
                batch_pass(cloud, batch, grads, ctx, noise, r.kernel(ctx, n))?
            }
            UpdateConfig::KineticLangevin(_) => unreachable!("step_variance rejects it"),
        }
        self.record(t, v)?;
        for &m in batch {
            let r = cloud.local(m)?;
            self.synced[r] = t + 1;
        }
        Ok(())
    }
}

/// The eager kernel applied to the minibatch rows only, with the same per-row noise the eager
/// pass would draw for them (so a minibatch of every row reproduces the eager step exactly).
fn batch_pass(
    cloud: &mut ParticleCloud,
    batch: &[usize],
    grads: &[f32],
    ctx: &StepContext,
    noise: &NoiseStream,
    kernel: impl Fn(Row<'_>) + Sync,
) -> Result<(), ParticleError> {
    crate::update::check_ctx(ctx)?;
    let w = cloud.particles() * cloud.dim();
    if grads.len() != batch.len() * w {
        return Err(ParticleError::Shape(format!(
            "{} gradient values for a batch of {} rows of {w}",
            grads.len(),
            batch.len()
        )));
    }
    // Rows in memory order (the batch has no repeats: `step` checks), each with its gradient.
    let mut rows = batch
        .iter()
        .enumerate()
        .map(|(p, &m)| Ok((cloud.local(m)?, p)))
        .collect::<Result<Vec<_>, ParticleError>>()?;
    rows.sort_unstable();
    let local: Vec<usize> = rows.iter().map(|&(r, _)| r).collect();
    let start = cloud.start();
    let (z, m1, m2) = cloud.buffers_mut();
    prefetch_rows(&local, w, &[&*z, &*m1, &*m2]);
    let items: Vec<_> = rows
        .iter()
        .zip(
            rows_mut(z, w, &local)
                .into_iter()
                .zip(rows_mut(m1, w, &local))
                .zip(rows_mut(m2, w, &local)),
        )
        .collect();
    let update = |buf: &mut Vec<f32>, (&(r, p), ((z, m1), m2)): (&(usize, usize), _)| {
        noise.fill(ctx.step, ((start + r) * w) as u64, buf);
        if w < 256 {
            // Short rows: the call into the dispatched loop costs more than its vectors save.
            kernel((z, m1, m2, Some(&grads[p * w..(p + 1) * w]), buf));
        } else {
            Task {
                w,
                pos: &[0],
                grads: &grads[p * w..(p + 1) * w],
                z,
                m1,
                m2,
                noise: buf,
            }
            .run_dispatch(&kernel);
        }
        Ok::<(), ParticleError>(())
    };
    rows_pass(items, w, update)
}

/// Before a pass over few scattered rows (local indices `rows` of width `w`), issues every row's
/// loads of `bufs` at once, so the cache misses of a big cloud overlap instead of arriving one
/// row at a time. Larger passes run in parallel and need no help.
fn prefetch_rows(rows: &[usize], w: usize, bufs: &[&[f32]]) {
    if rows.len() * w < PARALLEL_MIN {
        for &r in rows {
            for b in bufs {
                prefetch(&b[r * w..(r + 1) * w]);
            }
        }
    }
}

/// Runs `f(scratch, item)` for one item per row of width `w`, each with a scratch buffer of `w`
/// floats: on the calling thread below [`PARALLEL_MIN`] elements, else in parallel (rayon).
fn rows_pass<I: Send>(
    items: Vec<I>,
    w: usize,
    f: impl Fn(&mut Vec<f32>, I) -> Result<(), ParticleError> + Sync + Send,
) -> Result<(), ParticleError> {
    if items.len() * w < PARALLEL_MIN {
        let mut buf = vec![0f32; w];
        items.into_iter().try_for_each(|item| f(&mut buf, item))
    } else {
        items
            .into_par_iter()
            .with_min_len((4096 / w).max(1))
            .try_for_each_init(|| vec![0f32; w], f)
    }
}

/// Disjoint mutable views of rows `rows` (local indices, sorted, distinct) of a buffer of row
/// width `w`, in O(rows) so a step never walks the whole cloud.
fn rows_mut<'a>(mut buf: &'a mut [f32], w: usize, rows: &[usize]) -> Vec<&'a mut [f32]> {
    let mut out = Vec::with_capacity(rows.len());
    let mut base = 0;
    for &r in rows {
        let tail = std::mem::take(&mut buf).split_at_mut((r - base) * w).1;
        let (row, rest) = tail.split_at_mut(w);
        out.push(row);
        buf = rest;
        base = r + 1;
    }
    out
}
