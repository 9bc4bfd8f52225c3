"""safetensors_stream: headers parsed and checked, tensors read bit for bit without a memory map,
files written tensor by tensor that safetensors loads, checkpoint shards found; and the random
Llama checkpoint writer of the benchmarks, on a tiny config."""

from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from torch import Tensor

from benchmarks.checkpoint_data import llama_shapes, write_random_llama_checkpoint
from fprune import PruneError
from fprune._util import safetensors_stream
from fprune._util.safetensors_stream import SafetensorsFile, TensorEntry, checkpoint_files, read_header, read_tensor, write_safetensors

DTYPES = [
    torch.bool,
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
]
Spec = tuple[str, torch.dtype, tuple[int, ...]]


def random_bits(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> Tensor:
    """A tensor of random bytes (NaN payloads and all), or random 0 / 1 for bool."""
    generator = torch.Generator().manual_seed(seed)
    numel = torch.Size(shape).numel()
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=generator).bool()
    data = torch.randint(0, 256, (numel * dtype.itemsize,), dtype=torch.uint8, generator=generator)
    return data.view(dtype).reshape(shape)


def same_bits(a: Tensor, b: Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def example_tensors() -> dict[str, Tensor]:
    tensors = {f"t.{str(dtype)[6:]}": random_bits(dtype, (3, 5), seed) for seed, dtype in enumerate(DTYPES)}
    tensors["scalar"] = torch.tensor(-2.5, dtype=torch.float64)
    tensors["scalar_bf16"] = torch.tensor(0.1, dtype=torch.bfloat16)
    tensors["empty"] = torch.empty(4, 0, 2, dtype=torch.bfloat16)
    tensors["empty1"] = torch.empty(0, dtype=torch.int64)
    tensors["big"] = random_bits(torch.float32, (64, 33), 99)
    return tensors


def test_reads_save_file_bit_for_bit(tmp_path: Path) -> None:
    tensors = example_tensors()
    path = tmp_path / "x.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt", "note": "ünïcode"})
    file = read_header(path)
    assert file.path == path and file.metadata == {"format": "pt", "note": "ünïcode"}
    assert set(file.entries) == set(tensors)
    begins = [entry.begin for entry in file.entries.values()]
    assert begins == sorted(begins)  # in file order
    for name, tensor in tensors.items():
        entry = file.entries[name]
        assert entry == TensorEntry(name, tensor.dtype, tuple(tensor.shape), entry.begin, entry.begin + tensor.numel() * tensor.element_size())
        assert same_bits(read_tensor(file, name), tensor), name


