//! `diffusion.latent_scale`: the prior models z / s. A run with scale s whose latents are s
//! times those of a scale-1 run (and whose linear decoder is 1/s times its weights) sees the
//! same diffusion loss and NLL, in the joint step and the prior refit; prior samples come out s
//! times larger; bad scales are config errors.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::Device;
use ipld_train::data::load_data;
use ipld_train::{RunConfig, Trainer};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

const SCALE: f64 = 2.5;

/// Joint steps; the comparison starts after all but one, so the prior is not a near-zero
/// untrained network whose loss ignores its input.
const JOINT: u64 = 40;

fn config(scale: f64) -> RunConfig {
    common::tiny(JOINT)
        .with_overrides(
            &[
                format!("diffusion.latent_scale={scale}"),
                "train.prior_refit={steps=1, batch_size=50, lr=1e-3}".into(),
            ],
            "test",
        )
        .unwrap()
}

fn trainer(scale: f64) -> Trainer {
    let cfg = config(scale);
    let data = load_data(&cfg).unwrap();
    Trainer::new(cfg.validated("test").unwrap(), data, Device::Cpu).unwrap()
}

/// Writes `from`'s checkpoint to `path` with the particles times `SCALE` and the decoder's
/// weight divided by it, so g_phi(z) is unchanged on the scaled latents.
fn scaled_checkpoint(from: &Trainer, path: &Path) {
    let bytes = from.checkpoint_bytes().unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let mut raw: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let (mut saw_z, mut saw_w) = (false, false);
    for (name, view) in st.tensors() {
        let factor = if name == "particles/z" {
            saw_z = true;
            SCALE as f32
        } else if name.starts_with("phi/") && name.ends_with("weight") {
            saw_w = true;
            1.0 / SCALE as f32
        } else {
            1.0
        };
        let data: Vec<u8> = view
            .data()
            .chunks_exact(4)
            .flat_map(|b| (f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * factor).to_le_bytes())
            .collect();
        raw.push((name.to_string(), view.shape().to_vec(), data));
    }
    assert!(
        saw_z && saw_w,
        "checkpoint names changed: particles/z, phi/*weight"
    );
    let views: Vec<(String, TensorView)> = raw
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), d).unwrap(),
            )
        })
        .collect();
    let meta: HashMap<String, String> = header.metadata().clone().unwrap();
    std::fs::write(path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
}

fn close(a: f64, b: f64, what: &str) {
    // f32 latents divided by s and back: a few ulps per element, summed over the batch.
    assert!(
        (a - b).abs() <= 1e-5 * a.abs().max(1.0),
        "{what}: {a} (scale 1) vs {b} (scale {SCALE})"
    );
}

#[test]
fn scaled_latents_see_the_same_losses_in_the_joint_step_and_the_refit() {
    let tmp = tempfile::tempdir().unwrap();
    let mut unit = trainer(1.0);
    for _ in 1..JOINT {
        unit.train_step().unwrap();
    }
    let mut scaled = trainer(SCALE);
    let ck = tmp.path().join("joint.safetensors");
    scaled_checkpoint(&unit, &ck);
    scaled.load_checkpoint(&ck).unwrap();
    // The check has teeth: the unscaled state under scale s gives another diffusion loss.
    let mut naive = trainer(SCALE);
    let ck_plain = tmp.path().join("plain.safetensors");
    std::fs::write(&ck_plain, unit.checkpoint_bytes().unwrap()).unwrap();
    naive.load_checkpoint(&ck_plain).unwrap();

    let (a, b) = (unit.train_step().unwrap(), scaled.train_step().unwrap());
    assert!(!a.prior_refit && !b.prior_refit);
    close(a.diffusion_loss, b.diffusion_loss, "joint diffusion loss");
    close(a.nll, b.nll, "joint NLL");
    let c = naive.train_step().unwrap();
    assert!(
        (c.diffusion_loss - a.diffusion_loss).abs() > 0.05 * a.diffusion_loss.abs(),
        "scale has no effect: {} vs {}",
        c.diffusion_loss,
        a.diffusion_loss
    );

    let ck = tmp.path().join("refit.safetensors");
    scaled_checkpoint(&unit, &ck);
    scaled.load_checkpoint(&ck).unwrap();
    let (a, b) = (unit.train_step().unwrap(), scaled.train_step().unwrap());
    assert!(a.prior_refit && b.prior_refit);
    close(a.diffusion_loss, b.diffusion_loss, "refit diffusion loss");
}

#[test]
fn prior_samples_are_scaled_back_to_latent_space() {
    let unit = trainer(1.0);
    let scaled = trainer(SCALE);
    let sampler = config(1.0).eval.sampler;
    let a = ipld_train::eval::generate(&unit, 64, &sampler, 7, &mut |_| {}).unwrap();
    let b = ipld_train::eval::generate(&scaled, 64, &sampler, 7, &mut |_| {}).unwrap();
    assert_eq!(a.latent.len(), b.latent.len());
    let mut max_rel = 0f32;
    for (x, y) in a.latent.iter().zip(&b.latent) {
        max_rel = max_rel.max((x * SCALE as f32 - y).abs() / (x.abs() * SCALE as f32).max(1e-3));
    }
    // Same weights and draws, so the sampler's output is the same up to the final product.
    assert!(
        max_rel < 1e-6,
        "latents not s times the unit run's: {max_rel}"
    );
    assert_ne!(a.data, b.data, "the decoder must see the scaled latents");
}

#[test]
fn bad_latent_scales_are_config_errors() {
    for bad in ["0", "-1", "nan", "inf"] {
        let err = common::tiny(1)
            .with_overrides(&[format!("diffusion.latent_scale={bad}")], "test")
            .unwrap_err()
            .to_string();
        assert!(err.contains("diffusion.latent_scale"), "{bad}: {err}");
    }
}
