//! Probability-flow samplers for the discrete VP schedule the models are trained on: Heun's
//! second-order method on the EDM time discretisation (Karras et al. 2022, Algorithm 1 with no
//! churn; Xu 2024, thesis Algorithms 8 and 10), DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2),
//! and Restart (thesis Algorithm 9: forward noise over [t_min, t_max], then the backward ODE,
//! K times).
//!
//! The continuous-time mapping. Eq. (30)'s z_k = sqrt(abar_k) z_0 + sqrt(1 - abar_k) eps is, in
//! x = z / sqrt(abar_k), the variance-exploding process x = z_0 + sigma_k eps with
//! sigma_k = sqrt((1 - abar_k) / abar_k). Its probability-flow ODE is dx/dsigma = eps(x, sigma),
//! the network's epsilon at z = x / sqrt(1 + sigma^2), and its denoiser D(x, sigma) = x -
//! sigma eps. The network is trained at the K discrete levels only, so every noise level a
//! sampler visits is rounded (in log sigma) to the nearest sigma_k, as EDM does for discrete-time
//! models; the solvers then integrate the same ODE on a grid of those levels, ending with a step
//! to sigma = 0. Everything runs in f64 coefficients on the host, tensors in the model's dtype.

use candle_core::Tensor;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::reverse::{Sampler, SamplerProgress};
use crate::{DiffusionError, EpsModel, NoiseSchedule, gaussian};

/// sigma_k = sqrt((1 - abar_k) / abar_k) for k = 1..=K (index k - 1), increasing in k.
pub fn vp_sigmas(schedule: &NoiseSchedule) -> Vec<f64> {
    schedule
        .alpha_bars()
        .iter()
        .map(|&ab| ((1.0 - ab) / ab).sqrt())
        .collect()
}

/// The timestep k (1-based) whose sigma_k is nearest to `sigma` in log scale.
pub fn nearest_timestep(sigmas: &[f64], sigma: f64) -> usize {
    let i = sigmas.partition_point(|&s| s < sigma);
    let k = match i {
        0 => 0,
        i if i == sigmas.len() => i - 1,
        i => match (sigma / sigmas[i - 1]).ln() <= (sigmas[i] / sigma).ln() {
            true => i - 1,
            false => i,
        },
    };
    k + 1
}

/// The EDM discretisation (thesis Algorithm 8): `n` levels from `hi` down to `lo`, evenly spaced
/// in sigma^(1/rho).
pub fn edm_sigmas(lo: f64, hi: f64, n: usize, rho: f64) -> Vec<f64> {
    if n == 1 {
        return vec![hi];
    }
    let (a, b) = (hi.powf(1.0 / rho), lo.powf(1.0 / rho));
    (0..n)
        .map(|i| (a + i as f64 / (n - 1) as f64 * (b - a)).powf(rho))
        .collect()
}

/// `n` EDM levels between `lo` and `hi`, each rounded to the nearest trained timestep, duplicates
/// (where the grid is finer than the schedule) dropped: strictly decreasing timesteps.
pub fn edm_timesteps(sigmas: &[f64], lo: f64, hi: f64, n: usize, rho: f64) -> Vec<usize> {
    let mut ks: Vec<usize> = edm_sigmas(lo, hi, n, rho)
        .into_iter()
        .map(|s| nearest_timestep(sigmas, s))
        .collect();
    ks.dedup();
    ks
}

/// The noise-level range of a schedule and the EDM grid's curvature, shared by the ODE samplers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EdmGrid {
    /// Noise levels sigma (before rounding), including both ends.
    pub steps: usize,
    /// EDM's rho: larger values crowd the levels near sigma_min (7 in EDM and the thesis).
    pub rho: f64,
    /// Lowest level; 0 means sigma_1, the schedule's smallest.
    pub sigma_min: f64,
    /// Highest level; 0 means sigma_K, where z_K ~ N(0, I) is exact.
    pub sigma_max: f64,
}

