//! Noise schedules {beta_k}_{k=1}^K of the forward process (eq. 29) and every quantity derived
//! from them: alpha_k = 1 - beta_k, alphabar_k = prod_{j<=k} alpha_j (eq. 30), the posterior
//! q(z_{k-1} | z_k, z_0) mean coefficients (eq. 32) and variance (eq. 31, Ho et al. 2020).
//!
//! Everything is computed once, in f64, on the host; [`NoiseSchedule::tensors`] converts the
//! tables to candle tensors for the device. Timesteps are 1-based as in the paper: `k` runs over
//! `1..=K`, and `alphabar_0 = 1` by convention.

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::DiffusionError;

/// Which family of beta_k to use.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ScheduleKind {
    /// beta_k = (1 - k/K) beta_0 + (k/K) beta_K (Appendix A.1, after eq. 29).
    Linear {
        /// beta_0 in the paper's formula (1e-4 in Appendix B).
        beta_start: f64,
        /// beta_K, the last beta (0.02 in Appendix B).
        beta_end: f64,
    },
    /// Nichol & Dhariwal (2021): alphabar(k) = f(k)/f(0), f(k) = cos^2(((k/K + s)/(1 + s)) pi/2),
    /// beta_k = min(1 - alphabar_k/alphabar_{k-1}, max_beta).
    Cosine {
        /// Offset s that keeps beta_1 from vanishing (0.008 in Nichol & Dhariwal).
        offset: f64,
        /// Clip for beta_k near k = K, where the cosine makes alphabar reach 0 (0.999).
        max_beta: f64,
    },
}

/// A noise schedule's configuration: the family and the number of steps K.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Number of diffusion steps K (1000 in Appendix B).
    pub steps: usize,
    /// The beta_k family.
    pub kind: ScheduleKind,
}

impl Default for ScheduleConfig {
    /// The paper's schedule (Appendix B): linear, beta_0 = 1e-4, beta_K = 0.02, K = 1000.
    fn default() -> Self {
        Self {
            steps: 1000,
            kind: ScheduleKind::Linear {
                beta_start: 1e-4,
                beta_end: 0.02,
            },
        }
    }
}

impl ScheduleConfig {
    /// The cosine schedule with Nichol & Dhariwal's constants.
    pub fn cosine(steps: usize) -> Self {
        Self {
            steps,
            kind: ScheduleKind::Cosine {
                offset: 0.008,
                max_beta: 0.999,
            },
        }
    }

    /// Checks the ranges and builds the schedule tables.
    pub fn build(&self) -> Result<NoiseSchedule, DiffusionError> {
        NoiseSchedule::new(self)
    }
}

/// Pure f64 linear betas, k = 1..=K (index k-1).
pub fn linear_betas(steps: usize, beta_start: f64, beta_end: f64) -> Vec<f64> {
    let kk = steps as f64;
    (1..=steps)
        .map(|k| {
            let r = k as f64 / kk;
            (1.0 - r) * beta_start + r * beta_end
        })
        .collect()
}

/// Pure f64 cosine betas, k = 1..=K (index k-1).
pub fn cosine_betas(steps: usize, offset: f64, max_beta: f64) -> Vec<f64> {
    let kk = steps as f64;
    let f = |k: f64| {
        let c = ((k / kk + offset) / (1.0 + offset) * std::f64::consts::FRAC_PI_2).cos();
        c * c
    };
    let f0 = f(0.0);
    (1..=steps)
        .map(|k| {
            let prev = f((k - 1) as f64) / f0;
            let cur = f(k as f64) / f0;
            // `prev` > 0 for every k <= K since the cosine's argument stays below pi/2.
            (1.0 - cur / prev).clamp(0.0, max_beta)
        })
        .collect()
}

/// A validated noise schedule with all derived f64 tables (index k-1 holds timestep k).
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseSchedule {
    config: ScheduleConfig,
    betas: Vec<f64>,
    alphas: Vec<f64>,
    alpha_bars: Vec<f64>,
    alpha_bars_prev: Vec<f64>,
    posterior_coef_z0: Vec<f64>,
    posterior_coef_zk: Vec<f64>,
    posterior_variance: Vec<f64>,
}

