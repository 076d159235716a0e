"""The three weight-file readers (gate, reasoner, compressor) share one reader and one wording for each bad file."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from lychee_memory.compressors.memory_weights import read_memory_file
from lychee_memory.errors import ModelNotFoundError, UnsupportedModelError
from lychee_memory.gate.adapter import read_gate_file
from lychee_memory.reasoner_weights import read_reasoner_file
from lychee_memory.weight_files import (
    check_fingerprint,
    check_geometry,
    file_digest,
    read_weight_file,
    write_weight_file,
)

READERS = {"gate": read_gate_file, "reasoner": read_reasoner_file, "compressor": read_memory_file}


@pytest.mark.parametrize("kind", READERS)
def test_a_missing_file_says_it_does_not_exist(tmp_path, kind):
    with pytest.raises(ModelNotFoundError, match=f"{kind} weights file .* does not exist"):
        READERS[kind](tmp_path / "missing.safetensors")


@pytest.mark.parametrize("kind", READERS)
def test_a_damaged_file_says_it_is_damaged(tmp_path, kind):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(UnsupportedModelError, match=f"{kind} weights file .* is damaged or not a safetensors file"):
        READERS[kind](path)


@pytest.mark.parametrize("kind", READERS)
def test_a_file_of_another_format_names_the_command_that_writes_this_one(tmp_path, kind):
    path = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), {"format": "something-else"})
    with pytest.raises(UnsupportedModelError, match=f"is not a {kind} weights file .*lychee train"):
        READERS[kind](path)


@pytest.mark.parametrize("kind", ["gate", "reasoner"])
def test_a_newer_format_version_is_refused(tmp_path, kind):
    names = {"gate": "lychee-gate-lora", "reasoner": "lychee-reasoner-lora"}
    path = tmp_path / "newer.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), {"format": names[kind], "format_version": "99"})
    with pytest.raises(UnsupportedModelError, match="format version 99, newer than"):
        READERS[kind](path)


def test_a_newer_compressor_format_version_is_refused():
    from lychee_memory.compressors.memory_weights import LearnedSettings

    keys = {**LearnedSettings(ratios=(4,), window=256, rank=2).config_keys(), "format_version": 99}
    with pytest.raises(UnsupportedModelError, match="format version 99, newer than"):
        LearnedSettings.from_checkpoint_config(json.loads(json.dumps(keys)))


def test_writes_are_atomic_and_read_back_with_their_digest(tmp_path):
    path = write_weight_file(tmp_path / "deep" / "w.safetensors", {"a": torch.arange(4.0)}, {"format": "f"})
    assert [p.name for p in path.parent.iterdir()] == ["w.safetensors"], "no partial file left behind"
    read = read_weight_file(path, "gate")
    assert torch.equal(read.tensors["a"], torch.arange(4.0)) and read.metadata == {"format": "f"}
    assert read.digest == file_digest(path)


def test_another_backbone_or_model_shape_is_refused_by_name():
    loaded = SimpleNamespace(fingerprint=lambda: "mine", fingerprint_source=lambda: "tiny model")
    check_fingerprint("", loaded, "gate weights file 'x'", "gate")  # none recorded: nothing to check
    with pytest.raises(UnsupportedModelError, match="backbone theirs, not on this one.*never applies to another"):
        check_fingerprint("theirs", loaded, "gate weights file 'x'", "gate")
    config = SimpleNamespace(
        model_type="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    )
    trained_for = {
        "model_type": "llama",
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
    }
    with pytest.raises(UnsupportedModelError, match="another model shape: hidden_size 32 \\(this model: 64\\)"):
        check_geometry(trained_for, config, "the compressor weights file")