impl Default for EdmGrid {
    fn default() -> Self {
        Self {
            steps: 18,
            rho: 7.0,
            sigma_min: 0.0,
            sigma_max: 0.0,
        }
    }
}

impl EdmGrid {
    fn check(&self, what: &str) -> Result<(), DiffusionError> {
        if self.steps < 2 {
            return Err(DiffusionError::param(
                &format!("{what}.steps"),
                &format!("must be at least 2, got {}", self.steps),
            ));
        }
        if !(self.rho > 0.0 && self.rho.is_finite()) {
            return Err(DiffusionError::param(
                &format!("{what}.rho"),
                &format!("must be positive, got {}", self.rho),
            ));
        }
        for (k, v) in [("sigma_min", self.sigma_min), ("sigma_max", self.sigma_max)] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(DiffusionError::param(
                    &format!("{what}.{k}"),
                    &format!("must be >= 0 (0: the schedule's end), got {v}"),
                ));
            }
        }
        if self.sigma_min > 0.0 && self.sigma_max > 0.0 && self.sigma_min >= self.sigma_max {
            return Err(DiffusionError::param(
                &format!("{what}.sigma_min"),
                "must be below sigma_max",
            ));
        }
        Ok(())
    }

    /// The grid's timesteps, strictly decreasing, under `schedule`.
    pub fn timesteps(&self, sigmas: &[f64]) -> Vec<usize> {
        let lo = if self.sigma_min > 0.0 {
            self.sigma_min
        } else {
            sigmas[0]
        };
        let hi = if self.sigma_max > 0.0 {
            self.sigma_max
        } else {
            sigmas[sigmas.len() - 1]
        };
        edm_timesteps(sigmas, lo, hi, self.steps, self.rho)
    }
}

/// Probability-flow ODE with Heun's second-order method (thesis Algorithm 10) on the EDM grid;
/// the last step, to sigma = 0, is Euler's (a denoising step). 2 n - 1 evaluations for n levels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Heun {
    /// Noise levels sigma (before rounding to the trained timesteps), both ends included.
    pub steps: usize,
    /// EDM's rho: larger values crowd the levels near sigma_min (7 in EDM and the thesis).
    pub rho: f64,
    /// Lowest level; 0 means sigma_1, the schedule's smallest.
    pub sigma_min: f64,
    /// Highest level; 0 means sigma_K, where z_K ~ N(0, I) is exact.
    pub sigma_max: f64,
}

/// DPM-Solver++(2M) (Lu et al. 2022, multistep second order in the data prediction D) on the EDM
/// grid, first order on its first step and on the last, to sigma = 0. One evaluation per level.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DpmSolverPp {
    /// Noise levels sigma (before rounding to the trained timesteps), both ends included.
    pub steps: usize,
    /// EDM's rho: larger values crowd the levels near sigma_min (7 in EDM and the thesis).
    pub rho: f64,
    /// Lowest level; 0 means sigma_1, the schedule's smallest.
    pub sigma_min: f64,
    /// Highest level; 0 means sigma_K, where z_K ~ N(0, I) is exact.
    pub sigma_max: f64,
}

impl Default for Heun {
    fn default() -> Self {
        Self::from(EdmGrid::default())
    }
}

impl Default for DpmSolverPp {
    fn default() -> Self {
        Self::from(EdmGrid {
            steps: 25,
            ..EdmGrid::default()
        })
    }
}

/// `grid()` for a sampler with the four grid fields; with `from`, also `From<EdmGrid>` for one
/// that has no others.
macro_rules! grid_of {
    ($t:ty) => {
        impl $t {
            /// The sampler's noise-level grid.
            pub fn grid(&self) -> EdmGrid {
                EdmGrid {
                    steps: self.steps,
                    rho: self.rho,
                    sigma_min: self.sigma_min,
                    sigma_max: self.sigma_max,
                }
            }
        }
    };
    ($t:ty, from) => {
        grid_of!($t);
        impl From<EdmGrid> for $t {
            fn from(g: EdmGrid) -> Self {
                Self {
                    steps: g.steps,
                    rho: g.rho,
                    sigma_min: g.sigma_min,
                    sigma_max: g.sigma_max,
                }
            }
        }
    };
}
grid_of!(Heun, from);
grid_of!(DpmSolverPp, from);
grid_of!(Restart);

