"""Generate tiny torch.save files for the safe pickle reader (crates/largo/src/io/torch_pickle.rs).

Writes crates/largo/tests/fixtures/pickle/:
    tiny_f32.pt            state_dict of Tiny (Embedding 5x4, Linear 4->3, LayerNorm 3), float32
    tiny_f16.pt            the same state_dict converted to float16
    tiny_bf16.pt           the same state_dict converted to bfloat16
    views.pt               tensors that are views: "base" [3,4], "transposed" = base.t() (strides
                           (1,4)), "slice" = base[1:, 1:3] (storage offset 5), "row" = base[2]
                           (offset 8), "expanded" = arange(3).expand(2,3) (stride 0); all share
                           storages with the tensors they view
    dtypes.pt              one tensor per dtype: float64, int64, int32, int16, int8, uint8, bool,
                           uint16 (written with _rebuild_tensor_v3 + torch.uint16), a 0-dim scalar,
                           and an nn.Parameter (_rebuild_parameter)
    reference.safetensors  float32 references: "f32/<name>", "f16/<name>", "bf16/<name>" (the
                           half tensors cast to f32, which is exact), "views/<name>" and
                           "dtypes/<name>" (contiguous copies cast to f32)
    checkpoint.pt          {"model": tiny state_dict, "step": 3}: a checkpoint, not a state_dict
    evil_os_system.pt      torch zip layout whose data.pkl is raw opcodes calling
                           os.system("touch /tmp/largo-torch-pickle-marker-os-system-5b1e")
    evil_eval.pt           protocol-4 raw opcodes (FRAME, STACK_GLOBAL, MEMOIZE) calling
                           builtins.eval('__import__("os").system("touch /tmp/largo-torch-
                           pickle-marker-eval-5b1e")')
    evil_in_state_dict.pt  a real torch.save of {"w": tensor, "evil": obj} where obj reduces to
                           os.system(...): pickle writes it as the global posix.system
    short_storage.pt       tiny_f32.pt with the storage of "fc.weight" cut to 8 bytes
    big_endian.pt          tiny_f32.pt with byteorder "big"
    legacy.pt              the same state_dict in the pre-1.6 (non-zip) format
    truncated.pt           the first half of tiny_f32.pt
    not_a_zip.pt           a text file

Run from the repository root:
    python3 tools/gen_pickle_fixtures.py
"""
import io
import os
import pickle
import zipfile
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_file

OUT = Path("crates/largo/tests/fixtures/pickle")


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(5, 4)
        self.fc = nn.Linear(4, 3)
        self.norm = nn.LayerNorm(3)


class Evil:
    """Unpickling this runs a shell command: what a safe reader must refuse."""

    def __reduce__(self):
        return (os.system, ("touch /tmp/largo-torch-pickle-marker-state-dict-5b1e",))


def save(obj, name):
    # Saved to a path, torch names the zip's top folder after the file (tiny_f32/data.pkl); the
    # hand-built zips below use "archive" and "evil", so a reader must find data.pkl by suffix.
    torch.save(obj, OUT / name)


