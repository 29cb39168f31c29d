#!/usr/bin/env python3
"""Writes the GGUF test fixtures in crates/largo/tests/fixtures/gguf/.

Made with gguf 0.19.0 (PyPI, the reader/writer of the llama.cpp tree) and numpy 2.4.6:
    pip install gguf==0.19.0 numpy && python3 tools/gen_gguf_fixtures.py

- blocks.gguf: for every block type largo reads, one tensor `<type>` of 2 rows x 256 values.
  Row 0 is random normal values put through `gguf.quants.quantize` where the package can
  quantise that type; otherwise (K-quants), and always for row 1, the row is random bytes with
  every f16 scale field set to a random finite f16, so that every bit of the layout is
  exercised. The metadata holds one key of every value type, arrays (nested ones included).
- <type>.f32: `gguf.quants.dequantize` of that tensor, little-endian f32 (numpy `tofile`),
  which largo's dequantisation must equal bit for bit.
- tiny.gguf: a few small tensors and keys, the subject of the mutation test.
"""

import os

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T, GGUFValueType as V

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "largo", "tests", "fixtures", "gguf")
rng = np.random.default_rng(20261207)

# The f16 fields (byte offsets inside one block) of each block type.
F16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}
TYPES = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K]
ROW = 256


def finite_f16(n):
    # Scales of either sign, some tiny (subnormal f16) so the conversion's edge is covered too.
    v = rng.normal(0, 0.05, n).astype(np.float16)
    v[rng.random(n) < 0.1] = np.float16(rng.normal(0, 1e-6))
    return v


def random_row_bytes(qtype):
    if qtype == T.F32:
        return rng.normal(0, 1, ROW).astype(np.float32).view(np.uint8)
    if qtype == T.F16:
        bits = rng.integers(0, 1 << 16, ROW, dtype=np.uint16)
        # Every f16 except NaN (whose payload conversions may quieten): subnormals, ±0, ±inf.
        bits[(bits & 0x7C00) == 0x7C00] &= 0xFC00
        return bits.view(np.uint8)
    if qtype == T.BF16:
        bits = rng.integers(0, 1 << 16, ROW, dtype=np.uint16)
        return bits.view(np.uint8)
    block_values, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = ROW // block_values
    raw = rng.integers(0, 256, (n_blocks, block_bytes), dtype=np.uint8)
    for off in F16_FIELDS[qtype]:
        raw[:, off:off + 2] = finite_f16(n_blocks).view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(-1)


def quantised_row(qtype):
    values = rng.normal(0, 1, (1, ROW)).astype(np.float32)
    try:
        return gguf.quants.quantize(values, qtype).reshape(-1).view(np.uint8)
    except NotImplementedError:
        return None


def blocks_fixture():
    w = gguf.GGUFWriter(os.path.join(OUT, "blocks.gguf"), "fixture")
    w.add_name("largo block-type fixture")
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -100)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4000000000)
    w.add_int32("test.i32", -2000000000)
    w.add_uint64("test.u64", 18000000000000000000)
    w.add_int64("test.i64", -9000000000000000000)
    w.add_float32("test.f32", 0.15625)
    w.add_float64("test.f64", -2.5e-300)
    w.add_bool("test.bool", True)
    w.add_string("test.string", "héllo ▁wörld")
    w.add_array("test.array_i32", [1, -2, 3])
    w.add_array("test.array_f32", [0.5, -1.25])
    w.add_array("test.array_bool", [True, False, True])
    w.add_array("test.array_string", ["a", "", "ü"])
    w.add_key_value("test.array_u8", [1, 2, 255], V.ARRAY, sub_type=V.UINT8)
    w.add_array("test.array_nested", [[1, 2], [3]])
    for qtype in TYPES:
        rows = [random_row_bytes(qtype), random_row_bytes(qtype)]
        q = quantised_row(qtype) if qtype not in (T.F32, T.F16, T.BF16) else None
        if q is not None:
            rows[0] = q
        data = np.stack(rows)
        if qtype == T.F32:
            data = data.view(np.float32)
            w.add_tensor(qtype.name, data)
        elif qtype == T.F16:
            data = data.view(np.float16)
            w.add_tensor(qtype.name, data)
        else:
            w.add_tensor(qtype.name, data, raw_dtype=qtype)
        expected = gguf.quants.dequantize(data, qtype).astype(np.float32)
        assert expected.shape == (2, ROW), expected.shape
        expected.astype("<f4").tofile(os.path.join(OUT, f"{qtype.name.lower()}.f32"))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def tiny_fixture():
    w = gguf.GGUFWriter(os.path.join(OUT, "tiny.gguf"), "llama")
    w.add_uint32("general.alignment", 32)
    w.add_uint32("llama.block_count", 1)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_array("tokenizer.ggml.tokens", ["<s>", "a", "b"])
    w.add_array("tokenizer.ggml.scores", [0.0, -1.0, -2.0])
    w.add_tensor("norm.weight", rng.normal(0, 1, 8).astype(np.float32))
    w.add_tensor("half.weight", rng.normal(0, 1, (2, 4)).astype(np.float16))
    values = rng.normal(0, 1, (2, 32)).astype(np.float32)
    w.add_tensor("q4.weight", gguf.quants.quantize(values, T.Q4_0), raw_dtype=T.Q4_0)
    w.add_tensor("q8.weight", gguf.quants.quantize(values, T.Q8_0), raw_dtype=T.Q8_0)
    kq = random_row_bytes(T.Q4_K).reshape(1, -1)
    w.add_tensor("k.weight", kq, raw_dtype=T.Q4_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    blocks_fixture()
    tiny_fixture()
