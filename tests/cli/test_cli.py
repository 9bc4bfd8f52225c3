"""The ``fprune`` command line: ``inspect``, ``prune``, ``apply-plan`` and ``prune-checkpoint`` on
factories written to a temporary folder (a small CNN, two MLPs, a tiny Llama), their JSON, the
weights and plans ``prune`` writes (replayed bit for bit), the width plot, and the exit codes (0
done, 1 a failure in one line, 2 a usage error)."""

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
from fprune.cli._main import Source, build_model, layer_widths
from fprune.plan import Plan, apply_plan

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


def mlp_wide():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))


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
        (["prune", "FILE:mlp", "--level", "0.5"], 2, "the pruned copy's weights), --plan"),
        (["prune", "FILE:mlp", "--level", "0.5", "--plan", "no/such/folder/p.json"], 1, "cannot write --plan 'no/such/folder/p.json'"),
        (["apply-plan", "FILE:mlp", "--plan", "p.json"], 2, "the following arguments are required: --out"),
        (["apply-plan", "FILE:mlp", "--plan", "missing.json", "--out", "x.safetensors"], 1, "no file 'missing.json': pass --plan the JSON"),
        (["apply-plan", "FILE:mlp", "--plan", "junk.json", "--out", "x.safetensors"], 1, "junk.json is no plan this fprune reads (Plan.from_json:"),
        (["prune-checkpoint", "--plan", "junk.json", "nothing.safetensors", "out"], 1, "no file or folder 'nothing.safetensors'"),
        (["prune-checkpoint", "--plan", "junk.json", "FILE"], 2, "the following arguments are required: DST"),
        (["inspect", "FILE:mlp", "--input-shape", "1,16", "--dtype", "long", "--dtype", "float"], 2, "give --dtype once"),
        ([], 2, "the following arguments are required: COMMAND"),
    ],
)
def test_exit_codes_and_one_line_messages(
    factories: Path, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    argv = [a.replace("FILE", str(factories)) for a in argv]
    Path("junk.json").write_text('{"schema": 1}')  # in the current folder: tmp_path
    got, out, err = _run(capsys, *argv)
    assert got == code and out == ""
    assert message.replace("FILE", str(factories)) in err
    if code == 1:
        assert err.startswith("fprune: error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_traceback_on_demand_and_help(factories: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "inspect", f"{factories}:broken", "--traceback")
    assert code == 1 and "Traceback" in err and "no such checkpoint" in err.splitlines()[-1]
    code, out, _ = _run(capsys, "prune", "--help")
    assert code == 0 and "l1 or l2" in out and "calibration criteria" in out and "--plan FILE" in out and "--plot FILE" in out
    code, out, _ = _run(capsys, "--help")
    assert code == 0 and all(name in out for name in ("inspect", "prune", "apply-plan", "prune-checkpoint", "examples:"))
    code, out, _ = _run(capsys, "apply-plan", "--help")
    assert code == 0 and "--weights FILE" in out and "fprune prune --plan" in out
    code, out, _ = _run(capsys, "prune-checkpoint", "--help")
    assert code == 0 and "SRC" in out and "DST" in out and "--no-progress" in out


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


# --------------------------------------------------------------------------- plans


def _bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """The same names, dtypes, shapes and bytes."""
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        and torch.equal(a[k].reshape(-1).view(torch.uint8), b[k].reshape(-1).view(torch.uint8))
        for k in a
    )  # fmt: skip


def _plan_of(capsys: pytest.CaptureFixture[str], factory: str, plan_file: Path, *more: str) -> dict[str, object]:
    code, out, err = _run(capsys, "prune", factory, "--level", "0.5", "--plan", str(plan_file), "--json", *more)
    assert code == 0 and err == "", err
    report: dict[str, object] = json.loads(out)
    return report


def test_prune_plan_then_apply_plan_writes_the_same_weights_bit_for_bit(
    factories: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pruned_file, plan_file, replayed_file = tmp_path / "pruned.safetensors", tmp_path / "cnn.plan.json", tmp_path / "replayed.safetensors"
    report = _plan_of(
        capsys, f"{factories}:cnn", plan_file, "--input-shape", "1,3,16,16", "--round-to", "4", "--out", str(pruned_file)
    )  # fmt: skip
    assert report["plan"] == str(plan_file) and report["out"] == str(pruned_file) and report["plot"] is None
    plan = Plan.from_json(plan_file.read_text())
    assert plan.architecture == f"{_MODULE}.CNN"  # the file's stem: the class is named as a dotted import names it
    pruned = load_file(str(pruned_file))
    assert {k: tuple(v.shape) for k, v in pruned.items()} == plan.new_shapes()
    assert plan.attributes["conv2"]["out_channels"] == 16

    # the plan made from the .py file replays on the model imported by dotted path
    code, out, err = _run(capsys, "apply-plan", f"{_MODULE}:cnn", "--plan", str(plan_file), "--out", str(replayed_file), "--json")
    assert code == 0 and err == ""
    applied = json.loads(out)
    assert _bitwise_equal(load_file(str(replayed_file)), pruned)
    assert applied == {
        "model": f"{_MODULE}:cnn", "plan": str(plan_file), "architecture": f"{_MODULE}.CNN", "weights": None,
        "parameters": report["parameters"], "layers": report["layers"], "out": str(replayed_file),
    }  # fmt: skip

    code, out, err = _run(capsys, "apply-plan", f"{factories}:cnn", "--plan", str(plan_file), "--out", str(replayed_file))
    assert code == 0 and err == ""
    assert "pruned by" in out and "pruned layers" in out and "32x16x3x3" in out and "16x8x3x3" in out
    assert f"wrote {replayed_file}" in out.replace("\n", "")


def test_apply_plan_prunes_other_weights_as_the_plan_says(
    factories: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan_file, trained_file, out_file = tmp_path / "mlp.plan.json", tmp_path / "trained.safetensors", tmp_path / "out.safetensors"
    report = _plan_of(capsys, f"{factories}:mlp", plan_file)
    assert report["out"] is None and report["plan"] == str(plan_file)
    torch.manual_seed(1)
    trained = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    save_file(trained.state_dict(), str(trained_file))
    code, out, err = _run(
        capsys, "apply-plan", f"{factories}:mlp", "--plan", str(plan_file), "--weights", str(trained_file), "--out", str(out_file), "--json"
    )  # fmt: skip
    assert code == 0 and err == "" and json.loads(out)["weights"] == str(trained_file)
    expected = apply_plan(trained, Plan.from_json(plan_file.read_text()))  # the factory's channels, the trained values
    assert _bitwise_equal(load_file(str(out_file)), expected.state_dict())


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("cnn", f"apply_plan: the plan was made for a torch.nn.modules.container.Sequential, not a {_MODULE}.CNN"),
        ("mlp_wide", "apply_plan: `0.weight` has shape [64, 16] here, [32, 16] in the plan's model"),
    ],
)
def test_apply_plan_of_another_architecture_fails_in_one_line_naming_the_difference(
    factories: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], factory: str, message: str
) -> None:
    plan_file, out_file = tmp_path / "mlp.plan.json", tmp_path / "out.safetensors"
    _plan_of(capsys, f"{factories}:mlp", plan_file)
    code, out, err = _run(capsys, "apply-plan", f"{factories}:{factory}", "--plan", str(plan_file), "--out", str(out_file))
    assert code == 1 and out == "" and err.startswith(f"fprune: error: {message}") and err.count("\n") == 1
    assert not out_file.exists()


