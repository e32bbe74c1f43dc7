//! The image path of the trainer at toy size: a DiT or convolutional prior, the convolutional
//! decoder, EMA sampling, warm start and decoder lr decay on a CSV image file the test writes;
//! exact resume (EMA included); DiffusionVAE with the convolutional encoder; config errors; the
//! sample grid.

mod common;

use std::path::Path;

use common::{image_config as config, plan, write_image_csv as write_csv};
use ipld_data::Dataset;
use ipld_train::config::{DecoderConfig, PriorConfig};
use ipld_train::rundir::{CHECKPOINT_FILE, METRICS_FILE, SAMPLES_PNG};
use ipld_train::{Progress, RunConfig, run};
use safetensors::SafeTensors;

fn checkpoint(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(dir.join(CHECKPOINT_FILE)).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<(String, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n.to_string(), t.data().to_vec()))
        .collect();
    v.sort();
    v
}

/// A picture of a `rows` x `cols` grid of 8 x 8 images with 2-pixel borders, magnified by a
/// whole factor to at least 512 pixels wide, under a title band with text (the run's name and
/// step) and, when `headers`, a band of column headers with text.
fn check_picture(path: &Path, rows: usize, cols: usize, headers: bool) {
    use ipld_train::pictures::{HEADER_BAND, MIN_PICTURE_WIDTH, TITLE_BAND};
    let png = image::open(path).unwrap().to_rgb8();
    let k = ipld_train::pictures::grid_scale(cols, 8);
    let bands = TITLE_BAND + if headers { HEADER_BAND } else { 0 };
    let what = path.display();
    assert!(
        png.width() as usize >= MIN_PICTURE_WIDTH,
        "{what}: {}",
        png.width()
    );
    assert!(png.width() as usize >= cols * (8 * k + 2) + 2, "{what}");
    assert_eq!(
        png.height(),
        bands + (rows * (8 * k + 2) + 2) as u32,
        "{what}"
    );
    let ink = |y0: u32, y1: u32| {
        (y0..y1)
            .flat_map(|y| (0..png.width()).map(move |x| (x, y)))
            .filter(|&(x, y)| png.get_pixel(x, y).0[0] < 160)
            .count()
    };
    assert!(ink(0, TITLE_BAND) > 100, "{what}: no title");
    if headers {
        assert!(
            ink(TITLE_BAND, TITLE_BAND + HEADER_BAND) > 10 * cols,
            "{what}: no headers"
        );
    }
}

