//! Compares an image classifier's logits with reference ones, e.g. a torchvision ResNet imported
//! with `largo import` against PyTorch's (`tools/check_torchvision_resnet.py` writes both):
//! `cargo run --release -p largo --example classifier_logits MODEL_DIR IO.safetensors`, where
//! the safetensors file holds `x` [N, C, H, W] and PyTorch's `logits` [N, classes].
use largo::io::TensorFile;
use largo::models::store::load_classifier;
use largo::nn::Forward;
use std::path::Path;

fn main() -> largo::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, io] = args.as_slice() else {
        eprintln!("usage: classifier_logits MODEL_DIR IO.safetensors");
        std::process::exit(2);
    };
    let (mut model, _, _) = load_classifier(Path::new(dir))?;
    let io = TensorFile::load(Path::new(io))?;
    let x = io.get("x")?;
    let want = io.get("logits")?;
    let logits = model.forward(&x.data, Forward::eval(x.shape[0], 1))?;
    let worst = logits
        .iter()
        .zip(&want.data)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!(
        "{} images, {} logits: largest difference from the reference {worst:.2e}",
        x.shape[0],
        logits.len()
    );
    Ok(())
}
