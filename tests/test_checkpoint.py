"""Lazy checkpoint reading (safetensors single/sharded, weights-only .bin) and base/adapted pair validation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from common import make_tiny_model
from safetensors.torch import load_file, save_file

from spear_mm.errors import SpearError
from spear_mm.io.checkpoint import Checkpoint, read_safetensors_header
from spear_mm.io.pair import open_pair


def _save(model, folder: Path, **kw) -> Path:
    model.save_pretrained(folder, **kw)
    return folder


def save_bin(model, folder: Path, shards: int = 1) -> Path:
    """A `pytorch_model*.bin` folder as older transformers wrote it (zip pickles of plain tensors)."""
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    names = list(sd)
    if shards == 1:
        torch.save(sd, folder / "pytorch_model.bin")
        return folder
    weight_map = {}
    for i in range(shards):
        file = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {n: sd[n] for n in names[i::shards]}
        torch.save(part, folder / file)
        weight_map.update(dict.fromkeys(part, file))
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def _assert_same(ckpt: Checkpoint, model) -> None:
    sd = {k: v for k, v in model.state_dict().items() if k in ckpt.infos}
    assert set(ckpt.names) == set(sd)
    for name, ref in sd.items():
        info = ckpt.infos[name]
        assert info.shape == tuple(ref.shape) and info.dtype == ref.dtype
        assert torch.equal(ckpt.read(name), ref), name


@pytest.fixture(scope="module")
def llama():
    return make_tiny_model("llama")


def test_single_safetensors(llama, tmp_path):
    ckpt = Checkpoint.open(_save(llama, tmp_path / "m"))
    assert len({i.file for i in ckpt.infos.values()}) == 1
    assert ckpt.model_type == "llama" and ckpt.num_parameters == sum(p.numel() for p in llama.parameters())
    _assert_same(ckpt, llama)
    name = "model.layers.0.mlp.up_proj.weight"
    buf = torch.empty(ckpt.infos[name].shape)
    assert ckpt.read(name, out=buf) is buf and torch.equal(buf, llama.state_dict()[name])
    assert bytes(ckpt.read_raw(name)) == llama.state_dict()[name].numpy().tobytes()
    assert len(ckpt.fingerprint()) == 16 and ckpt.fingerprint() == Checkpoint.open(tmp_path / "m").fingerprint()


def test_sharded_safetensors(llama, tmp_path):
    ckpt = Checkpoint.open(_save(llama, tmp_path / "m", max_shard_size="100KB"))
    assert (tmp_path / "m" / "model.safetensors.index.json").exists()
    assert len({i.file for i in ckpt.infos.values()}) > 3
    _assert_same(ckpt, llama)


@pytest.mark.parametrize("shards", [1, 3])
def test_weights_only_bin(llama, tmp_path, shards):
    ckpt = Checkpoint.open(save_bin(llama, tmp_path / "m", shards))
    assert all(i.file.suffix == ".bin" for i in ckpt.infos.values())
    _assert_same(ckpt, llama)
    name = "model.layers.1.self_attn.q_proj.weight"
    ckpt.read(name).zero_()  # a fresh tensor: the mapped file is never written through
    assert torch.equal(ckpt.read(name), llama.state_dict()[name])


def test_tied_embeddings_have_no_head_tensor(tmp_path):
    gemma = make_tiny_model("gemma")
    assert gemma.config.tie_word_embeddings
    ckpt = Checkpoint.open(_save(gemma, tmp_path / "g"))
    assert "lm_head.weight" not in ckpt.infos and "model.embed_tokens.weight" in ckpt.infos
    _assert_same(ckpt, gemma)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_dtypes_are_read_bit_for_bit(llama, tmp_path, dtype):
    model = make_tiny_model("llama").to(dtype)
    ckpt = Checkpoint.open(_save(model, tmp_path / "m"))
    assert {i.dtype for i in ckpt.infos.values()} == {dtype}
    _assert_same(ckpt, model)
    assert ckpt.nbytes == sum(p.numel() * dtype.itemsize for p in model.parameters())


# -- bad folders --------------------------------------------------------------------------------------------------
@pytest.fixture()
def folder(llama, tmp_path) -> Path:
    return _save(llama, tmp_path / "m", max_shard_size="100KB")


def _shard(folder: Path, k: int = 0) -> Path:
    return sorted(folder.glob("model-*.safetensors"))[k]


def test_missing_folder_file_and_config(tmp_path, folder):
    with pytest.raises(SpearError, match="no such folder"):
        Checkpoint.open(tmp_path / "nope")
    with pytest.raises(SpearError, match="is a file"):
        Checkpoint.open(folder / "config.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpearError, match="no config.json"):
        Checkpoint.open(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{oops")
    with pytest.raises(SpearError, match="invalid JSON"):
        Checkpoint.open(tmp_path / "bad")


def test_no_weights_file(tmp_path, folder):
    (tmp_path / "cfg").mkdir()
    shutil.copy(folder / "config.json", tmp_path / "cfg")
    with pytest.raises(SpearError, match="no weights found"):
        Checkpoint.open(tmp_path / "cfg")


def test_corrupt_header(folder):
    shard = _shard(folder, 1)
    raw = bytearray(shard.read_bytes())
    raw[8:12] = b"}{x!"
    shard.write_bytes(bytes(raw))
    with pytest.raises(SpearError, match=rf"{shard.name}: corrupt safetensors header"):
        Checkpoint.open(folder)
    shard.write_bytes((10**12).to_bytes(8, "little") + b"{}")
    with pytest.raises(SpearError, match="declared header length"):
        Checkpoint.open(folder)
    shard.write_bytes(b"abc")
    with pytest.raises(SpearError, match="shorter than 8 bytes"):
        Checkpoint.open(folder)


def test_truncated_shard(folder):
    shard = _shard(folder, 2)
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(SpearError, match=rf"{shard.name}: truncated safetensors file"):
        Checkpoint.open(folder)
    infos, _ = read_safetensors_header(_shard(folder, 0))
    assert infos


def test_index_pointing_at_missing_shard_or_tensor(folder):
    index = folder / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"]["model.layers.9.mlp.up_proj.weight"] = _shard(folder, 0).name
    index.write_text(json.dumps(data))
    with pytest.raises(SpearError, match=r"model\.layers\.9\.mlp\.up_proj\.weight"):
        Checkpoint.open(folder)
    _shard(folder, 3).unlink()
    with pytest.raises(SpearError, match="points at missing shard"):
        Checkpoint.open(folder)
    index.write_text('{"metadata": {}}')
    with pytest.raises(SpearError, match="weight_map"):
        Checkpoint.open(folder)


def test_duplicate_tensor_across_shards(folder):
    (folder / "model.safetensors.index.json").unlink()
    a, b = _shard(folder, 0), _shard(folder, 1)
    save_file(load_file(a) | load_file(b), b)
    with pytest.raises(SpearError, match="appears in both"):
        Checkpoint.open(folder)


class Payload:  # a pickled object that weights_only loading must refuse
    def __init__(self):
        self.x = 1


def test_bin_that_needs_full_unpickling_is_refused(llama, tmp_path):
    folder = save_bin(llama, tmp_path / "m")
    sd = torch.load(folder / "pytorch_model.bin", weights_only=True)
    sd["extra"] = Payload()
    torch.save(sd, folder / "pytorch_model.bin")
    with pytest.raises(SpearError, match=r"weights_only=True.*full unpickling"):
        Checkpoint.open(folder)


# -- pairs --------------------------------------------------------------------------------------------------------
def test_pair_reports_all_differences_at_once(tiny_pair, tmp_path):
    base, adapted = tiny_pair
    bad = shutil.copytree(adapted, tmp_path / "adapted")
    sd = load_file(bad / "model.safetensors")
    del sd["model.layers.2.mlp.up_proj.weight"]
    sd["model.layers.4.self_attn.q_proj.weight"] = torch.zeros(65, 64)
    sd["model.layers.0.extra.weight"] = torch.zeros(3)
    save_file(sd, bad / "model.safetensors", {"format": "pt"})
    with pytest.raises(SpearError) as exc:
        open_pair(base, bad)
    msg = str(exc.value)
    assert "3 problem(s)" in msg
    assert "'model.layers.2.mlp.up_proj.weight' is in the base" in msg
    assert "'model.layers.4.self_attn.q_proj.weight' has shape [65, 64] in the adapted model vs [64, 64]" in msg
    assert "'model.layers.0.extra.weight' is in the adapted model" in msg


def test_vocab_extension_is_refused_unless_allowed(tiny_pair, tmp_path):
    base, _ = tiny_pair
    model = make_tiny_model("llama", vocab_size=Checkpoint.open(base).config["vocab_size"])
    model.resize_token_embeddings(model.config.vocab_size + 8, mean_resizing=False)
    extended = _save(model, tmp_path / "extended")
    with pytest.raises(SpearError) as exc:
        open_pair(base, extended)
    msg = str(exc.value)
    assert "--allow-vocab-extension" in msg and "model.embed_tokens.weight" in msg and "lm_head.weight" in msg
    pair = open_pair(base, extended, allow_vocab_extension=True)
    rows = Checkpoint.open(base).config["vocab_size"]
    assert pair.vocab_extension == {"model.embed_tokens.weight": (rows, rows + 8), "lm_head.weight": (rows, rows + 8)}


@pytest.mark.parametrize(
    ("override", "key"),
    [({"num_hidden_layers": 4}, "num_hidden_layers"), ({"hidden_size": 32}, "hidden_size")],
)
def test_config_mismatch_is_an_error(tiny_pair, tmp_path, override, key):
    base, _ = tiny_pair
    vocab = Checkpoint.open(base).config["vocab_size"]
    other = _save(make_tiny_model("llama", vocab_size=vocab, **override), tmp_path / "other")
    with pytest.raises(SpearError, match=rf"config {key}: base \d+ vs adapted {list(override.values())[0]}"):
        open_pair(base, other)


def test_model_type_mismatch_is_an_error(tiny_pair, tmp_path):
    base, adapted = tiny_pair
    other = shutil.copytree(adapted, tmp_path / "other")
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(config | {"model_type": "mistral"}))
    with pytest.raises(SpearError, match="config model_type: base 'llama' vs adapted 'mistral'"):
        open_pair(base, other)


def test_dtype_mismatch_is_allowed_and_recorded(tiny_pair, tmp_path, caplog):
    base, _ = tiny_pair
    vocab = Checkpoint.open(base).config["vocab_size"]
    half = _save(make_tiny_model("llama", vocab_size=vocab).to(torch.bfloat16), tmp_path / "bf16")
    pair = open_pair(base, half)
    assert pair.dtype_mismatch and all(v == (torch.float32, torch.bfloat16) for v in pair.dtype_mismatch.values())
    assert any("float32" in r.getMessage() for r in caplog.records)
