//! Issue 23, everything recorded: kept checkpoints and `--resume --from-step`, evaluation during
//! training (`eval.every`), the CSV copies of the metrics, and `ipld-train plot`.

mod common;

use common::{assert_same_checkpoints, bin, json_lines, plan, stderr, tiny};
use ipld_train::RunConfig;

fn with(cfg: RunConfig, sets: &[&str]) -> RunConfig {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    cfg.with_overrides(&sets, "test").unwrap()
}

#[test]
fn kept_checkpoints_roll_back_and_the_run_continues_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("r");
    // checkpoint_every = 10: checkpoints at 10, 20, 30, 40; the last two are kept.
    let cfg = with(tiny(40), &["train.keep_checkpoints=2"]);
    ipld_train::run(plan(cfg.clone(), &dir, false)).unwrap();
    let kept = ipld_train::history::kept_steps(&dir).unwrap();
    assert_eq!(kept, vec![30, 40]);
    // The latest kept one is the latest checkpoint.
    assert_eq!(
        std::fs::read(dir.join("checkpoint.safetensors")).unwrap(),
        std::fs::read(ipld_train::history::step_file(&dir, 40)).unwrap()
    );
    let original = tmp.path().join("original");
    std::fs::create_dir(&original).unwrap();
    std::fs::copy(
        dir.join("checkpoint.safetensors"),
        original.join("checkpoint.safetensors"),
    )
    .unwrap();

    // A step that was not kept is refused, naming the kept ones; nothing moves.
    let out = bin(
        &["--resume", "r", "--from-step", "20", "--quiet"],
        tmp.path(),
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--from-step 20") && err.contains("30, 40"),
        "{err}"
    );
    assert!(dir.join("summary.json").exists());

    // Back to 30 and on to 40 again: the later records move aside, and the run ends on the
    // same checkpoint, bit for bit.
    let out = bin(&["--resume", "r", "--from-step", "30"], tmp.path());
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("rolled") && err.contains("back from step 40 to step 30"),
        "{err}"
    );
    let aside = dir.join("checkpoints/rolled-back-from-40");
    for f in ["step-00000040.safetensors", "summary.json", "metrics.jsonl"] {
        assert!(aside.join(f).is_file(), "{f} kept aside");
    }
    assert_eq!(json_lines(&aside.join("metrics.jsonl")).len(), 8);
    assert_same_checkpoints(&dir, &original, "rolled back to 30 and trained to 40");
    let steps: Vec<u64> = json_lines(&dir.join("metrics.jsonl"))
        .iter()
        .map(|l| l["step"].as_u64().unwrap())
        .collect();
    assert_eq!(
        steps,
        vec![5, 10, 15, 20, 25, 30, 35, 40],
        "no line repeated"
    );
    // The run record shows the invocation that started at step 30.
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("run.json")).unwrap()).unwrap();
    let inv = record["invocations"].as_array().unwrap();
    assert_eq!(inv.last().unwrap()["from_step"], 30);
    assert_eq!(inv.last().unwrap()["outcome"], "finished");
    // A second roll-back to the same step keeps the first one's records too.
    let out = bin(
        &["--resume", "r", "--from-step", "30", "--quiet"],
        tmp.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        dir.join("checkpoints/rolled-back-from-40-2/summary.json")
            .is_file()
    );
    // Without kept checkpoints the message says how to keep them.
    let plain = tmp.path().join("plain");
    ipld_train::run(plan(tiny(10), &plain, false)).unwrap();
    let out = bin(
        &["--resume", "plain", "--from-step", "10", "--quiet"],
        tmp.path(),
    );
    assert!(
        stderr(&out).contains("train.keep_checkpoints"),
        "{}",
        stderr(&out)
    );
}

/// The training clocks (each line's `train_seconds_total`, the summary's `train_seconds`) leave
/// out the evaluations during training, so runs that evaluate often compare with runs that do not
/// at equal training time. The evaluations here (4,000 samples each, after every logged line)
/// take far longer than the 20 small steps: counted in, the clocks plus the evaluations' own
/// seconds would exceed the wall time around the run by about three evaluations.
#[test]
fn training_clocks_leave_out_evaluations_during_training() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("r");
    let cfg = with(tiny(20), &["eval.every=5", "eval.every_samples=4000"]);
    let start = std::time::Instant::now();
    ipld_train::run(plan(cfg, &dir, false)).unwrap();
    let wall = start.elapsed().as_secs_f64();
    let lines = json_lines(&dir.join("metrics.jsonl"));
    let evals: f64 = lines
        .iter()
        .filter(|l| l["phase"] == "eval")
        .map(|l| l["seconds"].as_f64().unwrap())
        .sum();
    let last = lines.iter().rfind(|l| l["phase"] == "joint").unwrap();
    let logged = last["train_seconds_total"].as_f64().unwrap();
    assert_eq!(last["seconds"].as_f64().unwrap(), logged, "one invocation");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    let train = summary["train_seconds"].as_f64().unwrap();
    assert!(
        evals > 0.0 && logged > 0.0 && logged <= train,
        "{logged} {train}"
    );
    assert!(
        train + evals <= wall,
        "train_seconds {train} + evaluations {evals} > wall {wall}: evaluations counted as training"
    );
}

