"""What verification compares against: the reference model (float64 by default, torch's own
layers on packed input for a bare layer) and eager PyTorch in the graph's precision (the noise
floor), run side by side on every case."""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from birnn_export._layers import (
    LayersUnavailable,
    ReferenceLayers,
)
from birnn_export._sweep import Case, case_feed, within
from birnn_export.errors import BiRNNExportError, one_line
from birnn_export.spec import (
    GraphSpec,
    make_feed,
)

# -- references ------------------------------------------------------------------------------


#: Runner names of saved golden outputs (Polygraphy RunResults).
GOLDEN_REFERENCE = "reference-float64"
GOLDEN_EAGER = "eager"


@dataclass
class _Side:
    """One reference model: its runner and, where layers are compared, their capture."""

    runner: Any
    layers: ReferenceLayers | None = None


#: How many output values the determinism check sees before it stops running each case twice.
DETERMINISM_VALUES = 1000


class References:
    """The reference (float64 by default) and eager PyTorch in the graph's precision, whose
    error against the reference is the noise floor."""

    def __init__(
        self,
        module: Any,
        spec: GraphSpec,
        *,
        ref_dtype: str,
        eager_dtype: str | None,
        like: str | None = None,
        other_file: str | None = None,
    ) -> None:
        """``like``: the graph whose spec lends its inputs to a foreign graph's (``--like``),
        which a model failing on them is told to check. ``other_file``: the note that the model
        is not the file the graph was exported from, which such a failure leads with (users47
        F8: it was told to declare the inputs)."""
        self.spec, self.module, self.like, self.other_file = spec, module, like, other_file
        self.sides = {
            key: _side(module, spec, dtype)
            for key, dtype in (("reference", ref_dtype), ("eager", eager_dtype))
            if dtype is not None
        }
        self.layer_reason: str | None = None
        self.checked_values = 0  # output values seen equal twice (see _check_determinism)

    def attach_layers(self, paths: Sequence[str]) -> None:
        for side in self.sides.values():
            side.layers = ReferenceLayers(side.runner.model, paths)

    def __enter__(self) -> References:
        for side in self.sides.values():
            side.runner.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        for side in self.sides.values():
            side.runner.deactivate()
            if side.layers is not None:
                side.layers.close()

    def reference_only(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The reference's outputs on ``feed`` (its layers are not captured)."""
        side = self.sides["reference"]
        if side.layers is not None:
            side.layers.clear()
        try:
            return side.runner.infer(feed)
        finally:
            if side.layers is not None:
                side.layers.clear()

    def _shortest(self, side: _Side, case: Case) -> int | None:
        """The shortest time, up to the example's, at which ``side`` runs ``case`` where it
        failed at ``case.seq`` (a max pool's window longer than the input); ``None`` where it
        runs at none, or ``case`` is not that short."""
        for steps in range(case.seq + 1, within(self.spec, self.spec.example_seq) + 1):
            try:
                side.runner.infer(case_feed(self.spec, dataclasses.replace(case, seq=steps)))
            except Exception:  # the user's model, still failing
                continue
            return steps
        return None

    def run(self, feed: Mapping[str, np.ndarray], case: Case) -> dict[str, Any]:
        """Outputs (and layers) of every side: ``{"reference": ..., "eager": ...,
        "reference_layers": ..., "eager_layers": ..., "layer_lengths": ...,
        "reference_decodes": ..., "eager_decodes": ..., "reference_rerun": ...,
        "eager_rerun": ...}`` (the CRF decodes each side ran: :meth:`ReferenceLayers.decodes`;
        each side's layers to run again on other inputs: :meth:`ReferenceLayers.snapshot`)."""
        out: dict[str, Any] = {}
        for key, side in self.sides.items():
            if side.layers is not None:
                side.layers.clear()
            recording = side.layers.decodes() if side.layers is not None else None
            try:
                with recording or contextlib.nullcontext([]) as decodes:
                    out[key] = side.runner.infer(feed)
                out[f"{key}_decodes"] = decodes
            except Exception as exc:  # the user's model: any failure means it does not fit
                sizes = case.sizes(self.spec)
                shape = ", ".join(f"{name} {size}" for name, size in sizes.items())
                shortest = self._shortest(side, case)
                time, (_, opt, high) = self.spec.time_dim, self.spec.seq_range
                table = _short_table(side.runner, feed, exc, sizes, self.spec, self.like)
                if case.lengths_mode == "loaded":  # the file's inputs, not the graph's (users60 F6)
                    raise BiRNNExportError(
                        f"the reference model failed on saved case {case.seed}'s inputs "
                        f"({shape}): {one_line(exc)}; {_empty_rows(self.spec, feed)}the model "
                        "does not take them as they were saved: check the file"
                    ) from None
                if self.other_file is not None:
                    raise BiRNNExportError(
                        f"the reference model failed on the graph's inputs ({shape}): "
                        f"{one_line(exc)}; {table.removesuffix('else ')}{self.other_file} "
                        "(verify against the model the graph was exported from)"
                    ) from None
                if self.like is not None:  # review27 L4: they are --like's, not the graph's
                    raise BiRNNExportError(
                        f"the reference model failed on the inputs {self.like} declares "
                        f"(--like; {shape}): {one_line(exc)}; {table}give as --like a graph "
                        "birnn-export wrote from this model"
                    ) from None
                raise BiRNNExportError(
                    f"the reference model failed on the graph's inputs ({shape}): "
                    f"{one_line(exc)}; "
                    + (
                        f"it runs from {time} {shortest}: where that is its shortest input (a "
                        "pooled or strided front end), give it as the minimum, --range "
                        f"{time}={shortest},{max(opt, shortest)},{high}; else "
                        if shortest is not None
                        else table
                    )
                    + "the model refuses inputs the graph declares (or it is not the model the "
                    "graph came from): export it again declaring them as it takes them (--input, "
                    "and --range DIM=MIN,OPT,MAX for the sizes it accepts; Python: inputs=[...] "
                    "and ranges={DIM: (MIN, OPT, MAX)})"
                ) from None
            if side.layers is not None and self.layer_reason is None:
                try:
                    out[f"{key}_layers"], out["layer_lengths"] = side.layers.layers()
                    out[f"{key}_rerun"] = side.layers.snapshot()
                except LayersUnavailable as exc:
                    self.layer_reason = str(exc)
        if self.checked_values < DETERMINISM_VALUES:
            self._check_determinism(feed, out["reference"])
            self.checked_values += sum(np.asarray(v).size for v in out["reference"].values())
        return out

    def _check_determinism(
        self, feed: Mapping[str, np.ndarray], first: Mapping[str, np.ndarray]
    ) -> None:
        """The reference must give the same outputs twice: a model with random operations in
        eval mode has no fixed answer to compare an engine with (and its large "noise" would
        let anything pass). Checked on the first cases until :data:`DETERMINISM_VALUES`
        values were seen: a first case of 4 values dropped by the same dropout mask twice one
        time in five."""
        again = self.reference_only(feed)
        for name, value in first.items():
            if not np.array_equal(np.asarray(value), np.asarray(again[name]), equal_nan=True):
                worst = float(np.max(np.abs(np.asarray(value) - np.asarray(again[name]))))
                raise BiRNNExportError(
                    f"the model's output {name!r} differs between two runs on the same inputs "
                    f"(by {worst:.3g}): it is not deterministic in eval mode (random operations, "
                    "or dropout left on?), so no engine can be judged against it"
                    + _dropout_always_on(self.module)
                )


def _side(module: Any, spec: GraphSpec, dtype: str) -> _Side:
    import torch

    from birnn_export.conversion import copied as copied_model
    from birnn_export.runners import TorchRunner

    # a torch.compile'd model runs eagerly here: the reference gains nothing from a compile,
    # and verification's hooks (a CRF's decode recorded) stay out of compiled graphs
    if type(module).__name__ == "OptimizedModule" and hasattr(module, "_orig_mod"):
        module = module._orig_mod  # (its class by name: importing torch._dynamo takes 2 s)
    copied = copied_model(module).eval().to(getattr(torch, dtype))
    runner = TorchRunner(
        copied, [t.name for t in spec.inputs], [t.name for t in spec.outputs], dtype=dtype
    )
    return _Side(runner)


def reference_module(reference: Any, spec: GraphSpec) -> tuple[Any, dict[str, str]]:
    """The module to run as reference, and how the graph's layer paths map into it: a bare
    ``nn.RNN/LSTM/GRU`` is wrapped to run on ``pack_padded_sequence`` input (torch's own
    reference for a graph that takes lengths)."""
    from torch import nn

    paths = {
        str(layer.get("path", "")): str(layer.get("path", "")) for layer in spec.recurrent_layers
    }
    if isinstance(reference, nn.RNNBase) and spec.lengths_input is not None:
        return _packed_reference(reference, spec.padding_value), {p: "layer" for p in paths}
    return reference, paths


def float64_fails(module: Any, spec: GraphSpec) -> str | None:
    """Why ``module`` cannot run in float64 on the graph's inputs (``None`` if it can)."""
    import torch

    from birnn_export._packing import any_order_packing
    from birnn_export.conversion import copied as copied_model

    probe = make_feed(spec, 2, within(spec, 3), seed=0)
    try:
        copied = copied_model(module).eval().to(torch.float64)
        args = []
        for tensor in spec.inputs:
            value = torch.from_numpy(np.ascontiguousarray(probe[tensor.name]))
            args.append(value.to(torch.float64) if value.is_floating_point() else value)
        # rows in any order, as the reference runs them (enforce_sorted=True packing included)
        with torch.inference_mode(), any_order_packing(copied):
            copied(*args)
    except Exception as exc:  # any failure: the model is not float64-clean
        return one_line(exc)
    return None


def root_bidirectional_hidden(*modules: Any) -> int | None:
    """``hidden_size`` if one of ``modules`` is itself a bidirectional recurrent layer."""
    from torch import nn

    from birnn_export.modules import BiRNN

    for module in modules:
        if isinstance(module, (BiRNN, nn.RNNBase)) and module.bidirectional:
            return int(module.hidden_size)
    return None


def _packed_reference(layer: Any, padding_value: float) -> Any:
    """Wrap a bare ``nn.RNN/LSTM/GRU`` to run on ``pack_padded_sequence`` input: torch's own
    reference for a graph that takes lengths."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    class PackedReference(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = layer

        def forward(self, x: Any, lengths: Any) -> Any:
            first = self.layer.batch_first
            packed = pack_padded_sequence(
                x, lengths.cpu().long(), batch_first=first, enforce_sorted=False
            )
            out, hidden = self.layer(packed)
            out, _ = pad_packed_sequence(
                out,
                batch_first=first,
                padding_value=padding_value,
                total_length=x.shape[1 if first else 0],
            )
            return out, hidden

    return PackedReference()


def _short_table(
    runner: Any,
    feed: Mapping[str, np.ndarray],
    exc: Exception,
    sizes: Mapping[str, int],
    spec: GraphSpec,
    like: str | None = None,
) -> str:
    """Where the model failed on an Embedding's lookup (an index out of range), which table and
    why, from a run again with each table's ids watched: a table indexed by position (a
    sentence's place in a document, 100 rows) caps the dim whose size its index reached, and the
    message names the range to declare (users35); ids past a vocabulary's rows are the graph's
    (review22: a smaller vocabulary was called a position table)."""
    import torch

    model = getattr(runner, "running", None)
    if not isinstance(exc, IndexError) or not isinstance(model, torch.nn.Module):
        return ""
    over: list[tuple[str, int, int]] = []
    tables = {m: n for n, m in model.named_modules() if isinstance(m, torch.nn.Embedding)}

    def watch(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        ids = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if ids is not None and ids.numel() and int(ids.max()) >= module.num_embeddings:
            over.append((tables[module], module.num_embeddings, int(ids.max())))

    hooks = [table.register_forward_pre_hook(watch) for table in tables]
    try:
        with contextlib.suppress(Exception):
            runner.infer(feed)
    finally:
        for hook in hooks:
            hook.remove()
    if not over:
        return ""
    name, rows, top = over[0]
    reached = [d for d, size in sizes.items() if d != spec.batch_dim and size == top + 1]
    if like is not None:  # the ids --like's spec draws, whatever the dims
        return (
            f"nn.Embedding {name!r} has {rows} rows and was given id {top} from {like}'s "
            "inputs (a smaller vocabulary: is it a graph of this model?); "
        )
    if not reached:
        return (
            f"nn.Embedding {name!r} has {rows} rows and was given id {top} from the graph's "
            "inputs (a smaller vocabulary: is it the model this graph was exported from?); else "
        )
    low, opt, _ = spec.ranges().get(reached[0], (1, rows, rows))
    return (
        f"nn.Embedding {name!r} has {rows} rows, fewer than {reached[0]}'s {top + 1}: where it "
        f"is indexed by position, {reached[0]} goes up to {rows}: --range "
        f"{reached[0]}={low},{min(opt, rows)},{rows}; else "
    )


def resolve_models(
    model: Any, reference: Any, *, decodes: bool = True
) -> tuple[Any, Any, str, str | None]:
    """(converted model, reference module, how the reference was chosen, source sha256)."""
    sha = None
    if hasattr(model, "model") and hasattr(model, "source"):  # a LoadedModel
        sha = getattr(model, "sha256", None)
        converted = model.model
        if reference is None:
            reference = getattr(model, "original", None) or converted
    else:
        converted = model
        reference = model if reference is None else reference
    _reserve_hook_ids(converted, reference)
    return converted, reference, describe_reference(reference, converted, decodes), sha


def _reserve_hook_ids(*models: Any) -> None:
    """Hook ids past the models' own, before verification hooks their layers."""
    import torch

    from birnn_export.conversion import reserve_hook_ids

    for model in models:
        if isinstance(model, torch.nn.Module):
            reserve_hook_ids(model)


#: A functional dropout call: it drops in eval mode too unless given ``training=``.
_FUNCTIONAL_DROPOUT = re.compile(r"\b(?:F|functional)\.(?:alpha_|feature_alpha_)?dropout[123]?d?\(")


def _dropout_always_on(model: Any) -> str:
    """``; at FILE:LINE (code) F.dropout ...``: the first functional dropout call in the
    model's own classes given no ``training=`` (``F.dropout(x, p)`` trains by default), or
    nothing."""
    import inspect
    import os

    seen: set[type] = set()
    for module in getattr(model, "modules", lambda: [])():
        kind = type(module)
        if kind in seen or kind.__module__.split(".")[0] in ("torch", "birnn_export"):
            continue
        seen.add(kind)
        try:
            lines, first = inspect.getsourcelines(kind)
            where = os.path.basename(inspect.getsourcefile(kind) or "")
        except (OSError, TypeError):
            continue
        for number, line in enumerate(lines, first):
            code = line.split("#")[0]
            if _FUNCTIONAL_DROPOUT.search(code) and "training" not in code:
                return (
                    f"; at {where}:{number} ({code.strip()[:100]}) a functional dropout is given "
                    "no training=, and drops in eval mode too: pass training=self.training"
                )
    return ""


def describe_reference(reference: Any, converted: Any, decodes: bool = True) -> str:
    """The reference in words. ``decodes``: the graph holds a CRF's decode (a CRF held for the
    loss alone, decoded outside forward, is not named)."""
    from torch import nn

    from birnn_export.crf import is_torchcrf

    torchcrf = decodes and any(is_torchcrf(m) for m in reference.modules())
    # else its decode is a CRFDecoder's, made in forward too (a hand-written CRF's hook)
    crf = " and torchcrf's decode" if torchcrf else " and CRFDecoder's decode" if decodes else ""
    if any(isinstance(m, nn.RNNBase) for m in reference.modules()):
        if getattr(reference, "rebuilt", False):
            return (
                f"torch's built-in layers{crf} (the model rebuilt from the file's weights; "
                "--model-class checks your own class's forward)"
            )
        return f"torch's built-in layers{crf} (the original model)"
    if reference is converted and getattr(reference, "converted_from", None):
        # a bare layer takes no lengths: its BiRNN, proven equal to it (users50 F8)
        return (
            f"the BiRNN converted from the bare {reference.converted_from}, equal to it on a "
            "PackedSequence (a bare layer takes no lengths)"
        )
    if reference is converted:
        return "the model (nothing needed conversion)"
    return "the given reference model"


def _empty_rows(spec: Any, feed: Mapping[str, np.ndarray]) -> str:
    """Which rows of saved inputs have no steps (torch's packing refuses them), or nothing."""
    lengths = spec.feed_lengths(feed)
    empty = [] if lengths is None else np.flatnonzero(lengths.reshape(-1) == 0).tolist()
    if not empty:
        return ""
    rows = ", ".join(map(str, empty[:5])) + (", ..." if len(empty) > 5 else "")
    return (
        f"row{'s' * (len(empty) > 1)} {rows} of the batch {'have' if len(empty) > 1 else 'has'} "
        "0 steps, which pack_padded_sequence refuses; "
    )