def torch_zip(pickle_bytes, name, prefix="archive"):
    """A zip with torch.save's layout around arbitrary data.pkl bytes."""
    with zipfile.ZipFile(OUT / name, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{prefix}/data.pkl", pickle_bytes)
        z.writestr(f"{prefix}/byteorder", "little")
        z.writestr(f"{prefix}/version", "3\n")


def rewrite_zip(src, name, replace):
    """Copies zip `src` to `name`, replacing entries whose name ends with a key of `replace`."""
    with zipfile.ZipFile(OUT / src) as zin, zipfile.ZipFile(OUT / name, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            for suffix, new in replace.items():
                if info.filename.endswith(suffix):
                    data = new(data)
            zout.writestr(info.filename, data)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = Tiny()
    with torch.no_grad():
        # Non-trivial LayerNorm parameters, so they are not all ones and zeros.
        model.norm.weight.uniform_(0.5, 1.5)
        model.norm.bias.uniform_(-0.5, 0.5)
    sd = model.state_dict()
    refs = {}

    save(sd, "tiny_f32.pt")
    refs.update({f"f32/{k}": v.clone() for k, v in sd.items()})
    for tag, dtype in (("f16", torch.float16), ("bf16", torch.bfloat16)):
        half = {k: v.to(dtype) for k, v in sd.items()}
        save(half, f"tiny_{tag}.pt")
        refs.update({f"{tag}/{k}": v.float() for k, v in half.items()})

    base = torch.arange(12, dtype=torch.float32).reshape(3, 4) * 0.5 - 1.0
    views = {
        "base": base,
        "transposed": base.t(),
        "slice": base[1:, 1:3],
        "row": base[2],
        "expanded": torch.tensor([1.5, -2.0, 3.25]).expand(2, 3),
    }
    assert not views["transposed"].is_contiguous() and views["slice"].storage_offset() == 5
    save(views, "views.pt")
    refs.update({f"views/{k}": v.contiguous().float() for k, v in views.items()})

    dtypes = {
        "float64": torch.tensor([1.0 / 3.0, -2.5, 1e-300], dtype=torch.float64),
        "int64": torch.tensor([[-(2**40), 7], [0, 123456789]], dtype=torch.int64),
        "int32": torch.tensor([-5, 2**20], dtype=torch.int32),
        "int16": torch.tensor([-300, 300], dtype=torch.int16),
        "int8": torch.tensor([-128, 127], dtype=torch.int8),
        "uint8": torch.tensor([0, 200, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "uint16": torch.tensor([0, 65535], dtype=torch.uint16),
        "scalar": torch.tensor(2.75),
        "param": nn.Parameter(torch.tensor([[0.25, -0.5]])),
    }
    save(dtypes, "dtypes.pt")
    refs.update({f"dtypes/{k}": v.detach().to(torch.float32).contiguous() for k, v in dtypes.items()})
    save_file({k: v.detach().clone().contiguous() for k, v in refs.items()}, OUT / "reference.safetensors")
    os.chmod(OUT / "reference.safetensors", 0o644)  # safetensors writes 0600

    save({"model": sd, "step": 3}, "checkpoint.pt")

    cmd = b"touch /tmp/largo-torch-pickle-marker-os-system-5b1e"
    torch_zip(b"\x80\x02cos\nsystem\nX" + len(cmd).to_bytes(4, "little") + cmd + b"\x85R.", "evil_os_system.pt")

    src = b'__import__("os").system("touch /tmp/largo-torch-pickle-marker-eval-5b1e")'
    body = (
        b"\x8c\x08builtins\x94\x8c\x04eval\x94\x93\x94"
        + b"\x8c" + bytes([len(src)]) + src + b"\x94\x85\x94R\x94."
    )
    torch_zip(b"\x80\x04\x95" + len(body).to_bytes(8, "little") + body, "evil_eval.pt", prefix="evil")

    save({"w": torch.ones(2), "evil": Evil()}, "evil_in_state_dict.pt")

    # Find the storage key of fc.weight from the pickle, then cut that storage.
    with zipfile.ZipFile(OUT / "tiny_f32.pt") as z:
        pkl = z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))

    class KeyFinder(pickle.Unpickler):
        """Maps each tensor to its storage key without loading data (reads only the pickle)."""

        def find_class(self, module, name):
            if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
                return lambda storage, *args: storage
            if (module, name) == ("collections", "OrderedDict"):
                return type("Dict", (dict,), {})  # BUILD sets _metadata as an attribute
            return lambda *a: None

        def persistent_load(self, pid):
            return pid[2]

    key = KeyFinder(io.BytesIO(pkl)).load()["fc.weight"]
    rewrite_zip("tiny_f32.pt", "short_storage.pt", {f"/data/{key}": lambda d: d[:8]})
    rewrite_zip("tiny_f32.pt", "big_endian.pt", {"/byteorder": lambda d: b"big"})

    torch.save(sd, OUT / "legacy.pt", _use_new_zipfile_serialization=False)
    full = (OUT / "tiny_f32.pt").read_bytes()
    (OUT / "truncated.pt").write_bytes(full[: len(full) // 2])
    (OUT / "not_a_zip.pt").write_bytes(b"this is a text file, not a checkpoint\n")

    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(list(OUT.iterdir()))} files, {total} bytes, to {OUT}")


if __name__ == "__main__":
    main()
