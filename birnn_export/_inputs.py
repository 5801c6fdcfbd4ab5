"""The graph's inputs: declared (``NAME:DTYPE[DIM,...]``) or inferred from the model, their
named dims and ranges, the example tensors the model is traced with, and the exporter's dynamic
shapes.

A declared input names every dynamic dim (``image:float32[batch,1,64,width]``); the batch dim is
called ``batch``, and the time dim is the one a lengths input measures
(``feat_lens:int64[batch]:lengths(time)``), else the first other named dim. Without a
declaration the inputs are inferred for the common cases: token ids ``[batch, seq]`` before an
``nn.Embedding``, float features ``[batch, seq, N]`` before a batch-first recurrent layer (or
``[seq, batch, N]`` for a bare time-major layer), and ``lengths`` ``[batch]`` or a mask
``[batch, seq]`` when ``forward`` takes them (told by the name of its second parameter).

A graph of two sequences (a sentence pair) has a time dim per sequence, each measured by its
own lengths input or covered by its own mask; the first sequence's is the graph's time dim, the
one the sweep varies. They are inferred where ``forward`` names each sequence's lengths or mask
as such (``premise, premise_lengths, hypothesis, hypothesis_lengths``; the sequences first, or
the lengths in any order named after their sequences): each sequence is read as the first is,
and the second's time dim is ``hypothesis_seq``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import itertools
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from birnn_export._process import quiet_here
from birnn_export.errors import BiRNNExportError, ExportError
from birnn_export.models import SequenceTagger
from birnn_export.modules import BiRNN
from birnn_export.spec import (
    BATCH,
    DEFAULT_NESTED_RANGE,
    MASK_ROLES,
    SEQ,
    InputDecl,
    TensorSpec,
    check_range,
)

LENGTHS_NAMES = frozenset(
    {
        *("lengths", "lens", "length", "seq_lens", "seq_lengths", "sequence_lengths", "seq_len"),
        *("input_lengths", "input_lens", "x_lens", "x_lengths", "xs_lens", "src_lengths"),
        *("src_len", "src_lens", "text_lens"),
        *("ilens", "speech_lengths", "feats_lengths", "text_lengths", "audio_lengths"),
    }
)
#: Mask parameter names, by role, with the dtype a mask of that name has when inferred (an
#: ``attention_mask`` is int64 as Hugging Face's tokenizers make it; the others are bool).
MASK_NAMES = {
    "mask": ("mask", "bool"),
    "masks": ("mask", "bool"),
    "attention_mask": ("mask", "int64"),
    "attn_mask": ("mask", "bool"),
    "input_mask": ("mask", "int64"),
    "seq_mask": ("mask", "bool"),
    "sequence_mask": ("mask", "bool"),
    "x_mask": ("mask", "bool"),
    "valid_mask": ("mask", "bool"),
    "padding_mask": ("padding_mask", "bool"),
    "pad_mask": ("padding_mask", "bool"),
    "key_padding_mask": ("padding_mask", "bool"),
    "src_key_padding_mask": ("padding_mask", "bool"),
}
#: Why a model whose only dynamic dim is the batch is refused (every refusal of one says it).
ONE_FIXED_LENGTH = (
    "birnn-export exports recurrent layers over a time dim that varies, and does not export a "
    "model that takes one fixed length (DanQ flattens its 1000 steps into a Linear): "
    "torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=({0: torch.export.Dim("
    "'batch')},)) exports such a model with its batch dynamic"
)
_PRIMES = (7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97)
_TORCH_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "uint8": torch.uint8,
    "bool": torch.bool,
}


@dataclass(frozen=True)
class PlannedInputs:
    """Everything the export needs to know about the graph's inputs."""

    decls: tuple[InputDecl, ...]
    roles: tuple[str, ...]
    tensors: tuple[Tensor, ...]
    batch_dim: str
    time_dim: str
    #: (min, opt, max) and example size of every named dim.
    ranges: dict[str, tuple[int, int, int]]
    examples: dict[str, int]
    #: How the inputs came about, for the user ("declared", "inferred from ...").
    how: str
    #: The smallest vocabulary of the model's Embeddings: ids below it are valid in any of them.
    vocab: int | None = None
    #: Each token input's largest id, from the Embedding that reads it (see
    #: :func:`with_token_ranges`); ``vocab - 1`` for the others.
    token_highs: Mapping[str, int] = dataclasses.field(default_factory=dict)
    #: Token inputs no Embedding read on the example: their ids are the model's smallest
    #: vocabulary's, a guess (an index into another dim's steps is declared ``:index(DIM)``).
    unembedded: tuple[str, ...] = ()

    def dynamic_shapes(self, model: nn.Module | None = None) -> tuple[Any, ...]:
        """``torch.export`` dynamic shapes: one ``Dim`` per named dim, shared by name, bounded
        by its declared range; those of the inputs ``model.forward`` takes by ``*args`` as one
        tuple, as torch.export binds them (a flat tuple failed inside it)."""
        dims = {
            name: torch.export.Dim(name, min=low, max=high)
            for name, (low, _, high) in self.ranges.items()
        }
        shapes = tuple(
            {axis: dims[d] for axis, d in enumerate(decl.dims) if isinstance(d, str)}
            for decl in self.decls
        )
        if model is None:
            return shapes
        params = inspect.signature(model.forward).parameters.values()
        if not any(p.kind is p.VAR_POSITIONAL for p in params):
            return shapes
        named = len(_forward_params(model))
        return (*shapes[:named], shapes[named:])

    def specs(self) -> tuple[TensorSpec, ...]:
        """The inputs as the graph spec records them."""
        out = []
        for decl, role in zip(self.decls, self.roles, strict=True):
            low: float | None = None
            high: float | str | None = None
            if role == "lengths":  # no row shorter than the dim's declared minimum
                low, high = max(1, self.ranges[str(decl.measures)][0]), str(decl.measures)
            elif role in MASK_ROLES:
                low, high = 0, 1
            elif role == "tokens" and decl.indexes is not None:
                low, high = 0, decl.indexes  # up to the indexed dim's size - 1
            elif role == "tokens":
                low, high = 0, self.token_highs.get(decl.name, self.vocab - 1 if self.vocab else 1)
            out.append(
                TensorSpec(
                    decl.name,
                    decl.dtype,
                    decl.dims,
                    role,  # type: ignore[arg-type]
                    low,
                    high,
                    batch_at=_index(decl.dims, self.batch_dim),
                    time_at=_index(decl.dims, self.time_dim),
                )
            )
        return tuple(out)


def _index(dims: Sequence[int | str], name: str) -> int | None:
    return dims.index(name) if name in dims else None


def plan_inputs(
    model: nn.Module,
    *,
    inputs: Sequence[str | InputDecl] | None,
    example_inputs: Sequence[Tensor] | None,
    lengths: bool | None,
    input_size: int | None,
    input_names: Sequence[str] | None,
    ranges: Mapping[str, Sequence[int]] | None,
    batch_range: Sequence[int],
    seq_range: Sequence[int],
    taken: set[int],
    time_major: bool = False,
    nest: bool = True,
    unused: Collection[nn.Module] = (),
) -> PlannedInputs:
    """Declared or inferred inputs, with their ranges and example tensors.

    ``taken`` holds sizes the model itself has (parameter dims): example sizes avoid them, so a
    size baked into the graph can be told apart. ``time_major``: infer token ids as ``[seq,
    batch]`` (see :func:`birnn_export.export.trace_graph`, which tries it where the model's
    first recurrent layer is time-major). ``nest``: read inputs named as a nested sequence
    (``chars``, ``sentence_lengths``) as one; ``trace_graph`` plans without it where such a
    guess fails on the example inputs. ``unused``: modules ``forward`` does not run (a Flair
    tagger's ``embeddings``, registered first and used outside ``forward``), passed over in
    looking for the first layer.

    Raises:
        ExportError: a declaration, range or example input that does not fit (one line, naming
            the input or dim and what to do).
    """
    try:
        _refuse_keyword_only(model)
        if input_size is not None and (inputs or example_inputs is not None):
            given = "declared inputs" if inputs else "example inputs"
            raise BiRNNExportError(
                f"input_size: the {given} already give the sizes (--input, or a checkpoint's "
                "own declaration); drop --input-size, or declare the input with its size"
            )
        if inputs:
            if input_names:
                raise BiRNNExportError("input_names: the declared inputs already name them")
            decls = tuple(d if isinstance(d, InputDecl) else InputDecl.parse(d) for d in inputs)
            measured = {d.measures for d in decls if d.measures is not None}
            decls = tuple(_mask_by_name(d, measured) for d in decls)
            roles = _declared_roles(decls)
            how = "declared"
        elif example_inputs is not None:
            decls, roles = _guess_from_examples(model, example_inputs, lengths, input_names)
            how = "positional guess from the example inputs ([batch, seq, ...])"
        else:
            decls, roles, how = _infer(
                model, lengths, input_size, input_names, time_major, nest=nest, unused=unused
            )
        batch_dim, time_dim = _axes(decls)
        named = _ranges(decls, batch_dim, time_dim, ranges, batch_range, seq_range)
        fixed = {d for decl in decls for d in decl.dims if isinstance(d, int)}
        examples = _examples(named, batch_dim, time_dim, taken | fixed)
        vocab = _vocab(model)
        tensors = (
            _check_examples(decls, example_inputs)
            if example_inputs is not None
            else _make_examples(decls, roles, examples, vocab, named)
        )
    except BiRNNExportError as exc:
        raise ExportError(str(exc)) from None
    return PlannedInputs(decls, roles, tensors, batch_dim, time_dim, named, examples, how, vocab)