impl NoiseSchedule {
    /// Builds and validates the tables for `config`.
    pub fn new(config: &ScheduleConfig) -> Result<Self, DiffusionError> {
        let steps = config.steps;
        if steps == 0 {
            return Err(DiffusionError::param("steps", "must be at least 1"));
        }
        let betas = match config.kind {
            ScheduleKind::Linear {
                beta_start,
                beta_end,
            } => {
                for (key, v) in [("beta_start", beta_start), ("beta_end", beta_end)] {
                    if !(v > 0.0 && v < 1.0) {
                        return Err(DiffusionError::param(
                            &format!("kind.{key}"),
                            &format!("must lie in (0, 1), got {v}"),
                        ));
                    }
                }
                linear_betas(steps, beta_start, beta_end)
            }
            ScheduleKind::Cosine { offset, max_beta } => {
                if !(offset >= 0.0 && offset.is_finite()) {
                    return Err(DiffusionError::param(
                        "kind.offset",
                        &format!("must be finite and >= 0, got {offset}"),
                    ));
                }
                if !(max_beta > 0.0 && max_beta < 1.0) {
                    return Err(DiffusionError::param(
                        "kind.max_beta",
                        &format!("must lie in (0, 1), got {max_beta}"),
                    ));
                }
                cosine_betas(steps, offset, max_beta)
            }
        };
        Self::from_betas_inner(*config, betas)
    }

    fn from_betas_inner(config: ScheduleConfig, betas: Vec<f64>) -> Result<Self, DiffusionError> {
        if let Some((i, b)) = betas
            .iter()
            .enumerate()
            .find(|(_, b)| !(**b > 0.0 && **b < 1.0))
        {
            return Err(DiffusionError::param(
                "schedule",
                &format!("beta_{} = {b} is outside (0, 1)", i + 1),
            ));
        }
        let alphas: Vec<f64> = betas.iter().map(|b| 1.0 - b).collect();
        let mut alpha_bars = Vec::with_capacity(alphas.len());
        let mut acc = 1.0;
        for a in &alphas {
            acc *= a;
            alpha_bars.push(acc);
        }
        let mut alpha_bars_prev = Vec::with_capacity(alphas.len());
        alpha_bars_prev.push(1.0);
        alpha_bars_prev.extend_from_slice(&alpha_bars[..alpha_bars.len() - 1]);
        let mut coef_z0 = Vec::with_capacity(alphas.len());
        let mut coef_zk = Vec::with_capacity(alphas.len());
        let mut var = Vec::with_capacity(alphas.len());
        for k in 0..alphas.len() {
            let one_minus = 1.0 - alpha_bars[k];
            // eq. (32)
            coef_z0.push(alpha_bars_prev[k].sqrt() * betas[k] / one_minus);
            coef_zk.push(alphas[k].sqrt() * (1.0 - alpha_bars_prev[k]) / one_minus);
            // beta tilde_k = (1 - abar_{k-1}) / (1 - abar_k) beta_k; exactly 0 at k = 1.
            var.push(((1.0 - alpha_bars_prev[k]) / one_minus * betas[k]).max(0.0));
        }
        Ok(Self {
            config,
            betas,
            alphas,
            alpha_bars,
            alpha_bars_prev,
            posterior_coef_z0: coef_z0,
            posterior_coef_zk: coef_zk,
            posterior_variance: var,
        })
    }

    /// The configuration this schedule was built from.
    pub fn config(&self) -> &ScheduleConfig {
        &self.config
    }
    /// Number of steps K.
    pub fn steps(&self) -> usize {
        self.betas.len()
    }
    /// beta_k, index k-1.
    pub fn betas(&self) -> &[f64] {
        &self.betas
    }
    /// alpha_k = 1 - beta_k, index k-1.
    pub fn alphas(&self) -> &[f64] {
        &self.alphas
    }
    /// alphabar_k (eq. 30), index k-1.
    pub fn alpha_bars(&self) -> &[f64] {
        &self.alpha_bars
    }
    /// alphabar_{k-1}, index k-1 (alphabar_0 = 1).
    pub fn alpha_bars_prev(&self) -> &[f64] {
        &self.alpha_bars_prev
    }
    /// Coefficient of z_0 in the posterior mean (eq. 32), index k-1.
    pub fn posterior_coef_z0(&self) -> &[f64] {
        &self.posterior_coef_z0
    }
    /// Coefficient of z_k in the posterior mean (eq. 32), index k-1.
    pub fn posterior_coef_zk(&self) -> &[f64] {
        &self.posterior_coef_zk
    }
    /// Posterior variance beta tilde_k, index k-1.
    pub fn posterior_variance(&self) -> &[f64] {
        &self.posterior_variance
    }

