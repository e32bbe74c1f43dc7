//! The parameter updates, with state this crate owns so checkpoints can save and restore it
//! exactly (candle's `AdamW` keeps its moments private): AdamW (Loshchilov & Hutter 2019), as
//! PyTorch documents it (decoupled decay p <- p (1 - lr wd), then Adam with bias correction),
//! for IPLD and DiffusionVAE; and [`PhiUpdate`], the decoder's update of the published PGD
//! (Kuntz et al. 2023) and MPGD (Lim et al. 2024).

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{CheckpointReader, CheckpointWriter, Checkpointed};
use crate::error::TrainError;

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWConfig {
    /// Learning rate (1e-3 on the synthetic data).
    pub lr: f64,
    /// First-moment decay beta_1.
    pub beta1: f64,
    /// Second-moment decay beta_2.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay (PyTorch's default 0.01).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

impl AdamWConfig {
    /// Checks the ranges; `key` prefixes the parameter names in errors.
    pub fn validate(&self, key: &str) -> Result<(), String> {
        let bad = |k: &str, why: String| Err(format!("invalid parameter `{key}.{k}`: {why}"));
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("lr", format!("must be > 0, got {}", self.lr));
        }
        for (k, v) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return bad(k, format!("must lie in [0, 1), got {v}"));
            }
        }
        if self.eps.is_nan() || self.eps <= 0.0 {
            return bad("eps", format!("must be > 0, got {}", self.eps));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return bad(
                "weight_decay",
                format!("must be >= 0, got {}", self.weight_decay),
            );
        }
        Ok(())
    }
}

/// AdamW over a named, ordered set of variables.
#[derive(Debug)]
pub struct AdamW {
    cfg: AdamWConfig,
    vars: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    t: u64,
}

impl AdamW {
    /// Zero moments for `vars` (sorted by name so state order is stable).
    pub fn new(cfg: AdamWConfig, mut vars: Vec<(String, Var)>) -> candle_core::Result<Self> {
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let m = vars
            .iter()
            .map(|(_, v)| v.zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let v = m.clone();
        Ok(Self {
            cfg,
            vars,
            m,
            v,
            t: 0,
        })
    }

    /// Steps taken so far (the bias-correction exponent).
    pub fn steps(&self) -> u64 {
        self.t
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    /// One step with learning rate `lr`. A variable without a gradient in `grads` (pruned from
    /// the graph, e.g. by a zero loss weight) is treated as having gradient zero, as PyTorch
    /// does for a zeroed `.grad`.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> candle_core::Result<()> {
        self.t += 1;
        let c = self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.t as i32);
        let bc2 = 1.0 - c.beta2.powi(self.t as i32);
        for ((_, var), (m, v)) in self
            .vars
            .iter()
            .zip(self.m.iter_mut().zip(self.v.iter_mut()))
        {
            let theta = var.as_tensor();
            let decayed = theta.affine(1.0 - lr * c.weight_decay, 0.0)?;
            // A missing gradient (pruned from the graph) is a zero gradient.
            let g = match grads.get(theta) {
                Some(g) => g.clone(),
                None => theta.zeros_like()?,
            };
            *m = (m.affine(c.beta1, 0.0)? + g.affine(1.0 - c.beta1, 0.0)?)?;
            *v = (v.affine(c.beta2, 0.0)? + g.sqr()?.affine(1.0 - c.beta2, 0.0)?)?;
            let denom = v.affine(1.0 / bc2, 0.0)?.sqrt()?.affine(1.0, c.eps)?;
            let next = (decayed - m.affine(lr / bc1, 0.0)?.div(&denom)?)?;
            var.set(&next.detach())?;
        }
        Ok(())
    }

    /// The optimiser state as named tensors: `m/<var>` and `v/<var>`.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.vars.len());
        for ((name, _), (m, v)) in self.vars.iter().zip(self.m.iter().zip(&self.v)) {
            out.push((format!("m/{name}"), m.clone()));
            out.push((format!("v/{name}"), v.clone()));
        }
        out
    }

    /// Restores state saved by [`AdamW::state`] after `steps` steps.
    pub fn load_state(
        &mut self,
        steps: u64,
        state: &HashMap<String, Tensor>,
    ) -> Result<(), String> {
        for (i, (name, var)) in self.vars.iter().enumerate() {
            for (kind, slot) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let key = format!("{kind}/{name}");
                let t = state
                    .get(&key)
                    .ok_or_else(|| format!("missing optimiser tensor `{key}`"))?;
                if t.dims() != var.dims() {
                    return Err(format!(
                        "optimiser tensor `{key}` has shape {:?}, expected {:?}",
                        t.dims(),
                        var.dims()
                    ));
                }
                *slot = t.clone();
            }
        }
        self.t = steps;
        Ok(())
    }
}