def _declared_roles(decls: Sequence[InputDecl]) -> tuple[str, ...]:
    names = [d.name for d in decls]
    if len(set(names)) != len(names):
        raise BiRNNExportError(f"inputs: names must differ, got {names}")
    measured = [d.measures for d in decls if d.measures is not None]
    if len(set(measured)) != len(measured):
        raise BiRNNExportError(
            f"inputs: two lengths inputs measure {_repeated(measured)!r}; each sequence needs a "
            "time dim of its own, e.g. 'a:int64[batch,a_len]' with 'a_lens:int64[batch]:"
            "lengths(a_len)' and 'b:int64[batch,b_len]' with 'b_lens:int64[batch]:lengths(b_len)'"
        )
    named = {d for decl in decls for d in decl.dims if isinstance(d, str)} - {BATCH}
    for decl in decls:
        if decl.indexes is not None and decl.indexes not in named:
            raise BiRNNExportError(
                f"input {decl.name!r}: ':index({decl.indexes})' names no dim of the inputs with "
                "steps to index (the batch has rows); name the dim whose steps its ids index "
                f"(one of {', '.join(sorted(named))})"
            )
    masked = [mask_dim(d) for d in decls if d.mask is not None]
    if len(set(masked)) != len(masked):
        raise BiRNNExportError(
            f"inputs: two masks cover {_repeated(masked)!r}; declare at most one mask per time dim"
        )
    roles = []
    for decl in decls:
        if decl.measures is not None:
            roles.append("lengths")
        elif decl.mask is not None:
            roles.append(decl.mask)
        elif decl.dtype.startswith("int"):
            roles.append("tokens")
        else:
            roles.append("features")
    return tuple(roles)


def _repeated(values: Sequence[Any]) -> Any:
    return next(v for v in values if values.count(v) > 1)


def mask_dim(decl: InputDecl) -> str | None:
    """The time dim a ``[batch, TIME]`` mask covers (DIM, for a ``[batch, OUTER, DIM]`` mask of
    a nested dim)."""
    if decl.nests is not None:
        return decl.nests
    return next((d for d in decl.dims if isinstance(d, str) and d != BATCH), None)


def _mask_by_name(decl: InputDecl, measured: Collection[str]) -> InputDecl:
    """A declared ``[batch, TIME]`` input named as masks are (``attention_mask``,
    ``padding_mask``, see :data:`MASK_NAMES`) is that mask, ``:mask`` or not; but not a float
    one where a lengths input of TIME is declared too (``measured``: the dims lengths inputs
    measure): an ICU model's ``forward(values, mask, lengths)`` takes which values were
    observed, zeros inside each row, and ``:mask`` says a padding mask."""
    named = [d for d in decl.dims if isinstance(d, str)]
    if (
        decl.mask is None
        and decl.measures is None
        and decl.name in MASK_NAMES
        and len(decl.dims) == 2
        and len(named) == 2
        and BATCH in named
        and not (decl.dtype.startswith("float") and set(named) & set(measured))
    ):
        return dataclasses.replace(decl, mask=MASK_NAMES[decl.name][0])
    return decl


def _axes(decls: Sequence[InputDecl]) -> tuple[str, str]:
    """The batch dim (``batch``) and the time dim (what lengths measure, else the first other
    named dim)."""
    if not any(BATCH in d.dims for d in decls):
        raise BiRNNExportError(
            f"inputs: no input has a dim named {BATCH!r}; name the batch dim 'batch', e.g. "
            "'x:float32[batch,seq,40]'"
        )
    measured = [d.measures for d in decls if d.measures is not None]
    for dim in measured:
        if dim == BATCH or not any(dim in d.dims for d in decls if not d.measures):
            raise BiRNNExportError(
                f"inputs: the lengths input measures {dim!r}, which no other input has as a "
                "dim; name the time dim it measures, e.g. ':lengths(time)'"
            )
    nested = {str(d.nests): d.within for d in decls if d.within is not None}
    ragged = [*measured, *(mask_dim(d) for d in decls if d.mask is not None)]
    for dim, outer in nested.items():
        _check_nested(decls, dim, str(outer), ragged)
    ragged = [dim for dim in ragged if dim not in nested]
    named = [dim for d in decls for dim in d.dims if isinstance(dim, str) and dim != BATCH]
    if not named:
        first = decls[0]
        numbers = [d for d in first.dims if isinstance(d, int)]
        dims = list(first.dims)
        if numbers:  # the longest is likeliest the time steps: [batch, 4, 1000]
            dims[dims.index(max(numbers))] = "time"
        named_one = dataclasses.replace(first, dims=tuple(dims))
        raise BiRNNExportError(
            "inputs: no dim besides 'batch' is dynamic; name the time dim in place of its "
            f"length, e.g. '{named_one}' ({ONE_FIXED_LENGTH})"
        )
    # the time dim the sweep varies: with lengths or masks, the first sequence's (in the
    # inputs' order) that has them; else the first named dim after 'batch'
    time = next((dim for dim in named if dim in ragged), named[0]) if ragged else named[0]
    if SEQ in named and time != SEQ:  # files of older versions find the time axis by that name
        raise BiRNNExportError(
            f"inputs: a dim named {SEQ!r} that is not the time dim ({time!r}); name it otherwise"
        )
    return BATCH, time


def _check_nested(decls: Sequence[InputDecl], dim: str, outer: str, ragged: Sequence[str]) -> None:
    """A dim nested in ``outer``'s steps needs ``outer`` to have lengths (or a mask) of its own
    and an input that has both dims, ``outer`` first (``chars:int64[batch,seq,chars]``)."""
    lengths = next(d.name for d in decls if d.nests == dim)
    if any(d.nests == outer for d in decls):
        raise BiRNNExportError(
            f"input {lengths!r}: it measures {dim!r} within each step of {outer!r}, itself nested "
            "in another dim: nesting goes one level deep (each word's characters); export the "
            "inner encoder as a model of its own"
        )
    if outer not in ragged:
        raise BiRNNExportError(
            f"input {lengths!r}: it measures {dim!r} within each step of {outer!r}, which has no "
            f"lengths or mask of its own; declare one, e.g. 'lengths:int64[batch]:lengths({outer})'"
        )
    if not any(
        dim in d.dims and outer in d.dims and d.dims.index(outer) < d.dims.index(dim) for d in decls
    ):
        raise BiRNNExportError(
            f"input {lengths!r}: no input has {outer!r} and then {dim!r} as dims; declare the "
            f"nested sequence so, e.g. 'chars:int64[batch,{outer},{dim}]'"
        )


