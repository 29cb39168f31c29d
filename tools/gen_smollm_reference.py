"""Reference logits of the shared SmolLM2-135M-Instruct (Q4_1 GGUF) from transformers, which
dequantises every weight to f32 when it loads a GGUF.

Writes crates/largo/tests/fixtures/llama/smollm2-reference.json: the token ids of a text (by
transformers' tokenizer of the same GGUF), transformers' greedy next token (argmax) at every
position, and the logits of 16 fixed vocabulary entries plus the argmax at every 16th position.

Run from the repository root (torch, transformers, gguf):
    python3 tools/gen_smollm_reference.py [../shared/models/smollm2-135m-instruct]
"""
import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

DIR = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/models/smollm2-135m-instruct")
FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = Path("crates/largo/tests/fixtures/llama/smollm2-reference.json")
TEXT = (Path("data/shakespeare/hamlet_gut.txt").read_text()[20000:21400]
        + "\n\nThe capital of France is Paris. def add(a, b):\n    return a + b\n")


def main():
    tok = AutoTokenizer.from_pretrained(DIR, gguf_file=FILE)
    model = AutoModelForCausalLM.from_pretrained(DIR, gguf_file=FILE, torch_dtype=torch.float32).eval()
    ids = tok(TEXT, add_special_tokens=False)["input_ids"][:300]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    probe = [0, 1, 2, 13, 100, 260, 1000, 2000, 5000, 10000, 20000, 30000, 40000, 45000, 49000, 49151]
    rows = {}
    for pos in range(0, len(ids), 16):
        row = logits[pos]
        top = int(row.argmax())
        rows[str(pos)] = {str(v): round(float(row[v]), 5) for v in probe + [top]}
    out = {"file": FILE, "ids": ids, "argmax": logits.argmax(-1).tolist(), "logits": rows}
    OUT.write_text(json.dumps(out) + "\n")
    print(len(ids), "tokens;", OUT, OUT.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