#[test]
fn image_ipld_trains_resumes_exactly_and_writes_a_grid() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("bars.csv");
    write_csv(&csv);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    // 24 points, batch 8: 3 steps per epoch; 16 steps end inside epoch 5.
    let s = run(plan(
        config(
            &csv,
            16,
            &["eval.cloud_epochs=[0, 2, 5]", "eval.picture_points=4"],
        ),
        &a,
        false,
    ))
    .unwrap();
    assert_eq!(
        (s.particles, s.steps),
        (2, 16),
        "warm start replicated 1 -> 2"
    );
    // D.2: one row per picture point, the data image then its particles (1 before the warm
    // start replicates them at the first step of epoch 2, 2 after). Epoch 5 starts at step 15.
    for (epoch, n) in [(0, 1), (2, 1), (5, 2)] {
        let path = a.join(format!("clouds/epoch-{epoch:04}.png"));
        check_picture(&path, 4, n + 1, true);
    }
    assert!(!a.join("clouds/epoch-0001.png").exists());
    // D.1: 2 pairs, each row data | 10 interpolants | data.
    check_picture(
        &a.join(ipld_train::pictures::INTERPOLATION_PNG),
        2,
        12,
        true,
    );
    assert!(s.mmd.is_finite() && s.fid.is_none());
    // 8 x 8 grid of 8 x 8 images, titled, no column headers.
    check_picture(&a.join(SAMPLES_PNG), 8, 8, false);
    // `ipld-train sample` on an image run writes a PNG folder that the FID loader reads.
    let out = tmp.path().join("samples");
    ipld_train::sample_run(&a, 5, &Default::default(), 0, &out, false, Progress::Quiet).unwrap();
    let back = ipld_data::load_image_folder_native(&out).unwrap();
    assert_eq!((back.len(), back.shape()), (5, [3, 8, 8]));
    // A folder that already holds PNGs is refused; --force replaces the earlier samples, so
    // 3 new ones are not mixed with 5 old ones; a PNG it did not write is never removed.
    let e = ipld_train::sample_run(&a, 3, &Default::default(), 0, &out, false, Progress::Quiet)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("already holds 5 PNG files") && e.contains("--force"),
        "{e}"
    );
    ipld_train::sample_run(&a, 3, &Default::default(), 0, &out, true, Progress::Quiet).unwrap();
    assert_eq!(ipld_data::load_image_folder_native(&out).unwrap().len(), 3);
    std::fs::write(out.join("mine.png"), b"not ours").unwrap();
    let e = ipld_train::sample_run(&a, 3, &Default::default(), 0, &out, true, Progress::Quiet)
        .unwrap_err()
        .to_string();
    assert!(e.contains("mine.png"), "{e}");
    assert!(out.join("mine.png").exists() && out.join("sample-00002.png").exists());
    // Never into a run directory.
    let e = ipld_train::sample_run(
        &a,
        3,
        &Default::default(),
        0,
        &a.join("pngs"),
        true,
        Progress::Quiet,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("run directory"), "{e}");
    // The decoder NLL falls while the network fits the bars.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(a.join(METRICS_FILE))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (first, last) = (
        lines[0]["nll"].as_f64().unwrap(),
        lines.last().unwrap()["nll"].as_f64().unwrap(),
    );
    assert!(last < first, "nll {first} -> {last}");

    // Split at step 8 (after the warm start and the EMA start) and resume: bit-identical.
    run(plan(config(&csv, 8, &[]), &b, false)).unwrap();
    run(plan(config(&csv, 16, &[]), &b, true)).unwrap();
    let (ca, cb) = (checkpoint(&a), checkpoint(&b));
    assert!(
        ca.iter().any(|(n, _)| n.starts_with("ema/eps.")),
        "EMA is checkpointed"
    );
    assert!(
        ca.iter().any(|(n, _)| n.starts_with("theta/eps.blocks")),
        "DiT weights"
    );
    assert!(
        ca.iter().any(|(n, _)| n.contains("conv_out")),
        "conv decoder weights"
    );
    assert_eq!(ca.len(), cb.len());
    for ((na, da), (nb, db)) in ca.iter().zip(&cb) {
        assert_eq!(na, nb);
        assert!(da == db, "tensor {na} differs after resume");
    }
}

#[test]
fn ema_and_lr_decay_change_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("bars.csv");
    write_csv(&csv);
    let base = checkpoint_after(&csv, tmp.path().join("base").as_path(), &[]);
    let no_decay = checkpoint_after(
        &csv,
        tmp.path().join("nd").as_path(),
        &["train.lr_decay_phi=1.0"],
    );
    let differs = |a: &[(String, Vec<u8>)], b: &[(String, Vec<u8>)], prefix: &str| {
        a.iter()
            .zip(b)
            .any(|((n, x), (_, y))| n.starts_with(prefix) && x != y)
    };
    // lr decay touches phi only; theta's first steps (before any decayed phi feeds back) differ
    // later, so compare phi directly.
    assert!(
        differs(&base, &no_decay, "phi/"),
        "lr_decay_phi has no effect"
    );
    // The EMA differs from the raw weights once averaging has started.
    let get = |v: &[(String, Vec<u8>)], n: &str| v.iter().find(|(k, _)| k == n).unwrap().1.clone();
    let name = base
        .iter()
        .find(|(n, _)| n.starts_with("ema/"))
        .map(|(n, _)| n.trim_start_matches("ema/").to_string())
        .unwrap();
    assert_ne!(
        get(&base, &format!("ema/{name}")),
        get(&base, &format!("theta/{name}"))
    );
}

fn checkpoint_after(csv: &Path, dir: &Path, extra: &[&str]) -> Vec<(String, Vec<u8>)> {
    // 24 points at batch 8: 3 steps per epoch, so 12 steps reach epoch 3 of the lr decay.
    run(plan(config(csv, 12, extra), dir, false)).unwrap();
    checkpoint(dir)
}

