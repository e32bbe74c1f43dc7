//! AdamW (Loshchilov & Hutter 2019) with state this crate owns, so checkpoints can save and
//! restore it exactly (candle's `AdamW` keeps its moments private). The update follows PyTorch's
//! documented algorithm: decoupled decay p <- p (1 - lr wd), then Adam with bias correction.

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
