"""Trained models for the pruning-quality benchmark (issue 15): data, training, caching,
evaluation and fine-tuning helpers. No pruning here.

    python -m benchmarks.quality_models [--retrain]

trains both models (or loads them from ``benchmarks/.cache/``) and prints a markdown table:
model, parameters, train time, metric, unigram baseline. Progress goes to stderr. Needs the
``bench`` extra (scikit-learn) besides torch, transformers and safetensors.

**Digits CNN.** scikit-learn's bundled ``load_digits()`` (1797 greyscale 8x8 images, 10 classes),
split by ``train_test_split(test_size=0.3, stratify=labels, random_state=0)`` into 1257 training
and 540 test images; pixels divided by 16, then standardised with the training set's mean and
standard deviation (two scalars). :class:`DigitsCNN` (conv-BN-ReLU x3, max pool, global average
pool, two linear layers; no data-dependent Python, so torch.fx-traceable) is trained with Adam,
batches of 64 with random one-pixel shifts, cosine learning rate (see ``_DIGITS_RECIPE``).

**Byte-level Llama.** ``LlamaForCausalLM`` of :func:`lm_config` (vocabulary 256 = bytes, hidden
256, MLP 688, 4 layers, 8 query heads and 2 key/value heads: RMSNorm, GQA, SwiGLU; about 2.9 M
parameters, float32). The corpus (:func:`text_data`): every ``*.py`` file under the running
Python's ``sysconfig.get_paths()["stdlib"]`` except those with a directory component named
``site-packages``, ``dist-packages``, ``test``, ``tests`` or ``idlelib``, taken in order of their
relative POSIX path; each file's bytes (decoded as UTF-8 with ``errors="replace"`` and encoded
again, so always UTF-8) followed by one NUL byte. A file is held out when the first byte of
``hashlib.sha256(relative_posix_path.encode()).digest()`` is below 16 (about 1/16 of the files);
the evaluation text is the first 512 KiB of the held-out files' concatenation, the training text
the first 8 MiB of the other files' (with CPython 3.11.7: 674 files, 11.35 MB; 50 held out,
1.28 MB). Training: random 128-byte windows of the training text,
batches of 32, AdamW with warm-up and cosine decay, gradient clipping, a fixed number of steps
(450, ``_LM_RECIPE``: about 0.65 s a step, 5 minutes, on 2 idle CPU cores with
``torch.set_num_threads(2)``; much longer when the cores are shared). Reached: held-out perplexity
3.55 per byte against 27.6 for the unigram model; the digits CNN reaches 99.3% test accuracy in
about 8 s.
:func:`perplexity` is per byte, on fixed evenly spaced held-out windows; :func:`unigram_perplexity`
is the reference of a byte-frequency model fitted on the training text.

**Caching.** Weights are saved with ``safetensors.torch.save_file`` under ``benchmarks/.cache/``
as ``<model>-v<recipe version>-<data digest>.safetensors`` (the digest covers the data, so another
Python's standard library trains anew; bump ``DIGITS_VERSION`` / ``LM_VERSION`` when changing a
recipe) and loaded with
``safetensors.torch.load_file``, never pickle. Training is deterministic for a given machine and
thread count: seeded initialisation (inside ``torch.random.fork_rng``, so the caller's random state
is untouched) and seeded ``torch.Generator`` batches.

All functions that take a model leave it unchanged: evaluation restores every submodule's
``training`` flag, fine-tuning works on a ``copy.deepcopy``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import inspect
import math
import os
import resource
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.nn import functional as F
from transformers import LlamaConfig, LlamaForCausalLM

CACHE_DIR = Path(__file__).resolve().parent / ".cache"
"""Where trained weights are cached (git-ignored)."""

DIGITS_VERSION = 1
"""Bump when the digits recipe changes: the cache key includes it."""
LM_VERSION = 1
"""Bump when the language-model recipe or corpus definition changes."""

TRAIN_THREADS = 2
"""``torch.set_num_threads`` while training the cached models."""


class _DigitsRecipe(NamedTuple):
    seed: int = 0
    epochs: int = 40
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4


class _LMRecipe(NamedTuple):
    seed: int = 0
    steps: int = 450
    batch_size: int = 32
    seq_len: int = 128
    lr: float = 2e-3
    warmup: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    clip: float = 1.0
    log_every: int = 50


_DIGITS_RECIPE = _DigitsRecipe()
_LM_RECIPE = _LMRecipe()

_TRAIN_BYTES = 8 * 2**20
_EVAL_BYTES = 512 * 2**10
_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idlelib"})


# --------------------------------------------------------------------------------------------
# Shared helpers


class _Trained(NamedTuple):
    model: nn.Module
    seconds: float  # training time (read from the cache's metadata when loaded)
    cached: bool


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Every submodule in eval mode inside; each one's own ``training`` flag restored after."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
    except NotImplementedError:  # torch.export's modules: the mode was fixed at export
        pass
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


@contextmanager
def _threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _cosine(step: int, steps: int, warmup: int, min_ratio: float) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then cosine to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def parameter_count(model: nn.Module) -> int:
    """Number of parameter elements of ``model``."""
    return sum(p.numel() for p in model.parameters())


def _cache_path(name: str) -> Path:
    return CACHE_DIR / f"{name}.safetensors"


def _load_or_train(
    name: str, build: Callable[[], nn.Module], train: Callable[[nn.Module], None], retrain: bool
) -> _Trained:
    """The model ``build()`` makes, with weights from the cache file ``name`` if present (and
    not ``retrain``), else trained in place by ``train`` and saved. Returned in eval mode."""
    path = _cache_path(name)
    model = build()
    if path.exists() and not retrain:
        model.load_state_dict(load_file(path), strict=True)
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
        return _Trained(model.eval(), float(meta.get("train_seconds", "nan")), True)
    start = time.perf_counter()
    with _threads(TRAIN_THREADS):
        train(model)
    seconds = time.perf_counter() - start
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file(state, tmp, metadata={"train_seconds": f"{seconds:.1f}", "name": name})
    os.replace(tmp, path)
    return _Trained(model.eval(), seconds, False)


# --------------------------------------------------------------------------------------------
# Digits CNN


class Digits(NamedTuple):
    """The digits split: float32 images ``[N, 1, 8, 8]`` (standardised), int64 labels ``[N]``."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor


