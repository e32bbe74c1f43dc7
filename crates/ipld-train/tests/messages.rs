//! Issue 23, "Text and pictures": error lines print each cause once, missing image sets say where
//! to get them, and `fid` checks its inputs (and warns on small ones) before any features.

mod common;

use common::{bin, last_json, stderr};
use ipld_eval::GaussianStats;

/// The error line of a failed command (exit status 1, no panic).
fn error_line(args: &[&str], cwd: &std::path::Path) -> String {
    let out = bin(args, cwd);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err.lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("{args:?}: no error line in {err}"))
        .to_string()
}

#[test]
fn an_os_error_and_its_path_are_printed_once() {
    let tmp = tempfile::tempdir().unwrap();
    let line = error_line(&["--config", "nowhere.toml"], tmp.path());
    assert_eq!(line.matches("os error 2").count(), 1, "{line}");
    assert_eq!(line.matches("nowhere.toml").count(), 1, "{line}");
    let line = error_line(
        &["--set", "data.path=missing.csv", "--out", "r"],
        tmp.path(),
    );
    assert_eq!(line.matches("os error 2").count(), 1, "{line}");
    assert_eq!(line.matches("missing.csv").count(), 1, "{line}");
}

#[test]
fn missing_image_sets_say_where_to_get_them() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    for (preset, needles) in [
        (
            "cifar10",
            &[
                "cifar-10-binary.tar.gz",
                "University of Toronto",
                "data/cifar10/",
            ][..],
        ),
        ("svhn", &["train_32x32.mat", "Stanford", "data/svhn/"][..]),
        (
            "celeba64",
            &[
                "img_align_celeba.zip",
                "CUHK",
                "data/celeba/img_align_celeba",
            ][..],
        ),
        ("mnist5k", &["cargo xtask fetch-data mnist5k"][..]),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ipld-train"))
            .args([
                "--preset",
                preset,
                "--out",
                preset,
                "--set",
                "eval.fid=false",
            ])
            .env("IPLD_DATA_DIR", &data_dir)
            .current_dir(tmp.path())
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{preset}: {err}");
        let line = err.lines().find(|l| l.starts_with("error: ")).unwrap();
        for n in needles {
            assert!(line.contains(n), "{preset}: `{n}` missing from {line}");
        }
        assert_eq!(line.matches("os error 2").count(), 1, "{line}");
        assert!(!line.contains("   "), "{preset}: a run of spaces in {line}");
    }
}

fn stats(count: usize, shift: f64) -> GaussianStats {
    GaussianStats {
        mu: vec![shift, 0.0, 0.0],
        sigma: vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        count,
    }
}

#[test]
fn fid_checks_both_inputs_before_features_and_warns_on_few_images() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    std::fs::create_dir(&a).unwrap();
    for i in 0..3u8 {
        image::RgbImage::from_pixel(4, 4, image::Rgb([i * 50, 3, 9]))
            .save(a.join(format!("{i}.png")))
            .unwrap();
    }
    // The second input is checked before the (missing) weights are needed.
    let line = error_line(
        &[
            "fid",
            "a",
            "gone",
            "--inception",
            "none.safetensors",
            "--quiet",
        ],
        tmp.path(),
    );
    assert!(line.contains("gone: does not exist"), "{line}");
    // A file that is neither a folder nor statistics says so.
    std::fs::write(tmp.path().join("notes.txt"), "hello").unwrap();
    let line = error_line(&["fid", "a", "notes.txt", "--quiet"], tmp.path());
    assert!(
        line.contains("notes.txt: neither an image folder nor an FID statistics file"),
        "{line}"
    );
    // An empty folder is named with what it lacks.
    std::fs::create_dir(tmp.path().join("empty")).unwrap();
    let line = error_line(&["fid", "a", "empty", "--quiet"], tmp.path());
    assert!(line.contains("empty") && line.contains("images"), "{line}");

    // Two statistics files below 2,048 images: the FID is computed, with a warning per side in
    // the log and in the result. Closed form: equal covariances, means 2 apart, FID = 2^2.
    stats(100, 0.0)
        .save(&tmp.path().join("r.safetensors"))
        .unwrap();
    stats(5000, 2.0)
        .save(&tmp.path().join("f.safetensors"))
        .unwrap();
    let out = bin(
        &["fid", "r.safetensors", "f.safetensors", "--quiet"],
        tmp.path(),
    );
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let v = last_json(&out);
    assert!((v["fid"].as_f64().unwrap() - 4.0).abs() < 1e-9, "{v}");
    let warnings = v["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "only the 100-image side warns: {v}");
    let w = warnings[0].as_str().unwrap();
    assert!(w.contains("r.safetensors") && w.contains("100 images") && w.contains("2048"));
    assert!(
        err.contains("100 images"),
        "the warning is logged too: {err}"
    );
}
