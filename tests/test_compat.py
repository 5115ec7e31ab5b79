"""realqa.compat: the facts that differ between transformers releases, and the optional extras' one-line errors."""

import sys
import warnings
from pathlib import Path

import pytest
import torch

from realqa.compat import (
    EXTRAS,
    MissingExtra,
    accepts_token_types,
    cache_argument,
    forward_parameters,
    require,
    returned_cache,
)

# ---------------------------------------------------------------- optional extras


def test_require_returns_the_module():
    import json

    assert require("json", "none") is json
    assert require("numpy.linalg", "none").__name__ == "numpy.linalg"


def test_a_missing_extra_is_one_line_naming_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # as if PyAV were not installed
    with pytest.raises(MissingExtra) as caught:
        require("av", what="decoding video")
    assert str(caught.value) == "decoding video needs the 'video' extra: pip install 'realqa[video]'"
    assert caught.value.extra == "video" and caught.value.name == "av"
    # An ImportError, and a ValueError: the command line prints it as one line (as it does bad arguments).
    assert isinstance(caught.value, ImportError) and isinstance(caught.value, ValueError)
    for name in ("matplotlib", "matplotlib.pyplot"):  # also when an earlier test imported it
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingExtra) as caught:
        require("matplotlib.pyplot")
    assert str(caught.value) == "matplotlib.pyplot needs the 'report' extra: pip install 'realqa[report]'"


def test_commands_name_their_missing_extra_in_one_line(monkeypatch, tmp_path, capsys):
    """Each optional extra as a user meets it: the command stops with one line naming what to install."""
    from realqa.cli import main

    scores = tmp_path / "s.jsonl"
    scores.write_text('{"path": "a.jpg", "task": "quality", "score": 3.0, "ncm": 3.0, "status": "ok", "text": ""}\n')
    for name in ("matplotlib", "matplotlib.pyplot"):
        monkeypatch.setitem(sys.modules, name, None)
    assert main(["report", str(scores), "--out", str(tmp_path / "r.html")]) == 2
    assert capsys.readouterr().err.strip() == ("realqa report: error: drawing the report's plots needs the 'report' extra: "
                                               "pip install 'realqa[report]'")
    assert not (tmp_path / "r.html").exists()

    (tmp_path / "clip.mp4").write_bytes(b"\0" * 64)
    monkeypatch.setitem(sys.modules, "av", None)
    assert main(["score", str(tmp_path / "clip.mp4"), "--quiet"]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "realqa score: error: decoding video needs the 'video' extra: pip install 'realqa[video]'")
    monkeypatch.setitem(sys.modules, "ray", None)
    assert main(["score", str(tmp_path / "clip.mp4"), "--quiet", "--backend", "ray"]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "realqa score: error: --backend ray needs the 'ray' extra: pip install 'realqa[ray]'")


def test_every_extra_named_exists_in_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert set(EXTRAS.values()) <= set(extras)
    assert set(EXTRAS.values()) <= {name.strip() for name in extras["all"][0].split("[")[1].rstrip("]").split(",")}


def test_a_broken_install_is_not_reported_as_a_missing_extra(tmp_path, monkeypatch):
    (tmp_path / "present_but_broken.py").write_text("import realqa_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError) as caught:
        require("present_but_broken", "video")
    assert not isinstance(caught.value, MissingExtra) and caught.value.name == "realqa_no_such_dependency"


def test_reading_parquet_without_pyarrow_names_the_extra(monkeypatch, tmp_path):
    from realqa.data.tables import _parquet_items

    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    path = tmp_path / "train.parquet"
    with pytest.raises(ValueError) as caught:
        _parquet_items(path)
    assert str(caught.value) == f"{path}: reading parquet needs the 'parquet' extra: pip install 'realqa[parquet]'"


# ---------------------------------------------------------------- transformers releases


class Before:  # the forward of a release before 5.2x
    def forward(self, input_ids=None, past_key_values=None, use_cache=None):
        pass


class After:  # and of a 5.2x release
    def forward(self, input_ids=None, cache=None, mm_token_type_ids=None, use_cache=None):
        pass


class Adapted:  # a PEFT wrapper: its own forward takes anything
    def __init__(self, base):
        self.base = base

    def get_base_model(self):
        return self.base

    def forward(self, *args, **kwargs):
        pass


def test_forward_facts_come_from_the_signature_of_the_base_model():
    assert (cache_argument(Before()), cache_argument(After())) == ("past_key_values", "cache")
    assert (accepts_token_types(Before()), accepts_token_types(After())) == (False, True)
    assert (cache_argument(Adapted(After())), accepts_token_types(Adapted(After()))) == ("cache", True)
    assert forward_parameters(Adapted(Before())) == {"input_ids", "past_key_values", "use_cache"}


def test_returned_cache_reads_either_name():
    from transformers.modeling_outputs import CausalLMOutputWithPast

    cache = object()
    assert returned_cache(CausalLMOutputWithPast(logits=torch.zeros(1), past_key_values=cache)) is cache
    assert returned_cache({"logits": torch.zeros(1), "cache": cache}) is cache


def test_the_installed_release_continues_from_the_cache_it_returned(tiny_model_dir):
    """One token after a cached prefix gives the logits of the whole sequence at once: the cache went out and
    back in under the names compat gives (a name the release does not know would be ignored, silently)."""
    from realqa.model import load_model

    loaded = load_model(tiny_model_dir, device="cpu")
    model = loaded.model
    ids = torch.tensor([loaded.tokenizer.encode("The quality score of this image is 3.47", add_special_tokens=False)])

    def forward(input_ids, **kwargs):
        types = {"mm_token_type_ids": torch.zeros_like(input_ids)} if accepts_token_types(model) else {}
        return model(input_ids=input_ids, **types, **kwargs)

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no deprecated argument name either
        whole = forward(ids).logits[0, -1]
        cache = returned_cache(forward(ids[:, :-1], use_cache=True))
        last = forward(ids[:, -1:], use_cache=True, **{cache_argument(model): cache}).logits[0, -1]
    assert torch.allclose(last, whole, atol=1e-5)