#[test]
fn diffusion_vae_uses_the_convolutional_encoder() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("bars.csv");
    write_csv(&csv);
    let dir = tmp.path().join("dvae");
    let cfg = config(
        &csv,
        6,
        &["method=diffusion-vae", "particles.warm_start_steps=0"],
    );
    let s = run(plan(cfg, &dir, false)).unwrap();
    assert_eq!(s.method, "diffusion-vae");
    let ck = checkpoint(&dir);
    let enc: Vec<&String> = ck
        .iter()
        .map(|(n, _)| n)
        .filter(|n| n.starts_with("encoder/"))
        .collect();
    assert!(
        enc.iter().any(|n| n.contains("down.0.downsample")),
        "{enc:?}"
    );
    assert!(enc.iter().any(|n| n.contains("conv_out")), "{enc:?}");
    // The encoder was trained: its AdamW first moments are non-zero.
    let m = ck
        .iter()
        .find(|(n, _)| n.starts_with("opt_encoder/m/") && n.contains("conv_in.weight"))
        .unwrap();
    assert!(m.1.iter().any(|&b| b != 0));
}

/// The convolutional prior (`model.prior.type = "conv"`) in a full image run: it trains (its
/// zero-initialised output layer and every block move), resumes bit for bit, and a latent that
/// does not match `data.latent_dim` is named.
#[test]
fn convolutional_prior_trains_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("bars.csv");
    write_csv(&csv);
    let base = "model.prior={type=\"conv\", channels=2, size=2, width=4, blocks=2, groups=2, \
                frequency_dim=8";
    // Without and with the self-attention layers (whose output projections start at zero too).
    for (tag, heads) in [("plain", 0), ("attention", 2)] {
        let prior = format!("{base}, attention_heads={heads}}}");
        let (a, b) = (
            tmp.path().join(format!("{tag}-a")),
            tmp.path().join(format!("{tag}-b")),
        );
        let s = run(plan(config(&csv, 12, &[&prior]), &a, false)).unwrap();
        assert!(s.mmd.is_finite());
        run(plan(config(&csv, 7, &[&prior]), &b, false)).unwrap();
        run(plan(config(&csv, 12, &[&prior]), &b, true)).unwrap();
        let (ca, cb) = (checkpoint(&a), checkpoint(&b));
        let mut zero_started = vec![
            "conv_out.weight",
            "blocks.0.conv2.weight",
            "blocks.1.conv2.weight",
        ];
        if heads > 0 {
            zero_started.extend(["attention.0.proj.weight", "attention.1.proj.weight"]);
        }
        for name in zero_started {
            let (_, bytes) = ca
                .iter()
                .find(|(n, _)| n.starts_with("theta/eps.") && n.ends_with(name))
                .unwrap_or_else(|| panic!("{tag}: {name} is checkpointed"));
            assert!(
                bytes.iter().any(|&x| x != 0),
                "{tag}: {name} left its zero start"
            );
        }
        let attention = ca
            .iter()
            .filter(|(n, _)| n.starts_with("theta/eps.attention."))
            .count();
        assert_eq!(attention, if heads > 0 { 2 * 6 } else { 0 }, "{tag}");
        assert_eq!(ca.len(), cb.len());
        for ((na, da), (nb, db)) in ca.iter().zip(&cb) {
            assert_eq!(na, nb);
            assert!(da == db, "{tag}: tensor {na} differs after resume");
        }
    }
    let prior = format!("{base}}}");
    let refused = |set: &str| {
        config(&csv, 4, &[&prior])
            .with_overrides(&[set.to_string()], "t")
            .unwrap_err()
            .to_string()
    };
    let e = refused("model.prior.size=3");
    assert!(
        e.contains("convolutional prior") && e.contains("data.latent_dim"),
        "{e}"
    );
    let e = refused("model.prior.attention_heads=3");
    assert!(
        e.contains("model.prior") && e.contains("attention_heads"),
        "{e}"
    );
}

