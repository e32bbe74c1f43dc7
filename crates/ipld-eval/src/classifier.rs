//! Recognisability of generated images (issue 22): a small classifier trained on labelled real
//! images, then the fraction of samples it labels with confidence >= a threshold and the entropy
//! of its label histogram. FID summarises features; this asks the question a reader of a sample
//! grid asks, "which digit is this, and are all digits there?".
//!
//! The classifier is an MLP d -> hidden -> classes with ReLU, trained by Adam on softmax
//! cross-entropy, every draw seeded (ChaCha8), the log-softmax written from primitives so its
//! backward is recorded. A held-out part of the labelled set measures its accuracy, reported
//! beside the scores so a reader knows how far to trust them.

use candle_core::{D, Device, Tensor, Var};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::EvalError;
use crate::structure::check_points;

/// Training settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassifierConfig {
    /// Hidden units.
    pub hidden: usize,
    /// Passes over the training part.
    pub epochs: usize,
    /// Minibatch size.
    pub batch_size: usize,
    /// Adam's learning rate.
    pub lr: f64,
    /// Fraction of the labelled images held out to measure accuracy.
    pub held_out: f64,
    /// Seed of the split, the initial weights and the minibatch order.
    pub seed: u64,
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        Self {
            hidden: 256,
            epochs: 15,
            batch_size: 64,
            lr: 1e-3,
            held_out: 0.1,
            seed: 0,
        }
    }
}

/// What [`Classifier::report`] measures on a set of samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recognisability {
    /// Fraction of samples whose most probable class has probability >= `threshold`.
    pub confident_fraction: f64,
    /// The confidence threshold.
    pub threshold: f64,
    /// Per class, how many samples it is the most probable class of (confident or not).
    pub label_counts: Vec<usize>,
    /// Entropy (nats) of the confidently labelled samples' class histogram: ln(classes) when
    /// every class is equally frequent, 0 when all are one class (or none is confident).
    pub label_entropy: f64,
    /// Classes with at least one confidently labelled sample.
    pub classes_present: usize,
    /// The classifier's accuracy on its held-out real images.
    pub classifier_accuracy: f64,
}

/// A trained classifier.
#[derive(Debug)]
pub struct Classifier {
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
    dim: usize,
    classes: usize,
    accuracy: f64,
}

/// log softmax over the last axis from primitives (candle's fused softmax records no backward).
fn log_softmax(logits: &Tensor) -> candle_core::Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