class DigitsCNN(nn.Module):
    """A small CNN for 8x8 digits: 1 -> 32 -> 64 (max pool) -> 128 channels, each conv followed
    by BatchNorm and ReLU; global average pool; linear 128 -> 64 -> 10."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.classifier(self.features(x))
        return out


def digits_data() -> Digits:
    """scikit-learn's digits, split 70/30 (stratified, seed 0), standardised with the training
    set's pixel mean and standard deviation."""
    from sklearn.datasets import load_digits  # type: ignore[import-untyped]
    from sklearn.model_selection import train_test_split  # type: ignore[import-untyped]

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    idx = torch.arange(len(labels)).numpy()
    train_idx, test_idx = train_test_split(
        idx, test_size=0.3, stratify=labels.numpy(), random_state=0
    )
    tr, te = torch.as_tensor(train_idx), torch.as_tensor(test_idx)
    mean, std = images[tr].mean(), images[tr].std()
    norm = (images - mean) / std
    return Digits(norm[tr].contiguous(), labels[tr], norm[te].contiguous(), labels[te])


def _shift(images: Tensor, fill: float, gen: torch.Generator) -> Tensor:
    """Each image shifted by -1, 0 or +1 pixel along each axis, the uncovered border set to
    ``fill`` (the standardised background)."""
    n = images.shape[0]
    padded = F.pad(images, (1, 1, 1, 1), value=fill)
    dy = torch.randint(0, 3, (n,), generator=gen)
    dx = torch.randint(0, 3, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(8)[None, :])[:, None, :, None].expand(n, 1, 8, 10)
    picked = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(8)[None, :])[:, None, None, :].expand(n, 1, 8, 8)
    return picked.gather(3, cols)