def _ranges(
    decls: Sequence[InputDecl],
    batch_dim: str,
    time_dim: str,
    ranges: Mapping[str, Sequence[int]] | None,
    batch_range: Sequence[int],
    seq_range: Sequence[int],
) -> dict[str, tuple[int, int, int]]:
    names = list(dict.fromkeys(d for decl in decls for d in decl.dims if isinstance(d, str)))
    given = dict(ranges or {})
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise BiRNNExportError(
            f"ranges: no declared input has a dim named {unknown[0]!r}; the named dims are "
            f"{', '.join(names)}"
        )
    out = {}
    nested = {d.nests for d in decls if d.within is not None}
    # the time dim, and a second sequence's (a question's beside a context's)
    top = [d for d in decls if d.within is None]
    sequences = {time_dim, *(str(d.measures) for d in top if d.measures is not None)}
    sequences |= {str(mask_dim(d)) for d in top if d.mask is not None and mask_dim(d)}
    for decl in decls:  # a char-CNN's characters: a token dim right after a sequence's
        ids = decl.dtype.startswith("int") and decl.measures is None and decl.mask is None
        for sequence in sequences & set(decl.dims):
            at = decl.dims.index(sequence) + 1
            inner = decl.dims[at] if at < len(decl.dims) else None
            spelled = isinstance(inner, str) and (_CHARS.search(inner) or _CHARS.search(decl.name))
            if ids and spelled and inner not in (batch_dim, *sequences):
                nested.add(str(inner))
    for name in names:
        default = batch_range if name == batch_dim else seq_range
        if name in nested:
            default = DEFAULT_NESTED_RANGE
        triple = check_range(f"range of {name!r}", given.get(name, default))
        if triple[0] == triple[2] and name == batch_dim:
            raise BiRNNExportError(
                f"range of {name!r}: min and max are both {triple[0]}; birnn-export exports a "
                f"batch dim that varies, and such a graph serves a batch of {triple[0]} too: give "
                f"a range, e.g. --batch-range {triple[0]},{triple[0]},{max(8, triple[0])}; to "
                "build TensorRT's engine for that batch alone: birnn-export check GRAPH --target "
                f"tensorrt --batch-range {triple[0]},{triple[0]},{triple[0]} (users56)"
            )
        if triple[0] == triple[2]:
            varying = [n for n in names if n not in (name, batch_dim)]
            raise BiRNNExportError(
                f"range of {name!r}: min and max are both {triple[0]}; declare a fixed dim as "
                "a number instead"
                if varying
                else f"range of {name!r}: min and max are both {triple[0]}, and no other dim "
                f"besides the batch varies: {ONE_FIXED_LENGTH}"
            )
        out[name] = triple
    return out


def _examples(
    ranges: Mapping[str, tuple[int, int, int]], batch_dim: str, time_dim: str, taken: set[int]
) -> dict[str, int]:
    """A size per named dim to trace at: a prime inside its range that the model does not use
    and no other dim traces at, so a baked-in example is visible in the graph."""
    used = set(taken)
    out = {}
    for name in sorted(ranges, key=lambda n: (n != batch_dim, n != time_dim, n)):
        low, opt, high = ranges[name]
        candidates = [p for p in _PRIMES if low <= p <= high and p not in used]
        candidates += [p for p in range(max(low, 2), high + 1) if p not in used][:1]
        size = candidates[0] if candidates else opt
        used.add(size)
        out[name] = size
    return out


def with_longer_example(planned: PlannedInputs, taken: set[int]) -> PlannedInputs | None:
    """The inputs made anew with the time dim's example at least twice as long; ``None`` where
    its range holds no such size.

    A strided front end (a CNN over an image's width) can leave the recurrent layers one step
    of a short example, and torch.export fixes a size of 1 in the graph: the model would look
    as if it could not vary its length.
    """
    name = planned.time_dim
    _, _, high = planned.ranges[name]
    least = 2 * planned.examples[name]
    used = set(taken) | set(planned.examples.values())
    sizes = (*_PRIMES, *range(least, high + 1))
    size = next((s for s in sizes if least <= s <= high and s not in used), None)
    if size is None:
        return None
    examples = {**planned.examples, name: size}
    tensors = _make_examples(planned.decls, planned.roles, examples, planned.vocab, planned.ranges)
    return dataclasses.replace(planned, tensors=tensors, examples=examples)


def _vocab(model: nn.Module) -> int | None:
    sizes = [m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)]
    return min(sizes) if sizes else None


@contextlib.contextmanager
def watch_embeddings(model: nn.Module) -> Iterator[list[tuple[nn.Embedding, Tensor]]]:
    """Every ``nn.Embedding`` call in ``model`` while inside, with the ids it read."""
    seen: list[tuple[nn.Embedding, Tensor]] = []

    def record(module: nn.Module, args: tuple[Any, ...]) -> None:
        if args and isinstance(args[0], Tensor):
            seen.append((module, args[0]))  # type: ignore[arg-type]

    embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    hooks = [m.register_forward_pre_hook(record) for m in embeddings]
    try:
        yield seen
    finally:
        for hook in hooks:
            hook.remove()


def with_token_ranges(
    planned: PlannedInputs,
    tensors: Sequence[Tensor],
    seen: Sequence[tuple[nn.Embedding, Tensor]],
) -> PlannedInputs:
    """Each token input's id range from the Embedding that read it on the example (its ids
    whole, in any shape): word ids and character ids beside them get their own vocabularies."""
    highs, unread = {}, []
    for decl, role, tensor in zip(planned.decls, planned.roles, tensors, strict=True):
        if role != "tokens" or decl.indexes is not None:
            continue
        sizes = [m.num_embeddings for m, ids in seen if _same_ids(ids, tensor)]
        if sizes:
            highs[decl.name] = min(sizes) - 1
        else:
            unread.append(decl.name)
    return dataclasses.replace(planned, token_highs=highs, unembedded=tuple(unread))


def read_by_embedding(seen: Sequence[tuple[nn.Embedding, Tensor]], tensor: Tensor) -> bool:
    """Whether an Embedding of ``seen`` (:func:`watch_embeddings`) read ``tensor``'s ids."""
    return any(_same_ids(ids, tensor) for _, ids in seen)


def _same_ids(read: Tensor, given: Tensor) -> bool:
    """Whether an Embedding read ``given``'s ids, in any order of their axes (``ids.t()``, a
    time-major model's: review22)."""
    if read.numel() != given.numel() or read.is_floating_point():
        return False
    read, given = read.detach().reshape(-1).cpu().long(), given.reshape(-1).long()
    return bool(torch.equal(read, given) or torch.equal(read.sort()[0], given.sort()[0]))


