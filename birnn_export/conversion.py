"""Swap torch's built-in recurrent layers for :class:`~birnn_export.modules.BiRNN`."""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from birnn_export._process import one_at_a_time
from birnn_export.crf import CRFDecoder, is_torchcrf
from birnn_export.errors import ConversionError, UsageError
from birnn_export.modules import BiRNN, _cell_of

logger = logging.getLogger(__name__)

_BUILTIN = (nn.RNN, nn.LSTM, nn.GRU)


@dataclass(frozen=True)
class Replacement:
    """One layer that :func:`convert` replaced."""

    path: str
    original: str
    cell: str
    num_layers: int
    bidirectional: bool
    #: A CRF's decode is in the graph (``False`` where forward returns the emissions and the
    #: decode runs outside it).
    decoded: bool = True

    def __str__(self) -> str:
        if self.cell == "crf" and not self.decoded:
            return (
                f"{self.path}: {self.original} -> CRFDecoder, not in the graph (forward does "
                "not decode: its emissions are exported)"
            )
        if self.cell == "crf":
            return f"{self.path}: {self.original} -> CRFDecoder (Viterbi as ONNX Scans)"
        direction = "bidirectional" if self.bidirectional else "unidirectional"
        layers = f"{self.num_layers} layer{'s' if self.num_layers > 1 else ''}"
        return f"{self.path}: nn.{self.original} ({layers}, {direction}) -> BiRNN"


def find_recurrent_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(path, layer)`` of every built-in or manual recurrent layer, outermost first."""
    return [
        (name or "<root>", mod)
        for name, mod in model.named_modules()
        if isinstance(mod, (*_BUILTIN, BiRNN))
    ]


def _weight_norm_hooks(module: nn.Module) -> list[Any]:
    """The hooks that compute a weight of ``module`` before every forward: the older
    ``torch.nn.utils.weight_norm`` and ``spectral_norm`` (the APIs before parametrizations)
    and ``torch.nn.utils.prune``'s masks (``weight_orig * weight_mask``)."""
    from torch.nn.utils.prune import BasePruningMethod
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    kinds = (WeightNorm, SpectralNorm, BasePruningMethod)
    return [h for h in module._forward_pre_hooks.values() if isinstance(h, kinds)]


def _hook_weight(module: nn.Module, hook: Any) -> torch.Tensor:
    """The weight ``hook`` computes for ``module`` in eval mode."""
    from torch.nn.utils.prune import BasePruningMethod
    from torch.nn.utils.spectral_norm import SpectralNorm

    if isinstance(hook, SpectralNorm):
        return hook.compute_weight(module, do_power_iteration=False)
    if isinstance(hook, BasePruningMethod):
        return hook.apply_mask(module)
    return hook.compute_weight(module)


def _hook_name(hook: Any) -> str:
    """The name of the weight ``hook`` computes (prune's hooks keep it as ``_tensor_name``)."""
    return getattr(hook, "_tensor_name", None) or hook.name


def _remove_hook(module: nn.Module, hook: Any) -> None:
    """``module`` with the weight ``hook`` computes a plain parameter, its value in eval mode."""
    from torch.nn.utils import prune
    from torch.nn.utils.spectral_norm import SpectralNorm

    if isinstance(hook, SpectralNorm):
        nn.utils.remove_spectral_norm(module, hook.name)
    elif isinstance(hook, prune.BasePruningMethod):
        prune.remove(module, _hook_name(hook))
    else:
        nn.utils.remove_weight_norm(module, hook.name)


def _reparametrized(layer: nn.Module) -> bool:
    """Whether ``layer``'s weights are computed from others (a parametrization, or the older
    weight_norm hook): :func:`_folded` makes them plain."""
    return nn.utils.parametrize.is_parametrized(layer) or bool(_weight_norm_hooks(layer))


