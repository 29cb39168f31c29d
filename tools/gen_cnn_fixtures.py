"""Generate PyTorch reference fixtures for largo's convolution, batch-norm and pooling kernels.

Writes
    crates/largo/tests/fixtures/cnn/conv.safetensors       (conv2d forward and backward)
    crates/largo/tests/fixtures/cnn/batchnorm.safetensors  (batch_norm2d train and eval)
    crates/largo/tests/fixtures/cnn/pool.safetensors       (max, avg and adaptive avg pools)
    crates/largo/tests/fixtures/cnn/models.safetensors     (a tiny CNN and two tiny ResNets:
        parameters, a training step's logits, every gradient, the running statistics after it,
        and the eval-mode logits after that)
    crates/largo/tests/fixtures/cnn/tiny_resnet.pth        (torch.save of a narrow torchvision
        ResNet's state_dict, BasicBlock [1, 1, 1, 1], width 4, 10 classes)
    crates/largo/tests/fixtures/cnn/tiny_resnet_io.safetensors (its input images and eval logits)
    crates/largo/tests/fixtures/cnn/resnet_names.json      (state_dict names and shapes of
        torchvision's resnet18, resnet34 and resnet50)

torchvision is needed for the ResNets (`pip install torchvision`).

Run from the repository root:
    python3 tools/gen_cnn_fixtures.py

Inputs are drawn in float32; references are computed in float64 from those exact values and
stored as F32 (max-pool indices as I64). `<case>.d<name>` is the gradient of `<case>.<name>`
from `y.backward(<case>.dy)`, dy a random upstream gradient. The hyper-parameters of each case
(stride, padding, …) are written next to the case in the Rust tests; keep both in step.
"""
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from gen_fixtures import randn, save_safetensors

OUT = Path("crates/largo/tests/fixtures/cnn")
f64 = torch.float64


def record(fx, prefix, inputs, y, extra=None):
    """Backprop a random dy through y; store inputs, y, dy and the inputs' gradients."""
    dy = randn(*y.shape).detach()
    y.backward(dy)
    fx[f"{prefix}.y"] = y
    fx[f"{prefix}.dy"] = dy
    for name, t in inputs.items():
        if t is None:
            continue
        fx[f"{prefix}.{name}"] = t
        if t.requires_grad:
            fx[f"{prefix}.d{name}"] = t.grad
    for name, t in (extra or {}).items():
        fx[f"{prefix}.{name}"] = t


