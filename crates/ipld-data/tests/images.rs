//! Image loaders on small files written here in each real format.

use std::io::Write;
use std::path::Path;

use ipld_data::{
    Dataset, ImageSourceConfig, load_cifar10, load_csv_images, load_image_folder, load_mnist_idx,
    load_svhn_mat,
};

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// A CIFAR-10 record: label, then R, G, B planes; pixel (c, i) = (label * 7 + c * 3 + i) % 256.
fn cifar_record(label: u8) -> Vec<u8> {
    let mut r = vec![label];
    for c in 0..3 {
        r.extend((0..1024).map(|i| ((label as usize * 7 + c * 3 + i) % 256) as u8));
    }
    r
}

#[test]
fn cifar10_directory_single_file_and_tar_gz_agree() {
    let dir = tempfile::tempdir().unwrap();
    let b1: Vec<u8> = [3u8, 1, 4].iter().flat_map(|&l| cifar_record(l)).collect();
    let b2: Vec<u8> = [1u8, 5].iter().flat_map(|&l| cifar_record(l)).collect();
    let batches = dir.path().join("cifar-10-batches-bin");
    std::fs::create_dir(&batches).unwrap();
    std::fs::write(batches.join("data_batch_1.bin"), &b1).unwrap();
    std::fs::write(batches.join("data_batch_2.bin"), &b2).unwrap();
    // The test batch is not part of the training set.
    std::fs::write(batches.join("test_batch.bin"), cifar_record(9)).unwrap();

    let set = load_cifar10(&batches).unwrap();
    assert_eq!(set.len(), 5);
    assert_eq!(set.shape(), [3, 32, 32]);
    assert_eq!(set.labels().unwrap(), &[3, 1, 4, 1, 5]);
    // Image 2 (label 4): channel 1, pixel 10 = (28 + 3 + 10) % 256.
    assert_eq!(set.image(2)[1024 + 10], 41);

    let single = load_cifar10(&batches.join("data_batch_2.bin")).unwrap();
    assert_eq!(single.labels().unwrap(), &[1, 5]);

    let mut tar = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("cifar-10-batches-bin/data_batch_2.bin", &b2),
        ("cifar-10-batches-bin/data_batch_1.bin", &b1),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name, &data[..]).unwrap();
    }
    let archive = dir.path().join("cifar-10-binary.tar.gz");
    std::fs::write(&archive, gz(&tar.into_inner().unwrap())).unwrap();
    let from_tar = ImageSourceConfig::Cifar10 { path: archive }.load().unwrap();
    assert_eq!(from_tar.labels(), set.labels());
    assert_eq!(from_tar.image(4), set.image(4));
}

#[test]
fn cifar10_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let truncated = dir.path().join("data_batch_1.bin");
    std::fs::write(&truncated, &cifar_record(2)[..3000]).unwrap();
    let err = load_cifar10(&truncated).unwrap_err().to_string();
    assert!(
        err.contains("data_batch_1.bin") && err.contains("truncated"),
        "{err}"
    );
    let err = load_cifar10(&dir.path().join("missing.bin"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.bin"), "{err}");
    let empty = tempfile::tempdir().unwrap();
    let err = load_cifar10(empty.path()).unwrap_err().to_string();
    assert!(err.contains("no data_batch"), "{err}");
    let mut bad = cifar_record(2);
    bad[0] = 12;
    std::fs::write(&truncated, &bad).unwrap();
    let err = load_cifar10(&truncated).unwrap_err().to_string();
    assert!(err.contains("label 12"), "{err}");
}

fn idx(n: u32, h: u32, w: u32, body: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, 3];
    for d in [n, h, w] {
        v.extend(d.to_be_bytes());
    }
    v.extend_from_slice(body);
    v
}