/// The moments as `<prefix>/m/<var>`, `<prefix>/v/<var>`, and the step count as the metadata
/// `<prefix>_steps`.
impl Checkpointed for AdamW {
    fn save(&self, prefix: &str, out: &mut CheckpointWriter) -> Result<(), TrainError> {
        for (name, t) in self.state() {
            out.tensor(format!("{prefix}/{name}"), t);
        }
        out.meta(&format!("{prefix}_steps"), self.t);
        Ok(())
    }

    fn load(&mut self, prefix: &str, ck: &CheckpointReader) -> Result<(), TrainError> {
        let steps = ck.meta_u64(&format!("{prefix}_steps"))?;
        self.load_state(steps, &ck.under(prefix))
            .map_err(|e| ck.problem(e))
    }
}

/// The decoder's update under the published PGD and MPGD (`train.phi_update`): an
/// RMSProp-preconditioned gradient step (PGD), or MPGD's exponential integrator of
/// d phi = eta v dt, dv = (-P(g) - gamma eta v) dt (momentum on phi, no noise). The gradient g is
/// that of the published codes' loss -(1/N) sum_{m in B, n} log p(x^m, z^{m,n}), a sum over the
/// minibatch (ParEM's learning rate h M lambda on the minibatch mean is h_phi = h M lambda / |B|).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhiUpdateConfig {
    /// Step size h_phi (the codes' `theta_step_size`; MPGD's dt). `train.lr_decay_phi` decays it
    /// per epoch as it does AdamW's learning rate.
    pub step_size: f64,
    /// `rmsprop`: g <- g / sqrt(G + 1e-8) after G <- alpha G + (1 - alpha) g², G starting at 1
    /// (Lim et al.'s preconditioner, which Kuntz et al. also use); `none`: the raw gradient.
    pub preconditioner: PhiPreconditioner,
    /// RMSProp's decay alpha (0.99 in both codes).
    #[serde(default = "rmsprop_alpha")]
    pub rmsprop_alpha: f64,
    /// MPGD's momentum on phi (its gamma_theta, eta_theta: 0.9 and 500 on CIFAR-10); absent for
    /// PGD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub momentum: Option<PhiMomentum>,
}

fn rmsprop_alpha() -> f64 {
    0.99
}

/// The decoder gradient's preconditioner under PGD and MPGD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PhiPreconditioner {
    /// RMSProp's diagonal, G starting at 1.
    Rmsprop,
    /// None.
    None,
}

/// MPGD's friction gamma and inverse mass eta for phi (their gamma_theta, eta_theta).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhiMomentum {
    /// Friction gamma.
    pub gamma: f64,
    /// Inverse mass eta.
    pub eta: f64,
}

impl PhiUpdateConfig {
    /// Checks the ranges; `key` prefixes the parameter names in errors.
    pub fn validate(&self, key: &str) -> Result<(), String> {
        let bad = |k: &str, why: String| Err(format!("invalid parameter `{key}.{k}`: {why}"));
        if !(self.step_size > 0.0 && self.step_size.is_finite()) {
            return bad("step_size", format!("must be > 0, got {}", self.step_size));
        }
        if !(0.0..1.0).contains(&self.rmsprop_alpha) {
            return bad(
                "rmsprop_alpha",
                format!("must lie in [0, 1), got {}", self.rmsprop_alpha),
            );
        }
        if let Some(m) = self.momentum {
            for (k, v) in [("gamma", m.gamma), ("eta", m.eta)] {
                if !(v > 0.0 && v.is_finite()) {
                    return bad(&format!("momentum.{k}"), format!("must be > 0, got {v}"));
                }
            }
        }
        Ok(())
    }
}

/// [`PhiUpdateConfig`]'s update over a named, ordered set of variables, with its RMSProp
/// second moments G and (MPGD) momenta v.
#[derive(Debug)]
pub struct PhiUpdate {
    cfg: PhiUpdateConfig,
    vars: Vec<(String, Var)>,
    g2: Vec<Tensor>,
    v: Vec<Tensor>,
    t: u64,
}