impl Classifier {
    /// Trains on `images` ([n, dim] row-major) with `labels` in 0..classes, holding out
    /// `cfg.held_out` of them (stratified by nothing: a seeded random subset) for the accuracy.
    pub fn train(
        images: &[f32],
        labels: &[u8],
        dim: usize,
        classes: usize,
        cfg: &ClassifierConfig,
    ) -> Result<Self, EvalError> {
        let n = check_points("classifier training images", images, dim)?;
        if labels.len() != n {
            return Err(EvalError::Input(format!(
                "{} labels for {n} training images",
                labels.len()
            )));
        }
        if let Some(l) = labels.iter().find(|&&l| l as usize >= classes) {
            return Err(EvalError::Input(format!(
                "label {l} is outside 0..{classes}"
            )));
        }
        if !(0.0..1.0).contains(&cfg.held_out) || cfg.hidden == 0 || cfg.batch_size == 0 {
            return Err(EvalError::Param {
                key: "classifier".into(),
                reason: "needs held_out in [0, 1), hidden >= 1 and batch_size >= 1".into(),
            });
        }
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        let n_test = ((n as f64) * cfg.held_out).round() as usize;
        let (test, train) = order.split_at(n_test);
        if train.is_empty() {
            return Err(EvalError::Input("no images left to train on".into()));
        }
        let dev = Device::Cpu;
        let uniform = |rng: &mut ChaCha8Rng, rows: usize, cols: usize, fan_in: usize| {
            let b = 1.0 / (fan_in as f64).sqrt();
            let v: Vec<f32> = (0..rows * cols)
                .map(|_| rng.random_range(-b..b) as f32)
                .collect();
            Var::from_vec(v, (rows, cols), &dev)
        };
        let params = [
            uniform(&mut rng, dim, cfg.hidden, dim)?,
            uniform(&mut rng, 1, cfg.hidden, dim)?,
            uniform(&mut rng, cfg.hidden, classes, cfg.hidden)?,
            uniform(&mut rng, 1, classes, cfg.hidden)?,
        ];
        let mut adam = Adam::new(&params, cfg.lr)?;
        let rows = |idx: &[usize]| -> candle_core::Result<(Tensor, Tensor)> {
            let mut x = Vec::with_capacity(idx.len() * dim);
            for &i in idx {
                x.extend_from_slice(&images[i * dim..(i + 1) * dim]);
            }
            let y: Vec<u32> = idx.iter().map(|&i| labels[i] as u32).collect();
            Ok((
                Tensor::from_vec(x, (idx.len(), dim), &dev)?,
                Tensor::from_vec(y, idx.len(), &dev)?,
            ))
        };
        let mut train = train.to_vec();
        for _ in 0..cfg.epochs {
            train.shuffle(&mut rng);
            for batch in train.chunks(cfg.batch_size) {
                let (x, y) = rows(batch)?;
                let loss = cross_entropy(&forward(&params, &x)?, &y)?;
                adam.step(&params, &loss.backward()?)?;
            }
        }
        let mut c = Self {
            w1: params[0].as_tensor().detach(),
            b1: params[1].as_tensor().detach(),
            w2: params[2].as_tensor().detach(),
            b2: params[3].as_tensor().detach(),
            dim,
            classes,
            accuracy: f64::NAN,
        };
        if !test.is_empty() {
            let (x, _) = rows(test)?;
            let probs = c.probabilities_of(&x)?;
            let right = test
                .iter()
                .zip(probs.chunks_exact(classes))
                .filter(|(i, p)| argmax(p).0 == labels[**i] as usize)
                .count();
            c.accuracy = right as f64 / test.len() as f64;
        }
        Ok(c)
    }

    /// Accuracy on the held-out real images (NaN when none were held out).
    pub fn accuracy(&self) -> f64 {
        self.accuracy
    }

    fn probabilities_of(&self, x: &Tensor) -> candle_core::Result<Vec<f32>> {
        let h = x.matmul(&self.w1)?.broadcast_add(&self.b1)?.relu()?;
        let logits = h.matmul(&self.w2)?.broadcast_add(&self.b2)?;
        log_softmax(&logits)?.exp()?.flatten_all()?.to_vec1()
    }

    /// Class probabilities of `x` ([n, dim] row-major), [n, classes] row-major.
    pub fn probabilities(&self, x: &[f32]) -> Result<Vec<f32>, EvalError> {
        let n = check_points("classified images", x, self.dim)?;
        let mut out = Vec::with_capacity(n * self.classes);
        for chunk in x.chunks(1024 * self.dim) {
            let t = Tensor::from_slice(chunk, (chunk.len() / self.dim, self.dim), &Device::Cpu)?;
            out.extend(self.probabilities_of(&t)?);
        }
        Ok(out)
    }

    /// [`Recognisability`] of `samples` ([n, dim] row-major) at confidence `threshold`.
    pub fn report(&self, samples: &[f32], threshold: f64) -> Result<Recognisability, EvalError> {
        let probs = self.probabilities(samples)?;
        let n = probs.len() / self.classes;
        let (mut counts, mut confident) = (vec![0usize; self.classes], vec![0usize; self.classes]);
        for p in probs.chunks_exact(self.classes) {
            let (c, pmax) = argmax(p);
            counts[c] += 1;
            if pmax as f64 >= threshold {
                confident[c] += 1;
            }
        }
        let total: usize = confident.iter().sum();
        let label_entropy = if total == 0 {
            0.0
        } else {
            confident
                .iter()
                .filter(|&&k| k > 0)
                .map(|&k| {
                    let q = k as f64 / total as f64;
                    -q * q.ln()
                })
                .sum()
        };
        Ok(Recognisability {
            confident_fraction: total as f64 / n as f64,
            threshold,
            label_counts: counts,
            label_entropy,
            classes_present: confident.iter().filter(|&&k| k > 0).count(),
            classifier_accuracy: self.accuracy,
        })
    }
}