def test_prune_checkpoint_streams_a_checkpoint_through_the_plan(
    factories: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("fprune.plan._checkpoint")
    plan_file, pruned_file, checkpoint = tmp_path / "cnn.plan.json", tmp_path / "pruned.safetensors", tmp_path / "cnn.safetensors"
    _plan_of(capsys, f"{factories}:cnn", plan_file, "--input-shape", "1,3,16,16", "--out", str(pruned_file))
    save_file(build_model(Source(str(factories), "cnn")).state_dict(), str(checkpoint))
    dst = tmp_path / "pruned-checkpoint"
    code, out, err = _run(capsys, "prune-checkpoint", "--plan", str(plan_file), str(checkpoint), str(dst), "--json")
    assert code == 0 and err == ""
    report = json.loads(out)
    written = load_file(str(dst / "cnn.safetensors"))
    assert _bitwise_equal(written, load_file(str(pruned_file)))
    plan = Plan.from_json(plan_file.read_text())
    assert report["plan"] == str(plan_file) and report["src"] == str(checkpoint) and report["dst"] == str(dst)
    assert report["files"] == [str(dst / "cnn.safetensors")] and report["tensors"] == len(written) == 11
    assert report["changed"] == len(plan.tensors) and report["bytes_read"] == checkpoint.stat().st_size - _header_bytes(checkpoint)
    assert report["bytes_written"] == sum(t.numel() * t.element_size() for t in written.values())
    assert report["seconds"] >= 0 and report["peak_rss"] > 0

    code, out, err = _run(capsys, "prune-checkpoint", "--plan", str(plan_file), str(checkpoint), str(tmp_path / "again"), "--no-progress")
    assert code == 0 and err == ""
    assert "tensors changed" in out and "peak RSS" in out and "1: cnn.safetensors" in out and "KiB" in out

    save_file(build_model(Source(str(factories), "mlp")).state_dict(), str(tmp_path / "mlp.safetensors"))
    code, out, err = _run(capsys, "prune-checkpoint", "--plan", str(plan_file), str(tmp_path / "mlp.safetensors"), str(dst))
    assert code == 1 and out == "" and err.count("\n") == 1
    assert f"prune_checkpoint: `0.bias` in mlp.safetensors is not a tensor of the plan's model ({_MODULE}.CNN)" in err
    code, _, err = _run(capsys, "prune-checkpoint", "--plan", str(plan_file), str(checkpoint), str(tmp_path))
    assert code == 1 and "is the folder of SRC" in err


def test_prune_meta_scores_from_the_checkpoint_and_writes_only_the_plan(
    factories: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint, plan_file, reference = tmp_path / "cnn.safetensors", tmp_path / "meta.plan.json", tmp_path / "ref.plan.json"
    save_file(build_model(Source(str(factories), "cnn")).state_dict(), str(checkpoint))
    _plan_of(capsys, f"{factories}:cnn", reference, "--input-shape", "1,3,16,16", "--weights", str(checkpoint))
    code, out, err = _run(
        capsys, "prune", f"{factories}:cnn", "--meta", "--weights", str(checkpoint), "--level", "0.5",
        "--input-shape", "1,3,16,16", "--plan", str(plan_file), "--json",
    )  # fmt: skip
    assert code == 0 and err == ""
    report = json.loads(out)
    assert report["flops"] is None and report["out"] is None and report["plan"] == str(plan_file)
    assert Plan.from_json(plan_file.read_text()) == Plan.from_json(reference.read_text())  # the same channels kept
    for wrong in (["--out", str(tmp_path / "x.safetensors")], []):
        code, _, err = _run(
            capsys, "prune", f"{factories}:cnn", "--meta", "--level", "0.5", "--input-shape", "1,3,16,16",
            "--plan", str(plan_file), *wrong,
        )  # fmt: skip
        assert code == 2 and "--meta builds the model without its weights" in err


def _header_bytes(path: Path) -> int:
    """The length prefix and JSON header of a safetensors file: what is not tensor data."""
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


def test_prune_plots_the_widths_of_the_pruned_layers(
    factories: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    plot, plan_file = tmp_path / "widths.png", tmp_path / "p.json"
    report = _plan_of(capsys, f"{factories}:cnn", plan_file, "--input-shape", "1,3,16,16", "--plot", str(plot))
    assert report["plot"] == str(plot) and plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    layers = report["layers"]
    assert isinstance(layers, list)
    widths = [(w.name, w.dim, w.before, w.after) for w in layer_widths(layers)]
    assert widths == [("conv1", 0, 16, 8), ("bn1", 0, 16, 8), ("conv2", 0, 32, 16), ("head", 1, 32, 16)]


def test_plot_without_matplotlib_fails_before_pruning(
    factories: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib: ImportError
    plan_file = tmp_path / "p.json"
    code, out, err = _run(capsys, "prune", f"{factories}:mlp", "--level", "0.5", "--plan", str(plan_file), "--plot", str(tmp_path / "w.png"))
    assert code == 1 and out == "" and "pip install matplotlib" in err and err.count("\n") == 1
    assert not plan_file.exists()
