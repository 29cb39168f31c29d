//! Convolutional classifiers through the real `largo` binary: the CNN and a ResNet train on the
//! bundled digits (resume bit-identical, batch-norm statistics included), eval and classify
//! them; a torchvision ResNet imports with PyTorch's logits and exports back under its names.

mod common;

use common::{bundled_mnist, fails_with, largo, ok, repo};
use largo::io::{load_weights, save_safetensors, TensorFile};
use largo::models::store::load_classifier;
use largo::nn::Forward;
use std::path::{Path, PathBuf};
use std::process::Output;

/// A small ResNet for 28×28 grey digits: BasicBlock [1, 1, 1, 1], 4 channels wide.
const TINY_RESNET: [&str; 6] = [
    "model.arch=resnet",
    "resnet.in_channels=1",
    "resnet.image_size=[28, 28]",
    "resnet.width=4",
    "resnet.layers=[1, 1, 1, 1]",
    "resnet.classes=10",
];

fn train(dir: &Path, name: &str, extra: &[&str]) -> Output {
    let config = repo().join("configs/mnist-cnn.toml");
    let data = format!("data.path={}", bundled_mnist().display());
    let name = format!("run.name={name}");
    let mut args = vec!["train", "--config", config.to_str().unwrap()];
    for s in [data.as_str(), name.as_str(), "train.epochs=2"]
        .into_iter()
        .chain(extra.iter().copied())
    {
        args.extend(["--set", s]);
    }
    largo(dir, &args)
}

fn fixture(name: &str) -> PathBuf {
    repo().join("crates/largo/tests/fixtures/cnn").join(name)
}

#[test]
fn a_resnet_resumed_mid_epoch_ends_bit_identical_batch_norm_statistics_and_augmentation_included() {
    let tmp = tempfile::tempdir().unwrap();
    let extra = |more: &[&'static str]| {
        let mut v = TINY_RESNET.to_vec();
        // Augmentation on, so its draws must survive the resume too.
        v.extend([
            "train.batch_size=32",
            "train.grad_accum=2",
            "data.augment_padding=2",
            "data.augment_flip=true",
        ]);
        v.extend(more);
        v
    };
    ok(&train(tmp.path(), "whole", &extra(&[])));
    ok(&train(tmp.path(), "split", &extra(&["train.max_steps=9"])));
    ok(&largo(
        tmp.path(),
        &[
            "train",
            "--resume",
            "runs/split",
            "--set",
            "train.max_steps=0",
        ],
    ));
    let whole = tmp.path().join("runs/whole/model/model.safetensors");
    let split = tmp.path().join("runs/split/model/model.safetensors");
    assert!(
        std::fs::read(&whole).unwrap() == std::fs::read(&split).unwrap(),
        "resumed weights or running statistics differ from the uninterrupted run"
    );
    // 900 training digits in micro-batches of 32: 29 per epoch, each one batch-norm update.
    let f = TensorFile::load(&whole).unwrap();
    assert_eq!(
        f.get("layer1.0.bn2.num_batches_tracked").unwrap().data,
        [58.0]
    );
    let rv = &f.get("bn1.running_var").unwrap().data;
    assert!(rv.iter().all(|&v| v > 0.0) && rv.iter().any(|&v| v != 1.0));

    let out = ok(&largo(
        tmp.path(),
        &[
            "eval",
            "--model",
            "runs/whole",
            "--data",
            bundled_mnist().to_str().unwrap(),
            "--split",
            "val",
            "--json",
        ],
    ));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    // 100 validation digits, scored above chance (0.1) after 2 augmented epochs.
    assert_eq!(v["samples"], 100, "{out}");
    assert!(v["accuracy"].as_f64().unwrap() > 0.12, "{out}");
}