impl PhiUpdate {
    /// G = 1 and v = 0 for `vars` (sorted by name so state order is stable).
    pub fn new(cfg: PhiUpdateConfig, mut vars: Vec<(String, Var)>) -> candle_core::Result<Self> {
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let g2 = vars
            .iter()
            .map(|(_, v)| v.ones_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let v = vars
            .iter()
            .map(|(_, v)| v.zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            cfg,
            vars,
            g2,
            v,
            t: 0,
        })
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.t
    }

    /// MPGD's coefficients over `dt`: (omega = e^-k, c1 = (1 - omega) / gamma,
    /// c2 = (dt - (1 - omega) / (gamma eta)) / gamma, (1 - omega) / (gamma eta)), k = gamma eta dt.
    fn momentum_coefficients(m: PhiMomentum, dt: f64) -> (f64, f64, f64, f64) {
        let ge = m.gamma * m.eta;
        let k = ge * dt;
        let one_minus = -(-k).exp_m1();
        (
            (-k).exp(),
            one_minus / m.gamma,
            (k + (-k).exp_m1()) / (ge * m.gamma),
            one_minus / ge,
        )
    }

    /// MPGD's first half-step, before the gradient: phi <- phi + c1 v over `dt` (nothing for
    /// PGD). The gradient is then taken at the moved phi, as in Lim et al.'s code.
    pub fn advance(&mut self, dt: f64) -> candle_core::Result<()> {
        let Some(m) = self.cfg.momentum else {
            return Ok(());
        };
        let (_, c1, _, _) = Self::momentum_coefficients(m, dt);
        for ((_, var), v) in self.vars.iter().zip(&self.v) {
            var.set(&(var.as_tensor() + v.affine(c1, 0.0)?)?.detach())?;
        }
        Ok(())
    }

    /// The step with size `dt` on the gradients of the minibatch mean in `grads` times `scale`
    /// (|B|: the published loss is the minibatch sum): PGD phi <- phi - dt P(g); MPGD
    /// v <- omega v - (1 - omega) P(g) / (gamma eta), phi <- phi - c2 P(g) (after
    /// [`advance`](Self::advance)). A variable without a gradient has gradient zero.
    pub fn step(&mut self, grads: &GradStore, dt: f64, scale: f64) -> candle_core::Result<()> {
        self.t += 1;
        let cfg = self.cfg;
        for ((_, var), (g2, v)) in self
            .vars
            .iter()
            .zip(self.g2.iter_mut().zip(self.v.iter_mut()))
        {
            let phi = var.as_tensor();
            let g = match grads.get(phi) {
                Some(g) => g.affine(scale, 0.0)?,
                None => phi.zeros_like()?,
            };
            let g = match cfg.preconditioner {
                PhiPreconditioner::Rmsprop => {
                    let a = cfg.rmsprop_alpha;
                    *g2 = (g2.affine(a, 0.0)? + g.sqr()?.affine(1.0 - a, 0.0)?)?;
                    g.div(&g2.affine(1.0, 1e-8)?.sqrt()?)?
                }
                PhiPreconditioner::None => g,
            };
            let next = match cfg.momentum {
                None => (phi - g.affine(dt, 0.0)?)?,
                Some(m) => {
                    let (omega, _, c2, c3) = Self::momentum_coefficients(m, dt);
                    *v = (v.affine(omega, 0.0)? - g.affine(c3, 0.0)?)?;
                    (phi - g.affine(c2, 0.0)?)?
                }
            };
            var.set(&next.detach())?;
        }
        Ok(())
    }
}

/// G as `<prefix>/g2/<var>`, the momenta (MPGD) as `<prefix>/v/<var>`, and the step count as the
/// metadata `<prefix>_steps`.
impl Checkpointed for PhiUpdate {
    fn save(&self, prefix: &str, out: &mut CheckpointWriter) -> Result<(), TrainError> {
        for (i, (name, _)) in self.vars.iter().enumerate() {
            out.tensor(format!("{prefix}/g2/{name}"), self.g2[i].clone());
            if self.cfg.momentum.is_some() {
                out.tensor(format!("{prefix}/v/{name}"), self.v[i].clone());
            }
        }
        out.meta(&format!("{prefix}_steps"), self.t);
        Ok(())
    }

