//! Per-sample one-draw estimates of the diffusion loss L_D(theta, z_0) (Appendix A.1):
//! the likelihood-weighted loss of eq. (40) and the simplified loss of eq. (41) used in training
//! (eq. 64). Both include the latent-dependent prior term abar_K ||z_0||^2 / 2 from eq. (37), which
//! a pixel-space DDPM drops but which matters here because the particles z_0 move.
//!
//! The k = 1 case of both is (1/2) ||z_0 - mu_theta,1(z_1)||^2 (eq. 35, identity variance). With
//! z_1 = sqrt(alpha_1) z_0 + sqrt(beta_1) eps and abar_1 = alpha_1 this equals
//! beta_1 / (2 alpha_1) ||eps - eps_theta||^2 exactly, so every case is a weight times the same
//! squared error; the weights are tabulated once in f64. Beside the paper's two weightings,
//! Min-SNR-gamma (Hang et al. 2023) reweights the same squared errors toward the noisier steps.

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::forward::{gather_coef, q_sample};
use crate::{DiffusionError, EpsModel, NoiseSchedule, ScheduleTensors};

/// Which weighting of the per-timestep terms to use.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossWeighting {
    /// Eq. (41): weight 1 on ||eps - eps_theta||^2 for k >= 2 (Ho et al.'s L_simple).
    #[default]
    Simple,
    /// Eq. (40): weight beta_k / (2 alpha_k (1 - abar_k)) for k >= 2 (the ELBO's weighting).
    LikelihoodWeighted,
    /// Min-SNR-gamma (Hang et al. 2023, for eps-prediction): weight min(SNR_k, gamma) / SNR_k
    /// for k >= 2, SNR_k = abar_k / (1 - abar_k) of the schedule. Eq. (41)'s weight 1 where the
    /// schedule's SNR is at most gamma (the noisier steps), less where the latents are barely
    /// noised. Each step's minimiser is unchanged (the same eps_theta minimises every weighting);
    /// only how a finite network and budget share their effort between steps moves.
    MinSnr {
        /// The SNR cap, in the schedule's units: the data's per-coordinate variance times SNR_k
        /// is the SNR of the latents themselves.
        gamma: f64,
    },
}

/// The weight on ||eps - eps_theta||^2 at 1-based timestep k.
pub fn loss_weight(schedule: &NoiseSchedule, weighting: LossWeighting, k: usize) -> f64 {
    let (b, a) = (schedule.beta(k), schedule.alpha(k));
    if k == 1 {
        return b / (2.0 * a);
    }
    match weighting {
        LossWeighting::Simple => 1.0,
        LossWeighting::LikelihoodWeighted => b / (2.0 * a * (1.0 - schedule.alpha_bar(k))),
        LossWeighting::MinSnr { gamma } => {
            let ab = schedule.alpha_bar(k);
            let snr = ab / (1.0 - ab);
            snr.min(gamma) / snr
        }
    }
}

/// Per-sample loss terms, each a tensor \[B\].
#[derive(Debug, Clone)]
pub struct LossTerms {
    /// The whole per-sample loss: `denoise + prior`.
    pub total: Tensor,
    /// w_k ||eps - eps_theta,k(z_k)||^2.
    pub denoise: Tensor,
    /// abar_K ||z_0||^2 / 2.
    pub prior: Tensor,
}

/// The diffusion loss of eqs. (40)/(41), bound to a schedule and a device.
#[derive(Debug, Clone)]
pub struct DiffusionLoss {
    weighting: LossWeighting,
    steps: usize,
    tables: ScheduleTensors,
    weights: Tensor,
    prior_weight: f64,
    alpha_bars: Vec<f64>,
}

