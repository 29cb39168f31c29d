"""Logits of a Hugging Face Llama-family model with a LoRA adapter loaded by PEFT
(`PeftModel.from_pretrained`): the check that PEFT reads the adapters largo writes.

    python3 tools/peft_logits.py BASE_DIR ADAPTER_DIR 1,2,3,…   → JSON list [T][vocab] on stdout
"""
import json
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM


def main():
    base_dir, adapter_dir, ids = sys.argv[1], sys.argv[2], sys.argv[3]
    model = AutoModelForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter_dir).eval()
    ids = torch.tensor([[int(i) for i in ids.split(",")]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    json.dump(logits.tolist(), sys.stdout)


if __name__ == "__main__":
    main()
