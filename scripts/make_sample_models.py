"""Write the sample models in ``sample_models/``.

Every model is built right after its own ``torch.manual_seed``, so the tensors are bit-identical
on every run (``tests/test_sample_models.py`` regenerates them and compares), but for the trained
``bilstm_crf_tagger.pt``, whose training steps sum in an order that differs by CPU (within 1e-4
of the committed weights). The three seed
article examples are written twice with the same weights: as a birnn-export checkpoint
(``seed_example*_rnn.pt`` etc.) and as a bare state_dict of the article's own class
(``seed_example*_state_dict.pt``), which exercises the state_dict recognition of ``load_model``.

Usage:
    python scripts/make_sample_models.py [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import secrets
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from birnn_export import seed
from birnn_export.checkpoint import save_checkpoint
from birnn_export.models import (
    CRNN,
    CRNNConfig,
    SequenceTagger,
    SpeechConfig,
    SpeechCTC,
    TaggerConfig,
)

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "sample_models"

#: A checkpoint with the inputs and ranges it declares (models with a front end).
Declared = tuple[nn.Module, list[str], dict[str, tuple[int, int, int]]]
Sample = SequenceTagger | Declared | dict[str, Tensor]


def _tagger(seed_value: int, config: TaggerConfig) -> SequenceTagger:
    torch.manual_seed(seed_value)
    return SequenceTagger(config).eval()


def _seeded(seed_value: int, build: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(seed_value)
    return build().eval()


def _seed_class(seed_value: int, cls: type[nn.Module]) -> nn.Module:
    torch.manual_seed(seed_value)
    return cls(10, 20, 5).eval()


def _tagger_from_seed(model: nn.Module, config: TaggerConfig) -> SequenceTagger:
    """The seed class's weights in SequenceTagger names: forward_* -> rnn.*, backward_* ->
    rnn.*_reverse, output_layer -> head."""
    tagger = SequenceTagger(config).eval()
    state = {}
    for key, value in model.state_dict().items():
        module, _, name = key.partition(".")
        if module.startswith("forward_"):
            state[f"rnn.{name}"] = value
        elif module.startswith("backward_"):
            state[f"rnn.{name}_reverse"] = value
        else:
            state[f"head.{name}"] = value
    tagger.load_state_dict(state, strict=True)
    return tagger


def segmentation_batch(
    generator: torch.Generator, batch: int, steps: int
) -> tuple[Tensor, Tensor, Tensor]:
    """A synthetic word-segmentation batch: ``(ids, tags, mask)``, rows of random length in
    ``[1, steps]`` padded with id 0. Words of 1-4 characters; a word's last character is drawn
    from ids 1-15, the others from ids 16-49; tags are B, I, E, S (0-3) per character."""
    ids = torch.zeros(batch, steps, dtype=torch.int64)
    tags = torch.zeros(batch, steps, dtype=torch.int64)
    lengths = torch.randint(1, steps + 1, (batch,), generator=generator)
    for row in range(batch):
        pos = 0
        while pos < int(lengths[row]):
            size = min(int(torch.randint(1, 5, (1,), generator=generator)), int(lengths[row]) - pos)
            word = torch.randint(16, 50, (size,), generator=generator)
            word[-1] = torch.randint(1, 16, (1,), generator=generator)
            ids[row, pos : pos + size] = word
            tags[row, pos : pos + size] = (
                torch.tensor([3]) if size == 1 else torch.tensor([0] + [1] * (size - 2) + [2])
            )
            pos += size
    mask = torch.arange(steps)[None, :] < lengths[:, None]
    return ids, tags, mask


def _trained_crf_tagger(seed_value: int, config: TaggerConfig, steps: int = 300) -> SequenceTagger:
    """A BiLSTM-CRF tagger trained on :func:`segmentation_batch` with ``torchcrf``'s
    log-likelihood (pytorch-crf), so its transitions are learned, not random. One thread:
    the same bytes on every machine."""
    import torchcrf

    from birnn_export.models import TorchReference

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed_value)
        generator = torch.Generator().manual_seed(seed_value)
        tagger = SequenceTagger(config)
        reference = tagger.to_torch()
        assert isinstance(reference, TorchReference)
        reference.crf = torchcrf.CRF(config.output_size, batch_first=True)
        optimizer = torch.optim.Adam(reference.parameters(), lr=0.01)
        reference.train()
        for _ in range(steps):
            ids, tags, mask = segmentation_batch(generator, 32, 24)
            emissions = reference.head(reference.rnn(reference.embedding(ids))[0])
            loss = -reference.crf(emissions, tags, mask=mask, reduction="mean")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        # The same parameter names (embedding.*, rnn.*, head.*, crf.*) on both.
        tagger.load_state_dict({k: v.detach().clone() for k, v in reference.state_dict().items()})
        return tagger.eval()
    finally:
        torch.set_num_threads(threads)


def _state_dict(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def make_samples() -> dict[str, Sample]:
    """File name -> SequenceTagger or (model, inputs, ranges) (saved as checkpoints), or a bare
    state_dict."""
    seed_config = dict(input_size=10, hidden_size=20, output_size=5)
    # The two token-id taggers (the second with a CRF) share their shape.
    token_config = dict(cell="lstm", input_size=16, hidden_size=32, num_layers=2, padding_idx=0)
    example1 = _seed_class(1, seed.ManualBidirectionalRNN)
    example2 = _seed_class(2, seed.ManualBidirectionalLSTM)
    example3 = _seed_class(3, seed.ManualBidirectionalRNNVariableLength)
    builders: dict[str, Callable[[], Sample]] = {
        "seed_example1_rnn.pt": lambda: _tagger_from_seed(
            example1, TaggerConfig(cell="rnn_tanh", **seed_config)
        ),
        "seed_example2_lstm.pt": lambda: _tagger_from_seed(
            example2, TaggerConfig(cell="lstm", **seed_config)
        ),
        "seed_example3_varlen_rnn.pt": lambda: _tagger_from_seed(
            example3, TaggerConfig(cell="rnn_tanh", uses_lengths=True, **seed_config)
        ),
        "bigru_varlen.pt": lambda: _tagger(
            4,
            TaggerConfig(
                cell="gru", input_size=16, hidden_size=24, output_size=6, uses_lengths=True
            ),
        ),
        "bilstm_2layer.pt": lambda: _tagger(
            5,
            TaggerConfig(
                cell="lstm",
                input_size=12,
                hidden_size=16,
                output_size=4,
                num_layers=2,
                uses_lengths=True,
            ),
        ),
        "token_tagger.pt": lambda: _tagger(
            6, TaggerConfig(output_size=9, vocab_size=100, uses_lengths=True, **token_config)
        ),
        "bilstm_crf_tagger.pt": lambda: _trained_crf_tagger(
            9, TaggerConfig(output_size=4, vocab_size=50, crf=True, **token_config)
        ),
        "crnn_ctc.pt": lambda: (
            _seeded(7, lambda: CRNN(CRNNConfig())),
            ["image:float32[batch,1,32,width]"],
            {"width": (32, 128, 512)},
        ),
        "speech_ctc.pt": lambda: (
            _seeded(8, lambda: SpeechCTC(SpeechConfig())),
            ["features:float32[batch,40,time]", "feature_lens:int64[batch]:lengths(time)"],
            {"time": (1, 200, 800)},
        ),
        "seed_example1_state_dict.pt": lambda: _state_dict(example1),
        "seed_example2_state_dict.pt": lambda: _state_dict(example2),
        "seed_example3_state_dict.pt": lambda: _state_dict(example3),
    }
    return {name: build() for name, build in builders.items()}


def _save_state_dict(state: dict[str, Tensor], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as handle:  # a file object keeps the bytes independent of the name
            torch.save(state, handle)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_samples(out: Path) -> list[Path]:
    """Write every sample into ``out`` (created if missing); returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, sample in make_samples().items():
        path = out / name
        if isinstance(sample, SequenceTagger):
            save_checkpoint(sample, path)
        elif isinstance(sample, tuple):
            model, inputs, ranges = sample
            save_checkpoint(model, path, inputs=inputs, ranges=ranges)
        else:
            _save_state_dict(sample, path)
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    args = parser.parse_args()
    for path in write_samples(args.out):
        print(f"{path}  {path.stat().st_size / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
