//! Reproducible weight initialisation. candle's CPU random generator cannot be seeded
//! (`Device::Cpu.set_seed` is an error), so layers built through a `VarBuilder` start from
//! unseeded draws. [`seeded_init`] redraws every `*.weight` / `*.bias` pair with a ChaCha8 stream
//! seeded by the caller, from PyTorch's `nn.Linear` default: weights and biases uniform on
//! +-1/sqrt(fan_in) (kaiming_uniform with a = sqrt(5)). The paper's models are PyTorch models;
//! candle's own default (Kaiming-normal with ReLU gain, std sqrt(2/fan_in)) is sqrt(6) times
//! wider and measurably slows the synthetic runs (the decoder must first shrink its off-data
//! directions).

use candle_core::Tensor;
use candle_nn::VarMap;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::ModelError;

/// Re-initialises every linear layer in `vars` from `seed`, visiting names in sorted order:
/// [`InitRule::TorchDefault`] for every tensor, after checking that each is a 2-d `*.weight` or
/// a `*.bias` with a matching weight.
pub fn seeded_init(vars: &VarMap, seed: u64) -> Result<(), ModelError> {
    {
        let data = vars.data().lock().expect("varmap lock");
        for (name, var) in data.iter() {
            if name == "weight" || name.ends_with(".weight") {
                var.dims2().map_err(|_| {
                    ModelError::param(
                        name,
                        format!("expected a 2-d weight, got shape {:?}", var.dims()),
                    )
                })?;
            } else if !(name == "bias" || name.ends_with(".bias")) {
                return Err(ModelError::param(
                    name,
                    "seeded_init knows only `*.weight` and `*.bias` tensors",
                ));
            }
        }
    }
    seeded_init_with(vars, seed, |_, _| InitRule::TorchDefault)
}

/// How one tensor is initialised by [`seeded_init_with`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum InitRule {
    /// PyTorch's default for `nn.Linear`/`nn.Conv2d`: U(+-1/sqrt(fan_in)) for the weight, and for
    /// `*.bias` the same bound from the matching weight's fan-in.
    TorchDefault,
    /// Glorot/Xavier uniform: U(+-sqrt(6 / (fan_in + fan_out))).
    XavierUniform,
    /// N(0, std²).
    Normal(f64),
    /// A constant (0 for adaLN-Zero and biases, 1 for norm scales).
    Const(f64),
}

/// fan_in, fan_out of a weight [out, in, k...] as PyTorch computes them.
fn fans(dims: &[usize]) -> (usize, usize) {
    let receptive: usize = dims.iter().skip(2).product();
    match dims {
        [] => (1, 1),
        [n] => (*n, *n),
        [o, i, ..] => (i * receptive, o * receptive),
    }
}

/// Re-initialises every tensor in `vars` from `seed` by the rule `rule(name, dims)` returns,
/// visiting names in sorted order so the result is a pure function of the seed and the names.
pub fn seeded_init_with(
    vars: &VarMap,
    seed: u64,
    rule: impl Fn(&str, &[usize]) -> InitRule,
) -> Result<(), ModelError> {
    let data = vars.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for name in names {
        let var = &data[name];
        let dims = var.dims().to_vec();
        let n = var.elem_count();
        let uniform = |rng: &mut ChaCha8Rng, b: f64| -> Vec<f32> {
            (0..n).map(|_| rng.random_range(-b..b) as f32).collect()
        };
        let values: Vec<f32> = match rule(name, &dims) {
            InitRule::Const(v) => vec![v as f32; n],
            InitRule::Normal(std) => (0..n)
                .map(|_| {
                    let z: f64 =
                        rand_distr::Distribution::sample(&rand_distr::StandardNormal, &mut rng);
                    (z * std) as f32
                })
                .collect(),
            InitRule::XavierUniform => {
                let (fi, fo) = fans(&dims);
                uniform(&mut rng, (6.0 / (fi + fo) as f64).sqrt())
            }
            InitRule::TorchDefault => {
                let fan_in = if name == "bias" || name.ends_with(".bias") {
                    let weight = format!("{}weight", &name[..name.len() - "bias".len()]);
                    let w = data.get(&weight).ok_or_else(|| {
                        ModelError::param(name, "a bias without a matching `.weight`")
                    })?;
                    fans(w.dims()).0
                } else {
                    fans(&dims).0
                };
                uniform(&mut rng, 1.0 / (fan_in.max(1) as f64).sqrt())
            }
        };
        let t = Tensor::from_vec(values, var.shape(), var.device())?.to_dtype(var.dtype())?;
        var.set(&t)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarBuilder;

    fn build(seed: u64) -> VarMap {
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
        candle_nn::linear(400, 300, vb.pp("a")).unwrap();
        seeded_init(&vars, seed).unwrap();
        vars
    }

    fn get(vars: &VarMap, name: &str) -> Vec<f32> {
        vars.data().lock().unwrap()[name]
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn same_seed_same_weights_with_the_right_laws() {
        let (a, b, c) = (build(1), build(1), build(2));
        assert_eq!(get(&a, "a.weight"), get(&b, "a.weight"));
        assert_ne!(get(&a, "a.weight"), get(&c, "a.weight"));
        // U(-b, b) with b = 1/sqrt(400) = 0.05: variance b²/3; Var of x² for a uniform is
        // b⁴(1/5 - 1/9), so the sample variance has s.e. b² sqrt(4/45 / n); allow 5 s.e.
        let w = get(&a, "a.weight");
        let n = w.len() as f64;
        let var = w.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / n;
        assert!(
            (var - 0.0025 / 3.0).abs() < 5.0 * 0.0025 * (4.0 / 45.0 / n).sqrt(),
            "{var}"
        );
        assert!(w.iter().all(|x| x.abs() <= 0.05));
        assert!(get(&a, "a.bias").iter().all(|x| x.abs() <= 0.05));
    }
}