def _make_examples(
    decls: Sequence[InputDecl],
    roles: Sequence[str],
    examples: Mapping[str, int],
    vocab: int | None,
    ranges: Mapping[str, Sequence[int]],
) -> tuple[Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    tensors = []
    for decl, role in zip(decls, roles, strict=True):
        shape = [d if isinstance(d, int) else examples[d] for d in decl.dims]
        dtype = _TORCH_DTYPES[decl.dtype]
        if role == "lengths":
            measured = str(decl.measures)
            lens = _example_lengths(int(np.prod(shape)), examples[measured], ranges[measured][0])
            tensors.append(torch.from_numpy(lens.reshape(shape)).to(dtype))
        elif role in MASK_ROLES:  # [batch, TIME], [TIME, batch], or [batch, OUTER, DIM]
            time_major = decl.nests is None and decl.dims.index(BATCH) == 1
            rows = shape[::-1] if time_major else shape  # steps last
            steps, low = rows[-1], ranges[str(mask_dim(decl))][0]
            lens = _example_lengths(int(np.prod(rows[:-1])), steps, low).reshape(rows[:-1])
            valid = np.arange(steps) < lens[..., None]
            valid = valid.T if time_major else valid
            valid = valid if role == "mask" else ~valid
            tensors.append(torch.from_numpy(np.ascontiguousarray(valid)).to(dtype))
        elif role == "tokens":
            top = examples[decl.indexes] if decl.indexes is not None else vocab or 2
            tensors.append(torch.randint(0, top, shape, generator=gen).to(dtype))
        else:
            tensors.append(torch.randn(shape, generator=gen).to(dtype))
    return tuple(tensors)


def _example_lengths(batch: int, steps: int, low: int) -> np.ndarray:
    """Example row lengths: the first row full, the second ``low`` steps (the time dim's
    declared minimum), the others random (the same for a lengths input and a mask, which both
    measure the time dim)."""
    rng = np.random.default_rng(0)
    low = max(1, min(low, steps))
    lens = np.concatenate([[steps, low], rng.integers(low, steps + 1, size=max(0, batch - 2))])
    return lens[:batch].astype(np.int64)


def _check_examples(
    decls: Sequence[InputDecl], example_inputs: Sequence[Tensor]
) -> tuple[Tensor, ...]:
    tensors = tuple(example_inputs)
    if len(tensors) != len(decls):
        raise BiRNNExportError(f"example_inputs: {len(tensors)} tensors for {len(decls)} inputs")
    for decl, tensor in zip(decls, tensors, strict=True):
        if not isinstance(tensor, Tensor):
            raise BiRNNExportError(f"{decl.name}: expected a Tensor, got {type(tensor).__name__}")
        if tensor.dim() != len(decl.dims):
            raise BiRNNExportError(
                f"{decl.name}: declared with {len(decl.dims)} dims {list(decl.dims)}, the example "
                f"has {tensor.dim()} {list(tensor.shape)}"
            )
        for axis, (dim, size) in enumerate(zip(decl.dims, tensor.shape, strict=True)):
            if isinstance(dim, int) and dim != size:
                raise BiRNNExportError(
                    f"{decl.name}: dim {axis} is declared {dim}, the example has {size}"
                )
    return tensors


# -- inference --------------------------------------------------------------------------------


def _refuse_keyword_only(model: nn.Module) -> None:
    """The graph's inputs are passed to ``forward`` by position: a keyword-only parameter
    without a default (after ``*``) could never be given."""
    params = inspect.signature(model.forward).parameters.values()
    names = [p.name for p in params if p.kind == p.KEYWORD_ONLY and p.default is p.empty]
    if names:
        listed = ", ".join(repr(n) for n in names)
        raise BiRNNExportError(
            f"{type(model).__name__}.forward takes {listed} by keyword only (after '*'), and "
            "birnn-export passes the graph's inputs by position: make it positional (drop the "
            f"'*'), e.g. def forward(self, x, {names[0]}); the weights load as they are"
        )


#: Names of a first parameter that takes audio samples ([batch, time] or [batch, channels,
#: time]) or an image ([batch, channels, height, width]).
_AUDIO = re.compile(r"wav|audio|signal|speech|mix|sample", re.IGNORECASE)
_IMAGE = re.compile(r"im(a)?g|pixel|picture|photo", re.IGNORECASE)


def _example_declaration(model: nn.Module) -> str:
    """A declaration to show for the first input, after the name of ``forward``'s first
    parameter: a waveform for ``wav``, an image for ``image``, else frames of features."""
    params = _forward_params(model)
    name = params[0].name if params else "x"
    # the lengths forward takes next, measuring the first input's time dim (users55 F2)
    dim = "width" if _IMAGE.search(name) else "time"
    after = (
        f" --input '{params[1].name}:int64[batch]:lengths({dim})'"
        if len(params) > 1 and param_role(params[1].name) == "lengths"
        else ""
    )
    if _AUDIO.search(name):
        return (
            f"'{name}:float32[batch,time]'{after} (or [batch,channels,time]), with the "
            "lengths in samples: --range time=MIN,OPT,MAX (e.g. 400,16000,160000)"
        )
    if _IMAGE.search(name):
        return f"'{name}:float32[batch,1,64,width]'{after}"
    if any(isinstance(m, nn.Embedding) for m in model.modules()):
        return f"'{name}:int64[batch,time]'{after} (token ids; or float32[batch,time,FEATURES])"
    return f"'{name}:float32[batch,time,FEATURES]'{after} (or 'image:float32[batch,1,64,width]')"


def _forward_params(model: nn.Module) -> list[inspect.Parameter]:
    params = inspect.signature(model.forward).parameters.values()
    return [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def takes_lengths(model: nn.Module, lengths: bool | None) -> bool:
    """Whether the model's second input is a lengths ``[batch]``: as ``lengths`` says, else from
    a :class:`SequenceTagger`'s config or the name of ``forward``'s second parameter."""
    if isinstance(model, SequenceTagger):
        if lengths and not model.config.uses_lengths:
            # A lengths input the model ignores would let padding into the backward direction.
            raise BiRNNExportError(
                "lengths: this model was built without lengths (uses_lengths=False) and would "
                "ignore them; drop --lengths / lengths=True"
            )
        return model.config.uses_lengths if lengths is None else lengths
    if lengths is not None:
        return lengths
    params = _forward_params(model)
    return len(params) >= 2 and param_role(params[1].name) == "lengths"


def first_leaf(model: nn.Module, unused: Collection[nn.Module] = ()) -> nn.Module | None:
    """The first module that runs on the input (the first leaf, or a recurrent layer), past any
    dropout or identity, which tell nothing of the input (NCRF++'s char encoder starts with
    one; fairseq's encoders with their own ``FairseqDropout``, a dropout by its name without
    weights), and past the ``unused`` modules and theirs."""
    skipped = {id(m) for u in unused for m in u.modules()}
    for module in model.modules():
        if isinstance(module, (nn.modules.dropout._DropoutNd, nn.Identity)) or _own_dropout(module):
            continue
        if id(module) in skipped:
            continue
        if isinstance(module, BiRNN) or not list(module.children()):
            return module
    return None


def _own_dropout(module: nn.Module) -> bool:
    """A library's own dropout class (fairseq's ``FairseqDropout``, Flair's ``LockedDropout``):
    named a dropout, with no weights, buffers or modules of its own."""
    if "dropout" not in type(module).__name__.lower():
        return False
    owned = itertools.chain(module.children(), module.parameters(), module.buffers())
    return next(owned, None) is None


def _infer(
    model: nn.Module,
    lengths: bool | None,
    input_size: int | None,
    input_names: Sequence[str] | None,
    swap_time_major: bool = False,
    *,
    nest: bool = True,
    unused: Collection[nn.Module] = (),
) -> tuple[tuple[InputDecl, ...], tuple[str, ...], str]:
    first = first_leaf(model, unused)
    kind = type(first).__name__ if first is not None else "nothing"
    time_major = isinstance(model, SequenceTagger) and not model.config.batch_first
    if time_major:
        how_major = " (time-major: the model runs batch_first=False)"
    elif swap_time_major and input_size is None:
        time_major = True
        how_major = " [seq, batch]: the model runs on that order, not on [batch, seq]"
    if input_size is not None:
        dims: tuple[int | str, ...] = (BATCH, SEQ, input_size)
        role, how = "features", f"--input-size {input_size}, input_size={input_size}"
    elif isinstance(first, nn.Embedding):
        dims, role = (BATCH, SEQ), "tokens"
        how = "inferred: token ids before the model's first layer, an Embedding"
    elif isinstance(first, BiRNN) and (first.batch_first or first is model or time_major):
        role = "features"
        if first.batch_first:
            dims = (BATCH, SEQ, first.input_size)
            how = "inferred: features of the model's first layer, a recurrent layer"
        else:
            dims = (SEQ, BATCH, first.input_size)
            how = "inferred: features of a time-major (batch_first=False) recurrent layer"
    elif isinstance(first, BiRNN):  # a time-major layer inside a model that may transpose
        dims, role = (BATCH, SEQ, first.input_size), "features"
        how = "inferred: features of the model's first layer, a time-major recurrent layer"
    elif isinstance(first, (nn.Linear, nn.LayerNorm)):  # an input projection or norm
        size = first.in_features if isinstance(first, nn.Linear) else first.normalized_shape[-1]
        dims, role = (BATCH, SEQ, size), "features"
        how = f"inferred: features before the model's first layer, a {type(first).__name__}"
    elif isinstance(first, _CONVS):
        raise BiRNNExportError(_declare_conv(model, first))
    else:
        raise BiRNNExportError(
            (_runs_on(model, first) if isinstance(first, _NORMS) else None)
            or f"cannot infer the inputs of {type(model).__name__} (its first layer is {kind}); "
            f"declare them, e.g. --input {_example_declaration(model)} (Python: "
            "inputs=[...]), or pass --input-size N for float [batch, seq, N] features"
        )
    if time_major:
        dims, how = (SEQ, BATCH, *dims[2:]), how + how_major
    dtype = "int64" if role == "tokens" else "float32"
    pairs = _sequence_pairs(model)
    if pairs:  # a sentence pair: each sequence with its own time dim and lengths (or mask)
        params = [p.name for p in _forward_params(model)]
        template = InputDecl("", dtype, dims)
        sizes = _stream_sizes(model, pairs, dims[-1]) if role == "features" else {}
        return _pair_inputs(pairs, params, template, role, input_names, how, nest=nest, sizes=sizes)
    roles = [role]
    decl_list = [(dims, dtype)]
    nested = nest and not time_major  # a sequence nested in each step may be guessed
    # forward(words, chars, lengths or mask): the characters before the words' lengths (not
    # where lengths=True/False says otherwise: then forward is declared, or refused)
    chars_first = nested and role == "tokens" and lengths is None
    spelled_second = _spelled_second(model) if chars_first else None
    mark = spelled_second[1] if spelled_second else None
    has_lengths = takes_lengths(model, lengths) if mark is None else param_role(mark) == "lengths"
    if has_lengths:
        mask = None
    else:
        mask = (
            _mask_param(model) if mark is None else (mark, *(_mask_name(mark) or ("mask", "bool")))
        )
    if has_lengths:
        roles.append("lengths")
        decl_list.append(((BATCH,), "int64"))
    elif mask is not None:
        param, mask_role, mask_dtype = mask
        roles.append(mask_role)
        decl_list.append(((BATCH, SEQ), mask_dtype))
        how += f"; {param!r} read as a {mask_role} by its name"
    else:
        how += optional_mask_note(model)
    if input_names:
        names = list(input_names)
    elif spelled_second is not None:  # the words and their lengths (or mask), as forward names them
        names = [_param_names(model, roles[:1])[0], spelled_second[1]]
    else:
        names = _param_names(model, roles)
    if len(names) != len(roles):
        raise BiRNNExportError(f"input_names: {len(names)} names for {len(roles)} inputs")
    guess = nested and len(roles) == 2
    inner = _inner_mark(model) if guess and spelled_second is None else None
    spelled = _spelled(model) if guess and role == "tokens" else None
    spelled = spelled_second[0] if spelled_second else spelled
    if inner is None and spelled is None:
        _refuse_more_params(model, roles, refused_lengths=lengths is False)
    decls = tuple(
        InputDecl(
            name,
            dtype,
            d,
            SEQ if r == "lengths" else None,
            r if r in MASK_ROLES else None,
        )
        for name, (d, dtype), r in zip(names, decl_list, roles, strict=True)
    )
    if inner is not None:  # a document of sentences of words: each step holds a sequence
        time = f"{_stem(inner)}_seq"
        first = dataclasses.replace(decls[0], dims=(*decls[0].dims[:2], time, *dims[2:]))
        mark_kind = param_role(inner) or "lengths"
        decls = (first, decls[1], _mark(inner, mark_kind, (BATCH, SEQ), time))
        roles.append(mark_kind)
        how += f"; {inner!r} read as the {mark_kind} of each step's own sequence, by its name"
    if spelled is not None:  # a char-CNN's characters: no lengths of their own
        time = f"{spelled.removesuffix('_seq')}_seq"
        decls = (*decls, InputDecl(spelled, "int64", (BATCH, SEQ, time)))
        roles.append("tokens")
        how += f"; {spelled!r} read as each step's characters, by its name"
    if spelled_second is not None:  # in forward's order: words, chars, lengths (or mask)
        decls, roles = (decls[0], decls[2], decls[1]), [roles[0], roles[2], roles[1]]
    return decls, tuple(roles), how


def _spelled(model: nn.Module) -> str | None:
    """The third parameter of ``forward(words, lengths, chars)`` (a char-CNN tagger's, Ma and
    Hovy's): each word's characters, told by the name, without lengths of their own."""
    required = [p.name for p in _forward_params(model) if p.default is p.empty]
    if len(required) != 3 or param_role(required[2]) is not None:
        return None
    return required[2] if _CHARS.search(required[2]) else None


def _spelled_second(model: nn.Module) -> tuple[str, str] | None:
    """(characters, lengths or mask) of ``forward(words, chars, lengths)`` or ``forward(words,
    chars, mask)``: the char-CNN tagger's inputs with the characters second, told by the
    names (users38). Lengths or a mask of the characters themselves (``char_lengths``) are
    not the words'."""
    required = [p.name for p in _forward_params(model) if p.default is p.empty]
    if len(required) != 3 or not _CHARS.search(required[1]) or _CHARS.search(required[2]):
        return None
    return (required[1], required[2]) if param_role(required[2]) is not None else None


#: The time size the layouts of a convolution's input are tried at: no common feature size,
#: a multiple of 4 (time pooled by 2 twice); a waveform is also tried at a second of 16 kHz
#: audio, and video at a few frames.
_PROBE_STEPS, _PROBE_SAMPLES, _PROBE_FRAMES = 52, 16000, 4
#: Feature sizes tried where the first layer does not tell them (mel bins, Kaldi/ESPnet's 80
#: filterbanks + 3 pitch, spectrogram bins of common FFT sizes, image heights), after those the
#: recurrent layer's input size suggests.
_PROBE_BINS = (64, 80, 128, 40, 83, 229, 257, 161, 201, 96, 120, 32, 48)
#: The most seconds the layouts are tried for (a large model runs slowly on the CPU).
_PROBE_SECONDS = 30.0


def _layouts(model: nn.Module, first: nn.Module) -> list[tuple[str, tuple[int, ...], str | None]]:
    """The dims of the first input in each layout a front end that tells no time axis (a
    convolution or norm first) may be given it in, with the shape past the batch to try each
    at, and the dims to show where the layout runs at any size of its number (a model that
    pools its bins or frames away): ``[("batch,128,time", (128, 52), "batch,FEATURES,time"),
    ...]``."""
    conv = isinstance(first, _CONVS)
    if isinstance(first, _NORMS):  # a norm before a Conv1d of its channels (pyannote's
        after = next((m for m in model.modules() if isinstance(m, _CONVS)), None)  # waveform)
        if isinstance(after, nn.Conv1d) and after.in_channels == first.num_features:
            return _layouts(model, after)
    channels = first.in_channels if conv else 1
    steps = _PROBE_STEPS
    if isinstance(first, nn.Conv3d):  # video clips, time in depth (LipNet) or first
        frames, c = _PROBE_FRAMES * 2, channels
        sides = ((50, 100), (64, 64), (88, 88), (112, 112))
        return [
            (f"batch,{c},time,{h},{w}", (c, frames, h, w), f"batch,{c},time,H,W") for h, w in sides
        ] + [
            (f"batch,time,{c},{h},{w}", (frames, c, h, w), f"batch,time,{c},H,W") for h, w in sides
        ]
    if isinstance(first, nn.Conv1d):
        layouts: list[tuple[str, tuple[int, ...], str | None]] = [
            (f"batch,{channels},time", (channels, steps), None),
            (f"batch,time,{channels}", (steps, channels), None),
        ]
        if channels == 1:  # a waveform, with its channel or given it (an STFT as a convolution)
            layouts += [("batch,time", (n,), None) for n in (steps, _PROBE_SAMPLES)]
            layouts.append(("batch,1,time", (1, _PROBE_SAMPLES), None))
        return layouts
    if conv and channels == 3:  # video clips folded into the batch, or an image (width is time)
        sides = (32, 64, 112, 224)
        return [
            (f"batch,time,3,{h},{h}", (_PROBE_FRAMES, 3, h, h), "batch,time,3,H,W") for h in sides
        ] + [(f"batch,3,{h},time", (3, h, steps), "batch,3,H,time") for h in (32, 64)]
    layers = [m for m in model.modules() if isinstance(m, (BiRNN, nn.RNNBase))]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    derived = [first.num_features] if isinstance(first, _NORMS) else []
    if layers and convs:
        size = layers[0].input_size
        for c in dict.fromkeys((convs[0].out_channels, convs[-1].out_channels)):
            for k in (1, 2, 4, 8) if size % c == 0 else ():
                # strides of k that round up make f rows of any size in (k(f - 1), kf]: a
                # common size there first (deepspeech.pytorch's 161 spectrogram bins, not 164),
                # then kf, which a front end that rounds down needs (review18)
                top = size // c * k
                derived += [*[b for b in _PROBE_BINS if top - k < b < top][:1], top]
    # no size below 8: a model that averages its bins away runs on one bin too
    bins = [b for b in dict.fromkeys([*derived, *_PROBE_BINS]) if b != steps and b >= 8]
    layouts = []
    for b in bins:
        layouts += [
            (f"batch,{channels},{b},time", (channels, b, steps), f"batch,{channels},FEATURES,time"),
            (f"batch,{channels},time,{b}", (channels, steps, b), f"batch,{channels},time,FEATURES"),
        ]
        if channels == 1:  # the model adds the channel: features first, or last
            layouts += [
                (f"batch,{b},time", (b, steps), "batch,FEATURES,time"),
                (f"batch,time,{b}", (steps, b), "batch,time,FEATURES"),
            ]
    return layouts


def _layouts_that_run(model: nn.Module, first: nn.Module) -> list[str]:
    """The declarations of the first input (and lengths, where ``forward``'s second parameter
    is named so) on which ``model`` runs, tried in :func:`_layouts`' order for at most
    :data:`_PROBE_SECONDS`: each layout at the first size it runs at, or with its number left
    to the user where it runs at a second size too."""
    import time
    import warnings

    params = [p.name for p in _forward_params(model)]
    x = params[0] if params else "x"
    second = _second_input(params)

    def runs(shape: tuple[int, ...], steps: int) -> bool:
        tensors = [torch.randn(2, *shape)]
        if second is not None:  # every row full: lengths of T, or a mask of no padding
            role, dtype = second
            full = steps if role == "lengths" else float(role == "mask")
            shaped = (2,) if role == "lengths" else (2, steps)
            tensors.append(torch.full(shaped, full).to(getattr(torch, dtype)))
        try:
            with (
                torch.no_grad(),
                warnings.catch_warnings(),
                quiet_here(),
            ):
                warnings.simplefilter("ignore")
                model(*tensors)
        except Exception:  # this layout is not the model's
            return False
        return True

    def declared(dims: str, at: str) -> str:
        return f"--input '{x}:float32[{dims}]'{_second_declared(params)} ({at})"

    found: dict[str, str] = {}
    found_at: dict[str, tuple[int, ...]] = {}
    checked: set[str] = set()
    start = time.monotonic()
    for dims, shape, free in _layouts(model, first):
        form = re.sub(r"\d+", "N", dims)
        if form in found and (form in checked or free is None):
            continue
        if form in found and _within_a_stride(shape, found_at[form]):
            continue  # the size found, rounded otherwise by a stride: not a second size
        if time.monotonic() - start > _PROBE_SECONDS:
            break
        steps = shape[dims.split(",").index("time") - 1]
        if form in found:  # found at one size: does another run too?
            checked.add(form)
            if runs(shape, steps):  # the sizes it ran at, named (users43 F2: its H,W from 1
                # were refused next, where the user's frames are one size)
                at = [i for i, d in enumerate(free.split(",")) if d.isupper()]
                names = ",".join(free.split(",")[i] for i in at)
                tried = " and ".join(
                    ",".join(str(s[i - 1]) for i in at) for s in (found_at[form], shape)
                )
                ranged = f"each of {names}" if len(at) > 1 else f"{names}=MIN,OPT,MAX"
                found[form] = declared(
                    free,
                    f"at time {steps}, and at {names} = {tried}: put your input's size there, or "
                    f"--range {ranged} from the least the front end takes",
                )
        elif runs(shape, steps):
            found[form], found_at[form] = declared(dims, f"at time {steps}"), shape
    return list(found.values())


def _second_input(params: Sequence[str]) -> tuple[str, str] | None:
    """(role, dtype) of ``forward``'s second parameter where it is named as lengths or a mask
    (``mask``, ``src_key_padding_mask``), else ``None``."""
    if len(params) < 2 or param_role(params[1]) is None:
        return None
    return ("lengths", "int64") if param_role(params[1]) == "lengths" else _mask_name(params[1])


def _second_declared(params: Sequence[str]) -> str:
    """The declaration of ``forward``'s second input where it is lengths or a mask of the time
    dim (users65 F1: a mask was left as 'mask:DTYPE[DIMS]', and the layouts tried without it
    ran none), else nothing."""
    second = _second_input(params)
    if second is None:
        return ""
    role, dtype = second
    if role == "lengths":
        return f" --input '{params[1]}:int64[batch]:lengths(time)'"
    return f" --input '{params[1]}:{dtype}[batch,time]:{role}'"


def _within_a_stride(shape: tuple[int, ...], other: tuple[int, ...]) -> bool:
    """Whether two shapes of one layout differ by no more than a front end's strides round
    (8 at most, as :func:`_layouts` derives sizes)."""
    return max(abs(a - b) for a, b in zip(shape, other, strict=True)) <= 8


#: Norms first (a spectrogram's BatchNorm2d over its bins, ByteDance's piano transcription's):
#: like a convolution first, they tell no time axis, and their layouts are tried.
_NORMS = nn.modules.batchnorm._NormBase


def _runs_on(model: nn.Module, first: nn.Module) -> str | None:
    """The refusal for a model whose first layer tells no time axis, where it runs on inputs
    of some layout (:func:`_layouts_that_run`): those layouts, to declare."""
    running = _layouts_that_run(model, first)
    if not running:
        return None
    if isinstance(first, _CONVS):
        what = f"{type(first).__name__}({first.in_channels}, ...), which reads {_reads(first)}"
    else:
        what = type(first).__name__
    return (
        f"cannot infer the inputs of {type(model).__name__}: its first layer is {what}, and "
        f"which axis is time cannot be told; it runs on {' or '.join(running)}, tried at one "
        "size of each (another number in its place may run too): declare the one whose time "
        "axis is time, with --range time=MIN,OPT,MAX where the front end needs a shortest input "
        "(Python: inputs=[...], ranges={'time': (MIN, OPT, MAX)})"
    )


#: Convolutions first: which of their input's axes is time cannot be told.
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _reads(conv: nn.Module) -> str:
    """The layout a convolution reads, in words."""
    if isinstance(conv, nn.Conv1d):
        return "[batch, channels, time]"
    return "[batch, C, H, W]" if isinstance(conv, nn.Conv2d) else "[batch, C, D, H, W]"


def _declare_conv(model: nn.Module, conv: nn.Module) -> str:
    """The refusal for a model whose first layer is a convolution (a speech or OCR front end):
    which of its input's dims is time cannot be told, so the layouts it runs on where one does
    (tried on the model: mels first, a waveform, video clips), else the declarations to write,
    from ``forward``'s names and the convolution's channels."""
    params = [p.name for p in _forward_params(model)]
    x = params[0] if params else "x"
    channels = conv.in_channels
    running = _runs_on(model, conv)
    if running:
        return running
    dims = {
        nn.Conv1d: f"batch,{channels},time",
        nn.Conv2d: f"batch,{channels},H,time",
    }.get(type(conv), f"batch,{channels},time,H,W")
    declare = f"--input '{x}:float32[{dims}]'{_second_declared(params)}"
    required = [p.name for p in _forward_params(model) if p.default is p.empty]
    others = [n for n in required[1:] if f"'{n}:" not in declare]
    if others:  # AutoVC's forward(x, c_org): a speaker vector concatenated into the channels
        declare += "".join(f" --input '{n}:DTYPE[DIMS]'" for n in others)
        declare += (
            f" (forward takes {len(required)} inputs, {', '.join(required)}: declare each, in "
            f"its order; the {channels} channels may hold what forward concatenates from them)"
        )
    reads = _reads(conv)
    size = "FEATURES" if others else channels  # the channels hold the other inputs too
    transposed = (
        f"; if forward transposes [batch, time, {size}] into it, declare "
        f"'{x}:float32[batch,time,{size}]'"
        + ("" if others else f" or pass --input-size {channels}")
        if isinstance(conv, nn.Conv1d)
        else "; H and W are numbers, a frame's height and width, and time the frames' axis"
        if isinstance(conv, nn.Conv3d)
        else "; H is a number, the feature bins or image height, and time the axis that "
        "becomes the sequence"
        + (
            f"; if forward makes that view of [batch, time, features] itself (ESPnet's VGG2L: "
            f"x.view(b, t, 1, d).transpose(1, 2)), declare '{x}:float32[batch,time,FEATURES]'"
            if channels == 1
            else ""
        )
    )
    return (
        f"cannot infer the inputs of {type(model).__name__}: its first layer is "
        f"{type(conv).__name__}({channels}, ...), which reads {reads}, and which axis is time "
        f"cannot be told; declare them, e.g. {declare}{transposed} (a strided front end needs "
        "--range time=MIN,OPT,MAX with its shortest input)"
    )


def _inner_mark(model: nn.Module) -> str | None:
    """The third parameter of ``forward(docs, doc_lengths, sentence_lengths)``, a hierarchical
    model's: lengths (or a mask) of a sequence nested in each step of the first, told by its
    name; ``None`` for any other ``forward``."""
    required = [p.name for p in _forward_params(model) if p.default is p.empty]
    if len(required) != 3 or param_role(required[2]) is None:
        return None  # (ids, lengths, attention_mask): two of one sequence, not nested
    outer, inner = required[1:]
    same_kind = param_role(inner) == param_role(outer)
    return inner if same_kind and _INNER.search(_stem(inner)) else None


#: What a sequence nested in each step is named after (``sentence_lengths``, ``sent_lens``,
#: ``word_mask``): a document's sentences, a sentence's words, a dialogue's utterances.
_INNER = re.compile(r"(^|_)(sent|sentence|word|utt|utterance|turn|para|paragraph|line)s?$")


def _sequence_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(sequence, its lengths or mask) parameters of a ``forward`` that takes two or more
    sequences, each with its own lengths or mask, told by their names: in turn
    (``premise, premise_lengths, hypothesis, hypothesis_lengths``) or the sequences first
    (``a, b, a_len, b_len``). Empty for any other ``forward``."""
    required = [p.name for p in _forward_params(model) if p.default is p.empty]
    roles = [param_role(name) for name in required]
    sequences = [n for n, r in zip(required, roles, strict=True) if r is None]
    marks = [n for n, r in zip(required, roles, strict=True) if r is not None]
    if len(sequences) < 2 or len(sequences) != len(marks):
        return []
    by_name = {mark: _stem(mark) for mark in marks}
    if sorted(by_name.values()) == sorted(sequences):  # a_len after b_len: paired by name
        return [(seq, next(m for m in marks if by_name[m] == seq)) for seq in sequences]
    in_turn = roles[::2] == [None] * len(sequences)
    first = roles[: len(sequences)] == [None] * len(sequences)
    # a name of no sequence (lengths, masks) measures the first one: GRU-D's forward(values,
    # masks, deltas, lengths) has one sequence, deltas its time gaps (users37)
    if any(mark in _GENERIC_MARKS for mark in marks[1:]):
        return []
    return list(zip(sequences, marks, strict=True)) if in_turn or first else []


#: Lengths and mask names that name no sequence of their own.
_GENERIC_MARKS = frozenset(
    {
        *("lengths", "lens", "length", "seq_lens", "seq_lengths", "sequence_lengths", "seq_len"),
        *("input_lengths", "input_lens", "mask", "masks", "seq_mask", "sequence_mask"),
        *("input_mask", "valid_mask", "padding_mask", "pad_mask", "attention_mask", "attn_mask"),
        "key_padding_mask",
    }
)


def _stream_sizes(
    model: nn.Module, pairs: Sequence[tuple[str, str]], first: int | str
) -> dict[str, int]:
    """Each sequence's feature size, where a child module named after it (``self.body`` for
    ``body``, ``self.body_encoder``) starts with a layer that tells it: a two-stream model's
    hand and body keypoints differ in size. Only where the first sequence's own module takes
    the size the first was inferred with (``first``): a child so named may read what the
    encoder made of it (a siamese model's ``query_proj`` after one shared encoder)."""
    sizes: dict[str, int] = {}
    for sequence, _ in pairs:
        stem = _stem(sequence)
        for name, child in model.named_children():
            if name == stem or name.startswith(f"{stem}_"):
                leaf = first_leaf(child)
                size = _feature_size(leaf) if leaf is not None else None
                if size is not None:
                    sizes[sequence] = size
                    break
    return sizes if pairs and sizes.get(pairs[0][0]) == first else {}


def _feature_size(layer: nn.Module) -> int | None:
    """The features a layer takes last: a recurrent layer's, a Linear's, a LayerNorm's."""
    if isinstance(layer, BiRNN):
        return layer.input_size
    if isinstance(layer, nn.Linear):
        return layer.in_features
    if isinstance(layer, nn.LayerNorm) and len(layer.normalized_shape) == 1:
        return layer.normalized_shape[0]
    return None


def _stem(name: str) -> str:
    """The sequence a lengths or mask parameter names (``premise_lengths`` -> ``premise``,
    ``words_per_sentence`` -> ``words``)."""
    if _PER_NAME.match(name):
        return re.sub(r"^(?:n_|num_)", "", name).split("_per_")[0]
    return re.sub(r"_(lengths|lens|len|length|padding_mask|pad_mask|mask)$", "", name)


def _pair_inputs(
    pairs: Sequence[tuple[str, str]],
    forward_order: Sequence[str],
    first: InputDecl,
    role: str,
    input_names: Sequence[str] | None,
    how: str,
    *,
    nest: bool = True,
    sizes: Mapping[str, int] | None = None,
) -> tuple[tuple[InputDecl, ...], tuple[str, ...], str]:
    """The inputs of a ``forward`` that takes sequences with their own lengths (or masks), in
    ``forward_order``: each sequence as the first is inferred (``first``), with a time dim of
    its own (``seq`` for the first, ``hypothesis_seq`` for the others) that its lengths
    measure, and its own feature size where ``sizes`` has one; with ``nest``, one named as
    characters nests in the sequence before it."""
    sizes = sizes or {}
    by_name: dict[str, tuple[InputDecl, str]] = {}
    nested = []
    outer = SEQ  # the time dim of the last sequence not nested: its words' characters nest in it
    for index, (sequence, mark) in enumerate(pairs):
        kind = param_role(mark) or "lengths"
        time = SEQ if index == 0 else f"{sequence.removesuffix('_seq')}_seq"
        dims = tuple(time if d == SEQ else d for d in first.dims)
        if nest and index and first.dims == (BATCH, SEQ) and _CHARS.search(sequence):
            nested.append(sequence)  # each word's characters, with a length (or mask) per word
            told = "length" if kind == "lengths" else "mask"
            by_name[sequence] = (InputDecl(sequence, first.dtype, (BATCH, outer, time)), role)
            by_name[mark] = (_mark(mark, kind, (BATCH, outer), time), kind)
            continue
        outer = time
        if sequence in sizes:
            dims = (*dims[:-1], sizes[sequence])
        by_name[sequence] = (InputDecl(sequence, first.dtype, dims), role)
        by_name[mark] = (_mark(mark, kind, (BATCH,), time), kind)
    order = sorted(by_name, key=forward_order.index)
    decls = [by_name[name][0] for name in order]
    if input_names:
        if len(input_names) != len(decls):
            raise BiRNNExportError(f"input_names: {len(input_names)} names for {len(decls)} inputs")
        decls = [dataclasses.replace(d, name=n) for d, n in zip(decls, input_names, strict=True)]
    others = ", ".join(repr(s) for s, _ in pairs[1:] if s not in nested)
    kinds = {(param_role(m) or "lengths").replace("_", " ") for s, m in pairs if s not in nested}
    if others:
        how += (
            f"; {others} read as the same, each sequence with its own {' or '.join(sorted(kinds))}"
        )
    if len(set(sizes.values())) > 1:
        how += ", with the features its own module's first layer takes"
    if nested:
        chars = ", ".join(repr(s) for s in nested)
        how += f"; {chars} read as each step's characters, with a {told} per step, by its name"
    return tuple(decls), tuple(by_name[name][1] for name in order), how


def _mark(name: str, kind: str, rows: tuple[str, ...], time: str) -> InputDecl:
    """The lengths (``rows``) or mask (``rows`` and ``time``) of ``time``, named ``name``."""
    if kind == "lengths":
        return InputDecl(name, "int64", rows, time)
    return InputDecl(name, (_mask_name(name) or ("mask", "bool"))[1], (*rows, time), mask=kind)


#: A later sequence so named (``chars``, ``char_ids``, ``word_chars``, ``characters``; not
#: ``chart_ids``) holds each word's characters: it is nested in the steps of the sequence before
#: it (a character-level encoder per word).
_CHARS = re.compile(r"(^|_)char(s|acters?)?(_|$)")

#: Endings that mark one of two parameters of the same kind (``attention_mask_a``, ``mask2``).
_PAIR_MARK = re.compile(r"(_[ab12]|[12])$")
#: A count of steps in each row or step, as the HAN tutorials name them
#: (``sentences_per_document``, ``words_per_sentence``): per a unit of text or speech, not a
#: rate nor a size (``samples_per_second``, ``frames_per_chunk``, ``steps_per_epoch``).
_PER_NAME = re.compile(
    r"^(?:n_|num_)?[a-z]+s_per_(?:doc|document|sentence|sent|paragraph|utterance|utt|word|"
    r"turn|dialog|dialogue|conversation|session|line|page|review|post|article|query|segment)$"
)


def param_role(name: str) -> str | None:
    """``"lengths"`` or a mask role for a parameter so named (``lengths``, ``premise_lens``,
    ``sent1_len``, ``words_per_sentence``; ``attention_mask``, ``premise_mask``,
    ``attention_mask_b``), else ``None``."""
    for candidate in dict.fromkeys([name, _PAIR_MARK.sub("", name)]):
        if candidate in LENGTHS_NAMES or candidate.endswith(("_lengths", "_lens")):
            return "lengths"
        if _PER_NAME.match(candidate):
            return "lengths"
        if candidate.endswith(("_len", "_length")) and not candidate.startswith(("max_", "min_")):
            return "lengths"
    mask = _mask_name(name)
    return mask[0] if mask else None


def _mask_name(name: str) -> tuple[str, str] | None:
    """(role, dtype) of a mask parameter so named: :data:`MASK_NAMES` (also with a pair's
    ``_a`` / ``_b`` ending), else a name ending in ``_padding_mask`` or ``_pad_mask`` (a bool
    padding mask) or ``_mask`` (a bool mask)."""
    for candidate in dict.fromkeys([name, _PAIR_MARK.sub("", name)]):
        if candidate in MASK_NAMES:
            return MASK_NAMES[candidate]
        if candidate.endswith(("_padding_mask", "_pad_mask")):
            return "padding_mask", "bool"
        if candidate.endswith("_mask"):
            return "mask", "bool"
    return None


def _refuse_more_params(
    model: nn.Module, roles: Sequence[str], *, refused_lengths: bool = False
) -> None:
    """A ``forward`` that needs more inputs than were inferred (a speaker id, a second
    sequence) cannot run on the inferred ones: say so, with the declarations to write; where
    ``--no-lengths`` (``refused_lengths``) left out a parameter named as lengths, say that."""
    required = [p.name for p in _forward_params(model) if p.default is p.empty]
    if len(required) <= len(roles):
        return
    named = [n for n in required[len(roles) :] if param_role(n) == "lengths"]
    if refused_lengths and named:  # users65 F2: it said lengths are inferred "named as such"
        raise BiRNNExportError(
            f"--no-lengths (lengths=False): {type(model).__name__}.forward takes "
            f"{named[0]!r}, a lengths input by its name, which it needs: drop --no-lengths, or "
            "declare every input with --input"
        )
    inferred = " and ".join(["a first input", *roles[1:]])
    declare = " ".join(f"--input '{name}:DTYPE[DIMS]'" for name in required)
    raise BiRNNExportError(
        f"{type(model).__name__}.forward takes {len(required)} inputs ({', '.join(required)}), "
        f"and birnn-export inferred {inferred} (after a first input, it infers lengths and "
        "masks named as such: lengths, x_lens, attention_mask, and a second sequence or its "
        f"characters beside them); declare each, in forward's order: {declare} "
        "(e.g. 'x:float32[batch,seq,40]', 'speaker:int64[batch]', a second sequence with a "
        "time dim of its own 'y:int64[batch,y_seq]', its lengths 'y_lens:int64[batch]:"
        "lengths(y_seq)', each word's characters 'chars:int64[batch,seq,chars]', their lengths "
        f"'char_lens:int64[batch,seq]:lengths(chars)'{_state_example(model)}; Python: "
        "inputs=[...])"
    )


def _state_example(model: nn.Module) -> str:
    """An initial state of the model's first recurrent layer, as the example to declare:
    ``[layers x directions, batch, hidden]`` whatever its batch_first (users51 F4: the
    examples showed none)."""
    for name, layer in model.named_modules():
        if isinstance(layer, (nn.RNNBase, BiRNN)):
            rows = layer.num_layers * (2 if layer.bidirectional else 1)
            size = getattr(layer, "proj_size", 0) or layer.hidden_size
            state = f"'h0:float32[{rows},batch,{size}]'"
            return f", an initial state of its layer {name or type(layer).__name__!r} {state}"
    return ""


#: Mask names whose meaning is a convention even where ``forward`` makes the mask optional:
#: Hugging Face's ``attention_mask`` (and BERT's ``input_mask``), 1 at each row's tokens, which
#: their users always pass, and ``nn.MultiheadAttention``'s padding masks, True past each end.
_PADDING_CONVENTIONS = frozenset(
    {"attention_mask", "input_mask", "padding_mask", "pad_mask", "key_padding_mask",
     "src_key_padding_mask"}
)  # fmt: skip


def _mask_param(model: nn.Module) -> tuple[str, str, str] | None:
    """(name, role, dtype) of a mask that ``forward`` takes second, told by the parameter's
    name; an optional one only under a name of :data:`_PADDING_CONVENTIONS` (another, such as
    ``mask=None``, may be a square attention mask or True at padding: the model runs without
    it, as it did before, and :func:`optional_mask_note` says how to feed it)."""
    params = _forward_params(model)
    if len(params) < 2:
        return None
    optional = params[1].default is not inspect.Parameter.empty
    if optional and params[1].name not in _PADDING_CONVENTIONS:
        return None
    known = _mask_name(params[1].name)
    return None if known is None else (params[1].name, *known)


def keyword_mask(model: nn.Module) -> str | None:
    """The name of an optional mask of :data:`_PADDING_CONVENTIONS` that ``forward`` takes
    after a parameter it does not need (``forward(input_ids, token_type_ids=None,
    attention_mask=None)``, BERT's order): the graph feeds it by keyword. ``None`` where the
    second parameter is itself lengths or a mask, or more than the first is required."""
    params = _forward_params(model)
    required = [p for p in params if p.default is p.empty]
    if len(params) < 3 or required[1:] or param_role(params[1].name) is not None:
        return None
    return next(
        (p.name for p in params[2:] if p.name in _PADDING_CONVENTIONS and p.default is not p.empty),
        None,
    )


def optional_mask_note(model: nn.Module) -> str:
    """``"; optional 'mask' left out ..."`` for the first optional mask parameter of
    ``forward`` that the graph does not feed (by position, :func:`_mask_param`, or by keyword,
    :func:`keyword_mask`), with the declaration that feeds it where it is the second; else
    ``""``."""
    params = _forward_params(model)
    for at, param in enumerate(params[1:], start=1):
        known = _mask_name(param.name)
        if known is None or param.default is inspect.Parameter.empty:
            continue
        if param.name in _PADDING_CONVENTIONS and (at == 1 or keyword_mask(model)):
            continue  # fed: by position (the second) or by keyword
        role, dtype = known
        if at > 1:
            return (
                f"; optional {param.name!r} (parameter {at + 1} of forward) left out: the graph "
                "runs the model without it"
            )
        meaning = "True past each row's end" if role == "padding_mask" else "True at each step"
        return (
            f"; optional {param.name!r} left out (the graph runs the model without it): "
            f"--input '{param.name}:{dtype}[batch,seq]:{role}' feeds it, {meaning}"
        )
    return ""


def _guess_from_examples(
    model: nn.Module,
    inputs: Sequence[Tensor],
    lengths: bool | None,
    input_names: Sequence[str] | None,
) -> tuple[tuple[InputDecl, ...], tuple[str, ...]]:
    roles: list[str] = []
    params = [p.name for p in _forward_params(model)]
    for i, tensor in enumerate(inputs):
        if not isinstance(tensor, Tensor):
            raise BiRNNExportError(
                f"example_inputs[{i}]: expected a Tensor, got {type(tensor).__name__}"
            )
        if i == 1 and tensor.dim() == 1 and not tensor.is_floating_point():
            roles.append("lengths")
        elif (
            i >= 1
            and tensor.dim() == 2
            and not tensor.is_floating_point()
            and i < len(params)
            and param_role(params[i]) == "lengths"
        ):
            raise BiRNNExportError(
                f"example_inputs[{i}] ({params[i]!r}): lengths of shape {tuple(tensor.shape)}, "
                "one per row and step (each word's characters), are not guessed from examples; "
                "declare the inputs, e.g. inputs=['words:int64[batch,seq]', "
                "'lengths:int64[batch]:lengths(seq)', 'chars:int64[batch,seq,chars]', "
                "'char_lengths:int64[batch,seq]:lengths(chars)']"
            )
        elif i >= 1 and tensor.dim() == 2 and (i < len(params) and params[i] in MASK_NAMES):
            roles.append(MASK_NAMES[params[i]][0])
        elif i >= 1 and tensor.dim() == 2 and tensor.dtype == torch.bool:
            roles.append(_example_mask_role(tensor))
        elif tensor.dim() < 2:
            raise BiRNNExportError(
                f"example_inputs[{i}]: expected [batch, seq, ...], got shape {tuple(tensor.shape)}"
                "; declare the inputs (inputs=['x:float32[batch,...]'])"
            )
        else:
            roles.append("features" if tensor.is_floating_point() else "tokens")
    if lengths and "lengths" not in roles:
        raise BiRNNExportError(
            "lengths=True but example_inputs[1] is not an integer [batch] tensor"
        )
    # forward's own names, as inferred inputs take them: 'ids' for a model's 'words' made
    # serving code feed the graph by another name than the CLI's export of it (users41)
    names = list(input_names) if input_names else _param_names(model, roles)
    if len(names) != len(inputs):
        raise BiRNNExportError(f"input_names: {len(names)} names for {len(inputs)} example inputs")
    decls = []
    for name, role, tensor in zip(names, roles, inputs, strict=True):
        dtype = str(tensor.dtype).removeprefix("torch.")
        if role == "lengths":
            decls.append(InputDecl(name, dtype, (BATCH,), SEQ))
        elif role in MASK_ROLES:
            decls.append(InputDecl(name, dtype, (BATCH, SEQ), mask=role))
        else:
            decls.append(InputDecl(name, dtype, (BATCH, SEQ, *tensor.shape[2:])))
    return tuple(decls), tuple(roles)


def _example_mask_role(tensor: Tensor) -> str:
    """``padding_mask`` for a bool ``[batch, seq]`` example that is all False (no padding) or
    whose rows start False and end True somewhere, ``mask`` otherwise."""
    first, last = tensor[:, 0], tensor[:, -1]
    padding = not tensor.any() or ((~first).all() and last.any())
    return "padding_mask" if bool(padding) else "mask"


#: ``forward`` parameter names that say nothing about the input: the graph input is named by
#: its role instead (``ids``, ``x``).
_GENERIC_NAMES = frozenset({"x", "xs", "inp", "input", "inputs", "data"})


def _param_names(model: nn.Module, roles: Sequence[str]) -> list[str]:
    """Inferred inputs' names: ``forward``'s own parameter names (``input_ids``,
    ``attention_mask``, ``x_lens``), as a caller feeds them, but generic ones (``x``)."""
    names = _default_names(roles)
    for i, param in enumerate(_forward_params(model)[: len(roles)]):
        if param.name not in _GENERIC_NAMES:
            names[i] = param.name
    return names


def _default_names(roles: Sequence[str]) -> list[str]:
    base = {"tokens": "ids", "features": "x"}  # the others by their role
    names = [base.get(r, r) for r in roles]
    return [n if names.count(n) == 1 else f"{n}_{i}" for i, n in enumerate(names)]