def conv():
    fx = {}
    # (case, N, C_in, H, W, C_out, kernel, stride, padding, dilation, groups, bias)
    cases = [
        ("basic", 2, 3, 7, 9, 4, (3, 3), (1, 1), (1, 1), (1, 1), 1, True),
        ("stride2", 2, 3, 7, 9, 5, (3, 2), (2, 2), (0, 1), (1, 1), 1, True),
        ("dilation2", 1, 2, 9, 7, 3, (3, 3), (1, 1), (2, 2), (2, 2), 1, True),
        ("groups2", 2, 4, 7, 9, 6, (3, 3), (2, 2), (1, 1), (1, 1), 2, True),
        ("depthwise", 2, 4, 7, 9, 8, (3, 3), (1, 1), (1, 1), (1, 1), 4, False),
        ("pointwise", 2, 3, 5, 6, 4, (1, 1), (1, 1), (0, 0), (1, 1), 1, True),
        ("mixed", 3, 6, 11, 10, 4, (5, 3), (2, 1), (2, 0), (1, 2), 2, True),
    ]
    for name, n, cin, h, w, cout, k, s, p, d, g, bias in cases:
        x = randn(n, cin, h, w)
        weight = randn(cout, cin // g, *k, scale=0.5)
        b = randn(cout) if bias else None
        y = F.conv2d(x, weight, b, stride=s, padding=p, dilation=d, groups=g)
        record(fx, f"conv.{name}", {"x": x, "weight": weight, "bias": b}, y)
    return fx


def batchnorm():
    fx = {}
    n, c, h, w = 3, 4, 5, 6
    for name, momentum in [("train", 0.1), ("train_cma", None)]:
        x = randn(n, c, h, w, scale=2.0)
        with torch.no_grad():
            x += torch.arange(c, dtype=f64).view(1, c, 1, 1)  # a different mean per channel
        weight = (1 + 0.2 * torch.randn(c)).to(torch.float32).to(f64).requires_grad_()
        bias = randn(c)
        rm = randn(c).detach()
        rv = (0.5 + torch.rand(c)).to(torch.float32).to(f64)
        running_mean, running_var = rm.clone(), rv.clone()
        # PyTorch's cumulative moving average (momentum=None) divides by num_batches_tracked,
        # which the module increments first: the fixture's module has seen 2 batches before.
        tracked = torch.tensor(2, dtype=torch.int64)
        if momentum is None:
            tracked += 1
            factor = 1.0 / float(tracked)
        else:
            factor = momentum
        y = F.batch_norm(x, running_mean, running_var, weight, bias, True, factor, 1e-5)
        record(
            fx,
            f"bn.{name}",
            {"x": x, "weight": weight, "bias": bias},
            y,
            {
                "running_mean_in": rm,
                "running_var_in": rv,
                "running_mean": running_mean,
                "running_var": running_var,
            },
        )
    x = randn(n, c, h, w, scale=2.0)
    weight = (1 + 0.2 * torch.randn(c)).to(torch.float32).to(f64).requires_grad_()
    bias = randn(c)
    rm = randn(c).detach()
    rv = (0.5 + torch.rand(c)).to(torch.float32).to(f64)
    y = F.batch_norm(x, rm, rv, weight, bias, False, 0.1, 1e-5)
    record(
        fx,
        "bn.eval",
        {"x": x, "weight": weight, "bias": bias},
        y,
        {"running_mean": rm, "running_var": rv},
    )
    return fx


def pool():
    fx = {}
    # (case, N, C, H, W, kernel, stride, padding)
    for name, n, c, h, w, k, s, p in [
        ("k3s2p1", 2, 3, 7, 9, (3, 3), (2, 2), (1, 1)),
        ("k2s2", 2, 3, 7, 9, (2, 2), (2, 2), (0, 0)),
        ("k3x2s1", 1, 2, 6, 5, (3, 2), (1, 2), (1, 0)),
    ]:
        x = randn(n, c, h, w)
        y, idx = F.max_pool2d(x, k, s, p, return_indices=True)
        record(fx, f"maxpool.{name}", {"x": x}, y, {"indices": idx})
        x = randn(n, c, h, w)
        y = F.avg_pool2d(x, k, s, p, count_include_pad=True)
        record(fx, f"avgpool.{name}", {"x": x}, y)
    # (case, output size) on a 2×3×7×9 input
    for name, out in [("3x4", (3, 4)), ("1x1", (1, 1)), ("5x7", (5, 7)), ("8x10", (8, 10))]:
        x = randn(2, 3, 7, 9)
        y = F.adaptive_avg_pool2d(x, out)
        record(fx, f"adaptive.{name}", {"x": x}, y)
    return fx


def narrow_resnet(block, layers, width, num_classes, in_channels=3):
    """torchvision's ResNet with `width` channels in the stem and layer1 instead of 64 (layer k
    has width·2^(k-1) planes): the same modules, names and forward, built by its `_make_layer`."""
    from torchvision.models.resnet import ResNet

    class NarrowResNet(ResNet):
        def __init__(self):
            torch.nn.Module.__init__(self)
            self._norm_layer = torch.nn.BatchNorm2d
            self.inplanes, self.dilation, self.groups, self.base_width = width, 1, 1, 64
            self.conv1 = torch.nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
            self.bn1 = torch.nn.BatchNorm2d(width)
            self.relu = torch.nn.ReLU(inplace=True)
            self.maxpool = torch.nn.MaxPool2d(3, 2, 1)
            self.layer1 = self._make_layer(block, width, layers[0])
            self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
            self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
            self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
            self.avgpool = torch.nn.AdaptiveAvgPool2d((1, 1))
            self.fc = torch.nn.Linear(width * 8 * block.expansion, num_classes)

    return NarrowResNet()


def randomize_bn(model):
    """Batch norms with non-trivial affine parameters and running statistics."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(1 + 0.2 * torch.randn_like(m.weight))
                m.bias.copy_(0.1 * torch.randn_like(m.bias))
                m.running_mean.copy_(0.1 * torch.randn_like(m.running_mean))
                m.running_var.copy_(0.5 + torch.rand_like(m.running_var))
                m.num_batches_tracked.fill_(3)


def f32_params(model):
    """Round every float tensor to float32 (what largo holds), then compute in float64."""
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if t.is_floating_point():
                t.copy_(t.to(torch.float32).to(f64))


def model_case(fx, prefix, model, x):
    """One training step's forward and backward, then an eval forward, of `model` on x."""
    model = model.to(f64)
    f32_params(model)
    for name, t in model.state_dict().items():
        fx[f"{prefix}.init.{name}"] = t.clone()
    x = x.to(torch.float32).to(f64).requires_grad_()
    model.train()
    logits = model(x)
    dlogits = randn(*logits.shape).detach()
    logits.backward(dlogits)
    fx[f"{prefix}.x"] = x.detach()
    fx[f"{prefix}.dx"] = x.grad
    fx[f"{prefix}.logits"] = logits.detach()
    fx[f"{prefix}.dlogits"] = dlogits
    for name, p in model.named_parameters():
        fx[f"{prefix}.grad.{name}"] = p.grad
    for name, b in model.named_buffers():
        fx[f"{prefix}.after.{name}"] = b.clone()
    model.eval()
    with torch.no_grad():
        fx[f"{prefix}.eval_logits"] = model(x)


class MnistNet(torch.nn.Module):
    """PyTorch's MNIST example net, shrunk: conv(2→3, 3) relu conv(3→4, 2) relu maxpool 2
    flatten fc(36→5) relu fc(5→3); no dropout (its masks are largo's own)."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(2, 3, 3)
        self.conv2 = torch.nn.Conv2d(3, 4, 2)
        self.fc1 = torch.nn.Linear(36, 5)
        self.fc2 = torch.nn.Linear(5, 3)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = torch.flatten(x, 1)
        return self.fc2(F.relu(self.fc1(x)))


def models():
    from torchvision.models.resnet import BasicBlock, Bottleneck

    fx = {}
    # 9×9 → conv 3 → 7×7 → conv 2 → 6×6 → pool → 3×3; 4·3·3 = 36 features
    model_case(fx, "cnn", MnistNet(), torch.randn(3, 2, 9, 9))
    basic = narrow_resnet(BasicBlock, [1, 1, 1, 1], 2, 3)
    randomize_bn(basic)
    model_case(fx, "basic", basic, torch.randn(3, 3, 16, 16))
    bottleneck = narrow_resnet(Bottleneck, [1, 1, 1, 1], 1, 3, in_channels=1)
    randomize_bn(bottleneck)
    model_case(fx, "bottleneck", bottleneck, torch.randn(3, 1, 16, 16))
    return fx


def resnet_import():
    """A narrow torchvision ResNet saved as torch.save writes it, and its logits on 2 images."""
    from torchvision.models.resnet import BasicBlock

    model = narrow_resnet(BasicBlock, [1, 1, 1, 1], 4, 10)
    randomize_bn(model)
    model.eval()
    torch.save(model.state_dict(), OUT / "tiny_resnet.pth")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        logits = model.to(f64)(x.to(f64))
    save_safetensors(OUT / "tiny_resnet_io.safetensors", {"x": x, "logits": logits})


def resnet_names():
    """name → shape of every state_dict entry of torchvision's resnet18/34/50."""
    import torchvision

    out = {}
    for depth in (18, 34, 50):
        model = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        out[f"resnet{depth}"] = {n: list(t.shape) for n, t in model.state_dict().items()}
    (OUT / "resnet_names.json").write_text(json.dumps(out, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    torch.manual_seed(22)
    save_safetensors(OUT / "conv.safetensors", conv())
    save_safetensors(OUT / "batchnorm.safetensors", batchnorm())
    save_safetensors(OUT / "pool.safetensors", pool())
    torch.manual_seed(222)
    save_safetensors(OUT / "models.safetensors", models())
    resnet_import()
    resnet_names()