#[test]
fn mnist_idx_plain_and_gzipped() {
    let dir = tempfile::tempdir().unwrap();
    let body: Vec<u8> = (0..2 * 3 * 4).map(|i| (i * 10) as u8).collect();
    let plain = dir.path().join("train-images-idx3-ubyte");
    std::fs::write(&plain, idx(2, 3, 4, &body)).unwrap();
    let zipped = dir.path().join("train-images-idx3-ubyte.gz");
    std::fs::write(&zipped, gz(&idx(2, 3, 4, &body))).unwrap();
    for p in [&plain, &zipped] {
        let set = load_mnist_idx(p).unwrap();
        assert_eq!((set.len(), set.shape()), (2, [1, 3, 4]));
        assert_eq!(set.image(1), &body[12..]);
    }
    // Pixels map linearly to [-1, 1]: 0 -> -1, 255 -> 1.
    let edge = dir.path().join("edge");
    std::fs::write(&edge, idx(1, 1, 2, &[0, 255])).unwrap();
    let mut out = Vec::new();
    load_mnist_idx(&edge)
        .unwrap()
        .gather_into(&[0], &mut out)
        .unwrap();
    assert_eq!(out, vec![-1.0, 1.0]);

    std::fs::write(&plain, idx(3, 3, 4, &body)).unwrap();
    let err = load_mnist_idx(&plain).unwrap_err().to_string();
    assert!(
        err.contains("truncated") && err.contains("train-images"),
        "{err}"
    );
    let mut labels_file = idx(2, 3, 4, &body);
    labels_file[3] = 1;
    std::fs::write(&plain, labels_file).unwrap();
    let err = load_mnist_idx(&plain).unwrap_err().to_string();
    assert!(err.contains("magic"), "{err}");
}

/// A MATLAB v5 data element: tag (type, byte count) and the data padded to 8 bytes.
fn element(kind: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend(kind.to_le_bytes());
    v.extend((data.len() as u32).to_le_bytes());
    v.extend_from_slice(data);
    while !v.len().is_multiple_of(8) {
        v.push(0);
    }
    v
}

/// A miMATRIX element for a real numeric array (class 9 = uint8 with miUINT8 data, class 6 =
/// double with miDOUBLE data), following the MAT-File Format reference.
fn mat_array(name: &str, dims: &[i32], class: u32, data_kind: u32, data: &[u8]) -> Vec<u8> {
    let mut body = element(6, &[class as u8, 0, 0, 0, 0, 0, 0, 0]);
    body.extend(element(
        5,
        &dims
            .iter()
            .flat_map(|d| d.to_le_bytes())
            .collect::<Vec<u8>>(),
    ));
    body.extend(element(1, name.as_bytes()));
    body.extend(element(data_kind, data));
    element(14, &body)
}

fn mat_file(arrays: &[Vec<u8>], compress: bool) -> Vec<u8> {
    let mut header = b"MATLAB 5.0 MAT-file, written by the ipld tests".to_vec();
    header.resize(116, b' ');
    header.extend([0u8; 8]);
    header.extend(0x0100u16.to_le_bytes());
    header.extend(b"IM");
    for a in arrays {
        if compress {
            let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            z.write_all(a).unwrap();
            let z = z.finish().unwrap();
            header.extend(15u32.to_le_bytes());
            header.extend((z.len() as u32).to_le_bytes());
            header.extend(z);
        } else {
            header.extend_from_slice(a);
        }
    }
    header
}

#[test]
fn svhn_mat_uncompressed_and_compressed() {
    // Two 2 x 3 images; X(r, c, ch, i) = 100 i + 10 ch + 3 r + c, stored column-major.
    let (h, w, n) = (2usize, 3usize, 2usize);
    let mut x = Vec::new();
    for i in 0..n {
        for ch in 0..3 {
            for c in 0..w {
                for r in 0..h {
                    x.push((100 * i + 10 * ch + 3 * r + c) as u8);
                }
            }
        }
    }
    let y: Vec<u8> = [10.0f64, 3.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let arrays = [
        mat_array("X", &[h as i32, w as i32, 3, n as i32], 9, 2, &x),
        mat_array("y", &[n as i32, 1], 6, 9, &y),
    ];
    let dir = tempfile::tempdir().unwrap();
    for compress in [false, true] {
        let p = dir.path().join(format!("train_32x32_{compress}.mat"));
        std::fs::write(&p, mat_file(&arrays, compress)).unwrap();
        let set = load_svhn_mat(&p).unwrap();
        assert_eq!((set.len(), set.shape()), (2, [3, 2, 3]));
        // Label 10 is the digit 0.
        assert_eq!(set.labels().unwrap(), &[0, 3]);
        // Image 1, channel 2, row 1, column 2: 100 + 20 + 3 + 2.
        assert_eq!(set.image(1)[(2 * h + 1) * w + 2], 125);
    }
    let p = dir.path().join("garbage.mat");
    std::fs::write(&p, b"not a mat file").unwrap();
    let err = load_svhn_mat(&p).unwrap_err().to_string();
    assert!(err.contains("garbage.mat"), "{err}");
    let wrong = [mat_array("Z", &[2, 2], 9, 2, &[1, 2, 3, 4])];
    std::fs::write(&p, mat_file(&wrong, false)).unwrap();
    let err = load_svhn_mat(&p).unwrap_err().to_string();
    assert!(err.contains("`X`"), "{err}");
}

fn write_rgb(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) {
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)))
        .save(path)
        .unwrap();
}