@contextlib.contextmanager
def modes_kept(*models: Any) -> Iterator[None]:
    """While inside, ``models`` (modules; anything else is passed over) may be put in eval mode:
    on leaving, each of their modules is in the mode it was in, so a training script that
    exports between epochs trains on with dropout and BatchNorm as they were (users50 F1)."""
    modes = [
        (module, module.training)
        for model in models
        if isinstance(model, nn.Module)
        for module in model.modules()
    ]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def copied(model: nn.Module) -> nn.Module:
    """A deep copy of ``model``. A layer whose weights are computed (weight_norm, either API)
    holds them with their autograd history, which deepcopy refuses: they are recomputed
    without it first (as the layer's next forward recomputes them), in eval mode: in training
    mode spectral_norm would run a power iteration and change the model's own ``u`` and
    ``v``, so the weights exported would be neither the file's nor those of the model run
    in eval mode."""
    modes = [module.training for module in model.modules()]
    with modes_kept(model), torch.no_grad():
        model.eval()
        for module in model.modules():
            # the last hook first: a later hook computes what an earlier one reads (prune on
            # weight_norm's _v)
            for hook in reversed(_weight_norm_hooks(module)):
                setattr(module, _hook_name(hook), _hook_weight(module, hook))
            if isinstance(module, nn.RNNBase) and _reparametrized(module):
                module._init_flat_weights()
        copy_ = copy.deepcopy(model)
    for module, training in zip(copy_.modules(), modes, strict=True):
        module.training = training
    return copy_


def _folded(layer: nn.Module) -> nn.Module:
    """``layer`` (a copy) with each computed weight (``weight_norm``, ``spectral_norm``, as a
    parametrization or the older weight_norm hook) replaced by its value in eval mode, the
    one every eval-mode forward computes: the layer is a plain built-in layer again."""
    from torch.nn.utils import parametrize

    for hook in reversed(_weight_norm_hooks(layer)):  # the last first, as in copied()
        _remove_hook(layer, hook)
    if not parametrize.is_parametrized(layer):
        return layer
    # A copy shares its parametrized class (which holds the weights' properties) with the
    # original, and removing a parametrization deletes its property from the class: the
    # copy gets a class of its own first, so the original keeps its weights.
    shared = type(layer)
    namespace = {k: v for k, v in vars(shared).items() if k not in ("__dict__", "__weakref__")}
    layer.__class__ = type(shared.__name__, shared.__bases__, namespace)
    layer.parametrizations.eval()  # spectral_norm's power iteration runs in training mode only
    for name in list(layer.parametrizations):  # with grad: each weight a parameter again
        parametrize.remove_parametrizations(layer, name, leave_parametrized=True)
    return layer


def _check_convertible(path: str, layer: nn.Module) -> None:
    if type(layer) not in _BUILTIN:
        raise ConversionError(
            f"{path}: {type(layer).__name__} subclasses {type(layer).__mro__[1].__name__} and may "
            "override forward(); replace it with a plain nn.RNN/nn.LSTM/nn.GRU or a BiRNN"
        )
    params = dict(layer.named_parameters(recurse=False))
    assigned = [n for n in getattr(layer, "_flat_weights_names", ()) if n not in params]
    if assigned:  # weight drop (AWD-LSTM, fastai's WeightDropout) assigns them in forward
        raw = [n for n in params if n.endswith("_raw")]
        held = f" (its parameters hold {', '.join(raw)})" if raw else ""
        what = "is not a parameter" if len(assigned) == 1 else "are not parameters"
        raise ConversionError(
            f"{path}: {', '.join(assigned)} {what} of the layer but assigned to it in "
            f"forward{held}, as weight "
            "drop (AWD-LSTM, fastai's WeightDropout) does; only parameters can be converted: "
            "for export, build the model with a plain layer holding those weights (the "
            "'_raw' ones: dropout leaves them as they are in eval) and without the weight drop"
        )
    for name, param in layer.named_parameters():
        if param.is_meta:
            raise ConversionError(
                f"{path}: parameter {name} is on the meta device; load weights first"
            )