fn argmax(p: &[f32]) -> (usize, f32) {
    p.iter().copied().enumerate().fold(
        (0, f32::NEG_INFINITY),
        |a, (i, v)| if v > a.1 { (i, v) } else { a },
    )
}

fn forward(p: &[Var; 4], x: &Tensor) -> candle_core::Result<Tensor> {
    let h = x
        .matmul(p[0].as_tensor())?
        .broadcast_add(p[1].as_tensor())?
        .relu()?;
    h.matmul(p[2].as_tensor())?.broadcast_add(p[3].as_tensor())
}

/// Mean softmax cross-entropy of `logits` [n, classes] against class indices `y` [n].
fn cross_entropy(logits: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
    let lp = log_softmax(logits)?;
    let picked = lp.gather(&y.unsqueeze(1)?, 1)?;
    picked.mean_all()?.neg()
}

/// Adam (Kingma & Ba) on a fixed list of variables.
struct Adam {
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    lr: f64,
    t: i32,
}

impl Adam {
    fn new(params: &[Var], lr: f64) -> candle_core::Result<Self> {
        let zeros = || {
            params
                .iter()
                .map(|p| p.as_tensor().zeros_like())
                .collect::<candle_core::Result<Vec<_>>>()
        };
        Ok(Self {
            m: zeros()?,
            v: zeros()?,
            lr,
            t: 0,
        })
    }