/// The loss terms of one forward pass under the stable target field
/// ([`DiffusionLoss::per_sample_stf`]): the same network output scored against both targets.
#[derive(Debug, Clone)]
pub struct StfTerms {
    /// Scored against each row's own noise (eqs. 40/41): what the particles' gradient uses.
    pub dsm: LossTerms,
    /// Scored against the stable target field: what theta minimises under STF.
    pub stf: LossTerms,
    /// w_k 2 eps_theta . (eps - v) per row with (eps - v) held constant: its theta-gradient added
    /// to that of `dsm` is the theta-gradient of `stf` (the two differ by a constant in theta),
    /// so one forward pass serves a step whose particles follow DSM and whose theta follows STF.
    pub theta_correction: Tensor,
}

impl DiffusionLoss {
    /// Tabulates the weights for `weighting` under `schedule` on `device`.
    pub fn new(
        schedule: &NoiseSchedule,
        weighting: LossWeighting,
        device: &Device,
    ) -> Result<Self, DiffusionError> {
        let steps = schedule.steps();
        let mut w = vec![0f32; steps + 1];
        for (k, wk) in w.iter_mut().enumerate().skip(1) {
            *wk = loss_weight(schedule, weighting, k) as f32;
        }
        Ok(Self {
            weighting,
            steps,
            tables: schedule.tensors(device)?,
            weights: Tensor::from_vec(w, steps + 1, device)?,
            prior_weight: schedule.alpha_bar_final() * 0.5,
            alpha_bars: schedule.alpha_bars().to_vec(),
        })
    }

    /// The weighting in use.
    pub fn weighting(&self) -> LossWeighting {
        self.weighting
    }

    /// Number of diffusion steps K.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// The schedule tables on this loss's device.
    pub fn tables(&self) -> &ScheduleTensors {
        &self.tables
    }

    /// z_k from (z_0, eps, k) and the model's eps_theta(z_k, k), shape-checked.
    fn predict<M: EpsModel + ?Sized>(
        &self,
        model: &M,
        z0: &Tensor,
        eps: &Tensor,
        k: &Tensor,
    ) -> Result<(Tensor, Tensor), DiffusionError> {
        let zk = q_sample(&self.tables, z0, eps, k)?;
        let pred = model.predict_eps(&zk, k)?;
        if pred.dims() != z0.dims() {
            return Err(DiffusionError::Input(format!(
                "epsilon model returned shape {:?} for input {:?}",
                pred.dims(),
                z0.dims()
            )));
        }
        Ok((zk, pred))
    }

    /// One-sample estimates for a batch: `z0` and `eps` are [B, ...], `k` is u32 \[B\] in 1..=K.
    /// Differentiable in `z0` (through z_k and the prior term) and in the model's parameters.
    pub fn per_sample<M: EpsModel + ?Sized>(
        &self,
        model: &M,
        z0: &Tensor,
        eps: &Tensor,
        k: &Tensor,
    ) -> Result<LossTerms, DiffusionError> {
        self.score(&self.squared_error(model, z0, eps, k)?, z0, k)
    }

    /// One forward pass scored under this loss's weighting and under `other`'s (built on the
    /// same schedule): e.g. the simple loss to report and a reweighted one to train on.
    pub fn per_sample_pair<M: EpsModel + ?Sized>(
        &self,
        other: &DiffusionLoss,
        model: &M,
        z0: &Tensor,
        eps: &Tensor,
        k: &Tensor,
    ) -> Result<(LossTerms, LossTerms), DiffusionError> {
        if other.alpha_bars != self.alpha_bars {
            return Err(DiffusionError::Input(
                "the two losses of a pair must share one schedule".into(),
            ));
        }
        let sq = self.squared_error(model, z0, eps, k)?;
        Ok((self.score(&sq, z0, k)?, other.score(&sq, z0, k)?))
    }

    /// Each row's ||eps - eps_theta,k(z_k)||^2 (\[B\]).
    fn squared_error<M: EpsModel + ?Sized>(
        &self,
        model: &M,
        z0: &Tensor,
        eps: &Tensor,
        k: &Tensor,
    ) -> Result<Tensor, DiffusionError> {
        let (_, pred) = self.predict(model, z0, eps, k)?;
        Ok((eps - pred)?.sqr()?.flatten_from(1)?.sum(1)?)
    }

