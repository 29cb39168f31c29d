"""Generate PyTorch checkpoints for `largo import` tests.

Writes crates/largo-cli/tests/fixtures/import/:
    mlp.pt            torch.save(state_dict) of the MNIST MLP (fc1 784->128, ReLU, fc2 128->10),
                           after 5 AdamW steps; keys fc1.weight, fc1.bias, fc2.weight, fc2.bias (F32)
    mlp_bf16.pt       the same state_dict converted to bfloat16
    mlp.json          {"input":784,"hidden":[128],"classes":10}
    encoder_lm.pt    state_dict of the nn.TransformerEncoder LM (EncoderLM below: embedding,
                           sinusoidal PE buffer "pe", post-norm ReLU nn.TransformerEncoder,
                           decoder Linear, causal mask), after 5 AdamW steps
    encoder_lm.json  its config
    gpt.pt                 tiny nanoGPT state_dict (nanoGPT's names, lm_head.weight tied to
                           transformer.wte.weight: one shared storage, two keys)
    gpt.json               its config (nanoGPT GPTConfig keys + largo's [gpt] keys)
    malicious.pt           zip laid out like a torch.save file (archive/data.pkl, archive/version,
                           archive/byteorder) whose data.pkl, if unpickled, calls
                           os.system("touch /tmp/largo-pwned-test"); built from raw opcodes
    reference.safetensors  F32 references, computed in eval mode:
        mlp.input [3,784]  mlp.logits [3,10]  mlp_bf16.logits [3,10] (bf16 weights cast to f32)
        seed.tokens [2,10] (token ids as f32)  seed.logits [2,10,24] (causal mask)
        gpt.tokens [2,16]  (token ids as f32)   gpt.logits [2,16,24]

Note: torch.save names the zip's top folder after the file (mlp/data.pkl, ...; the committed files were first saved as seed_mlp.pt etc., their earlier names), while
malicious.pt uses archive/ (what torch.save writes for file objects) - a reader must accept any.

Run from the repository root:
    python3 tools/gen_import_fixtures.py
"""
import io
import json
import pickletools
import struct
import zipfile
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

from gen_transformer_fixtures import EncoderLM, gpt_forward, gpt_init

OUT = Path("crates/largo-cli/tests/fixtures/import")


# ---- program (a): the MNIST MLP ----

class MnistMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 128)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        return self.fc2(self.relu(self.fc1(x)))


# ---- program (b): the nn.TransformerEncoder LM of PyTorch's tutorial: EncoderLM of gen_transformer_fixtures.py, with dropout ----

ENCODER_CFG = {"ntoken": 24, "d_model": 16, "nhead": 2, "d_hid": 32, "nlayers": 2,
            "dropout": 0.1, "max_len": 32, "causal": True}
MLP_CFG = {"input": 784, "hidden": [128], "classes": 10}


# ---- tiny nanoGPT: gpt_init/gpt_forward of gen_transformer_fixtures.py, held in f32 ----

GPT_CFG = {"vocab_size": 24, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 16,
           "bias": True, "dropout": 0.0,
           "ff": 64, "activation": "gelu", "positions": "learned", "tie_weights": True}


# ---- builders ----

def train_mlp():
    torch.manual_seed(0)
    model = MnistMLP()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, y = torch.randn(8, 784), torch.randint(0, 10, (8,))
    model.train()
    for _ in range(5):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    return model.eval()