#[test]
fn the_cnn_trains_on_digits_and_eval_classify_and_saliency_use_it() {
    let tmp = tempfile::tempdir().unwrap();
    // PyTorch's MNIST example net, as configs/mnist-cnn.toml has it, for 2 epochs.
    let out = ok(&train(tmp.path(), "cnn", &[]));
    assert!(out.contains("best val_accuracy"), "{out}");
    let m = std::fs::read_to_string(tmp.path().join("runs/cnn/metrics.jsonl")).unwrap();
    let last_val = m
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .rfind(|v| v["kind"] == "val")
        .unwrap();
    let acc = last_val["val_accuracy"].as_f64().unwrap();
    assert!(acc > 0.85, "validation accuracy after 2 epochs: {acc}");

    let out = ok(&largo(
        tmp.path(),
        &[
            "eval",
            "--model",
            "runs/cnn",
            "--data",
            bundled_mnist().to_str().unwrap(),
            "--split",
            "val",
        ],
    ));
    assert!(out.contains("accuracy"), "{out}");
    let digits = repo().join("data/digits");
    let first = std::fs::read_dir(&digits)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "png"))
        .expect("a bundled digit");
    let out = ok(&largo(
        tmp.path(),
        &["classify", "--model", "runs/cnn", first.to_str().unwrap()],
    ));
    assert!(out.contains('%'), "{out}");
    ok(&largo(
        tmp.path(),
        &[
            "explain",
            "saliency",
            "--model",
            "runs/cnn",
            first.to_str().unwrap(),
            "--out",
            "s.png",
        ],
    ));
    assert!(tmp.path().join("s.png").is_file());

    // A ResNet for RGB images cannot read the 28×28 grey digits: the error says why.
    let mut rgb = TINY_RESNET.to_vec();
    rgb[1] = "resnet.in_channels=3";
    fails_with(
        &train(tmp.path(), "rgb", &rgb),
        "the images have 784 pixels, but the resnet model takes 3×28×28 = 2352 values",
    );
}

fn import(dir: &Path, arch: &str, weights: &Path, out: &str) -> Output {
    std::fs::write(dir.join("resnet.json"), r#"{"image_size": [32, 32]}"#).unwrap();
    largo(
        dir,
        &[
            "import",
            "--arch",
            arch,
            "--weights",
            weights.to_str().unwrap(),
            "--config",
            "resnet.json",
            "--out",
            out,
        ],
    )
}

#[test]
fn a_torchvision_resnet_imports_with_pytorchs_logits_and_exports_under_its_names() {
    let tmp = tempfile::tempdir().unwrap();
    let pth = fixture("tiny_resnet.pth");
    let out = ok(&import(tmp.path(), "resnet", &pth, "tiny"));
    assert!(out.contains("imported resnet"), "{out}");
    let (mut model, _, _) = load_classifier(&tmp.path().join("tiny")).unwrap();
    assert_eq!(model.input(), [3, 32, 32]);
    let io = TensorFile::load(&fixture("tiny_resnet_io.safetensors")).unwrap();
    let x = &io.get("x").unwrap().data;
    let logits = model.forward(x, Forward::eval(2, 1)).unwrap();
    let want = &io.get("logits").unwrap().data;
    for (i, (g, w)) in logits.iter().zip(want).enumerate() {
        assert!((g - w).abs() < 1e-4, "logit {i}: {g} vs PyTorch's {w}");
    }

    // export: every name and shape of the torchvision state_dict (what a strict
    // load_state_dict checks), with the values imported, and nothing else.
    ok(&largo(
        tmp.path(),
        &["export", "--model", "tiny", "--out", "tiny.safetensors"],
    ));
    let exported = TensorFile::load(&tmp.path().join("tiny.safetensors")).unwrap();
    let original = load_weights(&pth).unwrap();
    let names = |f: &TensorFile| f.tensors.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&exported), names(&original));
    for (name, t) in &original.tensors {
        assert_eq!(&exported.tensors[name], t, "{name}");
    }

    // A `backbone.` prefix is dropped; the wrong depth and a wrong shape are errors naming why.
    let prefixed: Vec<(String, &largo::tensor::Tensor)> = original
        .tensors
        .iter()
        .map(|(n, t)| (format!("backbone.{n}"), t))
        .collect();
    let backbone = tmp.path().join("backbone.safetensors");
    save_safetensors(&backbone, &prefixed, None).unwrap();
    let out = ok(&import(tmp.path(), "resnet", &backbone, "from-backbone"));
    assert!(
        out.contains("renamed: backbone.* → * (74 tensors)"),
        "{out}"
    );
    fails_with(
        &import(tmp.path(), "resnet18", &pth, "r18"),
        "resnet18 has [2, 2, 2, 2] blocks of kind Basic in layer1 … layer4, the file has [1, 1, 1, 1]",
    );
    let mut bad: Vec<(String, largo::tensor::Tensor)> = original
        .tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.clone()))
        .collect();
    let (_, t) = bad
        .iter_mut()
        .find(|(n, _)| n == "layer2.0.conv1.weight")
        .unwrap();
    t.shape = vec![t.shape[0], t.shape[1] * 3, 1, 3];
    let refs: Vec<(String, &largo::tensor::Tensor)> =
        bad.iter().map(|(n, t)| (n.clone(), t)).collect();
    save_safetensors(&tmp.path().join("bad.safetensors"), &refs, None).unwrap();
    fails_with(
        &import(
            tmp.path(),
            "resnet",
            &tmp.path().join("bad.safetensors"),
            "bad",
        ),
        "tensor layer2.0.conv1.weight has shape [8, 12, 1, 3], the model expects [8, 4, 3, 3]",
    );
}