#[test]
fn image_folder_centre_crops_and_resizes() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("nested");
    std::fs::create_dir(&sub).unwrap();
    // 6 x 4: the centred 4 x 4 square is columns 1..5, a uniform colour; the border columns
    // are red and must be cropped away.
    let img = |x: u32, _y: u32| {
        if x == 0 || x == 5 {
            [255, 0, 0]
        } else {
            [10, 20, 30]
        }
    };
    write_rgb(&dir.path().join("a.png"), 6, 4, img);
    write_rgb(&sub.join("b.png"), 6, 4, |x, y| {
        let [r, g, b] = img(x, y);
        [r, g / 2, b / 2]
    });
    std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
    let set = load_image_folder(dir.path(), 2, 0, true).unwrap();
    assert_eq!((set.len(), set.shape()), (2, [3, 2, 2]));
    assert_eq!(
        set.image(0),
        &[10, 10, 10, 10, 20, 20, 20, 20, 30, 30, 30, 30]
    );
    assert_eq!(&set.image(1)[4..8], &[10, 10, 10, 10]);
    // An explicit crop larger than the image is an error naming the file.
    let err = load_image_folder(dir.path(), 2, 5, true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("a.png") && err.contains("crop"), "{err}");
    // Grey conversion gives one channel.
    let grey = load_image_folder(dir.path(), 2, 2, false).unwrap();
    assert_eq!(grey.shape(), [1, 2, 2]);
    // A corrupt image is reported by name.
    std::fs::write(sub.join("c.jpg"), b"\xff\xd8 not really a jpeg").unwrap();
    let err = load_image_folder(dir.path(), 2, 0, true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("c.jpg"), "{err}");
    let empty = tempfile::tempdir().unwrap();
    assert!(load_image_folder(empty.path(), 2, 0, true).is_err());
}

#[test]
fn csv_digits_with_labels_plain_and_gzipped() {
    let dir = tempfile::tempdir().unwrap();
    let rows = "0,16,8,4,1\n16,16,0,0,7\n";
    let plain = dir.path().join("digits.csv");
    std::fs::write(&plain, rows).unwrap();
    let zipped = dir.path().join("digits.csv.gz");
    std::fs::write(&zipped, gz(rows.as_bytes())).unwrap();
    for p in [&plain, &zipped] {
        let set = load_csv_images(p, 2, 2, 16).unwrap();
        assert_eq!(set.labels().unwrap(), &[1, 7]);
        let mut out = Vec::new();
        set.gather_into(&[0], &mut out).unwrap();
        assert_eq!(out, vec![-1.0, 1.0, 0.0, -0.5]);
    }
    std::fs::write(&plain, "0,16,8,4,1\n16,16,0\n").unwrap();
    let err = load_csv_images(&plain, 2, 2, 16).unwrap_err().to_string();
    assert!(err.contains("line 2") && err.contains("3 fields"), "{err}");
    std::fs::write(&plain, "0,17,8,4,1\n").unwrap();
    let err = load_csv_images(&plain, 2, 2, 16).unwrap_err().to_string();
    assert!(err.contains("line 1, column 2"), "{err}");
}

