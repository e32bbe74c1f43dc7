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

use crate::kernel::{inv_fourth_root, prefetch_rows, rows_mut, rows_pass};
use crate::{NoiseStream, ParticleCloud, ParticleError, ParticleUpdate, StepContext, StepVariance};

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
    /// The second-moment coefficient b of a rule with Adam's bias correction (G of a row
    /// visited k times uses V / (1 - b^k)).
    bias_correction: Option<f64>,
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
            bias_correction: None,
        }
    }

    /// Lazy noise for `rule`'s preconditioner: its eps and its bias correction.
    pub fn for_rule(cloud: &ParticleCloud, step: u64, rule: &dyn ParticleUpdate) -> Self {
        Self::new(cloud, step, rule.preconditioner_eps())
            .with_bias_correction(rule.second_moment_bias_correction())
    }

    /// The same state drawing G with Adam's bias correction by visit count when `b` is set
    /// ([`ParticleUpdate::second_moment_bias_correction`]).
    pub fn with_bias_correction(mut self, b: Option<f64>) -> Self {
        self.bias_correction = b;
        self
    }

    /// V's correction factor for a row visited `visits` times.
    fn correction(&self, visits: u32) -> f32 {
        match self.bias_correction {
            Some(b) if visits > 0 => {
                (1.0 / (1.0 - b.powi(visits.min(i32::MAX as u32) as i32))) as f32
            }
            _ => 1.0,
        }
    }

    /// The preconditioner epsilon the accumulated noise is drawn with.
    pub fn eps(&self) -> f64 {
        self.eps as f64
    }

    /// The second-moment coefficient of Adam's bias correction, when G is drawn with it.
    pub fn bias_correction(&self) -> Option<f64> {
        self.bias_correction
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
                "step_variance",
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

    #[allow(clippy::too_many_arguments)]
    fn sync_row(
        &self,
        (z, m2): (&mut [f32], &[f32]),
        visits: u32,
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
        // Per element: sd = sqrt(plain + pre G), G = (c V + eps)^(-1/2), in f32 (the windowed
        // sums are differenced in f64 first) so the loop vectorises. A row never visited has
        // G = I (V is frozen between visits, so it had none during the window either).
        let (plain, pre, eps) = (plain as f32, pre as f32, self.eps);
        let c = self.correction(visits);
        if pre > 0.0 && visits > 0 {
            for ((zi, m2i), wi) in z.iter_mut().zip(m2).zip(buf.iter()) {
                let y = inv_fourth_root(c * *m2i + eps);
                *zi += (plain + pre * (y * y)).sqrt() * wi;
            }
        } else {
            let sd = (plain + pre).sqrt();
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
        let ((z, _, m2), visits) = cloud.buffers_and_visits_mut();
        let (m2, visits) = (&*m2, &*visits);
        let this = &*self;
        let sync = |buf: &mut Vec<f32>, (&r, z): (&usize, &mut [f32])| {
            let m2 = &m2[r * w..(r + 1) * w];
            this.sync_row(
                (z, m2),
                visits[r],
                start + r,
                this.synced[r],
                upto,
                noise,
                buf,
            )
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
        let ((z, _, m2), visits) = cloud.buffers_and_visits_mut();
        let visits = &*visits;
        let this = &*self;
        z.par_chunks_mut(w)
            .zip(m2.par_chunks(w))
            .enumerate()
            .with_min_len((4096 / w).max(1))
            .try_for_each_init(
                || vec![0f32; w],
                |buf, (r, (z, m2))| {
                    let from = this.synced[r];
                    this.sync_row((z, m2), visits[r], start + r, from, upto, noise, buf)
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
    /// rule's eager update (drift, moments, this step's noise) to them only
    /// ([`ParticleUpdate::step_batch_rows`]), records the step's variance for everyone else, and
    /// marks the minibatch synced through `ctx.step + 1`. Rules without a lazy form (kinetic
    /// Langevin's velocity moves between visits) are refused before anything changes.
    pub fn step(
        &mut self,
        rule: &dyn ParticleUpdate,
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
        let v = rule.step_variance(ctx)?;
        self.sync(cloud, batch, t, noise)?;
        rule.step_batch_rows(cloud, batch, grads, ctx, noise)?;
        self.record(t, v)?;
        for &m in batch {
            let r = cloud.local(m)?;
            self.synced[r] = t + 1;
        }
        Ok(())
    }
}
