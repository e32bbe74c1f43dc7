//! The sharded loss against the whole minibatch's, for every method and ablation.

use candle_core::{Device, Tensor};

use super::loss::MinibatchLoss;
use super::{Latents, Trainer};
use crate::checkpoint::sorted_vars;
use crate::config::RunConfig;

fn trainer(method: &str, extra: &[&str]) -> Trainer {
    let mut sets = crate::config::method_overrides(method, false).unwrap();
    sets.extend(
        [
            "data.points=300",
            "data.ambient_dim=8",
            "particles.count=2",
            "train.batch_size=50",
            "train.kl.warmup_steps=20",
            "model.prior.hidden=32",
            "model.prior.time_embedding=16",
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string()),
    );
    let cfg = RunConfig::preset("gmm")
        .unwrap()
        .with_overrides(&sets, "test")
        .unwrap();
    let data = crate::data::load_data(&cfg).unwrap();
    Trainer::new(cfg.validated("test").unwrap(), data, Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// Agreement up to f32 summation order: max |a - b| <= 1e-5 max |a|.
fn assert_close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: length");
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(scale > 0.0, "{what}: all zero");
    assert!(
        diff <= 1e-5 * scale,
        "{what}: differs by {diff:e} (scale {scale:e})"
    );
}

/// The shards' losses and gradients add up to the whole minibatch's, for every method and
/// ablation (3 uneven shards of 16, 17 and 17 points); only the float order changes.
#[test]
fn shards_add_up_to_the_whole_minibatch() {
    let cases: [(&str, &[&str]); 6] = [
        ("ipld", &[]),
        ("ipld", &["train.two_stage=true"]),
        ("ipld", &["train.diffusion_samples=2"]),
        ("diffusion-vae", &[]),
        ("pgd", &[]),
        ("mpgd", &[]),
    ];
    for (method, extra) in cases {
        let what = format!("{method} {extra:?}");
        let tr = trainer(method, extra);
        // Past the KL warm-up's start, so the diffusion loss carries weight.
        let t = 30;
        let batch = tr.batch_indices(t);
        let loss = |shards| match tr.cfg.method.is_published() {
            true => tr.published_loss(t, &batch, shards).unwrap(),
            false => tr.minibatch_loss(t, &batch, shards, None).unwrap(),
        };
        let (whole, split) = (loss(1), loss(3));
        assert_eq!((whole.z_grads.len(), split.z_grads.len()), (1, 3), "{what}");
        let rel = |a: f64, b: f64| (a - b).abs() / a.abs();
        assert!(rel(whole.loss, split.loss) < 1e-6, "{what}: loss");
        assert!(rel(whole.nll_sum, split.nll_sum) < 1e-6, "{what}: nll");
        assert!(
            rel(whole.diffusion_sum, split.diffusion_sum) < 1e-6,
            "{what}: diffusion"
        );
        let mut vars = sorted_vars(&tr.decoder.vars);
        if let Some(prior) = &tr.prior {
            vars.extend(sorted_vars(&prior.vars));
        }
        if let Some(enc) = tr.latents.encoder() {
            vars.extend(sorted_vars(&enc.vars));
        }
        for (name, var) in vars {
            let g = |l: &MinibatchLoss| values(l.grads.get(var.as_tensor()).unwrap());
            assert_close(&g(&whole), &g(&split), &format!("{what}: {name}"));
        }
        let cat = |l: &MinibatchLoss| -> Vec<f32> { l.z_values.iter().flat_map(values).collect() };
        assert_eq!(cat(&whole), cat(&split), "{what}: the shards' latents");
        match &tr.latents {
            Latents::Particles(_) => {
                let zg = |l: &MinibatchLoss| -> Vec<f32> {
                    l.z_grads
                        .iter()
                        .flat_map(|g| values(g.as_ref().unwrap()))
                        .collect()
                };
                assert_close(&zg(&whole), &zg(&split), &format!("{what}: particles"));
            }
            Latents::Encoder { .. } => {
                assert!(split.z_grads.iter().all(Option::is_none), "{what}");
            }
        }
    }
}

/// Under `diffusion.loss = "stf"` the particles and the decoder follow the simple loss and only
/// theta's gradient changes, to the gradient of the STF loss: checked against an independent
/// backward of sum_rows gamma w_k ||v - eps_theta||^2 / rows (with two draws per latent and
/// three shards, so the draw averaging and the shard sums are covered too). With the whole data
/// as the reference the reference holds each row's own latent.
#[test]
fn stf_changes_only_thetas_gradient_to_the_stf_loss_gradient() {
    use ipld_diffusion::timestep_tensor;
    let extra = [
        "train.diffusion_samples=2",
        "diffusion.loss=stf",
        "diffusion.stf_reference=300",
    ];
    let mut tr = trainer("ipld", &extra);
    let t = 30;
    let batch = tr.batch_indices(t);
    tr.latents
        .prepare(t, &batch, &tr.cfg.particles.clone())
        .unwrap();
    // The prior sees z / s (the gmm preset's latent scale is 0.5).
    let reference = tr.stf_reference(&batch, t, t).unwrap();
    let reference = tr.prior_space(&reference).unwrap();
    let (b, n, dz) = (batch.len(), 2, tr.cfg.data.latent_dim);
    assert_eq!(reference.dims(), [300 * n, dz]);
    let simple = tr.minibatch_loss(t, &batch, 3, None).unwrap();
    let stf = tr.minibatch_loss(t, &batch, 3, Some(&reference)).unwrap();
    assert_eq!(simple.loss, stf.loss, "the reported loss is the simple one");
    let zg = |l: &MinibatchLoss| -> Vec<f32> {
        l.z_grads
            .iter()
            .flat_map(|g| values(g.as_ref().unwrap()))
            .collect()
    };
    assert_eq!(zg(&simple), zg(&stf), "particle gradients");
    for (name, var) in sorted_vars(&tr.decoder.vars) {
        let g = |l: &MinibatchLoss| values(l.grads.get(var.as_tensor()).unwrap());
        assert_eq!(g(&simple), g(&stf), "decoder {name}");
    }
    // Theta's gradient of the STF loss, computed directly from the same draws.
    let rows = b * n;
    let mut rng = crate::streams::Stream::Loss.rng(tr.cfg.seed, t);
    let ks = ipld_diffusion::sample_timesteps(&mut rng, 2 * rows, 1000);
    let k = timestep_tensor(&ks, 1000, &Device::Cpu).unwrap();
    let noise = ipld_diffusion::gaussian(
        &mut rng,
        (2 * rows, dz),
        candle_core::DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let z0 = tr
        .prior_space(&Tensor::cat(&stf.z_values, 0).unwrap())
        .unwrap()
        .repeat((2, 1))
        .unwrap();
    let eps = tr.eps_model().unwrap();
    let terms = tr
        .loss
        .per_sample_stf(&eps, &z0, &noise, &k, &reference)
        .unwrap();
    let want = terms
        .stf
        .total
        .sum_all()
        .unwrap()
        .affine(stf.gamma / (2 * rows) as f64, 0.0)
        .unwrap()
        .backward()
        .unwrap();
    let mut changed = false;
    for (name, var) in sorted_vars(&tr.prior.as_ref().unwrap().vars) {
        let g = |s: &candle_core::backprop::GradStore| values(s.get(var.as_tensor()).unwrap());
        assert_close(&g(&want), &g(&stf.grads), &format!("theta {name}"));
        changed |= g(&simple.grads) != g(&stf.grads);
    }
    assert!(changed, "STF left theta's gradient unchanged");
}

/// STF needs particles to take its reference batch from.
#[test]
fn stf_is_refused_without_particles() {
    for method in ["pgd", "diffusion-vae"] {
        let mut sets = crate::config::method_overrides(method, false).unwrap();
        sets.push("diffusion.loss=stf".into());
        let e = RunConfig::preset("gmm")
            .unwrap()
            .with_overrides(&sets, "test")
            .and_then(|c| c.validated("test").map(|_| ()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("diffusion.loss") && e.contains("stf"),
            "{method}: {e}"
        );
    }
}