/// `root/<class>/*.png` of `n` noisy w×h RGB images per class, each class tinted its own colour.
fn write_image_folder(root: &Path, classes: &[(&str, [u8; 3])], n: usize) {
    let mut state = 12345u32;
    let mut noise = move || {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (state >> 24) as u8 / 4
    };
    for (name, tint) in classes {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..n {
            let img = image::RgbImage::from_fn(20, 24, |_, _| {
                image::Rgb(tint.map(|c| c.saturating_add(noise())))
            });
            img.save(dir.join(format!("{i}.png"))).unwrap();
        }
    }
}

#[test]
fn a_resnet_trains_on_an_image_folder_and_bad_folders_name_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("shapes");
    write_image_folder(
        &root,
        &[("blue", [20, 40, 180]), ("red", [180, 30, 20])],
        12,
    );
    let data = format!("data.path={}", root.display());
    let args = |name: &'static str, data: &str| {
        let mut v: Vec<String> = [
            "model.arch=resnet",
            "data.kind=image_folder",
            "resnet.in_channels=3",
            "resnet.image_size=[16, 16]",
            "resnet.width=4",
            "resnet.layers=[1, 1, 1, 1]",
            "resnet.classes=2",
            "data.val_fraction=0.25",
            "train.batch_size=6",
            "train.epochs=4",
            "optim.lr=0.01",
            "data.augment_padding=2",
            "data.augment_flip=true",
        ]
        .map(String::from)
        .to_vec();
        v.push(data.to_string());
        v.push(format!("run.name={name}"));
        v
    };
    let run = |name: &'static str, data: &str| {
        let config = repo().join("configs/mnist-cnn.toml");
        let mut cmd = vec![
            "train".to_string(),
            "--config".into(),
            config.display().to_string(),
        ];
        for s in args(name, data) {
            cmd.extend(["--set".to_string(), s]);
        }
        let refs: Vec<&str> = cmd.iter().map(String::as_str).collect();
        largo(tmp.path(), &refs)
    };
    let out = ok(&run("folder", &data));
    assert!(out.contains("best val_accuracy"), "{out}");
    let m = std::fs::read_to_string(tmp.path().join("runs/folder/metrics.jsonl")).unwrap();
    let best = m
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "val")
        .map(|v| v["val_accuracy"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert!(
        best >= 5.0 / 6.0,
        "best validation accuracy {best} on 6 images"
    );
    let (model, _, _) = load_classifier(&tmp.path().join("runs/folder/best")).unwrap();
    assert_eq!(model.input(), [3, 16, 16]);
    // eval reads the class folders too: the recorded split gives the same 6 validation images.
    let out = ok(&largo(
        tmp.path(),
        &[
            "eval",
            "--model",
            "runs/folder",
            "--data",
            root.to_str().unwrap(),
            "--split",
            "val",
            "--json",
        ],
    ));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["samples"], 6, "{out}");

    // An empty class folder and an unreadable image are errors naming them.
    std::fs::create_dir_all(root.join("green")).unwrap();
    fails_with(
        &run("empty", &data),
        "green: class folder without images (.png, .jpg or .jpeg)",
    );
    std::fs::remove_dir(root.join("green")).unwrap();
    std::fs::write(root.join("red/broken.png"), b"not a png").unwrap();
    fails_with(&run("broken", &data), "broken.png: cannot decode image");
}

#[test]
fn bench_cnn_reports_training_and_inference_speed_and_names_bad_cases() {
    let root = repo();
    let out = largo(
        &root,
        &[
            "bench",
            "cnn",
            "--case",
            "mnist_net",
            "--cnn-seconds",
            "0.1",
        ],
    );
    let text = ok(&out);
    let line = text
        .lines()
        .find(|l| l.starts_with("largo cnn mnist_net: train "))
        .unwrap_or_else(|| panic!("no mnist_net line in:\n{text}"));
    let number_after = |label: &str| -> f64 {
        line.split(label)
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no number after {label:?} in {line:?}"))
    };
    assert!(number_after("train ") > 0.0, "{line}");
    assert!(number_after("inference ") > 0.0, "{line}");
    assert!(
        line.contains("batch 64, 1×28×28") && line.contains("peak RSS"),
        "{line}"
    );
    let out = largo(&root, &["bench", "cnn", "--case", "vgg16"]);
    fails_with(
        &out,
        "no CNN benchmark case 'vgg16': expected one of mnist_net, resnet18_32, resnet18_224",
    );
}
