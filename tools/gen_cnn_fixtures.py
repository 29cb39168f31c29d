"""Generate PyTorch reference fixtures for largo's convolution, batch-norm and pooling kernels.

Writes
    crates/largo/tests/fixtures/cnn/conv.safetensors       (conv2d forward and backward)
    crates/largo/tests/fixtures/cnn/batchnorm.safetensors  (batch_norm2d train and eval)
    crates/largo/tests/fixtures/cnn/pool.safetensors       (max, avg and adaptive avg pools)

Run from the repository root:
    python3 tools/gen_cnn_fixtures.py

Inputs are drawn in float32; references are computed in float64 from those exact values and
stored as F32 (max-pool indices as I64). `<case>.d<name>` is the gradient of `<case>.<name>`
from `y.backward(<case>.dy)`, dy a random upstream gradient. The hyper-parameters of each case
(stride, padding, …) are written next to the case in the Rust tests; keep both in step.
"""
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


if __name__ == "__main__":
    torch.manual_seed(22)
    save_safetensors(OUT / "conv.safetensors", conv())
    save_safetensors(OUT / "batchnorm.safetensors", batchnorm())
    save_safetensors(OUT / "pool.safetensors", pool())