def find_crfs(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(path, layer)`` of every ``torchcrf.CRF`` in ``model``."""
    return [(name or "<root>", mod) for name, mod in model.named_modules() if is_torchcrf(mod)]


def require_module(model: Any) -> None:
    """Refuse what is not a module (a file's path: users50 F4, an AttributeError before)."""
    if not isinstance(model, nn.Module):
        raise UsageError(
            f"model: expected a torch.nn.Module, got {type(model).__name__} {model!r:.80}; for a "
            "model file, load_model(path) loads it and export_model(path, ...) exports it"
        )


@one_at_a_time
def convert(model: nn.Module, *, padding_value: float = 0.0) -> nn.Module:
    """Return a copy of ``model`` with every ``nn.RNN/LSTM/GRU`` replaced by an equal BiRNN
    and every ``torchcrf.CRF`` by an equal :class:`~birnn_export.crf.CRFDecoder`.

    The original is untouched. Weights, ``batch_first``, layers, directions, dropout and the
    train/eval mode carry over, so the copy's outputs equal the original's (a model that calls the
    layer with a ``PackedSequence`` still works: BiRNN accepts one). Replacements are logged at
    INFO level; :func:`conversion_report` lists them.

    Raises:
        ConversionError: naming the submodule path and the reason, for layers that cannot be
            represented (subclasses, weights assigned in forward). Parametrized weights
            (weight_norm) are folded into plain ones on the copy, as eval mode computes them.

    Example:
        >>> model = nn.Sequential(nn.LSTM(4, 8, bidirectional=True))
        >>> type(convert(model)[0]).__name__
        'BiRNN'
    """
    require_module(model)
    if isinstance(model, _BUILTIN):
        if _reparametrized(model):
            model = _folded(copied(model))
        _check_convertible("<root>", model)
        return _with_hooks(model, BiRNN.from_torch(model, padding_value=padding_value))
    targets = [(p, m) for p, m in find_recurrent_layers(model) if isinstance(m, _BUILTIN)]
    for path, layer in targets:
        if not _reparametrized(layer):  # checked once folded, on the copy
            _check_convertible(path, layer)
    converted = copied(model)
    for path, _ in targets:
        layer = _folded(converted.get_submodule(path))
        _check_convertible(path, layer)
        replacement = _with_hooks(layer, BiRNN.from_torch(layer, padding_value=padding_value))
        converted.set_submodule(path, replacement)
        logger.info("%s", _describe(path, layer))
    for path, crf in find_crfs(converted):
        if path == "<root>":
            raise ConversionError(
                "<root>: a bare torchcrf.CRF has no emissions to decode; export the model "
                "that calls crf.decode(emissions, mask) in its forward"
            )
        decoder = CRFDecoder.from_torchcrf(crf)
        decoder.path = path
        converted.set_submodule(path, decoder)
        logger.info("%s", _describe(path, crf))
    return converted


#: A module's forward hooks: what the layer's own forward calls around it.
_FORWARD_HOOKS = (
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
)


def _with_hooks(layer: nn.Module, replacement: BiRNN) -> BiRNN:
    """``replacement`` with ``layer``'s forward hooks and pre-hooks (an input normalised by a
    pre-hook, an output changed by a hook): the BiRNN takes and returns what the layer does,
    and dropping them changed the model's numbers (verification failed, blaming the gates)."""
    reserve_hook_ids(layer)
    for name in _FORWARD_HOOKS:
        getattr(replacement, name).update(getattr(layer, name))
    return replacement


def reserve_hook_ids(model: nn.Module) -> None:
    """Make this process hand out hook ids above every id ``model``'s hooks are keyed by.

    An unpickled module's hooks keep the ids the saving process gave them, which this
    process hands out again: a probe hook registered on the same module took the model's own
    hook's place and removed it (a pre-hook on an Embedding was lost, and every case failed).
    Keys are left as they are, so handles the user holds still remove their hooks.
    """
    from torch.utils.hooks import RemovableHandle

    keys = [
        key
        for module in model.modules()
        for name, hooks in vars(module).items()
        if name.endswith("hooks") and isinstance(hooks, dict)
        for key in hooks
        if isinstance(key, int)
    ]
    RemovableHandle.next_id = max([RemovableHandle.next_id, *(key + 1 for key in keys)])


def conversion_report(model: nn.Module) -> list[Replacement]:
    """What :func:`convert` would replace in ``model``, without changing it."""
    layers = [
        _describe(path, layer)
        for path, layer in find_recurrent_layers(model)
        if isinstance(layer, _BUILTIN)
    ]
    return layers + [_describe(path, crf) for path, crf in find_crfs(model)]


def _describe(path: str, layer: nn.Module) -> Replacement:
    if is_torchcrf(layer):
        return Replacement(path, "torchcrf.CRF", "crf", 1, False)
    return Replacement(
        path=path,
        original=type(layer).__name__,
        cell=_cell_of(layer),
        num_layers=layer.num_layers,
        bidirectional=layer.bidirectional,
    )