/// Restart sampling (thesis Algorithm 9, one restart interval): Heun on the main EDM grid; on
/// reaching t_min, K times: add N(0, (t_max^2 - t_min^2) s_noise^2 I) noise (the forward process
/// from t_min to t_max), then Heun back on an EDM grid of `restart_steps` levels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Restart {
    /// Levels of the main backward process (N_main), before rounding, both ends included.
    pub steps: usize,
    /// EDM's rho for both grids (7 in the thesis).
    pub rho: f64,
    /// The main grid's lowest level; 0 means sigma_1.
    pub sigma_min: f64,
    /// The main grid's highest level; 0 means sigma_K.
    pub sigma_max: f64,
    /// Levels of each restart backward process, both ends included (N_Restart).
    pub restart_steps: usize,
    /// Restart repetitions K.
    pub repetitions: usize,
    /// The restart interval's lower end in sigma, rounded to the nearest main-grid level.
    pub t_min: f64,
    /// The restart interval's upper end in sigma.
    pub t_max: f64,
    /// Inflation of the forward noise (thesis: 1.003 on ImageNet 64; 1 is exact).
    pub s_noise: f64,
}

impl Default for Restart {
    /// The thesis's CIFAR-10 VP setting at 75 evaluations (Table B.6: 18, 3, 10, 0.06, 0.30).
    fn default() -> Self {
        let g = EdmGrid::default();
        Self {
            steps: g.steps,
            rho: g.rho,
            sigma_min: g.sigma_min,
            sigma_max: g.sigma_max,
            restart_steps: 3,
            repetitions: 10,
            t_min: 0.06,
            t_max: 0.30,
            s_noise: 1.0,
        }
    }
}

/// The sampler's running state: x = z / sqrt(abar) and a counter for the progress reports.
struct Flow<'a> {
    model: &'a dyn EpsModel,
    sigmas: Vec<f64>,
    done: usize,
    total: usize,
    progress: &'a mut dyn FnMut(SamplerProgress),
}

impl<'a> Flow<'a> {
    /// A flow over `grid`'s levels from the draw `z_init`: the flow, x at the first level, and
    /// the levels as timesteps.
    fn start(
        model: &'a dyn EpsModel,
        schedule: &NoiseSchedule,
        grid: EdmGrid,
        z_init: &Tensor,
        total: usize,
        progress: &'a mut dyn FnMut(SamplerProgress),
    ) -> Result<(Self, Tensor, Vec<usize>), DiffusionError> {
        let sigmas = vp_sigmas(schedule);
        let ks = grid.timesteps(&sigmas);
        let x = initial(z_init, sigmas[ks[0] - 1])?;
        let flow = Flow {
            model,
            sigmas,
            done: 0,
            total,
            progress,
        };
        Ok((flow, x, ks))
    }

    fn sigma(&self, k: usize) -> f64 {
        if k == 0 { 0.0 } else { self.sigmas[k - 1] }
    }

    /// eps_theta at x and level k, i.e. dx/dsigma.
    fn slope(&mut self, x: &Tensor, k: usize) -> Result<Tensor, DiffusionError> {
        let s = self.sigma(k);
        let z = x.affine(1.0 / (1.0 + s * s).sqrt(), 0.0)?;
        let eps = self.model.predict_eps_uniform(&z, k)?.detach();
        self.done += 1;
        (self.progress)(SamplerProgress {
            step: self.done,
            total: self.total,
            timestep: k,
        });
        Ok(eps)
    }

