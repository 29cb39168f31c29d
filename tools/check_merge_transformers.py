"""Checks `largo merge`'s Hugging Face output against transformers + PEFT (not run in CI).

For each case, merges with the largo binary, then compares the logits transformers gives for
the merged directory with those of PEFT applying the same adapter (unmerged) to the Hugging
Face base. A GGUF base is compared against the Hugging Face directory it was converted from.

Run from the repository root after `cargo build --release` (torch, transformers, peft):
    python3 tools/check_merge_transformers.py [path/to/largo]
"""
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

FIX = Path("crates/largo/tests/fixtures")
LARGO = sys.argv[1] if len(sys.argv) > 1 else "target/release/largo"
# (base given to largo, its Hugging Face original, adapter)
CASES = [
    (FIX / "lora/tiny-llama", FIX / "lora/tiny-llama", FIX / "lora/all"),
    (FIX / "llama/llama-f32.gguf", FIX / "llama/llama", FIX / "lora/all"),
    (FIX / "llama/qwen2", FIX / "llama/qwen2", FIX / "lora/qwen2-attn"),
    (FIX / "llama/qwen2-f32.gguf", FIX / "llama/qwen2", FIX / "lora/qwen2-attn"),
]
IDS = torch.tensor([[1, 5, 9, 33, 17, 60, 2, 40, 8, 12]])


def logits(model):
    with torch.no_grad():
        return model(IDS).logits.double()


failed = False
for base, hf_base, adapter in CASES:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "merged"
        subprocess.run(
            [LARGO, "merge", "--model", base, "--adapter", adapter, "--out", out],
            check=True,
            capture_output=True,
        )
        merged = AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32)
        peft = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(hf_base, torch_dtype=torch.float32), adapter
        )
        got, want = logits(merged), logits(peft)
        err = ((got - want).abs().max() / want.abs().max()).item()
        ok = err <= 1e-5
        failed |= not ok
        print(f"{'ok  ' if ok else 'FAIL'} {base} + {adapter}: relative error {err:.2e}")
sys.exit(1 if failed else 0)