    /// The loss terms from each row's squared error (`squared_error`).
    fn score(&self, sq: &Tensor, z0: &Tensor, k: &Tensor) -> Result<LossTerms, DiffusionError> {
        let w = gather_coef(&self.weights, k, z0)?.flatten_all()?;
        let denoise = (sq * w)?;
        let prior = (z0.sqr()?.flatten_from(1)?.sum(1)? * self.prior_weight)?;
        Ok(LossTerms {
            total: (&denoise + &prior)?,
            denoise,
            prior,
        })
    }
}

impl DiffusionLoss {
    /// Like [`DiffusionLoss::per_sample`], with the network's output scored against both each
    /// row's own noise and the stable target field of `reference` (clean latents holding every
    /// row's z_0; Xu 2024, thesis Algorithm 1; [`crate::stf_eps_targets`]). The STF target is a
    /// constant: `stf` is differentiable in the model's parameters and in `z0` only through
    /// eps_theta's input.
    pub fn per_sample_stf<M: EpsModel + ?Sized>(
        &self,
        model: &M,
        z0: &Tensor,
        eps: &Tensor,
        k: &Tensor,
        reference: &Tensor,
    ) -> Result<StfTerms, DiffusionError> {
        let (zk, pred) = self.predict(model, z0, eps, k)?;
        let v = crate::stf_eps_targets(&self.alpha_bars, &zk, k, reference)?;
        let w = gather_coef(&self.weights, k, z0)?.flatten_all()?;
        let rows_sum = |t: Tensor| -> candle_core::Result<Tensor> { t.flatten_from(1)?.sum(1) };
        let prior = (rows_sum(z0.sqr()?)? * self.prior_weight)?;
        let terms = |target: &Tensor| -> Result<LossTerms, DiffusionError> {
            let denoise = (rows_sum((target - &pred)?.sqr()?)? * &w)?;
            Ok(LossTerms {
                total: (&denoise + &prior)?,
                denoise,
                prior: prior.clone(),
            })
        };
        let gap = (eps - &v)?.detach().affine(2.0, 0.0)?;
        Ok(StfTerms {
            dsm: terms(eps)?,
            stf: terms(&v)?,
            theta_correction: (rows_sum((&pred * gap)?)? * &w)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ScheduleConfig, timestep_tensor};
    use candle_core::{DType, Var};

    /// eps_theta(z, k) = c z: simple, differentiable, and its value is easy to compute by hand.
    struct Scaled(Tensor);
    impl EpsModel for Scaled {
        fn predict_eps(&self, z: &Tensor, _k: &Tensor) -> candle_core::Result<Tensor> {
            z.broadcast_mul(&self.0)
        }
    }

    #[test]
    fn hand_computed_losses() {
        let dev = Device::Cpu;
        let s = ScheduleConfig::default().build().unwrap();
        let z0v = [[0.3f64, -0.4], [1.0, 2.0], [-0.5, 0.25]];
        let epsv = [[1.0f64, 0.0], [0.5, -1.5], [0.2, 0.1]];
        let ks = [1u32, 2, 1000];
        let c = 0.5f64;
        let z0 = Tensor::new(&z0v, &dev)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let eps = Tensor::new(&epsv, &dev)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let k = timestep_tensor(&ks, 1000, &dev).unwrap();
        let model = Scaled(Tensor::new(c as f32, &dev).unwrap());
        let abar_k = s.alpha_bar_final();
        for weighting in [
            LossWeighting::Simple,
            LossWeighting::LikelihoodWeighted,
            LossWeighting::MinSnr { gamma: 5.0 },
        ] {
            let loss = DiffusionLoss::new(&s, weighting, &dev).unwrap();
            let got: Vec<f32> = loss
                .per_sample(&model, &z0, &eps, &k)
                .unwrap()
                .total
                .to_vec1()
                .unwrap();
            for i in 0..3 {
                let kk = ks[i] as usize;
                let ab = s.alpha_bar(kk);
                let zk: Vec<f64> = (0..2)
                    .map(|j| ab.sqrt() * z0v[i][j] + (1.0 - ab).sqrt() * epsv[i][j])
                    .collect();
                let pred: Vec<f64> = zk.iter().map(|z| c * z).collect();
                let prior = abar_k * (z0v[i][0].powi(2) + z0v[i][1].powi(2)) / 2.0;
                let want = if kk == 1 {
                    // eq. (35) directly: 1/2 ||z0 - mu_theta,1(z1)||^2.
                    let (a, b) = (s.alpha(1), s.beta(1));
                    (0..2)
                        .map(|j| {
                            let mu = (zk[j] - b / (1.0 - ab).sqrt() * pred[j]) / a.sqrt();
                            0.5 * (z0v[i][j] - mu).powi(2)
                        })
                        .sum::<f64>()
                        + prior
                } else {
                    let se: f64 = (0..2).map(|j| (epsv[i][j] - pred[j]).powi(2)).sum();
                    let w = match weighting {
                        LossWeighting::Simple => 1.0,
                        LossWeighting::LikelihoodWeighted => {
                            s.beta(kk) / (2.0 * s.alpha(kk) * (1.0 - ab))
                        }
                        LossWeighting::MinSnr { gamma } => {
                            let snr = ab / (1.0 - ab);
                            snr.min(gamma) / snr
                        }
                    };
                    w * se + prior
                };
                let tol = 1e-5 * want.abs().max(1e-3);
                assert!(
                    (got[i] as f64 - want).abs() < tol,
                    "{weighting:?} row {i}: {} vs {want}",
                    got[i]
                );
            }
        }
    }

    #[test]
    fn min_snr_weights_match_an_independent_computation() {
        // Reference (numpy, float64; the paper's linear betas as `schedule::linear_betas`):
        //   K = 1000; k = np.arange(1, K + 1); b = (1 - k / K) * 1e-4 + (k / K) * 0.02
        //   ab = np.cumprod(1 - b); snr = ab[k-1] / (1 - ab[k-1]); w = min(snr, gamma) / snr
        let s = ScheduleConfig::default().build().unwrap();
        let cases = [
            (5.0, 2, 0.0012987534544022749),
            (5.0, 100, 0.5845873169022093),
            (5.0, 200, 1.0),
            (0.25, 100, 0.029229365845110468),
            (0.25, 200, 0.13070510451060588),
            (0.25, 300, 0.3838637174649459),
            (0.25, 500, 1.0),
        ];
        for (gamma, k, want) in cases {
            let got = loss_weight(&s, LossWeighting::MinSnr { gamma }, k);
            assert!(
                (got - want).abs() < 1e-9 * want,
                "gamma {gamma}, k {k}: {got} vs {want}"
            );
        }
        // k = 1 keeps eq. (35)'s exact weight under every weighting.
        let w1 = loss_weight(&s, LossWeighting::Simple, 1);
        assert_eq!(loss_weight(&s, LossWeighting::MinSnr { gamma: 5.0 }, 1), w1);
    }

    #[test]
    fn a_pair_scores_one_pass_as_two_losses_would() {
        let dev = Device::Cpu;
        let s = ScheduleConfig::default().build().unwrap();
        let simple = DiffusionLoss::new(&s, LossWeighting::Simple, &dev).unwrap();
        let min_snr = DiffusionLoss::new(&s, LossWeighting::MinSnr { gamma: 0.5 }, &dev).unwrap();
        let z0 = Tensor::new(&[[0.3f32, -1.2], [2.0, 0.5], [-0.7, 0.1]], &dev).unwrap();
        let eps = Tensor::new(&[[1.0f32, -0.5], [0.2, 0.3], [-1.1, 0.8]], &dev).unwrap();
        let k = timestep_tensor(&[1, 150, 700], 1000, &dev).unwrap();
        let model = Scaled(Tensor::new(0.4f32, &dev).unwrap());
        let (a, b) = simple
            .per_sample_pair(&min_snr, &model, &z0, &eps, &k)
            .unwrap();
        for (pair, alone) in [(&a, &simple), (&b, &min_snr)] {
            let want: Vec<f32> = alone
                .per_sample(&model, &z0, &eps, &k)
                .unwrap()
                .total
                .to_vec1()
                .unwrap();
            assert_eq!(pair.total.to_vec1::<f32>().unwrap(), want);
        }
        // The weights differ where the schedule's SNR exceeds gamma (k = 150) and not at k = 700.
        let (da, db) = (
            a.denoise.to_vec1::<f32>().unwrap(),
            b.denoise.to_vec1::<f32>().unwrap(),
        );
        assert!(db[1] < 0.5 * da[1], "{da:?} {db:?}");
        assert_eq!(da[2], db[2]);
        // Losses on different schedules cannot be paired.
        let other = ScheduleConfig {
            steps: 500,
            ..ScheduleConfig::default()
        }
        .build()
        .unwrap();
        let o = DiffusionLoss::new(&other, LossWeighting::Simple, &dev).unwrap();
        let k2 = timestep_tensor(&[1, 2, 3], 500, &dev).unwrap();
        assert!(simple.per_sample_pair(&o, &model, &z0, &eps, &k2).is_err());
    }

    #[test]
    fn perfect_model_leaves_only_the_prior_term() {
        // A model that returns the true noise makes the denoising term vanish.
        struct Oracle(Tensor);
        impl EpsModel for Oracle {
            fn predict_eps(&self, _z: &Tensor, _k: &Tensor) -> candle_core::Result<Tensor> {
                Ok(self.0.clone())
            }
        }
        let dev = Device::Cpu;
        let s = ScheduleConfig::default().build().unwrap();
        let loss = DiffusionLoss::new(&s, LossWeighting::Simple, &dev).unwrap();
        let z0 = Tensor::new(&[[3.0f32, 4.0]], &dev).unwrap();
        let eps = Tensor::new(&[[0.1f32, -0.7]], &dev).unwrap();
        let k = timestep_tensor(&[17], 1000, &dev).unwrap();
        let t = loss
            .per_sample(&Oracle(eps.clone()), &z0, &eps, &k)
            .unwrap();
        let d: Vec<f32> = t.denoise.to_vec1().unwrap();
        let p: Vec<f32> = t.prior.to_vec1().unwrap();
        assert_eq!(d, vec![0.0]);
        assert!((p[0] as f64 - s.alpha_bar_final() * 25.0 / 2.0).abs() < 1e-9);
    }

    #[test]
    fn loss_gradients_reach_latents_and_parameters() {
        let dev = Device::Cpu;
        let s = ScheduleConfig::default().build().unwrap();
        let loss = DiffusionLoss::new(&s, LossWeighting::Simple, &dev).unwrap();
        let z0 =
            Var::from_tensor(&Tensor::new(&[[0.3f64, -0.4], [1.0, 2.0]], &dev).unwrap()).unwrap();
        let c = Var::from_tensor(&Tensor::new(0.5f64, &dev).unwrap()).unwrap();
        let eps = Tensor::new(&[[1.0f64, 0.0], [0.5, -1.5]], &dev).unwrap();
        let k = timestep_tensor(&[1, 400], 1000, &dev).unwrap();
        let f = |v: &[Tensor]| -> candle_core::Result<Tensor> {
            let model = Scaled(v[1].clone());
            loss.per_sample(&model, &v[0], &eps, &k)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?
                .total
                .sum_all()
        };
        let vars = [("z0", z0), ("c", c)];
        ipld_gradcheck::assert_gradients_flow(&f, &vars).unwrap();
        ipld_gradcheck::check_finite_differences(&f, &vars, &Default::default()).unwrap();
    }

    #[test]
    fn stf_terms_share_one_forward_and_the_correction_turns_dsm_into_stf() {
        let dev = Device::Cpu;
        let s = ScheduleConfig::default().build().unwrap();
        let loss = DiffusionLoss::new(&s, LossWeighting::Simple, &dev).unwrap();
        let z0 = Tensor::new(&[[0.3f64, -0.4], [1.0, 2.0], [-0.2, 0.1]], &dev).unwrap();
        let eps = Tensor::new(&[[1.0f64, 0.0], [0.5, -1.5], [0.3, 0.3]], &dev).unwrap();
        let reference = Tensor::cat(
            &[
                z0.clone(),
                Tensor::new(&[[0.5f64, 0.5], [-1.0, 0.0]], &dev).unwrap(),
            ],
            0,
        )
        .unwrap();
        let k = timestep_tensor(&[1, 150, 600], 1000, &dev).unwrap();
        let c = Var::from_tensor(&Tensor::new(0.5f64, &dev).unwrap()).unwrap();
        let model = Scaled(c.as_tensor().clone());
        let t = loss
            .per_sample_stf(&model, &z0, &eps, &k, &reference)
            .unwrap();
        let plain = loss.per_sample(&model, &z0, &eps, &k).unwrap();
        let v = |x: &Tensor| -> Vec<f64> { x.to_vec1().unwrap() };
        assert_eq!(v(&t.dsm.total), v(&plain.total));
        // STF and DSM differ (the reference is not one point), and theta's gradient of STF is
        // DSM's plus the correction's.
        assert_ne!(v(&t.stf.denoise), v(&t.dsm.denoise));
        let g = |x: &Tensor| -> f64 {
            let gs = x.sum_all().unwrap().backward().unwrap();
            gs.get(c.as_tensor()).unwrap().to_scalar::<f64>().unwrap()
        };
        let (g_stf, g_dsm, g_corr) = (g(&t.stf.total), g(&t.dsm.total), g(&t.theta_correction));
        assert!(g_stf.is_finite() && g_stf != 0.0);
        assert!(
            (g_stf - (g_dsm + g_corr)).abs() < 1e-10 * g_stf.abs().max(1.0),
            "{g_stf} vs {g_dsm} + {g_corr}"
        );
    }

    #[test]
    fn stf_loss_gradients_reach_parameters() {
        let dev = Device::Cpu;
        let s = ScheduleConfig::default().build().unwrap();
        let loss = DiffusionLoss::new(&s, LossWeighting::Simple, &dev).unwrap();
        let z0 = Tensor::new(&[[0.3f64, -0.4], [1.0, 2.0]], &dev).unwrap();
        let c = Var::from_tensor(&Tensor::new(0.5f64, &dev).unwrap()).unwrap();
        let eps = Tensor::new(&[[1.0f64, 0.0], [0.5, -1.5]], &dev).unwrap();
        let reference = Tensor::new(&[[0.3f64, -0.4], [1.0, 2.0], [0.0, 1.0]], &dev).unwrap();
        let k = timestep_tensor(&[3, 400], 1000, &dev).unwrap();
        // Only theta is checked: the target is computed from z_k and held constant, so a finite
        // difference in z0 would move it while the gradient does not.
        let f = |v: &[Tensor]| -> candle_core::Result<Tensor> {
            let model = Scaled(v[0].clone());
            let t = loss
                .per_sample_stf(&model, &z0, &eps, &k, &reference)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            t.stf.total.sum_all()
        };
        let vars = [("c", c)];
        ipld_gradcheck::assert_gradients_flow(&f, &vars).unwrap();
        ipld_gradcheck::check_finite_differences(&f, &vars, &Default::default()).unwrap();
    }
}