#[test]
fn image_configs_name_what_does_not_fit() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("bars.csv");
    write_csv(&csv);
    let cfg = config(&csv, 4, &[]);
    let bad = |sets: &[&str], needle: &str| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let e = cfg.with_overrides(&sets, "t").unwrap_err().to_string();
        assert!(e.contains(needle), "{sets:?}: {e}");
    };
    bad(&["model.prior.size=3"], "model.prior");
    bad(&["model.prior.heads=3"], "`model.prior.heads`");
    bad(&["model.decoder.latent_size=3"], "model.decoder");
    bad(&["model.decoder.groups=3"], "`model.decoder.groups`");
    bad(&["model.decoder.sigma=0"], "`model.decoder.sigma`");
    bad(&["train.lr_decay_phi=1.5"], "train.lr_decay_phi");
    bad(&["train.ema.decay=1.0"], "ema.decay");
    // A missing image file is named, with the hint where downloads go.
    let mut missing = cfg.clone();
    if let Some(src) = &mut missing.data.images {
        src.set_path("no/such/file.csv".into());
    }
    let e = run(plan(missing, &tmp.path().join("m"), false))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no/such/file.csv") && e.contains("fetch-data"),
        "{e}"
    );
}

#[test]
fn image_presets_parse_and_mirror_table_2() {
    // The CPU preset's prior is the convolutional eps-network (not in the paper; its
    // docs/results/mnist5k section says why), on the 4 x 7 x 7 latent the decoder takes.
    let cfg = RunConfig::preset("mnist5k").unwrap();
    let (PriorConfig::Conv(c), DecoderConfig::Conv(dec)) = (&cfg.model.prior, &cfg.model.decoder)
    else {
        panic!("mnist5k: the convolutional prior and decoder");
    };
    assert_eq!((c.channels, c.size), (4, 7));
    assert_eq!((dec.latent_channels, dec.latent_size), (4, 7));
    assert!(cfg.is_image_run());
    for name in ["cifar10", "svhn", "celeba64"] {
        let cfg = RunConfig::preset(name).unwrap();
        let (PriorConfig::Dit(d), DecoderConfig::Conv(_)) = (&cfg.model.prior, &cfg.model.decoder)
        else {
            panic!("{name}: a DiT prior and the convolutional decoder");
        };
        assert!(cfg.is_image_run());
        assert_eq!(
            (d.hidden, d.depth, d.heads, d.patch),
            (384, 12, 6, 1),
            "{name}: DiT-S/1"
        );
        assert_eq!(cfg.train.optimizer_theta.lr, 1e-4);
        assert_eq!(cfg.train.optimizer_phi.lr, 2e-4);
        assert_eq!(cfg.particles.step_size.initial, 0.05);
        assert_eq!(cfg.train.lr_decay_phi, 0.999);
        assert_eq!(cfg.train.kl.warmup_steps, 40_000);
        let ema = cfg.train.ema.unwrap();
        assert_eq!(ema.start_step, 40_000);
        assert_eq!(ema.decay, if name == "celeba64" { 0.9999 } else { 0.999 });
        assert_eq!(
            cfg.train.batch_size,
            if name == "celeba64" { 16 } else { 128 }
        );
        assert_eq!(
            cfg.train.kl.coefficient,
            if name == "svhn" { 0.001 } else { 0.01 }
        );
        assert_eq!(cfg.eval.samples, 50_000);
    }
}

#[test]
fn the_classifier_scores_image_samples_and_refuses_other_data() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("bars.csv");
    write_csv(&csv);
    let s = run(plan(
        config(&csv, 4, &["eval.classifier=true"]),
        &tmp.path().join("a"),
        false,
    ))
    .unwrap();
    let r = s.recognisability.expect("eval.classifier reports");
    assert_eq!(r.label_counts.len(), 10, "labels 0..9 in the file");
    assert_eq!(r.label_counts.iter().sum::<usize>(), s.samples);
    assert_eq!(r.threshold, ipld_train::recognise::CONFIDENCE);
    assert!((0.0..=1.0).contains(&r.confident_fraction));
    assert!((0.0..=10f64.ln() + 1e-12).contains(&r.label_entropy));
    assert!(r.classes_present <= 10 && r.classifier_accuracy.is_finite());
    // Without the key, no classifier and no field.
    let s = run(plan(config(&csv, 4, &[]), &tmp.path().join("b"), false)).unwrap();
    assert!(s.recognisability.is_none());
    let e = RunConfig::preset("gmm")
        .unwrap()
        .with_overrides(&["eval.classifier=true".into()], "test")
        .unwrap_err()
        .to_string();
    assert!(e.contains("eval.classifier") && e.contains("image"), "{e}");
}