def train_encoder_lm():
    torch.manual_seed(0)
    c = ENCODER_CFG
    model = EncoderLM(c["ntoken"], c["d_model"], c["nhead"], c["d_hid"], c["nlayers"],
                   max_len=c["max_len"], dropout=c["dropout"]).float()  # pe buffer too
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    data = torch.randint(0, c["ntoken"], (4, 12))
    model.train()
    for _ in range(5):
        opt.zero_grad()
        logits = model(data[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, c["ntoken"]), data[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
    return model.eval()


def malicious_pickle():
    """{'fc1.weight': os.system('touch /tmp/largo-pwned-test')} as protocol-2 opcodes."""
    def unicode(s):
        b = s.encode()
        return b"X" + struct.pack("<I", len(b)) + b

    return (b"\x80\x02"                     # PROTO 2
            + b"}"                          # EMPTY_DICT
            + unicode("fc1.weight")         # key
            + b"cos\nsystem\n"              # GLOBAL os.system
            + unicode("touch /tmp/largo-pwned-test")
            + b"\x85"                       # TUPLE1
            + b"R"                          # REDUCE -> os.system(...)
            + b"s"                          # SETITEM
            + b".")                         # STOP


def write_malicious(path):
    pkl = malicious_pickle()
    out = io.StringIO()
    pickletools.dis(pkl, out=out)  # disassembles only; nothing is executed
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
    return out.getvalue()


def main():
    torch.set_num_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)
    ref = {}

    # (a) MLP, f32 and bf16
    mlp = train_mlp()
    torch.manual_seed(1)
    x = torch.randn(3, 784)
    with torch.no_grad():
        ref["mlp.input"], ref["mlp.logits"] = x, mlp(x)
    sd = mlp.state_dict()
    torch.save(sd, OUT / "mlp.pt")
    sd_bf16 = {k: v.to(torch.bfloat16) for k, v in sd.items()}
    torch.save(sd_bf16, OUT / "mlp_bf16.pt")
    mlp16 = MnistMLP().eval()
    mlp16.load_state_dict({k: v.float() for k, v in sd_bf16.items()})
    with torch.no_grad():
        ref["mlp_bf16.logits"] = mlp16(x)
    (OUT / "mlp.json").write_text(json.dumps(MLP_CFG) + "\n")

    # (b) the encoder LM
    seed = train_encoder_lm()
    torch.manual_seed(2)
    tokens = torch.randint(0, ENCODER_CFG["ntoken"], (2, 10))
    with torch.no_grad():
        ref["seed.tokens"], ref["seed.logits"] = tokens.float(), seed(tokens)
    torch.save(seed.state_dict(), OUT / "encoder_lm.pt")
    (OUT / "encoder_lm.json").write_text(json.dumps(ENCODER_CFG) + "\n")

    # (c) tiny nanoGPT, tied head
    torch.manual_seed(3)
    g = GPT_CFG
    P = {k: v.detach().float()
         for k, v in gpt_init(g["vocab_size"], g["block_size"], g["n_layer"], g["n_embd"]).items()}
    gtok = torch.randint(0, g["vocab_size"], (2, g["block_size"]))
    with torch.no_grad():
        ref["gpt.tokens"], ref["gpt.logits"] = gtok.float(), gpt_forward(P, gtok, g["n_layer"], g["n_head"])
        P64 = {k: v.double() for k, v in P.items()}
        err = (gpt_forward(P64, gtok, g["n_layer"], g["n_head"]) - ref["gpt.logits"].double()).abs().max()
    gsd = dict(P)
    gsd["lm_head.weight"] = P["transformer.wte.weight"]  # nanoGPT: tied, saved under both names
    torch.save(gsd, OUT / "gpt.pt")
    (OUT / "gpt.json").write_text(json.dumps(GPT_CFG) + "\n")

    save_file({k: v.contiguous().float() for k, v in ref.items()}, str(OUT / "reference.safetensors"))

    dis = write_malicious(OUT / "malicious.pt")

    print(f"gpt f32 vs f64 logits max |diff| = {err:.2e}")
    print("malicious.pt data.pkl:\n" + dis)
    for name, t in sorted(ref.items()):
        print(f"  reference {name:18s} {list(t.shape)}")
    print("encoder_lm.pt keys:", ", ".join(seed.state_dict().keys()))
    total = 0
    for p in sorted(OUT.iterdir()):
        total += p.stat().st_size
        print(f"wrote {p} ({p.stat().st_size} bytes)")
    print(f"total {total} bytes")


if __name__ == "__main__":
    main()
