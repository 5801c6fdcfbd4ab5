"""Train the trained-like fixtures: six architectures, a few hundred steps each on a synthetic
task, so that their weights (and the error amplification that comes with them) look like a real
model's rather than a random initialisation's.

The classes are in ``tests/realistic_models.py`` and stand for a user's own code: they hold
torch's built-in recurrent layers, pack their input, and end in the heads people ship (additive
attention, CTC log-probabilities batch-first and time-major, per-token logits). Each file is the
model's ``state_dict``; ``models.json`` beside them says which class and arguments rebuild it,
the task, and the final training loss.

    python scripts/make_trained_models.py                       # tests/fixtures/trained/, small
    python scripts/make_trained_models.py --size 256 --out DIR  # real-size, for measurements

Training runs on one thread with fixed seeds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(1, str(ROOT))
from tests import realistic_models  # noqa: E402

DEFAULT_OUT = ROOT / "tests" / "fixtures" / "trained"
Batch = tuple[tuple[Tensor, ...], Callable[[Tensor], Tensor]]


def _lengths(gen: torch.Generator, batch: int, steps: int) -> Tensor:
    lengths = torch.randint(max(1, steps // 3), steps + 1, (batch,), generator=gen)
    lengths[0] = steps
    return lengths


def _masked_ce(logits: Tensor, tags: Tensor, lengths: Tensor) -> Tensor:
    valid = torch.arange(tags.shape[1])[None, :] < lengths[:, None]
    return nn.functional.cross_entropy(logits[valid], tags[valid])


def classify_first(gen: torch.Generator, vocab: int, classes: int) -> Batch:
    """ids uniform in [1, vocab); the class is the first token modulo ``classes``."""
    ids = torch.randint(1, vocab, (32, 24), generator=gen)
    label = ids[:, 0] % classes
    return (ids,), lambda logits: nn.functional.cross_entropy(logits, label)


def tag_neighbours(gen: torch.Generator, vocab: int, tags: int) -> Batch:
    """Each token's tag is its left neighbour's id modulo 3 plus 3 times its right neighbour's
    id modulo 2 (both directions needed; ``tags`` = 6); padded with id 0 past each length."""
    lengths = _lengths(gen, 32, 20)
    ids = torch.randint(1, vocab, (32, 20), generator=gen)
    valid = torch.arange(20)[None, :] < lengths[:, None]
    ids = ids * valid
    left = nn.functional.pad(ids, (1, 0))[:, :-1]
    right = nn.functional.pad(ids, (0, 1))[:, 1:]
    tags_ = (left % 3 + 3 * (right % 2)) % tags
    return (ids, lengths), lambda logits: _masked_ce(logits, tags_, lengths)


def tag_features(gen: torch.Generator, features: int, tags: int) -> Batch:
    """Features N(0, 1); a step's tag is the argmax of the previous plus the next step's first
    ``tags`` features; zero past each length."""
    lengths = _lengths(gen, 32, 20)
    x = torch.randn(32, 20, features, generator=gen)
    x = x * (torch.arange(20)[None, :, None] < lengths[:, None, None])
    context = nn.functional.pad(x, (0, 0, 1, 0))[:, :-1] + nn.functional.pad(x, (0, 0, 0, 1))[:, 1:]
    tags_ = context[..., :tags].argmax(-1)
    return (x, lengths), lambda logits: _masked_ce(logits, tags_, lengths)


def ctc_frames(gen: torch.Generator, features: int, symbols: int, *, time_major: bool) -> Batch:
    """Symbols 1..symbols-1 rendered as 2-4 noisy frames of a per-symbol prototype with a blank
    (noise) frame between; targets are the symbols, trained with ``nn.CTCLoss`` (blank 0)."""
    protos = torch.randn(symbols, features, generator=torch.Generator().manual_seed(99)) * 2
    batch, steps = 16, 40
    x = torch.zeros(batch, steps, features)
    targets, target_lengths, lengths = [], [], []
    for b in range(batch):
        t, seq = 0, []
        while True:
            symbol = int(torch.randint(1, symbols, (1,), generator=gen))
            width = int(torch.randint(2, 5, (1,), generator=gen))
            if t + width + 1 > steps or len(seq) >= 8:
                break
            x[b, t : t + width] = protos[symbol]
            t += width + 1
            seq.append(symbol)
        x[b, :t] += 0.3 * torch.randn(t, features, generator=gen)
        targets += seq
        target_lengths.append(len(seq))
        lengths.append(t)
    lengths_t = torch.tensor(lengths)
    ctc = nn.CTCLoss(blank=0, zero_infinity=True)

    def loss(log_probs: Tensor) -> Tensor:
        tbc = log_probs if time_major else log_probs.transpose(0, 1)
        return ctc(tbc, torch.tensor(targets), lengths_t, torch.tensor(target_lengths))

    return (x, lengths_t), loss


def fixtures(size: int | None) -> dict[str, dict]:
    """Name -> class, constructor arguments and task. ``size`` sets every hidden width (and the
    embedding and feature widths); ``None`` keeps the small test sizes."""
    h = size or 16
    wide = size or 24
    return {
        "attention_classifier": {
            "class": "AttentionClassifier",
            "kwargs": {"vocab_size": 100, "embed_dim": wide, "hidden": h, "classes": 15},
            "task": lambda g: classify_first(g, 100, 15),
        },
        "conv_bigru_ctc": {
            "class": "ConvBiGRUCTC",
            "kwargs": {"features": 8, "channels": wide, "hidden": h, "symbols": 7},
            "task": lambda g: ctc_frames(g, 8, 7, time_major=False),
        },
        "time_major_ctc": {
            "class": "TimeMajorCTC",
            "kwargs": {"features": 8, "hidden": h, "symbols": 6},
            "task": lambda g: ctc_frames(g, 8, 6, time_major=True),
        },
        "token_gru_tagger": {
            "class": "TokenGRUTagger",
            "kwargs": {"vocab_size": 40, "embed_dim": wide, "hidden": h, "tags": 6},
            "task": lambda g: tag_neighbours(g, 40, 6),
        },
        "relu_rnn_tagger": {
            "class": "ReluRNNTagger",
            "kwargs": {"features": 8, "hidden": h, "tags": 5},
            "task": lambda g: tag_features(g, 8, 5),
        },
        "deep_lstm_tagger": {
            "class": "DeepLSTMTagger",
            "kwargs": {"features": 8, "hidden": h, "tags": 5},
            "task": lambda g: tag_features(g, 8, 5),
        },
    }


def train(entry: dict, steps: int, seed: int) -> tuple[nn.Module, float]:
    torch.manual_seed(seed)
    model = getattr(realistic_models, entry["class"])(**entry["kwargs"])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        inputs, loss_fn = entry["task"](gen)
        loss = loss_fn(model(*inputs))
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
    return model.eval(), float(loss.detach())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--size", type=int, help="hidden width (default: the small test size)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--only", nargs="*", help="names to train (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    index_file = args.out / "models.json"
    manifest = json.loads(index_file.read_text()) if index_file.exists() else {}
    for index, (name, entry) in enumerate(fixtures(args.size).items()):
        if args.only and name not in args.only:
            continue
        start = time.perf_counter()
        model, loss = train(entry, args.steps, seed=1000 + index)
        with open(args.out / f"{name}.pt", "wb") as handle:
            torch.save(model.state_dict(), handle)
        manifest[name] = {
            "class": f"tests.realistic_models:{entry['class']}",
            "kwargs": entry["kwargs"],
            "task": _task_name(entry),
            "steps": args.steps,
            "final_loss": round(loss, 5),
        }
        print(
            f"{name}: loss {loss:.4f} after {args.steps} steps, {time.perf_counter() - start:.1f} s"
        )
    index_file.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _task_name(entry: dict) -> str:
    return entry["task"].__code__.co_names[0]


if __name__ == "__main__":
    main()