    fn step(
        &mut self,
        params: &[Var],
        grads: &candle_core::backprop::GradStore,
    ) -> candle_core::Result<()> {
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
        self.t += 1;
        let (c1, c2) = (1.0 - b1.powi(self.t), 1.0 - b2.powi(self.t));
        for (i, p) in params.iter().enumerate() {
            let Some(g) = grads.get(p.as_tensor()) else {
                continue;
            };
            self.m[i] = ((&self.m[i] * b1)? + (g * (1.0 - b1))?)?;
            self.v[i] = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let update = ((&self.m[i] / c1)? / ((&self.v[i] / c2)?.sqrt()? + eps)?)?;
            p.set(&(p.as_tensor() - (update * self.lr)?)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;
    use rand_distr::{Distribution, StandardNormal};

    const DIM: usize = 64;
    const CLASSES: usize = 10;

    /// Ten classes: fixed random prototypes in [-1, 1]^64, each image its class's prototype plus
    /// N(0, 0.3²) noise per pixel, 60 per class.
    fn labelled(seed: u64) -> (Vec<f32>, Vec<u8>, Vec<Vec<f32>>) {
        let mut proto_rng = ChaCha8Rng::seed_from_u64(99);
        let protos: Vec<Vec<f32>> = (0..CLASSES)
            .map(|_| {
                (0..DIM)
                    .map(|_| proto_rng.random_range(-1.0..1.0f32))
                    .collect()
            })
            .collect();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for i in 0..CLASSES * 60 {
            let c = i % CLASSES;
            for p in &protos[c] {
                let e: f64 = StandardNormal.sample(&mut rng);
                x.push(p + 0.3 * e as f32);
            }
            y.push(c as u8);
        }
        (x, y, protos)
    }

    fn trained() -> Classifier {
        let (x, y, _) = labelled(1);
        Classifier::train(&x, &y, DIM, CLASSES, &ClassifierConfig::default()).unwrap()
    }

    #[test]
    fn real_images_are_confidently_recognised_and_balanced() {
        let c = trained();
        assert!(c.accuracy() >= 0.95, "held-out accuracy {}", c.accuracy());
        let (fresh, _, _) = labelled(2);
        let r = c.report(&fresh, 0.9).unwrap();
        assert!(r.confident_fraction >= 0.9, "{r:?}");
        assert_eq!(r.classes_present, 10);
        // A balanced histogram's entropy is ln 10 = 2.3026; 60 per class, slightly perturbed.
        assert!((r.label_entropy - 10f64.ln()).abs() < 0.05, "{r:?}");
        assert_eq!(r.label_counts.iter().sum::<usize>(), 600);
    }

    #[test]
    fn one_class_has_zero_entropy_and_ambiguous_images_are_not_confident() {
        let c = trained();
        let (fresh, y, protos) = labelled(3);
        let threes: Vec<f32> = fresh
            .chunks_exact(DIM)
            .zip(&y)
            .filter(|(_, l)| **l == 3)
            .flat_map(|(r, _)| r.to_vec())
            .collect();
        let r = c.report(&threes, 0.9).unwrap();
        assert_eq!(r.classes_present, 1);
        assert_eq!(r.label_entropy, 0.0);
        assert_eq!(r.label_counts[3], 60);
        // The mean of all ten prototypes belongs to no class: at most a few confident calls
        // among 200 noisy copies of it (a blob sample).
        let mean: Vec<f32> = (0..DIM)
            .map(|j| protos.iter().map(|p| p[j]).sum::<f32>() / CLASSES as f32)
            .collect();
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let blobs: Vec<f32> = (0..200)
            .flat_map(|_| {
                mean.iter()
                    .map(|m| {
                        let e: f64 = StandardNormal.sample(&mut rng);
                        m + 0.1 * e as f32
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let r = c.report(&blobs, 0.9).unwrap();
        assert!(r.confident_fraction < 0.5, "{r:?}");
    }

    #[test]
    fn every_parameter_gets_a_finite_nonzero_gradient_matching_finite_differences() {
        let (x, y, _) = labelled(5);
        let dev = Device::Cpu;
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let var = |r: usize, c: usize, rng: &mut ChaCha8Rng| {
            let v: Vec<f32> = (0..r * c).map(|_| rng.random_range(-0.3..0.3f32)).collect();
            Var::from_vec(v, (r, c), &dev).unwrap()
        };
        let params = [
            var(DIM, 8, &mut rng),
            var(1, 8, &mut rng),
            var(8, CLASSES, &mut rng),
            var(1, CLASSES, &mut rng),
        ];
        let xt = Tensor::from_slice(&x[..20 * DIM], (20, DIM), &dev).unwrap();
        let yt = Tensor::from_vec(
            y[..20].iter().map(|&l| l as u32).collect::<Vec<_>>(),
            20,
            &dev,
        )
        .unwrap();
        let loss = |p: &[Var; 4]| -> f64 {
            cross_entropy(&forward(p, &xt).unwrap(), &yt)
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let grads = cross_entropy(&forward(&params, &xt).unwrap(), &yt)
            .unwrap()
            .backward()
            .unwrap();
        for (k, p) in params.iter().enumerate() {
            let g: Vec<f32> = grads
                .get(p.as_tensor())
                .expect("gradient recorded")
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert!(
                g.iter().all(|v| v.is_finite()) && g.iter().any(|v| *v != 0.0),
                "param {k}"
            );
            // Central difference on the largest-gradient entry, h = 1e-2 in f32.
            let (i, gi) = argmax(&g.iter().map(|v| v.abs()).collect::<Vec<_>>());
            let base: Vec<f32> = p.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            let at = |d: f32| {
                let mut v = base.clone();
                v[i] += d;
                p.set(&Tensor::from_vec(v, p.as_tensor().shape(), &dev).unwrap())
                    .unwrap();
                loss(&params)
            };
            let h = 1e-2;
            let fd = (at(h) - at(-h)) / (2.0 * h as f64);
            at(0.0);
            let g_signed = g[i] as f64;
            assert!(gi > 0.0);
            assert!(
                (fd - g_signed).abs() <= 0.02 * g_signed.abs() + 1e-4,
                "param {k}: fd {fd} vs {g_signed}"
            );
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let (x, y, _) = labelled(1);
        let cfg = ClassifierConfig::default();
        assert!(Classifier::train(&x, &y[1..], DIM, CLASSES, &cfg).is_err());
        let mut bad = x.clone();
        bad[5] = f32::NAN;
        let e = Classifier::train(&bad, &y, DIM, CLASSES, &cfg).unwrap_err();
        assert!(e.to_string().contains("row 0"), "{e}");
        let e = Classifier::train(&x, &y, DIM, 3, &cfg).unwrap_err();
        assert!(e.to_string().contains("outside 0..3"), "{e}");
        let c = trained();
        assert!(c.report(&x[..DIM + 1], 0.9).is_err());
        assert!(c.report(&[], 0.9).is_err());
    }
}
