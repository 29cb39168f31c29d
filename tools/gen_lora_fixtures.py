"""LoRA gradients of a tiny random Llama from PyTorch + PEFT, for largo's LoRA parity tests.

Writes crates/largo/tests/fixtures/lora/:
    tiny-llama/        a Hugging Face directory (config.json, model.safetensors, f32):
                       LlamaForCausalLM, vocab 64, hidden 32, 2 layers, 4 query heads, 2 KV heads,
                       intermediate 64 (a multiple of 32, so every matrix can be Q8_0), untied head
    batch.json         token ids [2, 12] and labels [2, 12] (transformers' convention: the model
                       shifts them; -100 excludes a position from the loss)
    <set>/             for each target set (qv: q and v; all: the seven projections) on tiny-llama,
                       and qwen2-attn: q, k, v and o on tests/fixtures/llama/qwen2 (the
                       Qwen2ForCausalLM of gen_llama_fixtures.py: q/k/v biases, a tied head):
        adapter_config.json, adapter_model.safetensors
                       the adapter as PEFT saves it (r 4, alpha 8, dropout 0; lora_B set to random
                       values so that the gradients of lora_A are not zero)
        reference.safetensors
                       `loss` [1] and `grad.<PEFT name>` for each lora_A / lora_B weight
The loss and gradients are computed in float64 (from the f32 weights) and saved as f32.

Run from the repository root (torch, transformers, peft, safetensors):
    python3 tools/gen_lora_fixtures.py
"""
import json
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2ForCausalLM

OUT = Path("crates/largo/tests/fixtures/lora")
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
QWEN2 = Path("crates/largo/tests/fixtures/llama/qwen2")


def base_model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                      bos_token_id=1, eos_token_id=2, attn_implementation="eager")
    model = LlamaForCausalLM(cfg)
    # Random init is N(0, 0.02): scale up so the logits are far from uniform.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    return model.eval()


def qwen2_model():
    return Qwen2ForCausalLM.from_pretrained(QWEN2, attn_implementation="eager").eval()


def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 64, (2, 12), generator=g)
    labels = ids.clone()
    labels[0, :4] = -100  # a prompt not trained on
    labels[1, 9:] = -100  # padding at the end
    return ids, labels


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    model = base_model()
    model.save_pretrained(OUT / "tiny-llama", safe_serialization=True)
    ids, labels = batch()
    (OUT / "batch.json").write_text(json.dumps({"ids": ids.tolist(), "labels": labels.tolist()}) + "\n")
    sets = {"qv": (base_model, ["q_proj", "v_proj"]), "all": (base_model, ALL),
            "qwen2-attn": (qwen2_model, ALL[:4])}
    for kind, (make, targets) in sets.items():
        torch.manual_seed(2)
        peft_cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets,
                              bias="none", task_type="CAUSAL_LM")
        peft_model = get_peft_model(make(), peft_cfg)
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_B" in name:
                    p.copy_(0.1 * torch.randn_like(p))
        peft_model.save_pretrained(OUT / kind)
        (OUT / kind / "README.md").unlink(missing_ok=True)  # PEFT's model-card template
        peft_model = peft_model.double()
        out = peft_model(input_ids=ids, labels=labels)
        out.loss.backward()
        ref = {"loss": out.loss.detach().reshape(1).float()}
        for name, p in peft_model.named_parameters():
            if p.requires_grad:
                # PEFT's saved names drop the adapter's name ("default").
                saved = name.replace(".default", "")
                ref[f"grad.{saved}"] = p.grad.float().contiguous()
        save_file(ref, str(OUT / kind / "reference.safetensors"))
        print(kind, "loss", out.loss.item(), "tensors", len(ref) - 1)


if __name__ == "__main__":
    main()