def _train_digits(model: nn.Module, data: Digits, steps: int, lr: float, seed: int) -> None:
    """Adam with cosine decay, augmented batches of ``_DIGITS_RECIPE.batch_size``; in place."""
    r = _DIGITS_RECIPE
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=r.weight_decay)
    n = data.train_images.shape[0]
    background = float(data.train_images.min())  # a blank pixel, standardised
    model.train()
    order = torch.randperm(n, generator=gen)
    pos = 0
    for step in range(steps):
        if pos + r.batch_size > n:
            order, pos = torch.randperm(n, generator=gen), 0
        batch = order[pos : pos + r.batch_size]
        pos += r.batch_size
        for group in opt.param_groups:
            group["lr"] = lr * _cosine(step, steps, 0, 0.0)
        x = _shift(data.train_images[batch], background, gen)
        loss = F.cross_entropy(model(x), data.train_labels[batch])
        opt.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        opt.step()


def _digits_name(data: Digits) -> str:
    h = hashlib.sha256()
    for t in data:
        h.update(t.numpy().tobytes())
    return f"digits_cnn-v{DIGITS_VERSION}-{h.hexdigest()[:12]}"


def _build_digits() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_DIGITS_RECIPE.seed)
        return DigitsCNN()


def _digits_trained(retrain: bool = False) -> _Trained:
    data = digits_data()
    r = _DIGITS_RECIPE
    steps = r.epochs * (data.train_images.shape[0] // r.batch_size)

    def train(model: nn.Module) -> None:
        _train_digits(model, data, steps, r.lr, r.seed)

    return _load_or_train(_digits_name(data), _build_digits, train, retrain)


def digits_cnn() -> nn.Module:
    """The trained :class:`DigitsCNN` (from the cache if present, else trained and cached), in
    eval mode."""
    return _digits_trained().model


def digits_accuracy(model: nn.Module, data: Digits, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on the test split, in eval mode, without gradients."""
    correct = 0
    with _eval_mode(model), torch.no_grad():
        for i in range(0, data.test_images.shape[0], batch_size):
            logits = model(data.test_images[i : i + batch_size])
            correct += int((logits.argmax(1) == data.test_labels[i : i + batch_size]).sum())
    return correct / data.test_images.shape[0]


def fine_tune_digits(
    model: nn.Module, data: Digits, steps: int, lr: float, *, seed: int = 1
) -> nn.Module:
    """A copy of ``model`` fine-tuned for ``steps`` Adam steps (cosine decay from ``lr``, the
    training recipe's augmented batches); returned in eval mode. ``model`` is unchanged."""
    tuned = copy.deepcopy(model)
    _train_digits(tuned, data, steps, lr, seed)
    return tuned.eval()


def digits_calibration(data: Digits, batches: int = 4, batch_size: int = 64) -> list[Tensor]:
    """``batches`` batches of training images ``[batch_size, 1, 8, 8]`` (no labels), drawn
    without replacement in a fixed order (seed 0); needs ``batches * batch_size <= 1257``."""
    n = data.train_images.shape[0]
    if batches * batch_size > n:
        raise ValueError(f"{batches} x {batch_size} exceeds the {n} training images")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    return [
        data.train_images[order[i * batch_size : (i + 1) * batch_size]].clone()
        for i in range(batches)
    ]


# --------------------------------------------------------------------------------------------
# Byte-level Llama


class TextData(NamedTuple):
    """Training and held-out text as uint8 byte tensors (1-D)."""

    train: Tensor
    eval: Tensor


def _corpus_files() -> tuple[Path, list[str]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    rels = [
        p.relative_to(root).as_posix()
        for p in root.rglob("*.py")
        if p.is_file() and not _EXCLUDED_DIRS.intersection(p.relative_to(root).parts[:-1])
    ]
    return root, sorted(rels)


def _held_out(rel: str) -> bool:
    return hashlib.sha256(rel.encode()).digest()[0] < 16


def text_data() -> TextData:
    """The standard-library corpus (see the module docstring): the first 8 MiB of the training
    files, the first 512 KiB of the held-out files, as uint8 tensors."""
    root, rels = _corpus_files()
    parts: dict[bool, list[bytes]] = {True: [], False: []}
    sizes = {True: 0, False: 0}
    limits = {True: _EVAL_BYTES, False: _TRAIN_BYTES}
    for rel in rels:
        held = _held_out(rel)
        if sizes[held] >= limits[held]:
            continue
        raw = (root / rel).read_bytes().decode("utf-8", errors="replace").encode("utf-8")
        parts[held].append(raw + b"\0")
        sizes[held] += len(raw) + 1

    def tensor(held: bool) -> Tensor:
        blob = b"".join(parts[held])[: limits[held]]
        if len(blob) < limits[held]:
            raise RuntimeError(f"corpus too small: {len(blob)} < {limits[held]} bytes")
        return torch.frombuffer(bytearray(blob), dtype=torch.uint8)

    return TextData(tensor(False), tensor(True))


def lm_config() -> LlamaConfig:
    """The byte-level Llama's configuration."""
    return LlamaConfig(
        vocab_size=256,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )


def _accepts_use_cache(model: nn.Module) -> bool:
    try:
        return "use_cache" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _logits(model: nn.Module, ids: Tensor) -> Tensor:
    """``model(ids)``'s logits: the output itself, its ``.logits``, or its first element."""
    out: object = model(ids, use_cache=False) if _accepts_use_cache(model) else model(ids)
    if not isinstance(out, Tensor):
        out = getattr(out, "logits", None) if hasattr(out, "logits") else _first(out)
    if not isinstance(out, Tensor):
        raise TypeError(f"cannot find logits in the output of {type(model).__name__}")
    return out


def _first(out: object) -> object:
    return out[0] if isinstance(out, (tuple, list)) and out else None


def _windows(text: Tensor, starts: Tensor, seq_len: int) -> Tensor:
    """int64 ``[len(starts), seq_len]`` windows of ``text`` beginning at ``starts``."""
    return text[starts[:, None] + torch.arange(seq_len)[None, :]].long()


def _eval_starts(data: TextData, sequences: int, seq_len: int) -> Tensor:
    last = data.eval.numel() - seq_len
    if sequences < 1 or last < 0:
        raise ValueError(f"{sequences} windows of {seq_len} bytes do not fit the held-out text")
    return torch.linspace(0, last, sequences, dtype=torch.float64).round().long()


def _lm_loss(model: nn.Module, ids: Tensor) -> Tensor:
    """Mean next-byte cross-entropy over positions 1.. of ``ids``."""
    logits = _logits(model, ids)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def perplexity(
    model: nn.Module,
    data: TextData,
    sequences: int = 256,
    seq_len: int = 128,
    batch_size: int = 32,
) -> float:
    """Per-byte perplexity of ``model`` on ``sequences`` held-out windows of ``seq_len`` bytes,
    evenly spaced over ``data.eval``: ``exp`` of the mean cross-entropy of bytes 2..seq_len given
    the bytes before them in the window. Eval mode, no gradients; ``model`` is called as
    ``model(ids)`` (with ``use_cache=False`` where its forward names that parameter) and may
    return logits or an object with ``.logits``."""
    starts = _eval_starts(data, sequences, seq_len)
    total, count = 0.0, 0
    with _eval_mode(model), torch.no_grad():
        for i in range(0, sequences, batch_size):
            ids = _windows(data.eval, starts[i : i + batch_size], seq_len)
            logits = _logits(model, ids)[:, :-1].double()
            nll = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"
            )
            total += float(nll)
            count += ids[:, 1:].numel()
    return math.exp(total / count)


def unigram_perplexity(data: TextData, sequences: int = 256, seq_len: int = 128) -> float:
    """Reference: the perplexity :func:`perplexity` would report for a model predicting every
    byte from the training text's byte frequencies (add-one smoothed)."""
    counts = torch.bincount(data.train.long(), minlength=256).double() + 1.0
    logp = (counts / counts.sum()).log()
    ids = _windows(data.eval, _eval_starts(data, sequences, seq_len), seq_len)[:, 1:]
    return math.exp(float(-logp[ids].mean()))


def _train_lm(
    model: nn.Module,
    data: TextData,
    steps: int,
    lr: float,
    *,
    batch_size: int,
    seq_len: int,
    seed: int,
    warmup: int,
    log_every: int,
) -> None:
    """AdamW with warm-up and cosine decay on random training windows; in place."""
    r = _LM_RECIPE
    gen = torch.Generator().manual_seed(seed)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": r.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.95),
    )
    model.train()
    high = data.train.numel() - seq_len + 1
    start, running = time.perf_counter(), 0.0
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * _cosine(step, steps, warmup, r.min_lr_ratio)
        ids = _windows(data.train, torch.randint(0, high, (batch_size,), generator=gen), seq_len)
        loss = _lm_loss(model, ids)
        opt.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        nn.utils.clip_grad_norm_(model.parameters(), r.clip)
        opt.step()
        running += float(loss.detach())
        if log_every and ((step + 1) % log_every == 0 or step + 1 == steps):
            n = (step % log_every) + 1
            _log(
                f"  step {step + 1}/{steps}  loss {running / n:.3f}  "
                f"({time.perf_counter() - start:.0f} s)"
            )
            running = 0.0


def _lm_name(data: TextData) -> str:
    h = hashlib.sha256(data.train.numpy().tobytes())
    h.update(data.eval.numpy().tobytes())
    return f"byte_lm-v{LM_VERSION}-{h.hexdigest()[:12]}"


def _build_lm() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_LM_RECIPE.seed)
        return LlamaForCausalLM(lm_config())


def _lm_trained(retrain: bool = False) -> _Trained:
    data = text_data()
    r = _LM_RECIPE

    def train(model: nn.Module) -> None:
        _log(f"training the byte-level Llama: {r.steps} steps of {r.batch_size} x {r.seq_len}")
        _train_lm(
            model,
            data,
            r.steps,
            r.lr,
            batch_size=r.batch_size,
            seq_len=r.seq_len,
            seed=r.seed,
            warmup=r.warmup,
            log_every=r.log_every,
        )

    return _load_or_train(_lm_name(data), _build_lm, train, retrain)


def byte_lm() -> nn.Module:
    """The trained byte-level ``LlamaForCausalLM`` (from the cache if present, else trained and
    cached), in eval mode."""
    return _lm_trained().model


def fine_tune_lm(
    model: nn.Module,
    data: TextData,
    steps: int,
    lr: float,
    *,
    batch_size: int = 16,
    seq_len: int = 128,
    seed: int = 1,
) -> nn.Module:
    """A copy of ``model`` fine-tuned for ``steps`` AdamW steps on random training windows
    (cosine decay from ``lr``, a tenth of the steps of warm-up); returned in eval mode. ``model``
    is unchanged. ``lr`` around 1e-4 suits the trained model (its own schedule ends at 2e-4)."""
    tuned = copy.deepcopy(model)
    _train_lm(
        tuned,
        data,
        steps,
        lr,
        batch_size=batch_size,
        seq_len=seq_len,
        seed=seed,
        warmup=max(1, steps // 10),
        log_every=0,
    )
    return tuned.eval()


def lm_calibration(
    data: TextData, batches: int = 4, batch_size: int = 8, seq_len: int = 128
) -> list[Tensor]:
    """``batches`` int64 batches ``[batch_size, seq_len]`` of training-text windows at fixed
    random offsets (seed 0)."""
    gen = torch.Generator().manual_seed(0)
    high = data.train.numel() - seq_len + 1
    return [
        _windows(data.train, torch.randint(0, high, (batch_size,), generator=gen), seq_len)
        for _ in range(batches)
    ]


# --------------------------------------------------------------------------------------------
# Entry point


def main(argv: list[str] | None = None) -> int:
    """Train (or load) both models and print their table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--retrain", action="store_true", help="ignore and overwrite the cache")
    args = parser.parse_args(argv)

    _log("digits CNN ...")
    digits = _digits_trained(args.retrain)
    acc = digits_accuracy(digits.model, digits_data())
    _log("byte-level Llama ...")
    lm = _lm_trained(args.retrain)
    text = text_data()
    ppl = perplexity(lm.model, text)
    uni = unigram_perplexity(text)

    def source(t: _Trained) -> str:
        return f"{t.seconds:.1f}" + (" (cached)" if t.cached else "")

    print("| model | parameters | train time (s) | metric | unigram baseline |")
    print("|---|---:|---:|---|---|")
    print(
        f"| digits CNN | {parameter_count(digits.model):,} | {source(digits)} "
        f"| test accuracy {acc:.4f} | |"
    )
    print(
        f"| byte-level Llama | {parameter_count(lm.model):,} | {source(lm)} "
        f"| held-out perplexity {ppl:.4f} / byte | {uni:.4f} / byte |"
    )
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    _log(
        f"train bytes {text.train.numel():,}, eval bytes {text.eval.numel():,}; "
        f"peak RSS {peak_mib:.0f} MiB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
