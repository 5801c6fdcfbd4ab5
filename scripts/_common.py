"""Helpers shared by the scripts in this folder (``from _common import ...``: a script run as
``python scripts/NAME.py`` has this folder first on ``sys.path``)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from birnn_export.checkpoint import LoadedModel, load_model
from birnn_export.models import SequenceTagger, TaggerConfig


def bench_tagger(
    cell: str,
    size: int,
    layers: int,
    *,
    outputs: int = 8,
    uses_lengths: bool = True,
    input_size: int | None = None,
    proj_size: int = 0,
) -> SequenceTagger:
    """The benchmarks' model: a SequenceTagger with hidden size ``size`` (and input size, unless
    ``input_size`` is given), built right after ``torch.manual_seed(0)``, in eval mode."""
    torch.manual_seed(0)
    config = TaggerConfig(
        cell=cell,
        input_size=input_size or size,
        hidden_size=size,
        output_size=outputs,
        num_layers=layers,
        uses_lengths=uses_lengths,
        proj_size=proj_size,
    )
    return SequenceTagger(config).eval()


def timed_ms(call: Callable[[], object], runs: int, warmup: int = 5) -> list[float]:
    """Milliseconds of each of ``runs`` calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def trained_models(
    folder: Path, only: list[str] | None
) -> Iterator[tuple[str, dict[str, Any], LoadedModel]]:
    """Every trained model in ``folder`` (its ``models.json``, written by
    ``scripts/make_trained_models.py``) named in ``only`` (default: all), loaded: its name, its
    manifest entry and the model."""
    manifest = json.loads((folder / "models.json").read_text())
    for name, entry in manifest.items():
        if only and name not in only:
            continue
        loaded = load_model(
            folder / f"{name}.pt", model_class=entry["class"], model_kwargs=entry["kwargs"]
        )
        yield name, entry, loaded