    /// One Heun step from level `k` to `next` (0 = sigma 0, an Euler step).
    fn heun(&mut self, x: &Tensor, k: usize, next: usize) -> Result<Tensor, DiffusionError> {
        let (s, s1) = (self.sigma(k), self.sigma(next));
        let d = self.slope(x, k)?;
        let euler = (x + d.affine(s1 - s, 0.0)?)?;
        if next == 0 {
            return Ok(euler);
        }
        let d1 = self.slope(&euler, next)?;
        Ok((x + (d + d1)?.affine(0.5 * (s1 - s), 0.0)?)?)
    }

    /// Heun through `ks` (decreasing, the first being x's level), optionally on to sigma 0.
    fn heun_path(&mut self, mut x: Tensor, ks: &[usize]) -> Result<Tensor, DiffusionError> {
        for w in ks.windows(2) {
            x = self.heun(&x, w[0], w[1])?;
        }
        Ok(x)
    }
}

/// x at the grid's first level from a draw z_K ~ N(0, I): x = z sqrt(1 + sigma^2), exact when the
/// first level is sigma_K and the VP marginal there (for unit-scale data) otherwise.
fn initial(z_init: &Tensor, sigma: f64) -> Result<Tensor, DiffusionError> {
    Ok(z_init.detach().affine((1.0 + sigma * sigma).sqrt(), 0.0)?)
}

fn heun_evaluations(levels: usize) -> usize {
    2 * levels - 1
}

impl Heun {
    /// Checks the grid.
    pub fn validate(&self) -> Result<(), DiffusionError> {
        self.grid().check("heun")
    }
}

impl Sampler for Heun {
    fn sample(
        &self,
        model: &dyn EpsModel,
        schedule: &NoiseSchedule,
        z_init: Tensor,
        _rng: &mut dyn RngCore,
        progress: &mut dyn FnMut(SamplerProgress),
    ) -> Result<Tensor, DiffusionError> {
        self.validate()?;
        let total = self.evaluations(schedule);
        let (mut flow, x, mut ks) =
            Flow::start(model, schedule, self.grid(), &z_init, total, progress)?;
        ks.push(0);
        flow.heun_path(x, &ks)
    }

    fn evaluations(&self, schedule: &NoiseSchedule) -> usize {
        heun_evaluations(self.grid().timesteps(&vp_sigmas(schedule)).len())
    }
}

impl DpmSolverPp {
    /// Checks the grid.
    pub fn validate(&self) -> Result<(), DiffusionError> {
        self.grid().check("dpm-solver++")
    }
}

impl Sampler for DpmSolverPp {
    fn sample(
        &self,
        model: &dyn EpsModel,
        schedule: &NoiseSchedule,
        z_init: Tensor,
        _rng: &mut dyn RngCore,
        progress: &mut dyn FnMut(SamplerProgress),
    ) -> Result<Tensor, DiffusionError> {
        self.validate()?;
        let total = self.evaluations(schedule);
        let (mut flow, mut x, ks) =
            Flow::start(model, schedule, self.grid(), &z_init, total, progress)?;
        // In x = z / sqrt(abar) with lambda = -log sigma, DPM-Solver++'s exact-in-the-linear-part
        // step from sigma to sigma' is x' = (sigma'/sigma) x + (1 - sigma'/sigma) D, and the
        // multistep D extrapolates the last two denoised values (Lu et al. 2022, Algorithm 2).
        let mut prev: Option<(Tensor, f64)> = None; // (D, h) of the previous step
        for (i, &k) in ks.iter().enumerate() {
            let s = flow.sigma(k);
            let next = ks.get(i + 1).copied().unwrap_or(0);
            let s1 = flow.sigma(next);
            let eps = flow.slope(&x, k)?;
            let d = (&x - eps.affine(s, 0.0)?)?;
            if next == 0 {
                x = d;
                break;
            }
            let h = (s / s1).ln();
            let d_used = match &prev {
                Some((d_prev, h_prev)) => {
                    let r = h_prev / h;
                    (d.affine(1.0 + 0.5 / r, 0.0)? - d_prev.affine(0.5 / r, 0.0)?)?
                }
                None => d.clone(),
            };
            x = (x.affine(s1 / s, 0.0)? + d_used.affine(1.0 - s1 / s, 0.0)?)?;
            prev = Some((d, h));
        }
        Ok(x)
    }