def test_read_tensor_owns_its_memory(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    save_file({"a": torch.arange(12.0).reshape(3, 4), "b": torch.ones(5)}, str(path))
    file = read_header(path)
    first, second = read_tensor(file, "a"), read_tensor(file, "a")
    assert first.device.type == "cpu" and first.is_contiguous() and first.storage_offset() == 0
    assert first.untyped_storage().nbytes() == first.nbytes
    assert first.data_ptr() != second.data_ptr()
    first.add_(1)
    assert torch.equal(second, torch.arange(12.0).reshape(3, 4))
    assert torch.equal(read_tensor(file, "b"), torch.ones(5))


def test_read_tensor_refuses_a_missing_name_and_a_shrunk_file(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    save_file({"a": torch.ones(100)}, str(path))
    file = read_header(path)
    with pytest.raises(PruneError, match=r"^read_tensor: `.*x\.safetensors` has no tensor `nope` \(its tensors include `a`\)"):
        read_tensor(file, "nope")
    with open(path, "r+b") as stream:
        stream.truncate(path.stat().st_size - 4)
    with pytest.raises(PruneError, match=r"^read_tensor: `.*x\.safetensors` ended 396 bytes into tensor `a`"):
        read_tensor(file, "a")


def test_written_files_load_with_safetensors(tmp_path: Path) -> None:
    tensors = example_tensors()
    base = torch.arange(60.0).reshape(6, 10)
    tensors["transposed"] = base.t()
    tensors["strided"] = base[::2, 1::3]
    tensors["param"] = torch.nn.Parameter(torch.randn(4, 4))
    specs = [(name, tensor.dtype, tuple(tensor.shape)) for name, tensor in tensors.items()]
    asked: list[str] = []

    def produce(name: str) -> Tensor:
        asked.append(name)
        return tensors[name]

    path = tmp_path / "out.safetensors"
    write_safetensors(path, specs, produce, {"format": "pt", "k": "v"})
    assert asked == list(tensors)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors"]
    (length,) = struct.unpack("<Q", path.read_bytes()[:8])
    assert (8 + length) % 8 == 0
    loaded = load_file(str(path))
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        assert same_bits(loaded[name], tensor.detach()), name
    file = read_header(path)
    assert file.metadata == {"format": "pt", "k": "v"}
    assert list(file.entries) == list(tensors)  # written in spec order
    for name, tensor in tensors.items():
        assert same_bits(read_tensor(file, name), tensor.detach()), name


def test_written_without_metadata(tmp_path: Path) -> None:
    path = tmp_path / "out.safetensors"
    write_safetensors(path, [("w", torch.float32, (2,))], lambda name: torch.ones(2))
    assert read_header(path).metadata == {}
    assert torch.equal(load_file(str(path))["w"], torch.ones(2))
    write_safetensors(path, [], lambda name: torch.ones(2), {})  # overwrites; no tensors at all
    assert load_file(str(path)) == {} and read_header(path).entries == {}


def test_writes_in_bounded_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(safetensors_stream, "_CHUNK_BYTES", 64)
    base = random_bits(torch.float32, (9, 7, 5), 3)
    tensors = {
        "contiguous": base,
        "transposed": base.transpose(0, 2),  # rows of 252 bytes: split further
        "rows": base[:, ::2, :],  # several rows to a chunk
        "flat": base.reshape(-1)[::3],  # one-dimensional, strided
        "scalar": base[1, 2, 3],
    }
    for tensor in tensors.values():
        chunks = list(safetensors_stream._byte_chunks(tensor))
        assert all(len(chunk) <= 64 for chunk in chunks)
        assert b"".join(bytes(chunk) for chunk in chunks) == tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    path = tmp_path / "out.safetensors"
    write_safetensors(path, [(name, t.dtype, tuple(t.shape)) for name, t in tensors.items()], tensors.__getitem__)
    loaded = load_file(str(path))
    file = read_header(path)
    for name, tensor in tensors.items():
        assert same_bits(loaded[name], tensor) and same_bits(read_tensor(file, name), tensor), name


@st.composite
def spec_lists(draw: st.DrawFn) -> list[Spec]:
    count = draw(st.integers(0, 5))
    return [(f"layer.{i}.w", draw(st.sampled_from(DTYPES)), tuple(draw(st.lists(st.integers(0, 4), max_size=3)))) for i in range(count)]


@settings(max_examples=40, deadline=None)
@given(spec_lists(), st.integers(0, 2**16))
def test_round_trip(specs: list[Spec], seed: int) -> None:
    tensors = {name: random_bits(dtype, shape, seed + i) for i, (name, dtype, shape) in enumerate(specs)}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rt.safetensors"
        write_safetensors(path, specs, tensors.__getitem__, {"seed": str(seed)})
        loaded = load_file(str(path))
        file = read_header(path)
        assert file.metadata == {"seed": str(seed)}
        for name, tensor in tensors.items():
            assert same_bits(loaded[name], tensor) and same_bits(read_tensor(file, name), tensor)
        again = Path(folder) / "again.safetensors"
        save_file(tensors, str(again))
        assert all(same_bits(read_tensor(read_header(again), name), tensor) for name, tensor in tensors.items())


@pytest.mark.parametrize(
    ("produced", "message"),
    [
        (torch.ones(2, 3, dtype=torch.float64), r"tensor `b` was produced as a torch\.float64 tensor of shape \(2, 3\), but its spec says torch\.float32 of shape \(2, 3\)"),
        (torch.ones(3, 2), r"tensor `b` was produced as a torch\.float32 tensor of shape \(3, 2\), but its spec says"),
        (torch.ones(2, 3, device="meta"), r"tensor `b` was produced as a torch\.strided tensor on meta"),
    ],
)
def test_write_refuses_a_tensor_unlike_its_spec(tmp_path: Path, produced: Tensor, message: str) -> None:
    path = tmp_path / "out.safetensors"
    path.write_bytes(b"old")
    tensors = {"a": torch.ones(4), "b": produced}
    with pytest.raises(PruneError, match="^write_safetensors: " + message):
        write_safetensors(path, [("a", torch.float32, (4,)), ("b", torch.float32, (2, 3))], tensors.__getitem__)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors"]


def test_write_failing_producer_leaves_no_file(tmp_path: Path) -> None:
    def produce(name: str) -> Tensor:
        if name == "b":
            raise RuntimeError("out of ideas")
        return torch.ones(4)

    with pytest.raises(RuntimeError, match="out of ideas"):
        write_safetensors(tmp_path / "out.safetensors", [("a", torch.float32, (4,)), ("b", torch.float32, (4,))], produce)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("specs", "metadata", "message"),
    [
        ([("a", torch.float32, (1,)), ("a", torch.float32, (1,))], None, r"tensor name 'a' is not a string, is `__metadata__` or is given twice"),
        ([("__metadata__", torch.float32, (1,))], None, r"tensor name '__metadata__'"),
        ([("c", torch.complex64, (1,))], None, r"tensor `c` has dtype torch\.complex64, which"),
        ([("n", torch.float32, (2, -1))], None, r"tensor `n` has shape \(2, -1\)"),
        ([("a", torch.float32, (1,))], {"k": 1}, r"`metadata` must map strings to strings"),
    ],
)
def test_write_refuses_bad_specs(tmp_path: Path, specs: list[Spec], metadata: dict[str, str], message: str) -> None:
    with pytest.raises(PruneError, match="^write_safetensors: " + message):
        write_safetensors(tmp_path / "out.safetensors", specs, lambda name: torch.ones(1), metadata)
    assert list(tmp_path.iterdir()) == []


def raw_file(header: object, data: bytes = b"", *, text: bytes | None = None) -> bytes:
    body = json.dumps(header).encode() if text is None else text
    return struct.pack("<Q", len(body)) + body + data


GOOD = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"\x01\x02\x03", r"it is 3 bytes, too short for the 8-byte header length"),
        (struct.pack("<Q", 100) + b"{}", r"its header length says 100 bytes, but only 2 follow"),
        (raw_file(None, text=b'{"w": "\xff"}'), r"its header is not UTF-8 JSON"),
        (raw_file(None, text=b'{"w": '), r"its header is not UTF-8 JSON"),
        (raw_file(None, b"\0" * 16, text=b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}'), r"its header gives `w` twice"),
        (raw_file([1, 2]), r"its header is not a JSON object"),
        (raw_file({"__metadata__": {"a": 1}}), r"its `__metadata__` is not a map of strings to strings"),
        (raw_file({"w": [1]}), r"the header entry of tensor `w` is not a JSON object"),
        (raw_file({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8), r"tensor `w` has no valid `dtype` and `shape`"),
        (raw_file({"w": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, b"\0" * 8), r"tensor `w` has no valid `dtype` and `shape`"),
        (raw_file({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8), r"tensor `w` has no valid `data_offsets`"),
        (raw_file({"w": {"dtype": "F32", "shape": [2]}}, b"\0" * 8), r"tensor `w` has no valid `data_offsets`"),
        (raw_file(GOOD, b"\0" * 7), r"tensor `w` ends at byte 77, past the file's end at 76"),
        (raw_file({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8), r"tensor `w` has 8 bytes, but a F32 tensor of shape \(3,\) has 12"),
        (
            raw_file({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8),
            r"the bytes of tensors `a` and `b` overlap",
        ),
    ],
)
def test_read_header_refuses_a_bad_file(tmp_path: Path, content: bytes, why: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(PruneError, match=r"^read_header: `.*bad\.safetensors` is not a safetensors file: " + why):
        read_header(path)


def test_read_header_refuses_unknown_dtypes_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    path.write_bytes(raw_file({"z": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8))
    with pytest.raises(PruneError, match=r"^read_header: tensor `z` of `.*c\.safetensors` has dtype `C64`, which fprune cannot read \(it reads BOOL, U8"):
        read_header(path)
    with pytest.raises(PruneError, match=r"^read_header: no file `.*nothing\.safetensors`"):
        read_header(tmp_path / "nothing.safetensors")
    with pytest.raises(PruneError, match=r"^read_header: no file"):
        read_header(tmp_path)


def test_read_header_accepts_empty_tensors_at_one_offset_and_null_metadata(tmp_path: Path) -> None:
    path = tmp_path / "e.safetensors"
    header = {
        "__metadata__": None,
        "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
        "e1": {"dtype": "F64", "shape": [0, 3], "data_offsets": [4, 4]},
        "e2": {"dtype": "I8", "shape": [0], "data_offsets": [4, 4]},
        "a": {"dtype": "U8", "shape": [], "data_offsets": [4, 5]},
    }
    path.write_bytes(raw_file(header, b"\0\0\x80\x3f\x07"))
    file = read_header(path)
    assert file == SafetensorsFile(path, file.entries, {}) and list(file.entries) == ["b", "e1", "e2", "a"]
    assert torch.equal(read_tensor(file, "b"), torch.ones(1)) and read_tensor(file, "e1").shape == (0, 3)
    assert read_tensor(file, "a").item() == 7 and read_tensor(file, "a").shape == ()


def test_checkpoint_files(tmp_path: Path) -> None:
    single = tmp_path / "model.safetensors"
    save_file({"a": torch.ones(1)}, str(single))
    assert checkpoint_files(single) == [single] and checkpoint_files(str(tmp_path)) == [single]
    other = tmp_path / "notes.txt"
    other.write_text("x")
    with pytest.raises(PruneError, match=r"^checkpoint_files: `.*notes\.txt` is not a \.safetensors file"):
        checkpoint_files(other)
    with pytest.raises(PruneError, match=r"^checkpoint_files: no file or folder `.*missing`"):
        checkpoint_files(tmp_path / "missing")

    sharded = tmp_path / "sharded"
    sharded.mkdir()
    with pytest.raises(PruneError, match=r"^checkpoint_files: folder `.*sharded` holds no \.safetensors file"):
        checkpoint_files(sharded)
    for name in ("b.safetensors", "a.safetensors", "stray.safetensors"):
        save_file({"x": torch.ones(1)}, str(sharded / name))
    (sharded / "dir.safetensors").mkdir()
    assert checkpoint_files(sharded) == [sharded / "a.safetensors", sharded / "b.safetensors", sharded / "stray.safetensors"]
    index = sharded / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": {"x": "b.safetensors", "y": "a.safetensors", "z": "b.safetensors"}}))
    assert checkpoint_files(sharded) == [sharded / "a.safetensors", sharded / "b.safetensors"]
    for bad in ({"weight_map": {"x": "c.safetensors"}}, {"weight_map": {"x": "../model.safetensors"}}):
        index.write_text(json.dumps(bad))
        with pytest.raises(PruneError, match=r"^checkpoint_files: `.*index\.json` maps weights to `.*`, which is not a file in"):
            checkpoint_files(sharded)
    for text in ("{", "[]", json.dumps({"weight_map": {}}), json.dumps({"weight_map": {"x": 1}})):
        index.write_text(text)
        with pytest.raises(PruneError, match=r"^checkpoint_files: `.*index\.json` has no `weight_map`"):
            checkpoint_files(sharded)


TINY: dict[str, object] = {
    "vocab_size": 96,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 128,
    "tie_word_embeddings": False,
}


def test_random_llama_checkpoint_layout(tmp_path: Path) -> None:
    shard_bytes = 8 * 1024
    folder = write_random_llama_checkpoint(tmp_path / "ckpt", TINY, shard_bytes=shard_bytes, seed=1)
    assert folder == tmp_path / "ckpt"
    shapes = dict(llama_shapes(TINY))
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    files = checkpoint_files(folder)
    count = len(files)
    assert count > 2 and [f.name for f in files] == [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
    assert set(index["weight_map"]) == set(shapes)
    assert index["metadata"]["total_size"] == sum(2 * torch.Size(shape).numel() for shape in shapes.values())
    config = json.loads((folder / "config.json").read_text())
    assert config == {**TINY, "architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "bfloat16"}
    seen: dict[str, Tensor] = {}
    for file in files:
        header = read_header(file)
        assert header.metadata == {"format": "pt"}
        size = sum(entry.end - entry.begin for entry in header.entries.values())
        assert size <= shard_bytes or len(header.entries) == 1
        for name, entry in header.entries.items():
            assert index["weight_map"][name] == file.name and entry.dtype == torch.bfloat16 and entry.shape == shapes[name]
            seen[name] = read_tensor(header, name)
    assert list(seen) == list(shapes)  # state-dict order across the shards
    assert all(torch.equal(seen[name], torch.ones(shapes[name], dtype=torch.bfloat16)) for name in shapes if name.endswith("norm.weight"))
    embedding = seen["model.embed_tokens.weight"].float()
    assert abs(embedding.mean().item()) < 0.005 and 0.018 < embedding.std().item() < 0.022
    assert not torch.equal(seen["model.layers.0.mlp.up_proj.weight"], seen["model.layers.0.mlp.gate_proj.weight"])
    again = write_random_llama_checkpoint(tmp_path / "again", TINY, shard_bytes=10**9, seed=1)  # the same values, one shard
    (one,) = checkpoint_files(again)
    header = read_header(one)
    assert all(torch.equal(read_tensor(header, name), tensor) for name, tensor in seen.items())


@pytest.mark.parametrize(
    "changes",
    [{}, {"tie_word_embeddings": True, "num_key_value_heads": 4, "head_dim": None}, {"attention_bias": True, "mlp_bias": True, "num_hidden_layers": 1}],
)
def test_random_llama_checkpoint_loads_in_transformers(tmp_path: Path, changes: dict[str, object]) -> None:
    transformers = pytest.importorskip("transformers")
    config = {**TINY, **changes}
    reference = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config))
    state = reference.state_dict()
    if config["tie_word_embeddings"]:
        del state["lm_head.weight"]  # what save_pretrained writes
    assert llama_shapes(config) == [(name, tuple(tensor.shape)) for name, tensor in state.items()]
    folder = write_random_llama_checkpoint(tmp_path, config, shard_bytes=16 * 1024)
    model = transformers.LlamaForCausalLM.from_pretrained(folder)
    assert model.dtype == torch.bfloat16
    loaded = model.state_dict()
    for file in checkpoint_files(folder):
        header = read_header(file)
        for name in header.entries:
            assert torch.equal(loaded[name], read_tensor(header, name)), name
    if config["tie_word_embeddings"]:
        assert model.lm_head.weight is model.model.embed_tokens.weight