#[test]
fn evaluation_during_training_is_logged_drawn_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let cfg = with(tiny(20), &["eval.every=10", "eval.every_samples=100"]);
    ipld_train::run(plan(cfg, &a, false)).unwrap();
    ipld_train::run(plan(tiny(20), &b, false)).unwrap();
    // Sampling uses its own random stream: training is the same with and without it.
    assert_same_checkpoints(&a, &b, "eval.every");
    let lines = json_lines(&a.join("metrics.jsonl"));
    let evals: Vec<&serde_json::Value> = lines.iter().filter(|l| l["phase"] == "eval").collect();
    assert_eq!(evals.len(), 2);
    for (e, step) in evals.iter().zip([10, 20]) {
        assert_eq!(e["step"], step);
        assert_eq!(e["samples"], 100);
        assert!(e["mmd"].as_f64().unwrap().is_finite(), "{e}");
        // gmm: the mode metrics come with every evaluation.
        assert!(e["modes"]["precision"].as_f64().is_some(), "{e}");
        let png = image::open(ipld_train::periodic::picture_path(&a, step))
            .unwrap()
            .to_rgb8();
        assert_eq!((png.width(), png.height()), (1000, 520));
        // No text or axis is cut by the picture's edges: its border pixels are all white.
        let (w, h) = (png.width(), png.height());
        let border = (0..w)
            .flat_map(|x| [(x, 0), (x, h - 1)])
            .chain((0..h).flat_map(|y| [(0, y), (w - 1, y)]));
        for (x, y) in border {
            assert_eq!(png.get_pixel(x, y).0, [255, 255, 255], "ink at ({x}, {y})");
        }
    }
    // CSV copies: training lines in metrics.csv, evaluations in evals.csv.
    let csv = std::fs::read_to_string(a.join("metrics.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert!(rows[0].starts_with("step,phase,loss,"), "{}", rows[0]);
    assert_eq!(
        rows.len(),
        1 + 4,
        "header + 4 training lines (log_every = 5)"
    );
    assert!(rows[1].starts_with("5,joint,"), "{}", rows[1]);
    let evals_csv = std::fs::read_to_string(a.join("evals.csv")).unwrap();
    let rows: Vec<&str> = evals_csv.lines().collect();
    assert_eq!(rows.len(), 3);
    assert!(
        rows[0].starts_with("step,phase,samples,mmd,"),
        "{}",
        rows[0]
    );
    assert!(rows[0].contains("modes.precision"), "{}", rows[0]);
    assert!(rows[2].starts_with("20,eval,100,"), "{}", rows[2]);
    // Too few samples per evaluation is refused, naming the key.
    let sets = [
        "eval.every=10".to_string(),
        "eval.every_samples=2".to_string(),
    ];
    let e = tiny(20).with_overrides(&sets, "test").unwrap_err();
    assert!(e.to_string().contains("eval.every_samples"), "{e}");
}

#[test]
fn plot_draws_a_run_and_refuses_what_it_should() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("r");
    let cfg = with(tiny(20), &["eval.every=10", "eval.every_samples=50"]);
    ipld_train::run(plan(cfg, &dir, false)).unwrap();
    std::fs::remove_file(dir.join("metrics.csv")).unwrap();
    let out = bin(&["plot", "--run", "r"], tmp.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let png = image::open(dir.join("training.png")).unwrap().to_rgb8();
    assert_eq!((png.width(), png.height()), (1200, 860));
    // Every panel holds coloured lines (red, the first series' colour, in each quarter).
    for (qx, qy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
        let red = (0..600u32)
            .flat_map(|x| (40..430u32).map(move |y| (x + 600 * qx, y + 430 * qy)))
            .filter(|&(x, y)| {
                let p = png.get_pixel(x, y.min(859)).0;
                p[0] > 170 && p[1] < 90 && p[2] < 70
            })
            .count();
        assert!(red > 30, "panel ({qx}, {qy}) has no series: {red}");
    }
    // The CSV copies are refreshed too.
    assert!(dir.join("metrics.csv").is_file());
    // An existing --out is kept unless --force; a directory that is no run is refused.
    std::fs::write(tmp.path().join("mine.png"), b"mine").unwrap();
    let out = bin(&["plot", "--run", "r", "--out", "mine.png"], tmp.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert_eq!(std::fs::read(tmp.path().join("mine.png")).unwrap(), b"mine");
    let out = bin(
        &["plot", "--run", "r", "--out", "mine.png", "--force"],
        tmp.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(image::open(tmp.path().join("mine.png")).is_ok());
    let out = bin(&["plot", "--run", "."], tmp.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not a run directory"),
        "{}",
        stderr(&out)
    );
}