    /// beta_k for 1-based k.
    pub fn beta(&self, k: usize) -> f64 {
        self.betas[k - 1]
    }
    /// alpha_k for 1-based k.
    pub fn alpha(&self, k: usize) -> f64 {
        self.alphas[k - 1]
    }
    /// alphabar_k for k in 0..=K (alphabar_0 = 1).
    pub fn alpha_bar(&self, k: usize) -> f64 {
        if k == 0 { 1.0 } else { self.alpha_bars[k - 1] }
    }
    /// alphabar_K, the weight of the latent-dependent prior term in eqs. (37), (40), (41).
    pub fn alpha_bar_final(&self) -> f64 {
        *self.alpha_bars.last().expect("K >= 1")
    }

    /// The tables as f32 tensors of shape [K + 1] on `device`, indexed directly by the 1-based
    /// timestep k; entry 0 holds the k = 0 convention (alphabar_0 = 1, beta_0 = 0).
    pub fn tensors(&self, device: &Device) -> Result<ScheduleTensors, DiffusionError> {
        let t = |at0: f64, v: &[f64]| -> candle_core::Result<Tensor> {
            let mut w = Vec::with_capacity(v.len() + 1);
            w.push(at0);
            w.extend_from_slice(v);
            Tensor::from_vec(w, v.len() + 1, device)?.to_dtype(DType::F32)
        };
        let map = |v: &[f64], f: fn(f64) -> f64| v.iter().map(|x| f(*x)).collect::<Vec<_>>();
        Ok(ScheduleTensors {
            betas: t(0.0, &self.betas)?,
            alphas: t(1.0, &self.alphas)?,
            alpha_bars: t(1.0, &self.alpha_bars)?,
            sqrt_alpha_bars: t(1.0, &map(&self.alpha_bars, f64::sqrt))?,
            sqrt_one_minus_alpha_bars: t(
                0.0,
                &map(&self.alpha_bars, |a| (1.0 - a).max(0.0).sqrt()),
            )?,
            posterior_coef_z0: t(1.0, &self.posterior_coef_z0)?,
            posterior_coef_zk: t(0.0, &self.posterior_coef_zk)?,
            posterior_variance: t(0.0, &self.posterior_variance)?,
        })
    }
}

/// The schedule tables as f32 tensors of shape [K + 1], indexed by the 1-based timestep k
/// (entry 0 is the k = 0 convention), so a batch gathers with its timestep tensor directly.
#[derive(Debug, Clone)]
pub struct ScheduleTensors {
    /// beta_k (beta_0 = 0).
    pub betas: Tensor,
    /// alpha_k (alpha_0 = 1).
    pub alphas: Tensor,
    /// alphabar_k (alphabar_0 = 1).
    pub alpha_bars: Tensor,
    /// sqrt(alphabar_k).
    pub sqrt_alpha_bars: Tensor,
    /// sqrt(1 - alphabar_k).
    pub sqrt_one_minus_alpha_bars: Tensor,
    /// z_0 coefficient of the posterior mean (eq. 32).
    pub posterior_coef_z0: Tensor,
    /// z_k coefficient of the posterior mean (eq. 32).
    pub posterior_coef_zk: Tensor,
    /// beta tilde_k.
    pub posterior_variance: Tensor,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paper() -> NoiseSchedule {
        ScheduleConfig::default().build().unwrap()
    }

    #[test]
    fn linear_endpoints_follow_the_papers_formula() {
        let s = paper();
        assert_eq!(s.steps(), 1000);
        // beta_1 = (1 - 1/K) 1e-4 + (1/K) 0.02
        assert!((s.beta(1) - (0.999 * 1e-4 + 0.001 * 0.02)).abs() < 1e-18);
        assert!((s.beta(1000) - 0.02).abs() < 1e-18);
    }

    #[test]
    fn alpha_bar_final_matches_float64_reference() {
        // Reference from an independent float64 computation (numpy 2.4.6):
        //   import numpy as np
        //   K = 1000; k = np.arange(1, K + 1)
        //   b = (1 - k / K) * 1e-4 + (k / K) * 0.02
        //   print(repr(np.prod(1 - b)), repr(np.sum(np.log1p(-b))))
        // -> 3.9956019661670595e-05 -10.127731217211435
        // Cross-check in closed form: log abar_K = sum log(1 - beta_k); the two agree.
        let s = paper();
        let abar = s.alpha_bar_final();
        let log_ref: f64 = (1..=1000)
            .map(|k| {
                let r = k as f64 / 1000.0;
                (-((1.0 - r) * 1e-4 + r * 0.02)).ln_1p()
            })
            .sum();
        assert!((log_ref - -10.127_731_217_211_435).abs() < 1e-11);
        assert!(
            (abar.ln() - log_ref).abs() < 1e-12,
            "{} vs {}",
            abar.ln(),
            log_ref
        );
        assert!(
            (abar - 3.995_601_966_167_059_5e-5).abs() < 1e-15,
            "alphabar_K = {abar:e}"
        );
    }

