"""A torchvision ResNet into largo and back, checked by PyTorch (the proof of issue 22's import
and export, at full size; CI runs the narrow version, crates/largo-cli/tests/cnn.rs).

    python3 tools/check_torchvision_resnet.py [resnet18|resnet34|resnet50] [WORKDIR]

Builds torchvision's model (weights=None, 10 classes; three training batches give its batch
norms non-trivial running statistics), saves it with torch.save, runs `largo import`, compares
largo's logits on four 32×32 images with PyTorch's (examples/classifier_logits.rs), runs
`largo export` and loads the result into a fresh torchvision model with strict=True.
"""
import json
import subprocess
import sys
from pathlib import Path

import torch
import torchvision
from safetensors.torch import load_file, save_file

arch = sys.argv[1] if len(sys.argv) > 1 else "resnet18"
work = Path(sys.argv[2] if len(sys.argv) > 2 else f"/tmp/check-{arch}")
work.mkdir(parents=True, exist_ok=True)
largo = ["cargo", "run", "--quiet", "--release", "-p", "largo-cli", "--"]

torch.manual_seed(0)
model = getattr(torchvision.models, arch)(weights=None, num_classes=10)
model.train()
with torch.no_grad():
    for _ in range(3):
        model(torch.randn(8, 3, 32, 32))
model.eval()
torch.save(model.state_dict(), work / f"{arch}.pth")
x = torch.rand(4, 3, 32, 32)
with torch.no_grad():
    save_file({"x": x, "logits": model(x).contiguous()}, work / "io.safetensors")
(work / "config.json").write_text(json.dumps({"image_size": [32, 32]}))

model_dir = work / "largo-model"
subprocess.run(largo + ["import", "--arch", arch, "--weights", str(work / f"{arch}.pth"),
                        "--config", str(work / "config.json"), "--out", str(model_dir)], check=True)
subprocess.run(["cargo", "run", "--quiet", "--release", "-p", "largo", "--example",
                "classifier_logits", str(model_dir), str(work / "io.safetensors")], check=True)
out = work / "exported.safetensors"
subprocess.run(largo + ["export", "--model", str(model_dir), "--out", str(out)], check=True)
fresh = getattr(torchvision.models, arch)(weights=None, num_classes=10)
fresh.load_state_dict(load_file(out), strict=True)
fresh.eval()
with torch.no_grad():
    worst = (fresh(x) - model(x)).abs().max().item()
print(f"export: load_state_dict(strict=True) accepted it; logits differ from the original by {worst:.2e}")
