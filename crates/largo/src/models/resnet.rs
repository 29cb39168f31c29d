//! ResNet ("Deep Residual Learning for Image Recognition"), as torchvision builds it:
//!
//! ```text
//! conv1 (7×7, stride 2) → bn1 → ReLU → max-pool (3×3, stride 2)
//!   → layer1 … layer4 (residual blocks; layers 2–4 halve the size) → global average pool
//!   → flatten → fc
//! ```
//!
//! A BasicBlock is conv3×3 → bn → ReLU → conv3×3 → bn, plus the shortcut, then ReLU; a
//! Bottleneck is 1×1 → 3×3 (the stride) → 1×1 (×4 channels). The shortcut is the input, or
//! `downsample` (1×1 conv with the stride → bn) where the shape changes. Names are
//! torchvision's `state_dict`: `conv1.weight`, `bn1.running_mean`, `layer1.0.conv1.weight`,
//! `layer2.0.downsample.0.weight`, `fc.weight`, … with every batch norm's
//! `num_batches_tracked`.

use super::classifier::ImageClassifier;
use crate::backend::{add_relu_forward, relu_backward, relu_backward_in_place, Nchw};
use crate::nn::{
    params, AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Conv2dOptions, Forward, Linear, MaxPool2d,
    Module,
};
use crate::rng::Rng;
use crate::tensor::ensure_len;
use crate::{bail, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockKind {
    /// Two 3×3 convolutions (ResNet-18, -34).
    Basic,
    /// 1×1, 3×3, 1×1 with 4× wider output (ResNet-50 and deeper).
    Bottleneck,
}

impl BlockKind {
    /// Output channels per `planes`.
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResNetConfig {
    pub block: BlockKind,
    /// Residual blocks in layer1 … layer4.
    pub layers: [usize; 4],
    /// Channels of the stem and of layer1's `planes` (torchvision: 64); layer k has
    /// width·2^(k−1) planes.
    pub width: usize,
    /// Channels of an input image (3 for RGB, 1 for grey).
    pub in_channels: usize,
    /// Height and width of the input images the data gives.
    pub image_size: [usize; 2],
    pub classes: usize,
}

impl Default for ResNetConfig {
    /// torchvision's `resnet18()`: 1000 classes of 224×224 RGB images.
    fn default() -> Self {
        ResNetConfig::depth(18, 1000).expect("18 is a depth")
    }
}

impl ResNetConfig {
    /// torchvision's resnet18, resnet34 or resnet50, for 224×224 RGB images by default.
    pub fn depth(depth: usize, classes: usize) -> Result<Self> {
        let (block, layers) = match depth {
            18 => (BlockKind::Basic, [2, 2, 2, 2]),
            34 => (BlockKind::Basic, [3, 4, 6, 3]),
            50 => (BlockKind::Bottleneck, [3, 4, 6, 3]),
            _ => bail!("ResNet depth {depth}: expected 18, 34 or 50"),
        };
        Ok(ResNetConfig {
            block,
            layers,
            width: 64,
            in_channels: 3,
            image_size: [224, 224],
            classes,
        })
    }

    pub fn validate(&self) -> Result<()> {
        if self.layers.contains(&0)
            || self.width == 0
            || self.in_channels == 0
            || self.image_size.contains(&0)
            || self.classes < 2
        {
            bail!("resnet: block counts, width, in_channels and image_size must be ≥ 1 and classes ≥ 2, got {self:?}");
        }
        Ok(())
    }

    /// Channels of the features the head sees.
    pub fn features(&self) -> usize {
        self.width * 8 * self.block.expansion()
    }
}

/// A convolution and the batch norm after it (no bias: the norm has one). Not a torchvision
/// module: its two layers are named by the module that holds them (`conv1`, `bn1`).
#[derive(Clone, Debug)]
struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm2d,
    input: Nchw,
    output: Nchw,
    /// The convolution's output (the norm's input) and the norm's output (after the ReLU, in
    /// place, for stages a ReLU follows).
    conv_out: Vec<f32>,
    out: Vec<f32>,
}

impl ConvBn {
    fn new(
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let options = Conv2dOptions {
            stride: [stride; 2],
            padding: [padding; 2],
            bias: false,
            ..Conv2dOptions::default()
        };
        Ok(ConvBn {
            conv: Conv2d::new(c_in, c_out, [kernel; 2], options)?,
            bn: BatchNorm2d::new(c_out),
            input: Nchw::new(0, 0, 0, 0),
            output: Nchw::new(0, 0, 0, 0),
            conv_out: Vec::new(),
            out: Vec::new(),
        })
    }

    /// torchvision's init: conv weights normal with std √(2/fan_out) (kaiming, ReLU); the
    /// norm's weight 1 and bias 0 (as built).
    fn init(&mut self, rng: &mut Rng) {
        let [kh, kw] = self.conv.kernel;
        let fan_out = self.conv.out_channels * kh * kw;
        let std = (2.0 / fan_out as f32).sqrt();
        for v in self.conv.weight_mut().value.data.iter_mut() {
            *v = rng.normal() * std;
        }
    }

    /// x: `input` → `self.out` (ReLU'd in place when `relu`), the returned shape.
    fn forward(&mut self, x: &[f32], input: Nchw, train: bool, relu: bool) -> Result<Nchw> {
        let mut out = std::mem::take(&mut self.out);
        let result = self.forward_into(x, input, train, relu, &mut out);
        self.out = out;
        result
    }

    /// `forward` into a buffer of the caller's instead of `self.out`.
    fn forward_into(
        &mut self,
        x: &[f32],
        input: Nchw,
        train: bool,
        relu: bool,
        out: &mut Vec<f32>,
    ) -> Result<Nchw> {
        let output = self.conv.output_shape(input)?;
        ensure_len(&mut self.conv_out, output.len());
        self.conv.forward(x, input, &mut self.conv_out)?;
        ensure_len(out, output.len());
        self.bn
            .forward_then(&self.conv_out, output, train, relu, out)?;
        (self.input, self.output) = (input, output);
        Ok(output)
    }

    /// `x`: the last forward's input; dy: the gradient of the norm's output (through the ReLU
    /// already); `d_conv_out`: scratch.
    fn backward(
        &mut self,
        x: &[f32],
        dy: &[f32],
        dx: Option<&mut [f32]>,
        d_conv_out: &mut Vec<f32>,
    ) -> Result<()> {
        ensure_len(d_conv_out, self.output.len());
        self.bn
            .backward(&self.conv_out, self.output, dy, d_conv_out)?;
        self.conv.backward(x, self.input, d_conv_out, dx)
    }
}

impl ConvBn {
    /// `backward` with dy in `d`, overwritten by the norm's input gradient on the way.
    fn backward_in_place(
        &mut self,
        x: &[f32],
        d: &mut [f32],
        dx: Option<&mut [f32]>,
    ) -> Result<()> {
        self.bn.backward_in_place(&self.conv_out, self.output, d)?;
        self.conv.backward(x, self.input, d, dx)
    }
}

/// Backward's gradient buffers: one set for the whole network, since each is live only inside
/// one block's backward (per-block and per-layer copies held about a tensor per convolution).
#[derive(Default, Debug, Clone)]
struct Scratch {
    d_a: Vec<f32>,
    d_b: Vec<f32>,
    d_shortcut: Vec<f32>,
    d_conv_out: Vec<f32>,
}

/// A BasicBlock (two stages) or a Bottleneck (three), with its shortcut. Its input is not
/// copied: the caller passes it to forward and again to backward (the previous block's `out`).
#[derive(Clone, Debug)]
pub struct ResidualBlock {
    /// conv1/bn1, conv2/bn2[, conv3/bn3]; a ReLU (in place) after each but the last.
    stages: Vec<ConvBn>,
    downsample: Option<ConvBn>,
    input: Nchw,
    /// ReLU(the last stage's output + the shortcut).
    out: Vec<f32>,
}

impl ResidualBlock {
    /// torchvision's block of `kind` from `c_in` channels with `planes` (its output:
    /// planes·expansion) and the stride of its first spatial convolution.
    fn new(kind: BlockKind, c_in: usize, planes: usize, stride: usize) -> Result<Self> {
        let c_out = planes * kind.expansion();
        let stages = match kind {
            BlockKind::Basic => vec![
                ConvBn::new(c_in, planes, 3, stride, 1)?,
                ConvBn::new(planes, planes, 3, 1, 1)?,
            ],
            BlockKind::Bottleneck => vec![
                ConvBn::new(c_in, planes, 1, 1, 0)?,
                ConvBn::new(planes, planes, 3, stride, 1)?,
                ConvBn::new(planes, c_out, 1, 1, 0)?,
            ],
        };
        let downsample = if stride != 1 || c_in != c_out {
            Some(ConvBn::new(c_in, c_out, 1, stride, 0)?)
        } else {
            None
        };
        Ok(ResidualBlock {
            stages,
            downsample,
            input: Nchw::new(0, 0, 0, 0),
            out: Vec::new(),
        })
    }

    /// x: `input` → `self.out`, the returned shape.
    fn forward(&mut self, x: &[f32], input: Nchw, train: bool) -> Result<Nchw> {
        self.input = input;
        let x = &x[..input.len()];
        let last = self.stages.len() - 1;
        let mut shape = input;
        for k in 0..=last {
            let (before, after) = self.stages.split_at_mut(k);
            let stage_in: &[f32] = if k == 0 { x } else { &before[k - 1].out };
            shape = after[0].forward(stage_in, shape, train, k < last)?;
        }
        let shortcut: &[f32] = match &mut self.downsample {
            Some(ds) => {
                ds.forward(x, input, train, false)?;
                &ds.out
            }
            None => x,
        };
        if shortcut.len() != shape.len() {
            bail!(
                "resnet block: the shortcut has {} values, the residual {}",
                shortcut.len(),
                shape.len()
            );
        }
        ensure_len(&mut self.out, shape.len());
        add_relu_forward(&self.stages[last].out, shortcut, &mut self.out);
        Ok(shape)
    }

    /// x: the last forward's input; dy: the gradient of `out`; writes the input's gradient into
    /// dx (`input`'s length).
    fn backward(&mut self, x: &[f32], dy: &[f32], dx: &mut [f32], s: &mut Scratch) -> Result<()> {
        let x = &x[..self.input.len()];
        let last = self.stages.len() - 1;
        // d(sum) in d_a (ReLU(sum) > 0 exactly where sum > 0): it flows to both the last stage
        // and the shortcut.
        ensure_len(&mut s.d_a, self.out.len());
        relu_backward(&self.out, dy, &mut s.d_a);
        match &mut self.downsample {
            Some(ds) => {
                ensure_len(&mut s.d_shortcut, self.input.len());
                ds.backward(x, &s.d_a, Some(&mut s.d_shortcut), &mut s.d_conv_out)?;
            }
            None => s.d_shortcut.clone_from(&s.d_a),
        }
        for k in (1..=last).rev() {
            // d(stage k−1's output) in d_b, then through its ReLU into d_a.
            let (before, after) = self.stages.split_at_mut(k);
            let prev = &before[k - 1].out;
            ensure_len(&mut s.d_b, prev.len());
            after[0].backward(prev, &s.d_a, Some(&mut s.d_b), &mut s.d_conv_out)?;
            ensure_len(&mut s.d_a, s.d_b.len());
            relu_backward(prev, &s.d_b, &mut s.d_a);
        }
        self.stages[0].backward(x, &s.d_a, Some(&mut *dx), &mut s.d_conv_out)?;
        for (d, sc) in dx.iter_mut().zip(&s.d_shortcut) {
            *d += sc;
        }
        Ok(())
    }
}

impl Module for ResidualBlock {
    params!(Self { stages, downsample, .. }, v => {
        for (i, stage) in std::iter::zip(1.., stages) {
            let ConvBn { conv, bn, .. } = stage;
            v.child(&format!("conv{i}"), conv);
            v.child(&format!("bn{i}"), bn);
        }
        if let Some(ConvBn { conv, bn, .. }) = downsample {
            v.child("downsample.0", conv);
            v.child("downsample.1", bn);
        }
    });
}

/// Buffers of the network's own layers between forward and backward.
#[derive(Default, Debug, Clone)]
struct Activations {
    input: Option<Nchw>,
    x: Vec<f32>,
    /// The stem's output shape (its ReLU'd output is the stem's `out`, the max pool's input).
    stem_shape: Option<Nchw>,
    /// Each block's input shape; the last block's output shape.
    block_in: Vec<Nchw>,
    features_shape: Option<Nchw>,
    /// The max pool's output: the first block's input.
    pooled_stem: Vec<f32>,
    /// [N, C] after global average pooling: fc's input.
    pooled: Vec<f32>,
    logits: Vec<f32>,
    /// The gradients of consecutive blocks' outputs, and the blocks' own scratch.
    d_a: Vec<f32>,
    d_b: Vec<f32>,
    scratch: Scratch,
}

#[derive(Clone, Debug)]
pub struct ResNet {
    pub config: ResNetConfig,
    stem: ConvBn,
    maxpool: MaxPool2d,
    /// layer1 … layer4.
    pub layers: Vec<Vec<ResidualBlock>>,
    avgpool: AdaptiveAvgPool2d,
    pub fc: Linear,
    acts: Activations,
}

impl ResNet {
    pub fn new(config: ResNetConfig) -> Result<Self> {
        config.validate()?;
        let (kind, width) = (config.block, config.width);
        let mut c_in = width;
        let mut layers = Vec::new();
        for (k, &blocks) in config.layers.iter().enumerate() {
            let planes = width << k;
            let mut layer = Vec::new();
            for j in 0..blocks {
                let stride = if k > 0 && j == 0 { 2 } else { 1 };
                layer.push(ResidualBlock::new(kind, c_in, planes, stride)?);
                c_in = planes * kind.expansion();
            }
            layers.push(layer);
        }
        Ok(ResNet {
            stem: ConvBn::new(config.in_channels, width, 7, 2, 3)?,
            maxpool: MaxPool2d::new([3, 3], Some([2, 2]), [1, 1]),
            layers,
            avgpool: AdaptiveAvgPool2d::new([1, 1]),
            fc: Linear::new(config.features(), config.classes, true),
            config,
            acts: Activations::default(),
        })
    }

    /// torchvision's init: kaiming-normal convolutions (fan_out), batch norms at weight 1 and
    /// bias 0, PyTorch's default for fc.
    pub fn init(&mut self, rng: &mut Rng) {
        self.stem.init(rng);
        for block in self.layers.iter_mut().flatten() {
            for stage in block.stages.iter_mut().chain(block.downsample.as_mut()) {
                stage.init(rng);
            }
        }
        self.fc.init_pytorch(rng);
    }

    fn forward_impl(&mut self, x: &[f32], pass: Forward) -> Result<()> {
        let (n, train) = (pass.rows(), pass.train);
        let [c, h, w] = self.input();
        let input = Nchw::new(n, c, h, w);
        if x.len() < input.len() {
            bail!(
                "resnet: a batch of {n} images needs {} values, got {}",
                input.len(),
                x.len()
            );
        }
        let a = &mut self.acts;
        a.x.clear();
        a.x.extend_from_slice(&x[..input.len()]);
        a.input = Some(input);
        // stem: [N, C, H, W] → [N, width, H/2, W/2] → max pool → [N, width, H/4, W/4]
        // The stem's output, the largest activation, is needed only by the max pool: it lives
        // in the buffer backward later fills with its gradient (the ReLU's mask is taken from
        // the pooled values instead: a max pool's maximum is positive exactly where the ReLU
        // passed the input it came from).
        let s = self
            .stem
            .forward_into(&a.x, input, train, true, &mut a.d_a)?;
        a.stem_shape = Some(s);
        let mut shape = self.maxpool.output_shape(s)?;
        ensure_len(&mut a.pooled_stem, shape.len());
        self.maxpool.forward(&a.d_a, s, &mut a.pooled_stem)?;
        // layer1 … layer4: each block reads the previous one's output in place.
        a.block_in.clear();
        let mut prev: &[f32] = &a.pooled_stem;
        for block in self.layers.iter_mut().flatten() {
            a.block_in.push(shape);
            shape = block.forward(prev, shape, train)?;
            let done: &ResidualBlock = block;
            prev = &done.out;
        }
        a.features_shape = Some(shape);
        // global average pool and flatten: [N, C, h, w] → [N, C]
        let pooled = self.avgpool.output_shape(shape);
        ensure_len(&mut a.pooled, pooled.len());
        self.avgpool.forward(prev, shape, &mut a.pooled)?;
        ensure_len(&mut a.logits, n * self.config.classes);
        self.fc.forward(&a.pooled, n, &mut a.logits);
        Ok(())
    }

    fn backward_impl(&mut self, dlogits: &[f32], dx: Option<&mut [f32]>) -> Result<()> {
        let a = &mut self.acts;
        let (Some(input), Some(features), Some(stem)) = (a.input, a.features_shape, a.stem_shape)
        else {
            bail!("resnet: backward before forward");
        };
        let n = input.n;
        ensure_len(&mut a.d_a, n * self.config.features());
        self.fc.backward(
            &a.pooled,
            &dlogits[..n * self.config.classes],
            n,
            Some(&mut a.d_a),
        );
        ensure_len(&mut a.d_b, features.len());
        self.avgpool.backward(features, &a.d_a, &mut a.d_b)?;
        // d_b: the gradient of the current block's output.
        let mut blocks: Vec<&mut ResidualBlock> = self.layers.iter_mut().flatten().collect();
        for j in (0..blocks.len()).rev() {
            let (before, rest) = blocks.split_at_mut(j);
            let x: &[f32] = if j == 0 {
                &a.pooled_stem
            } else {
                &before[j - 1].out
            };
            ensure_len(&mut a.d_a, a.block_in[j].len());
            rest[0].backward(x, &a.d_b, &mut a.d_a, &mut a.scratch)?;
            std::mem::swap(&mut a.d_a, &mut a.d_b);
        }
        // The ReLU's mask from the pooled values (see forward), then the max pool; the stem's
        // gradient goes through its norm in the same buffer.
        relu_backward_in_place(&a.pooled_stem, &mut a.d_b);
        ensure_len(&mut a.d_a, stem.len());
        self.maxpool.backward(stem, &a.d_b, &mut a.d_a)?;
        self.stem.backward_in_place(&a.x, &mut a.d_a, dx)
    }
}

impl ImageClassifier for ResNet {
    fn input(&self) -> [usize; 3] {
        let [h, w] = self.config.image_size;
        [self.config.in_channels, h, w]
    }

    fn classes(&self) -> usize {
        self.config.classes
    }

    fn forward(&mut self, x: &[f32], pass: Forward) -> Result<&[f32]> {
        self.forward_impl(x, pass)?;
        Ok(&self.acts.logits)
    }

    /// Batch norm's backward follows the last forward's mode, so `train` needs no handling.
    fn backward(&mut self, dlogits: &[f32], _train: bool) -> Result<()> {
        self.backward_impl(dlogits, None)
    }

    fn input_grad(&mut self, dlogits: &[f32]) -> Result<Vec<f32>> {
        let len = self.acts.input.map_or(0, |s| s.len());
        let mut dx = vec![0.0; len];
        self.backward_impl(dlogits, Some(&mut dx))?;
        self.zero_grad();
        Ok(dx)
    }
}

impl Module for ResNet {
    params!(Self { stem, layers, fc, .. }, v => {
        let ConvBn { conv, bn, .. } = stem;
        v.child("conv1", conv);
        v.child("bn1", bn);
        for (k, layer) in std::iter::zip(1.., layers) {
            for (j, block) in std::iter::zip(0.., layer) {
                v.child(&format!("layer{k}.{j}"), block);
            }
        }
        v.child("fc", fc);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::classifier::tests::check_training_step;

    fn tiny(block: BlockKind, width: usize, in_channels: usize) -> ResNetConfig {
        ResNetConfig {
            block,
            layers: [1, 1, 1, 1],
            width,
            in_channels,
            image_size: [16, 16],
            classes: 3,
        }
    }

    #[test]
    fn basic_block_resnet_training_step_matches_pytorch() {
        let mut m = ResNet::new(tiny(BlockKind::Basic, 2, 3)).unwrap();
        // layer4's batch norms see 3 values per channel (batch 3 at 1×1): their f32 backward
        // loses digits, and the stem's weight gradient, behind all of them, is off by up to
        // 1.6e-4 of its scale (the bottleneck net holds 1e-4).
        check_training_step(&mut m, "basic", 2e-4);
    }

    #[test]
    fn bottleneck_resnet_training_step_matches_pytorch() {
        let mut m = ResNet::new(tiny(BlockKind::Bottleneck, 1, 1)).unwrap();
        check_training_step(&mut m, "bottleneck", 1e-4);
    }

    /// Every name and shape of torchvision's resnet18/34/50 `state_dict`, and nothing else.
    #[test]
    fn state_dict_names_and_shapes_are_torchvisions() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/cnn/resnet_names.json");
        let text = std::fs::read_to_string(path).unwrap();
        let all: std::collections::BTreeMap<
            String,
            std::collections::BTreeMap<String, Vec<usize>>,
        > = serde_json::from_str(&text).unwrap();
        for depth in [18, 34, 50] {
            let m = ResNet::new(ResNetConfig::depth(depth, 1000).unwrap()).unwrap();
            let mut ours: std::collections::BTreeMap<String, Vec<usize>> = m
                .params()
                .into_iter()
                .map(|(n, p)| (n, p.value.shape.clone()))
                .collect();
            ours.extend(m.buffers().into_iter().map(|(n, t)| (n, t.shape)));
            assert_eq!(ours, all[&format!("resnet{depth}")], "resnet{depth}");
        }
    }

    #[test]
    fn a_depth_other_than_18_34_50_and_a_wrong_input_are_errors() {
        let e = ResNetConfig::depth(101, 10).unwrap_err().to_string();
        assert!(e.contains("expected 18, 34 or 50"), "{e}");
        let mut m = ResNet::new(tiny(BlockKind::Basic, 2, 3)).unwrap();
        let e = m
            .forward(&[0.0; 100], Forward::eval(1, 1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs 768 values, got 100"), "{e}");
    }
}
