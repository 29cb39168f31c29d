#!/usr/bin/env python3
"""PyTorch's side of `largo bench cnn`: training samples/s and inference images/s of PyTorch's
MNIST example net (batch 64, 1x28x28) and torchvision's ResNet-18 at 32x32 (10 classes) and
224x224 (1000 classes), batch 16, random data, f32, on the CPU with a fixed thread count.

Each case: warm-up steps, then timed steps (SGD with momentum 0.9, as `largo bench cnn`
trains); inference in eval mode under torch.inference_mode. One JSON object per case on stdout,
with the process's peak RSS after the case (ru_maxrss; cases run in separate processes with
--case so each RSS is its own).

Usage: tools/bench_cnn.py [--threads 2] [--seconds 10] [--case mnist_net|resnet18_32|resnet18_224]
Needs: torch, torchvision.
"""
import argparse
import json
import resource
import subprocess
import sys
import time

CASES = {
    # name: (batch, channels, side, classes)
    "mnist_net": (64, 1, 28, 10),
    "resnet18_32": (16, 3, 32, 10),
    "resnet18_224": (16, 3, 224, 1000),
}


def mnist_net(torch):
    nn = torch.nn

    class Net(nn.Module):
        """pytorch/examples mnist/main.py's Net."""

        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 32, 3, 1)
            self.conv2 = nn.Conv2d(32, 64, 3, 1)
            self.dropout1 = nn.Dropout(0.25)
            self.dropout2 = nn.Dropout(0.5)
            self.fc1 = nn.Linear(9216, 128)
            self.fc2 = nn.Linear(128, 10)

        def forward(self, x):
            x = torch.relu(self.conv1(x))
            x = torch.relu(self.conv2(x))
            x = torch.nn.functional.max_pool2d(x, 2)
            x = self.dropout1(x)
            x = torch.flatten(x, 1)
            x = torch.relu(self.fc1(x))
            x = self.dropout2(x)
            return self.fc2(x)

    return Net()


def run_case(name, threads, seconds):
    import torch
    import torchvision

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    batch, channels, side, classes = CASES[name]
    if name == "mnist_net":
        model = mnist_net(torch)
    else:
        model = torchvision.models.resnet18(weights=None, num_classes=classes)
    x = torch.randn(batch, channels, side, side)
    y = torch.randint(0, classes, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    def timed(step):
        for _ in range(2):
            step()
        steps, start = 0, time.perf_counter()
        while True:
            step()
            steps += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds and steps >= 3:
                return steps * batch / elapsed

    model.train()
    train = timed(train_step)
    model.eval()
    with torch.inference_mode():
        infer = timed(lambda: model(x))
    return {
        "case": name,
        "batch": batch,
        "input": [channels, side, side],
        "train_samples_per_s": round(train, 1),
        "infer_images_per_s": round(infer, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "threads": threads,
        "torch": torch.__version__,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--case", choices=sorted(CASES))
    a = ap.parse_args()
    if a.case:
        print(json.dumps(run_case(a.case, a.threads, a.seconds)), flush=True)
        return
    for name in CASES:
        out = subprocess.run(
            [sys.executable, __file__, "--case", name, "--threads", str(a.threads),
             "--seconds", str(a.seconds)],
            check=True, capture_output=True, text=True,
        )
        sys.stdout.write(out.stdout)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
