"""Generate PyTorch reference fixtures for largo's layer and optimiser tests.

Writes
    crates/largo/tests/fixtures/layers.safetensors  (forward/backward of each layer)
    crates/largo/tests/fixtures/optim.safetensors   (optimisers, LR schedules, grad clipping)

Run from the repository root:
    python3 tools/gen_fixtures.py

Inputs are drawn in float32; references are computed in float64 from those exact
values and stored as F32 (ids/targets as I64). A tensor named `<layer>.d<name>` is
the gradient of `<layer>.<name>` from `out.backward(<layer>.dy)` (or `loss.backward()`).
The safetensors format is written by hand (no `safetensors` package needed).
"""
import json
import struct
from pathlib import Path

import torch
import torch.nn.functional as F

OUT = Path("crates/largo/tests/fixtures")
f64 = torch.float64


def save_safetensors(path, tensors):
    """Write {name: tensor} as safetensors: u64 header length, JSON header, raw LE bytes."""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous()
        dtype, fmt = ("I64", "q") if t.dtype == torch.int64 else ("F32", "f")
        values = t.flatten().tolist()
        data = struct.pack(f"<{len(values)}{fmt}", *values)  # F32 packing rounds f64 to nearest
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    print(f"wrote {path} ({path.stat().st_size} bytes, {len(tensors)} tensors)")


def randn(*shape, scale=1.0):
    """float32 draw, returned as float64 (exactly representable in F32) leaf tensor."""
    return (scale * torch.randn(*shape)).to(torch.float32).to(f64).requires_grad_()


def layers():
    fx = {}

    def record(prefix, inputs, y, dy=None):
        """Store inputs, output, dy and input gradients under `prefix.`"""
        if dy is not None:
            y.backward(dy)
            fx[f"{prefix}.dy"] = dy
        fx[f"{prefix}.y"] = y
        for name, t in inputs.items():
            fx[f"{prefix}.{name}"] = t
            if t.requires_grad:
                fx[f"{prefix}.d{name}"] = t.grad

    x, w, b = randn(4, 5), randn(3, 5), randn(3)
    record("linear", {"x": x, "weight": w, "bias": b}, F.linear(x, w, b), randn(4, 3).detach())

    x = randn(4, 6)
    record("relu", {"x": x}, F.relu(x), randn(4, 6).detach())
    x = randn(4, 6, scale=3.0)
    record("gelu_tanh", {"x": x}, F.gelu(x, approximate="tanh"), randn(4, 6).detach())
    x = randn(4, 6, scale=3.0)
    record("gelu_erf", {"x": x}, F.gelu(x), randn(4, 6).detach())

    x, b = randn(4, 8), randn(8)
    w = (1 + 0.1 * torch.randn(8)).to(torch.float32).to(f64).requires_grad_()
    y = F.layer_norm(x, (8,), w, b, eps=1e-5)
    record("layernorm", {"x": x, "weight": w, "bias": b}, y, randn(4, 8).detach())

    w = randn(10, 4)
    ids = torch.randint(0, 10, (2, 3))
    ids[1, 2] = ids[0, 0]  # repeated id: gradient rows must accumulate
    record("embedding", {"weight": w, "ids": ids}, F.embedding(ids, w), randn(2, 3, 4).detach())

    logits = randn(6, 5, scale=2.0)
    targets = torch.randint(0, 5, (6,))
    targets[2] = -100
    for prefix, smoothing in [("xent", 0.1), ("xent_plain", 0.0)]:
        lg = logits.detach().clone().requires_grad_()
        loss = F.cross_entropy(lg, targets, ignore_index=-100, label_smoothing=smoothing)
        loss.backward()
        fx.update({f"{prefix}.logits": lg, f"{prefix}.targets": targets,
                   f"{prefix}.loss": loss.reshape(1), f"{prefix}.dlogits": lg.grad})

    x, targets = randn(4, 6).detach(), torch.randint(0, 3, (4,))
    params = {"fc1.weight": randn(5, 6), "fc1.bias": randn(5), "fc2.weight": randn(3, 5), "fc2.bias": randn(3)}
    h = F.relu(F.linear(x, params["fc1.weight"], params["fc1.bias"]))
    logits = F.linear(h, params["fc2.weight"], params["fc2.bias"])
    loss = F.cross_entropy(logits, targets)
    loss.backward()
    fx.update({"mlp.x": x, "mlp.targets": targets, "mlp.logits": logits, "mlp.loss": loss.reshape(1)})
    for name, p in params.items():
        fx[f"mlp.{name}"] = p
        fx[f"mlp.grad.{name}"] = p.grad
    return fx


def optim():
    fx = {}
    init = {"p0": randn(5, 3).detach(), "p1": randn(3).detach()}
    grads = [{"p0": randn(5, 3).detach(), "p1": randn(3).detach()} for _ in range(5)]
    for name, t in init.items():
        fx[f"init.{name}"] = t
    for t, g in enumerate(grads):
        for name, v in g.items():
            fx[f"grad.{t}.{name}"] = v

    configs = {
        "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1),
        "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01),
        "sgd_nesterov": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
        "adamw": lambda ps: torch.optim.AdamW(ps, lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1),
    }
    for cfg, make in configs.items():
        ps = {name: t.clone().requires_grad_() for name, t in init.items()}
        opt = make(list(ps.values()))
        for t, g in enumerate(grads):
            for name, p in ps.items():
                p.grad = g[name].clone()
            opt.step()
            for name, p in ps.items():
                fx[f"{cfg}.{t}.{name}"] = p.detach().clone()

    schedules = {
        "step": lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5),
        "cosine": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=12, eta_min=0.1),
        "linear": lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=1.0, end_factor=0.0, total_iters=12),
    }
    for name, make in schedules.items():
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        sched, lrs = make(opt), []
        for _ in range(12):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        fx[f"sched.{name}"] = torch.tensor(lrs, dtype=f64)

    g0, g1 = randn(4, 3, scale=3.0).detach(), randn(5, scale=3.0).detach()
    p0, p1 = torch.zeros(4, 3, dtype=f64), torch.zeros(5, dtype=f64)
    p0.grad, p1.grad = g0.clone(), g1.clone()
    total = torch.nn.utils.clip_grad_norm_([p0, p1], max_norm=1.0)
    fx.update({"clip.g0": g0, "clip.g1": g1, "clip.out.g0": p0.grad, "clip.out.g1": p1.grad,
               "clip.total_norm": total.reshape(1)})
    return fx


if __name__ == "__main__":
    torch.manual_seed(0)
    save_safetensors(OUT / "layers.safetensors", layers())
    save_safetensors(OUT / "optim.safetensors", optim())
