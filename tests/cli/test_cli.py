"""The ``fprune`` command line: ``inspect`` and ``prune`` on factories written to a temporary
folder (a small CNN, an MLP, a tiny Llama), their JSON, the weights ``prune`` writes, and the exit
codes (0 done, 1 a failure in one line, 2 a usage error)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import fprune
from fprune.cli import main
from fprune.cli._main import Source, build_model

FACTORIES = '''
import torch
from torch import nn


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.conv2(h))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))


def cnn():
    torch.manual_seed(0)
    return CNN()


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))


def broken():
    raise RuntimeError("no such checkpoint")


def not_a_model():
    return 3


def llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )
    return LlamaForCausalLM(config)
'''

_MODULE = "fprune_cli_test_factories"  # imported by dotted path from the current folder


@pytest.fixture
def factories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The factory module, written to `tmp_path` (also the current folder)."""
    path = tmp_path / f"{_MODULE}.py"
    path.write_text(FACTORIES)
    monkeypatch.chdir(tmp_path)
    yield path
    sys.modules.pop(_MODULE, None)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _flops(model: nn.Module, *inputs: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(*inputs)
    return int(counter.get_total_flops())


def test_inspect_json_lists_the_groups_parameters_and_flops(factories: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "inspect", f"{factories}:mlp", "--input-shape", "2,16", "--json")
    assert code == 0 and err == ""
    report = json.loads(out)
    model = build_model(Source(str(factories), "mlp"))
    assert report["model"] == f"{factories}:mlp" and report["graph"] == "fx"
    assert report["inputs"] == [{"shape": [2, 16], "dtype": "float32"}]
    assert report["parameters"] == sum(p.numel() for p in model.parameters()) == 1732
    assert report["flops"] == _flops(model, torch.zeros(2, 16))
    assert [g["producers"] for g in report["groups"]] == [["0.weight"], ["2.weight"], ["4.weight"]]
    first = report["groups"][0]
    assert first == {
        "producers": ["0.weight"], "size": 32, "units": 0, "unit_size": 1, "prunable": True, "reaches_output": False,
        "exact": True, "blockers": [],
    }  # fmt: skip
    assert report["groups"][2]["reaches_output"] and report["prunable_groups"] == 3 and report["note"] is None


def test_inspect_prints_tables_of_a_cnn_found_by_dotted_path(factories: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "inspect", f"{_MODULE}:cnn", "--input-shape", "1,3,16,16", "-v")
    assert code == 0 and err == ""
    assert "conv1.weight" in out and "conv2.weight" in out and "returned by forward" in out
    assert "parameters" in out and "5,450" in out and "one forward on 1x3x16x16 float32" in out
    assert "3 channel groups, 3 prunable" in out  # -v: fprune.explain's report


def test_inspect_without_inputs_has_no_flops(factories: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "inspect", f"{factories}:cnn", "--json")
    report = json.loads(out)
    assert code == 0 and report["flops"] is None and report["inputs"] == [] and report["prunable_groups"] == 3


def test_prune_writes_the_weights_of_the_pruned_architecture(
    factories: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_file = tmp_path / "cnn.safetensors"
    code, out, err = _run(
        capsys, "prune", f"{factories}:cnn", "--level", "0.5", "--input-shape", "1,3,16,16", "--round-to", "4",
        "--criterion", "l1", "--out", str(out_file), "--json",
    )  # fmt: skip
    assert code == 0 and err == ""
    image = torch.zeros(1, 3, 16, 16)
    model = build_model(Source(str(factories), "cnn"))
    direct = fprune.prune_channels(model, 0.5, example_inputs=(image,), round_to=4, criterion=fprune.l1_norm)
    written = load_file(str(out_file))
    assert {k: tuple(v.shape) for k, v in written.items()} == {k: tuple(v.shape) for k, v in direct.state_dict().items()}
    direct.load_state_dict(written, strict=True)  # the same copy: deterministic, from the same seeded weights
    assert all(torch.equal(written[k], v) for k, v in direct.state_dict().items())
    report = json.loads(out)
    assert report["parameters"] == {"before": 5450, "after": sum(p.numel() for p in direct.parameters())}
    assert report["flops"] == {"before": _flops(model, image), "after": _flops(direct, image)}
    assert report["criterion"] == "l1" and report["round_to"] == 4 and report["ignore"] is None
    conv2 = next(layer for layer in report["layers"] if layer["name"] == "conv2")
    assert conv2 == {"name": "conv2", "type": "Conv2d", "tensor": "weight", "before": [32, 16, 3, 3], "after": [16, 8, 3, 3]}
    assert "head" in [layer["name"] for layer in report["layers"]] and report["out"] == str(out_file)


def test_prune_loads_weights_ignores_and_prints_a_table(
    factories: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(1)
    trained = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    save_file(trained.state_dict(), str(tmp_path / "trained.safetensors"))
    out_file = tmp_path / "mlp.safetensors"
    code, out, err = _run(
        capsys, "prune", f"{factories}:mlp", "--level", "0.5", "--weights", str(tmp_path / "trained.safetensors"),
        "--out", str(out_file), "--ignore",
    )  # fmt: skip
    assert code == 0 and err == ""
    direct = fprune.prune_channels(trained, 0.5, ignore=())  # --ignore without FQN: the outputs prune too
    written = load_file(str(out_file))
    assert all(torch.equal(written[k], v) for k, v in direct.state_dict().items()) and direct[4].out_features == 2
    assert "parameters" in out and "pruned layers" in out and "32x16" in out and "16x16" in out
    assert f"wrote {out_file}" in out.replace("\n", "")


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["inspect", "FILE"], 2, "is not MODULE:FACTORY"),
        (["inspect", "no_such_module_here:make"], 1, "no module named 'no_such_module_here'"),
        (["inspect", "FILE:nope"], 1, "has no 'nope'; the functions and classes it defines: CNN, broken, cnn"),
        (["inspect", "FILE:broken"], 1, "FILE:broken() failed (RuntimeError: no such checkpoint)"),
        (["inspect", "FILE:not_a_model"], 1, "returned a int, not a torch.nn.Module"),
        (["inspect", "FILE:cnn", "--input-shape", "1,16"], 1, "forward failed on the example inputs (1x16 float32)"),
        (["prune", "FILE:mlp", "--level", "1.5", "--out", "x.safetensors"], 1, "`level` must be in [0, 1), got 1.5"),
        (["prune", "FILE:mlp", "--level", "0.5", "--out", "x.safetensors", "--criterion", "flap"], 2, "invalid choice: 'flap'"),
        (["prune", "FILE:mlp", "--level", "0.5"], 2, "the following arguments are required: --out"),
        (["inspect", "FILE:mlp", "--input-shape", "1,16", "--dtype", "long", "--dtype", "float"], 2, "give --dtype once"),
        ([], 2, "the following arguments are required: COMMAND"),
    ],
)
def test_exit_codes_and_one_line_messages(
    factories: Path, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    argv = [a.replace("FILE", str(factories)) for a in argv]
    got, out, err = _run(capsys, *argv)
    assert got == code and out == ""
    assert message.replace("FILE", str(factories)) in err
    if code == 1:
        assert err.startswith("fprune: error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_traceback_on_demand_and_help(factories: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "inspect", f"{factories}:broken", "--traceback")
    assert code == 1 and "Traceback" in err and "no such checkpoint" in err.splitlines()[-1]
    code, out, _ = _run(capsys, "prune", "--help")
    assert code == 0 and "l1 or l2" in out and "calibration criteria" in out


def test_python_dash_m_fprune_inspect(factories: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fprune", "inspect", f"{_MODULE}:mlp", "--input-shape", "2,16", "--json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["parameters"] == 1732


def test_hugging_face_llama_inspects_and_prunes_through_export(
    factories: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("transformers")
    code, out, err = _run(capsys, "inspect", f"{factories}:llama", "--input-shape", "1,8", "--dtype", "long", "--json")
    assert code == 0 and err == ""
    report = json.loads(out)
    assert report["graph"] == "export" and report["inputs"] == [{"shape": [1, 8], "dtype": "int64"}]
    heads = next(g for g in report["groups"] if g["producers"][0] == "model.layers.0.self_attn.q_proj.weight")
    assert heads["units"] == 2 and heads["prunable"]  # 2 key / value heads, each with its 2 query heads

    out_file = tmp_path / "llama.safetensors"
    argv = ["prune", f"{factories}:llama", "--input-shape", "1,8", "--dtype", "long", "--level", "0.5", "--out", str(out_file)]
    code, _, err = _run(capsys, *argv, "--ignore", "model.embed_tokens", "lm_head", "--json")
    assert code == 0 and err == ""
    model = build_model(Source(str(factories), "llama"))
    ids = torch.randint(0, 64, (1, 8))
    direct = fprune.prune_channels(model, 0.5, example_inputs=(ids,), ignore=["model.embed_tokens", "lm_head"])
    written = load_file(str(out_file))
    assert {k: tuple(v.shape) for k, v in written.items()} == {k: tuple(v.shape) for k, v in direct.state_dict().items()}
    assert written["model.layers.0.mlp.gate_proj.weight"].shape == (24, 32)

    code, _, err = _run(capsys, "inspect", f"{factories}:llama")
    assert code == 1 and "--input-shape 1,16 --dtype long" in err
