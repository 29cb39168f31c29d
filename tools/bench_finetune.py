"""PEFT + transformers' side of `largo bench finetune`: LoRA training steps on a pretrained
Llama-family model, f32 on the CPU, random token batches.

The model is a GGUF file (transformers dequantises it to f32, as largo's --dequantize does) or
a Hugging Face directory. Prints one JSON object: tokens/s, GFLOP/s (4 × base parameters ×
tokens per second: forward and input gradients of the frozen base, the LoRA terms left out,
as `largo bench finetune` counts them), peak RSS.

    python3 tools/bench_finetune.py --model ../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf \
        --threads 2 --batch 4 --context 256 --seconds 60 [--checkpointing]
"""
import argparse
import json
import resource
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--checkpointing", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    path = Path(a.model)
    start = time.time()
    if path.suffix == ".gguf":
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, torch_dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path), torch_dtype=torch.float32)
    load_s = time.time() - start
    base_params = sum(p.numel() for p in model.parameters())
    if model.config.tie_word_embeddings:
        # The head is the embedding: its product counts once more than its parameters.
        base_params += model.get_input_embeddings().weight.numel()
    if a.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.config.use_cache = False
    cfg = LoraConfig(r=a.r, lora_alpha=2 * a.r, lora_dropout=0.0, target_modules=ALL,
                     task_type="CAUSAL_LM")
    model = get_peft_model(model, cfg)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4,
                            weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size

    def step():
        ids = torch.randint(0, vocab, (a.batch, a.context), generator=g)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    step()  # warm-up
    steps, t0 = 0, time.time()
    while True:
        step()
        steps += 1
        elapsed = time.time() - t0
        if elapsed >= a.seconds:
            break
    tokens_s = steps * a.batch * a.context / elapsed
    print(json.dumps({
        "impl": "peft",
        "torch": torch.__version__,
        "threads": a.threads,
        "batch": a.batch,
        "context": a.context,
        "checkpointing": a.checkpointing,
        "steps": steps,
        "seconds": round(elapsed, 2),
        "tokens_per_s": round(tokens_s, 1),
        "gflop_s": round(4 * base_params * tokens_s / 1e9, 1),
        "base_params": base_params,
        "load_s": round(load_s, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }))


if __name__ == "__main__":
    main()