#[test]
fn image_source_config_parses_from_toml() {
    let cfg: ImageSourceConfig =
        toml::from_str("format = \"folder\"\npath = \"/data/celeba\"\nsize = 64\ncrop = 140\n")
            .unwrap();
    assert_eq!(
        cfg,
        ImageSourceConfig::Folder {
            path: "/data/celeba".into(),
            size: 64,
            crop: 140,
            rgb: true
        }
    );
    let err = toml::from_str::<ImageSourceConfig>("format = \"cifar10\"\npath = \"x\"\nsize = 3\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("size"), "{err}");
}

#[test]
fn native_folder_keeps_sizes_repeats_grey_and_rejects_mixed_sizes() {
    let dir = tempfile::tempdir().unwrap();
    write_rgb(&dir.path().join("a.png"), 4, 3, |x, y| {
        [x as u8 * 10, y as u8 * 20, 7]
    });
    image::GrayImage::from_fn(4, 3, |x, y| image::Luma([(x + y) as u8]))
        .save(dir.path().join("b.png"))
        .unwrap();
    let set = ipld_data::load_image_folder_native(dir.path()).unwrap();
    assert_eq!((set.len(), set.shape()), (2, [3, 3, 4]));
    // a.png, red plane, (row 2, col 3) = 30; green plane at row 2 = 40.
    assert_eq!(set.image(0)[2 * 4 + 3], 30);
    assert_eq!(set.image(0)[12 + 2 * 4], 40);
    // b.png: grey repeated to three identical planes.
    let b = set.image(1);
    assert_eq!(&b[..12], &b[12..24]);
    assert_eq!(b[2 * 4 + 3], 5);
    write_rgb(&dir.path().join("c.png"), 5, 5, |_, _| [0, 0, 0]);
    let err = ipld_data::load_image_folder_native(dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("c.png") && err.contains("5 x 5"), "{err}");
}

#[test]
fn image_set_subsets_rescaling_and_png_round_trip() {
    // Pixels 0..=16 of scikit-learn's digits scale to 0..=255.
    let px: Vec<u8> = (0..3 * 4).map(|i| (i % 17) as u8).collect();
    let set =
        ipld_data::ImageSet::new(px.clone(), [1, 2, 2], 16, Some(vec![7, 8, 9]), "t").unwrap();
    let p255 = set.pixels_255();
    assert_eq!(p255[0], 0);
    assert_eq!(p255[8], 128); // round(8 * 255 / 16) = round(127.5)
    let sel = set.select(&[2, 0]).unwrap();
    assert_eq!(sel.labels().unwrap(), &[9, 7]);
    assert_eq!(sel.image(0), set.image(2));
    let sl = set.slice(1..3).unwrap();
    assert_eq!(sl.image(0), set.image(1));
    assert!(set.slice(2..5).is_err() && set.select(&[3]).is_err());
    // f32 in [-1, 1] -> 8 bits, clamped; NaN is rejected.
    let f = ipld_data::ImageSet::from_f32(&[-1.0, 0.0, 1.0, 2.0], [1, 2, 2], "f").unwrap();
    assert_eq!(f.image(0), &[0, 128, 255, 255]);
    assert!(ipld_data::ImageSet::from_f32(&[f32::NAN, 0.0, 0.0, 0.0], [1, 2, 2], "f").is_err());

    // PNG folder and grid writers read back with the native loader.
    let dir = tempfile::tempdir().unwrap();
    let rgb: Vec<u8> = (0..2 * 3 * 2 * 3).map(|i| (i * 9) as u8).collect();
    let set = ipld_data::ImageSet::new(rgb, [3, 2, 3], 255, None, "rgb").unwrap();
    ipld_data::save_image_folder(&set, &dir.path().join("out"), "s").unwrap();
    let back = ipld_data::load_image_folder_native(&dir.path().join("out")).unwrap();
    assert_eq!(back.len(), 2);
    assert_eq!(back.image(1), set.image(1));
    let grid = dir.path().join("grid.png");
    ipld_data::save_image_grid(&set, 1, 2, &grid).unwrap();
    let g = image::open(&grid).unwrap().to_rgb8();
    assert_eq!((g.width(), g.height()), (2 * (3 + 2) + 2, 2 + 2 + 2));
    // Image 1's pixel (0, 0) sits at (2 + 3 + 2, 2); channels are planes of the CHW buffer.
    let im1 = set.image(1);
    assert_eq!(g.get_pixel(7, 2).0, [im1[0], im1[6], im1[12]]);
}
