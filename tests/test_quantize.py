"""GGUF export on a small synthetic GGUF (fast): merged tensors, copied metadata, refused updates."""

from pathlib import Path

import gguf
import numpy as np
import pytest

from llmbus.distill.quantize import quantize, write_merged_gguf
from llmbus.errors import ModelError

RNG = np.random.default_rng(0)
WEIGHT = RNG.normal(size=(64, 32)).astype(np.float32)  # [out, in], as Hugging Face stores a Linear
NORM = RNG.normal(size=32).astype(np.float32)


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """A two-tensor GGUF: one Q8_0 projection, one F32 norm, a tokenizer-like string array."""
    path = tmp_path / "base.gguf"
    writer = gguf.GGUFWriter(path, "gemma3")
    writer.add_block_count(1)
    writer.add_token_list(["<pad>", "<eos>", "hello"])
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    quantized = gguf.quants.quantize(WEIGHT, gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("blk.0.attn_q.weight", quantized, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("blk.0.attn_norm.weight", NORM)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_merged_gguf_holds_base_plus_update_as_f16_and_keeps_metadata(base: Path, tmp_path: Path):
    delta = RNG.normal(scale=0.1, size=WEIGHT.shape).astype(np.float32)
    out = write_merged_gguf(base, {"blk.0.attn_q.weight": delta}, tmp_path / "merged.gguf")
    reader = gguf.GGUFReader(out)
    tensors = {t.name: t for t in reader.tensors}
    merged = tensors["blk.0.attn_q.weight"]
    assert merged.tensor_type == gguf.GGMLQuantizationType.F16
    dequantized = gguf.quants.dequantize(gguf.GGUFReader(base).tensors[0].data, gguf.GGMLQuantizationType.Q8_0)
    np.testing.assert_allclose(np.asarray(merged.data, np.float32), dequantized + delta, atol=2e-3)
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32  # norms stay F32
    np.testing.assert_array_equal(tensors["blk.0.attn_norm.weight"].data, NORM)
    assert reader.fields["tokenizer.ggml.tokens"].contents() == ["<pad>", "<eos>", "hello"]
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_F16
    assert reader.fields["general.architecture"].contents() == "gemma3"


def test_update_for_an_unknown_tensor_is_refused_before_writing(base: Path, tmp_path: Path):
    out = tmp_path / "merged.gguf"
    with pytest.raises(ModelError, match=r"no tensor named blk\.9\.attn_q\.weight"):
        write_merged_gguf(base, {"blk.9.attn_q.weight": np.zeros((64, 32), np.float32)}, out)
    assert not out.exists() and not out.with_name("merged.gguf.partial").exists()


def test_update_of_the_wrong_shape_is_refused(base: Path, tmp_path: Path):
    with pytest.raises(ModelError, match=r"blk.0.attn_q.weight: update of shape \(32, 64\)"):
        write_merged_gguf(base, {"blk.0.attn_q.weight": np.zeros((32, 64), np.float32)}, tmp_path / "m.gguf")


def test_quantizer_failure_is_one_error_line(tmp_path: Path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf file")
    with pytest.raises(ModelError, match=r"llama-quantize Q8_0 failed on .*broken\.gguf"):
        quantize(broken, "Q8_0", tmp_path / "out.gguf", threads=1)