    fn evaluations(&self, schedule: &NoiseSchedule) -> usize {
        self.grid().timesteps(&vp_sigmas(schedule)).len()
    }
}

impl Restart {
    /// Checks the grid and the restart parameters.
    pub fn validate(&self) -> Result<(), DiffusionError> {
        self.grid().check("restart")?;
        if self.restart_steps < 2 {
            return Err(DiffusionError::param(
                "restart.restart_steps",
                &format!("must be at least 2, got {}", self.restart_steps),
            ));
        }
        if !(self.t_min > 0.0 && self.t_max > self.t_min && self.t_max.is_finite()) {
            return Err(DiffusionError::param(
                "restart.t_min",
                &format!(
                    "need 0 < t_min < t_max, got t_min = {} and t_max = {}",
                    self.t_min, self.t_max
                ),
            ));
        }
        if !(self.s_noise > 0.0 && self.s_noise.is_finite()) {
            return Err(DiffusionError::param(
                "restart.s_noise",
                &format!("must be positive, got {}", self.s_noise),
            ));
        }
        Ok(())
    }

    /// The main grid with the restart interval's lower end snapped onto it (thesis Algorithm 9,
    /// line 2), and the restart backward grid, as timesteps.
    fn plan(&self, sigmas: &[f64]) -> (Vec<usize>, usize, Vec<usize>) {
        let main = self.grid().timesteps(sigmas);
        let lo = *main
            .iter()
            .min_by(|&&a, &&b| {
                let d = |k: usize| (sigmas[k - 1] / self.t_min).ln().abs();
                d(a).total_cmp(&d(b))
            })
            .expect("a grid has levels");
        let hi = nearest_timestep(sigmas, self.t_max).max(lo);
        let back = edm_timesteps(
            sigmas,
            sigmas[lo - 1],
            sigmas[hi - 1],
            self.restart_steps,
            self.rho,
        );
        (main, lo, back)
    }
}

impl Sampler for Restart {
    fn sample(
        &self,
        model: &dyn EpsModel,
        schedule: &NoiseSchedule,
        z_init: Tensor,
        rng: &mut dyn RngCore,
        progress: &mut dyn FnMut(SamplerProgress),
    ) -> Result<Tensor, DiffusionError> {
        self.validate()?;
        let sigmas = vp_sigmas(schedule);
        let (mut main, lo, back) = self.plan(&sigmas);
        let mut x = initial(&z_init, sigmas[main[0] - 1])?;
        main.push(0);
        let total = self.evaluations(schedule);
        let mut flow = Flow {
            model,
            sigmas,
            done: 0,
            total,
            progress,
        };
        let (s_lo, s_hi) = (flow.sigma(lo), flow.sigma(back[0]));
        let jump = (s_hi * s_hi - s_lo * s_lo).max(0.0).sqrt() * self.s_noise;
        for w in main.windows(2) {
            x = flow.heun(&x, w[0], w[1])?;
            if w[1] == lo && back.len() > 1 {
                for _ in 0..self.repetitions {
                    let e = gaussian(rng, x.shape(), x.dtype(), x.device())?;
                    x = (x + e.affine(jump, 0.0)?)?.detach();
                    x = flow.heun_path(x, &back)?;
                }
            }
        }
        Ok(x)
    }

    fn evaluations(&self, schedule: &NoiseSchedule) -> usize {
        let (main, _, back) = self.plan(&vp_sigmas(schedule));
        let restart = match back.len() {
            0 | 1 => 0,
            n => self.repetitions * 2 * (n - 1),
        };
        heun_evaluations(main.len()) + restart
    }
}