    fn load(&mut self, prefix: &str, ck: &CheckpointReader) -> Result<(), TrainError> {
        let steps = ck.meta_u64(&format!("{prefix}_steps"))?;
        let state = ck.under(prefix);
        let momentum = self.cfg.momentum.is_some();
        for (i, (name, var)) in self.vars.iter().enumerate() {
            for (kind, slot) in [("g2", &mut self.g2[i]), ("v", &mut self.v[i])] {
                if kind == "v" && !momentum {
                    continue;
                }
                let key = format!("{kind}/{name}");
                let t = state.get(&key).ok_or_else(|| {
                    ck.problem(format!("missing optimiser tensor `{prefix}/{key}`"))
                })?;
                if t.dims() != var.dims() {
                    return Err(ck.problem(format!(
                        "optimiser tensor `{prefix}/{key}` has shape {:?}, expected {:?}",
                        t.dims(),
                        var.dims()
                    )));
                }
                *slot = t.clone();
            }
        }
        self.t = steps;
        Ok(())
    }
}

/// A network's parameter update: AdamW (IPLD, DiffusionVAE), or the published PGD's and MPGD's
/// [`PhiUpdate`] (their decoder).
#[derive(Debug)]
pub enum Optimizer {
    /// AdamW.
    AdamW(AdamW),
    /// PGD's or MPGD's update.
    Phi(PhiUpdate),
}

impl Checkpointed for Optimizer {
    fn save(&self, prefix: &str, out: &mut CheckpointWriter) -> Result<(), TrainError> {
        match self {
            Self::AdamW(o) => o.save(prefix, out),
            Self::Phi(o) => o.save(prefix, out),
        }
    }

    fn load(&mut self, prefix: &str, ck: &CheckpointReader) -> Result<(), TrainError> {
        match self {
            Self::AdamW(o) => o.load(prefix, ck),
            Self::Phi(o) => o.load(prefix, ck),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_pytorch_adamw_reference() {
        // Reference: PyTorch's documented AdamW written out in NumPy (float64), five steps on
        // f(p) = sum(c p²) + sum(p):
        //   lr, b1, b2, eps, wd = 0.1, 0.9, 0.999, 1e-8, 0.01
        //   p = np.array([1.0, -2.0, 0.5]); c = np.array([1.0, 3.0, 0.0]); m = v = np.zeros(3)
        //   for t in range(1, 6):
        //       g = 2*c*p + 1.0; p = p * (1 - lr*wd)
        //       m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g*g
        //       p = p - lr*(m/(1-b1**t))/(np.sqrt(v/(1-b2**t))+eps)
        //   print([float(x) for x in p])  # NumPy 2.4.6
        //   -> [0.5004183605888268, -1.4944148855676507, -0.0014959995075890797]
        let dev = Device::Cpu;
        let p = Var::new(&[1.0f64, -2.0, 0.5], &dev).unwrap();
        let c = Tensor::new(&[1.0f64, 3.0, 0.0], &dev).unwrap();
        let cfg = AdamWConfig {
            lr: 0.1,
            ..Default::default()
        };
        let mut opt = AdamW::new(cfg, vec![("p".into(), p.clone())]).unwrap();
        for _ in 0..5 {
            let loss = ((p.as_tensor().sqr().unwrap() * &c).unwrap() + p.as_tensor())
                .unwrap()
                .sum_all()
                .unwrap();
            opt.step(&loss.backward().unwrap(), cfg.lr).unwrap();
        }
        let got: Vec<f64> = p.as_tensor().to_vec1().unwrap();
        let want = [
            0.500_418_360_588_826_8,
            -1.494_414_885_567_650_7,
            -0.001_495_999_507_589_079_7,
        ];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{got:?} vs {want:?}");
        }
        assert_eq!(opt.steps(), 5);
    }

    #[test]
    fn state_round_trips_exactly() {
        let dev = Device::Cpu;
        let run = |split: bool| -> Vec<f32> {
            let p = Var::new(&[0.3f32, -0.2], &dev).unwrap();
            let mut opt =
                AdamW::new(AdamWConfig::default(), vec![("p".into(), p.clone())]).unwrap();
            for i in 0..6 {
                if split && i == 3 {
                    let state: HashMap<String, Tensor> = opt.state().into_iter().collect();
                    let steps = opt.steps();
                    opt =
                        AdamW::new(AdamWConfig::default(), vec![("p".into(), p.clone())]).unwrap();
                    opt.load_state(steps, &state).unwrap();
                }
                let loss = p.as_tensor().sqr().unwrap().sum_all().unwrap();
                opt.step(&loss.backward().unwrap(), 1e-2).unwrap();
            }
            p.as_tensor().to_vec1().unwrap()
        };
        assert_eq!(run(false), run(true));
    }
}