    #[test]
    fn tables_are_monotone_and_consistent() {
        for cfg in [ScheduleConfig::default(), ScheduleConfig::cosine(1000)] {
            let s = cfg.build().unwrap();
            let k = s.steps();
            for i in 1..k {
                assert!(
                    s.alpha_bars()[i] < s.alpha_bars()[i - 1],
                    "abar not decreasing at {i}"
                );
                assert!(
                    s.betas()[i] >= s.betas()[i - 1],
                    "beta not increasing at {i}"
                );
            }
            for i in 0..k {
                assert!((s.alphas()[i] + s.betas()[i] - 1.0).abs() < 1e-15);
                // Coefficients of eq. (32) applied to z_0 = z_k = c give back c * (coef0 + coefk);
                // with z_k = sqrt(abar_k) z_0 (noise-free), the mean is sqrt(abar_{k-1}) z_0.
                let abar = s.alpha_bars()[i];
                let prev = s.alpha_bars_prev()[i];
                let mean = s.posterior_coef_z0()[i] + s.posterior_coef_zk()[i] * abar.sqrt();
                assert!(
                    (mean - prev.sqrt()).abs() < 1e-12,
                    "posterior mean at k={}",
                    i + 1
                );
                // beta tilde_k = beta_k (1 - abar_{k-1}) / (1 - abar_k) <= beta_k.
                assert!(s.posterior_variance()[i] <= s.betas()[i] + 1e-18);
            }
            assert_eq!(s.posterior_variance()[0], 0.0);
            assert_eq!(s.alpha_bar(0), 1.0);
        }
    }

    #[test]
    fn posterior_matches_bayes_rule_numerically() {
        // q(z_{k-1}|z_k,z_0) ∝ q(z_k|z_{k-1}) q(z_{k-1}|z_0): precision and mean of the product of
        // two 1-d Gaussians, computed independently of eq. (32).
        let s = paper();
        for k in [2usize, 10, 500, 1000] {
            let (a, b) = (s.alpha(k), s.beta(k));
            let prev = s.alpha_bar(k - 1);
            let (z0, zk) = (0.7, -1.3);
            let prec = a / b + 1.0 / (1.0 - prev);
            let mean = (a.sqrt() * zk / b + prev.sqrt() * z0 / (1.0 - prev)) / prec;
            let got = s.posterior_coef_z0()[k - 1] * z0 + s.posterior_coef_zk()[k - 1] * zk;
            assert!((got - mean).abs() < 1e-10, "k={k}: {got} vs {mean}");
            assert!((s.posterior_variance()[k - 1] - 1.0 / prec).abs() < 1e-12);
        }
    }

    #[test]
    fn cosine_has_no_integer_division_bug() {
        // candle's ported `betas_for_alpha_bar` produced 999 zero betas; ours must not.
        let s = ScheduleConfig::cosine(1000).build().unwrap();
        assert!(s.betas().iter().all(|b| *b > 0.0));
        assert!(s.beta(1) < 1e-3 && s.beta(1000) == 0.999);
        // alphabar follows the closed form f(k)/f(0) until the clip kicks in.
        let f = |k: f64| {
            ((k / 1000.0 + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
                .cos()
                .powi(2)
        };
        assert!((s.alpha_bar(500) - f(500.0) / f(0.0)).abs() < 1e-12);
    }

    #[test]
    fn invalid_configs_are_rejected() {
        let bad = ScheduleConfig {
            steps: 0,
            ..Default::default()
        };
        assert!(bad.build().unwrap_err().to_string().contains("`steps`"));
        let bad = ScheduleConfig {
            steps: 10,
            kind: ScheduleKind::Linear {
                beta_start: 1e-4,
                beta_end: 1.5,
            },
        };
        assert!(bad.build().unwrap_err().to_string().contains("beta_end"));
    }

    #[test]
    fn tensors_match_tables() {
        let s = paper();
        let t = s.tensors(&Device::Cpu).unwrap();
        let v: Vec<f32> = t.sqrt_one_minus_alpha_bars.to_vec1().unwrap();
        assert_eq!(v.len(), 1001);
        assert_eq!(v[0], 0.0);
        assert!((v[1000] as f64 - (1.0 - s.alpha_bar_final()).sqrt()).abs() < 1e-7);
    }
}
