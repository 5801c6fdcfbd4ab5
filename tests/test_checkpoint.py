"""Loading models safely: own checkpoints, bare/nested state_dicts, user classes, pickles, errors.

References are torch's own layers (built-in RNN/LSTM/GRU on a PackedSequence) or the user's
original module, never only our own code.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save as safetensors_save
from safetensors.torch import save_file as safetensors_save_file
from torch import nn
from torch.nn.utils import prune
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from birnn_export import seed
from birnn_export.checkpoint import LoadedModel, TorchReference, load_model, save_checkpoint
from birnn_export.cli import main
from birnn_export.conversion import find_recurrent_layers
from birnn_export.errors import BiRNNExportError, ModelLoadError
from birnn_export.models import SequenceTagger, TaggerConfig
from birnn_export.modules import BiRNN

ATOL, RTOL = 1e-6, 1e-5
USER_MODULE = "birnn_test_user_models"
USER_SOURCE = textwrap.dedent(
    """
    import torch
    from torch import nn


    class AttentionClassifier(nn.Module):
        '''Embedding -> 3-layer BiLSTM -> additive attention over all steps -> Linear.'''

        def __init__(self, vocab=50, dim=8, hidden=12, classes=4, dropout=0.1):
            super().__init__()
            self.embed = nn.Embedding(vocab, dim, padding_idx=0)
            self.encoder = nn.LSTM(
                dim, hidden, num_layers=3, bidirectional=True, batch_first=True, dropout=dropout
            )
            self.score = nn.Sequential(nn.Linear(2 * hidden, 16), nn.Tanh(), nn.Linear(16, 1))
            self.classify = nn.Linear(2 * hidden, classes)

        def forward(self, ids):
            states, _ = self.encoder(self.embed(ids))
            weights = torch.softmax(self.score(states).squeeze(-1), dim=1)
            return self.classify((weights.unsqueeze(-1) * states).sum(1))


    class ArgmaxServing(nn.Module):
        '''A serving wrapper: the classifier as an attribute, its argmax out.'''

        def __init__(self, **kwargs):
            super().__init__()
            self.model = AttentionClassifier(**kwargs)

        def forward(self, ids):
            return self.model(ids).argmax(-1)


    class CalibratedServing(ArgmaxServing):
        '''A serving wrapper with a temperature of its own.'''

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.temperature = nn.Parameter(torch.ones(1))


    class BuiltOffMeta(AttentionClassifier):
        '''A model whose __init__ cannot run on the meta device: it reads a tensor's value.'''

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.scale = float(torch.ones(1).sum())


    class LayeredTagger(nn.Module):
        '''Embedding -> BiLSTM of num_layers -> Linear, its sizes constructor arguments.'''

        def __init__(self, vocab=40, dim=8, hidden=10, tags=5, num_layers=2):
            super().__init__()
            self.embed = nn.Embedding(vocab, dim)
            self.lstm = nn.LSTM(dim, hidden, num_layers, batch_first=True, bidirectional=True)
            self.head = nn.Linear(2 * hidden, tags)

        def forward(self, ids):
            return self.head(self.lstm(self.embed(ids))[0])


    class SquareHeads(nn.Module):
        '''Conv1d front end -> BiLSTM -> a square Linear, for parametrizations on each.'''

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(4, 4, 3, padding=1)
            self.lstm = nn.LSTM(4, 4, batch_first=True, bidirectional=True)
            self.head = nn.Linear(8, 8)

        def forward(self, x):
            h = self.conv(x.transpose(1, 2)).transpose(1, 2)
            return self.head(self.lstm(h)[0])


    class NormedHead(SquareHeads):
        '''A class registering weight_norm on its head itself.'''

        def __init__(self):
            super().__init__()
            nn.utils.parametrizations.weight_norm(self.head)


    class HParamsClassifier(AttentionClassifier):
        '''Lightning style: __init__(self, hparams), its fields read from one dict.'''

        def __init__(self, hparams=None):
            super().__init__(**(hparams or {}))


    class PatchedClassifier(AttentionClassifier):
        '''The usual way to patch a model: a subclass passing everything on.'''

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)


    class ConvCTC(nn.Module):
        '''Conv1d front-end -> BiGRU -> Linear -> log_softmax (a CTC head).'''

        def __init__(self, features=6, channels=10, hidden=9, vocab=7):
            super().__init__()
            self.conv = nn.Conv1d(features, channels, kernel_size=3, padding=1)
            self.gru = nn.GRU(channels, hidden, bidirectional=True, batch_first=True)
            self.out = nn.Linear(2 * hidden, vocab)

        def forward(self, x):
            h = torch.relu(self.conv(x.transpose(1, 2))).transpose(1, 2)
            y, _ = self.gru(h)
            return torch.log_softmax(self.out(y), dim=-1)


    class ExportsOtherwise(ConvCTC):
        '''Computes something else while being exported: no graph matches it.'''

        def forward(self, x):
            y = super().forward(x)
            return y * 2 if torch.compiler.is_compiling() else y


    class NotAModule:
        pass


    class HubConfig:
        '''As transformers' PretrainedConfig: built by from_dict, keeping config.json's
        other keys (architectures, model_type, ...) as attributes.'''

        def __init__(self, vocab=50, dim=8, hidden=12, classes=4, **others):
            self.vocab, self.dim, self.hidden, self.classes = vocab, dim, hidden, classes
            self.__dict__.update(others)

        @classmethod
        def from_dict(cls, config):
            return cls(**config)


    class DictConfigTagger(nn.Module):
        '''As huggingface_hub's mixin builds a class taking one ``config`` dict.'''

        def __init__(self, config):
            super().__init__()
            self.rnn = nn.LSTM(config["dim"], config["hidden"], bidirectional=True)


    class HubTagger(nn.Module):
        '''As a PreTrainedModel: built from one config object, its class's config_class.'''

        config_class = HubConfig

        def __init__(self, config):
            super().__init__()
            self.embed = nn.Embedding(config.vocab, config.dim, padding_idx=0)
            self.rnn = nn.GRU(config.dim, config.hidden, bidirectional=True, batch_first=True)
            self.classifier = nn.Linear(2 * config.hidden, config.classes)

        def forward(self, input_ids):
            return self.classifier(self.rnn(self.embed(input_ids))[0])


    def write_marker(path):
        with open(path, "w") as handle:
            handle.write("code ran")
        return path
    """
)


@pytest.fixture(scope="module")
def user_models(tmp_path_factory):
    """A user's model module, importable by name from a temp directory."""
    folder = tmp_path_factory.mktemp("user_code")
    (folder / f"{USER_MODULE}.py").write_text(USER_SOURCE)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(folder))
        yield __import__(USER_MODULE)
    sys.modules.pop(USER_MODULE, None)


def _gen(seed_value: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed_value)


def _lengths() -> torch.Tensor:
    return torch.tensor([7, 3, 1, 5])


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=RTOL)


def _save(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


def _one_line_error(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


# -- own format --------------------------------------------------------------------------------


def test_save_and_load_own_checkpoint(tmp_path):
    torch.manual_seed(0)
    config = TaggerConfig(
        cell="gru", input_size=5, hidden_size=6, output_size=3, num_layers=2, uses_lengths=True
    )
    tagger = SequenceTagger(config).eval()
    path = tmp_path / "tagger.pt"
    save_checkpoint(tagger, path)

    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format"] == "birnn-export"
    assert raw["format_version"] == 1
    assert raw["architecture"] == "SequenceTagger"
    assert raw["config"] == config.to_dict()
    assert [p.name for p in tmp_path.iterdir()] == ["tagger.pt"]  # no temporary file left

    loaded = load_model(path)
    assert isinstance(loaded, LoadedModel)
    assert loaded.source == "birnn-export checkpoint v1 (SequenceTagger)"
    assert loaded.config == config.to_dict()
    assert isinstance(loaded.original, TorchReference)
    assert isinstance(loaded.original.rnn, nn.GRU) and not loaded.original.training
    assert loaded.path == path
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not loaded.model.training
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    x = torch.randn(4, 7, 5, generator=_gen())
    reference = TorchReference(tagger.rnn.to_torch(), tagger.head).eval()
    with torch.no_grad():
        _close(loaded.model(x, _lengths()), reference(x, _lengths()))


def test_save_checkpoint_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    path.write_bytes(b"previous content")

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    tagger = SequenceTagger(TaggerConfig(cell="lstm", input_size=2, hidden_size=3, output_size=2))
    with pytest.raises(BiRNNExportError, match="disk full"):
        save_checkpoint(tagger, path)
    assert path.read_bytes() == b"previous content"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_save_checkpoint_rejects_other_modules(tmp_path):
    """A user error, with what to do instead (users50 F4: a TypeError outside the hierarchy)."""
    from birnn_export.errors import UsageError

    with pytest.raises(UsageError, match=r"SequenceTagger.*torch.save\(model.state_dict"):
        save_checkpoint(nn.LSTM(2, 3), tmp_path / "x.pt")


def test_half_precision_checkpoint_loads_as_float32(tmp_path):
    tagger = SequenceTagger(TaggerConfig(cell="lstm", input_size=3, hidden_size=4, output_size=2))
    path = tmp_path / "half.pt"
    save_checkpoint(tagger.half(), path)
    loaded = load_model(path)
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    assert loaded.source.endswith(
        "its weights are float16: loaded in float32, the graph "
        "computes in float32 (--dtype float16 writes a float16 one)"
    )
    bf16 = _save(tagger.to(torch.bfloat16).state_dict(), tmp_path / "bf16.pt")
    assert "its weights are bfloat16: loaded in float32" in load_model(bf16).source
    f64 = _save(tagger.double().state_dict(), tmp_path / "f64.pt")  # said too (users43 F3)
    assert "its weights are float64: loaded in float32" in load_model(f64).source
    assert (
        "its weights are"
        not in load_model(_save(tagger.float().state_dict(), tmp_path / "f.pt")).source
    )


# -- the seed article's classes ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "layout"),
    [
        (seed.ManualBidirectionalRNN, "forward_rnn/backward_rnn, RNN tanh"),
        (seed.ManualBidirectionalLSTM, "forward_lstm/backward_lstm, LSTM"),
    ],
)
def test_seed_state_dict_equals_seed_class(tmp_path, cls, layout):
    torch.manual_seed(1)
    article = cls(4, 5, 3).eval()
    loaded = load_model(_save(article.state_dict(), tmp_path / "seed.pt"))
    assert loaded.source.startswith(f"bare state_dict, seed article layout ({layout})")
    assert "tanh taken" not in loaded.source  # the article's RNN classes say tanh themselves
    if cls is seed.ManualBidirectionalRNN:  # Example 1 and 3's weights cannot be told apart
        assert "rebuilt with per-row reversal" in loaded.source
        assert "its own flip-then-pack forward differs from that by 0." in loaded.source
    assert loaded.config["uses_lengths"] is True
    x = torch.randn(3, 6, 4, generator=_gen())
    with torch.no_grad():
        expected = article(x)
        _close(loaded.model(x), expected)
        _close(loaded.model(x, torch.full((3,), 6)), expected)  # full lengths = no lengths
        _close(loaded.original(x), expected)
    assert isinstance(loaded.original.rnn, (nn.RNN, nn.LSTM))


def _packed_reference(article: seed.ManualBidirectionalRNNVariableLength, nonlinearity="tanh"):
    """torch's bidirectional nn.RNN on a PackedSequence with the article's weights."""
    fwd, bwd = article.forward_rnn, article.backward_rnn
    rnn = nn.RNN(
        fwd.input_size,
        fwd.hidden_size,
        nonlinearity=nonlinearity,
        batch_first=True,
        bidirectional=True,
    )
    state = dict(fwd.state_dict())
    state.update({f"{k}_reverse": v for k, v in bwd.state_dict().items()})
    rnn.load_state_dict(state)

    def run(x, lengths):
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(rnn(packed)[0], batch_first=True, total_length=x.shape[1])
        return article.output_layer(out)

    return run


def test_seed_example3_state_dict_equals_packed_torch_not_the_article(tmp_path):
    torch.manual_seed(3)
    article = seed.ManualBidirectionalRNNVariableLength(4, 5, 3).eval()
    loaded = load_model(_save(article.state_dict(), tmp_path / "ex3.pt"))
    x = torch.randn(4, 7, 4, generator=_gen())
    lengths = _lengths()
    with torch.no_grad():
        expected = _packed_reference(article)(x, lengths)
        _close(loaded.model(x, lengths), expected)
        _close(loaded.original(x, lengths), expected)
        # The article's own forward is wrong for rows shorter than the batch.
        assert (article(x, lengths) - expected).abs().max() > 1e-2


def test_options_for_bare_state_dicts_are_refused_where_the_model_says_it(tmp_path):
    """--nonlinearity and --time-major on a birnn-export checkpoint, a pickled module or a
    --model-class were ignored without a word, where --state-key is refused (users24)."""
    from birnn_export.errors import ModelLoadError

    sample = Path(__file__).resolve().parent.parent / "sample_models" / "token_tagger.pt"
    gru = nn.GRU(4, 5, batch_first=True, bidirectional=True)
    pickled = _save(gru, tmp_path / "module.pt")
    weights = _save(gru.state_dict(), tmp_path / "weights.pt")
    kwargs = {"input_size": 4, "hidden_size": 5, "batch_first": True, "bidirectional": True}
    for path, options, told in (
        (
            sample,
            {"time_major": True},
            "--time-major (time_major=True) does not apply to a birnn-export checkpoint",
        ),
        (pickled, {"nonlinearity": "relu", "trust_pickle": True}, "to a pickled module"),
        (
            weights,
            {"time_major": True, "model_class": "torch.nn:GRU", "model_kwargs": kwargs},
            "to a model built by torch.nn:GRU (its layers say)",
        ),
    ):
        with pytest.raises(ModelLoadError, match=re.escape(told)):
            load_model(path, **options)
    tagger = nn.ModuleDict({"rnn": gru, "fc": nn.Linear(10, 3)})
    bare = _save(tagger.state_dict(), tmp_path / "bare.pt")
    assert load_model(bare, time_major=True).config["batch_first"] is False  # there it applies
    # an LSTM's or GRU's weights have no nonlinearity to choose: ignored before (review28 L5)
    told = "--nonlinearity tanh (nonlinearity='tanh') does not apply to nn.GRU weights"
    with pytest.raises(ModelLoadError, match=re.escape(told)):
        load_model(bare, nonlinearity="tanh")


def test_seed_rnn_relu_from_nonlinearity(tmp_path):
    torch.manual_seed(4)
    article = seed.ManualBidirectionalRNNVariableLength(4, 5, 3).eval()
    for layer in (article.forward_rnn, article.backward_rnn):
        layer.nonlinearity = "relu"
    path = _save(article.state_dict(), tmp_path / "relu.pt")
    loaded = load_model(path, nonlinearity="relu")
    assert loaded.config["cell"] == "rnn_relu"
    assert "RNN relu" in loaded.source
    x = torch.randn(4, 7, 4, generator=_gen())
    with torch.no_grad():
        expected = _packed_reference(article, "relu")(x, _lengths())
        _close(loaded.model(x, _lengths()), expected)
        tanh = load_model(path).model(x, _lengths())  # the default reads it as tanh: different
        assert (tanh - expected).abs().max() > 1e-3


# -- a built-in recurrent layer with embedding and head ------------------------------------------


class _BuiltinModel(nn.Module):
    def __init__(self, rnn: nn.RNNBase, head: nn.Linear, embedding: nn.Embedding | None):
        super().__init__()
        if embedding is not None:
            self.emb = embedding
        self.encoder = nn.Module()
        self.encoder.rnn = rnn
        self.classifier = head

    def forward(self, x, lengths):
        if hasattr(self, "emb"):
            x = self.emb(x)
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.encoder.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return self.classifier(out)


BUILTIN_CASES = [
    # kind, layers, bidirectional, bias, embedding, head bias
    ("lstm", 3, True, True, True, True),
    ("gru", 1, False, False, False, True),
    ("rnn_relu", 2, True, True, False, False),
]


@pytest.mark.parametrize(("kind", "layers", "bidir", "bias", "embed", "head_bias"), BUILTIN_CASES)
def test_builtin_layer_state_dict(tmp_path, kind, layers, bidir, bias, embed, head_bias):
    torch.manual_seed(5)
    hidden, features = 6, 5
    kwargs = dict(num_layers=layers, bidirectional=bidir, bias=bias, batch_first=True)
    if kind == "lstm":
        rnn = nn.LSTM(features, hidden, **kwargs)
    elif kind == "gru":
        rnn = nn.GRU(features, hidden, **kwargs)
    else:
        rnn = nn.RNN(features, hidden, nonlinearity="relu", **kwargs)
    head = nn.Linear(hidden * (2 if bidir else 1), 3, bias=head_bias)
    embedding = nn.Embedding(30, features) if embed else None
    reference = _BuiltinModel(rnn, head, embedding).eval()
    path = _save({"model": reference.state_dict(), "epoch": 7}, tmp_path / "builtin.pt")

    loaded = load_model(path, nonlinearity="relu" if kind == "rnn_relu" else None)
    assert isinstance(loaded.model, SequenceTagger)
    config = loaded.config
    assert (config["cell"], config["num_layers"], config["bidirectional"], config["bias"]) == (
        kind,
        layers,
        bidir,
        bias,
    )
    assert config["vocab_size"] == (30 if embed else None)
    assert "'encoder.rnn'" in loaded.source and "linear head 'classifier'" in loaded.source
    assert loaded.source.startswith("state_dict under key 'model', built-in")
    assert "tanh taken" not in loaded.source  # --nonlinearity relu said
    if kind == "rnn_relu":  # the default, tanh, is said to be taken (users41: a ReLU RNN)
        assert load_model(path).source.endswith(
            "; tanh taken for the RNN (the weights do not say; --nonlinearity relu if ReLU)"
        )
        assert "tanh taken" not in load_model(path, nonlinearity="tanh").source  # said
    if embed:
        x = torch.randint(0, 30, (4, 7), generator=_gen())
    else:
        x = torch.randn(4, 7, features, generator=_gen())
    with torch.no_grad():
        expected = reference(x, _lengths())
        _close(loaded.model(x, _lengths()), expected)
        _close(loaded.original(x, _lengths()), expected)


def test_an_embedding_and_a_head_that_fit_both_roles_keep_their_own(tmp_path):
    """Weight-only Embedding(10, 8) and Linear(8, 3) beside an LSTM(8, 4) both fit either role;
    the first in the file is the embedding. Swapped, the model rebuilt agrees with itself, so
    only the saving model tells (review31 CP10)."""
    torch.manual_seed(5)
    rnn = nn.LSTM(8, 4, bidirectional=True, batch_first=True)
    reference = _BuiltinModel(rnn, nn.Linear(8, 3, bias=False), nn.Embedding(10, 8)).eval()
    loaded = load_model(_save(reference.state_dict(), tmp_path / "tie.pt"))
    assert (loaded.config["vocab_size"], loaded.config["output_size"]) == (10, 3)
    assert "embedding 'emb'" in loaded.source and "linear head 'classifier'" in loaded.source
    x = torch.randint(0, 10, (4, 7), generator=_gen())
    with torch.no_grad():
        _close(loaded.model(x, _lengths()), reference(x, _lengths()))


def test_a_safetensors_state_dict_is_read_without_pickle(tmp_path, user_models):
    """model.safetensors (Hugging Face's format: tensors alone, nothing that runs): a bare
    layer and head are recognised as from a .pt state_dict, and a user's class takes its
    weights; both equal the model that saved them."""
    torch.manual_seed(5)
    rnn = nn.GRU(5, 6, num_layers=2, bidirectional=True, batch_first=True)
    reference = _BuiltinModel(rnn, nn.Linear(12, 3), nn.Embedding(30, 5)).eval()
    path = tmp_path / "model.safetensors"
    safetensors_save_file(reference.state_dict(), path, metadata={"format": "pt"})
    loaded = load_model(path)
    assert (loaded.config["cell"], loaded.config["num_layers"]) == ("gru", 2)
    x = torch.randint(0, 30, (4, 7), generator=_gen())
    with torch.no_grad():
        _close(loaded.model(x, _lengths()), reference(x, _lengths()))

    kwargs = {"vocab": 40, "dim": 6, "hidden": 7, "classes": 5}
    model = user_models.AttentionClassifier(**kwargs).eval()
    safetensors_save_file(model.state_dict(), path)
    loaded = load_model(path, model_class=f"{USER_MODULE}:AttentionClassifier", model_kwargs=kwargs)
    ids = torch.randint(0, 40, (3, 9), generator=_gen())
    with torch.no_grad():
        _close(loaded.model(ids), model(ids))


def test_a_save_pretrained_folder_reads_its_weights_and_config(tmp_path, user_models):
    """A folder as Hugging Face's save_pretrained writes it (model.safetensors or
    pytorch_model.bin, beside config.json): the weights file is read, and with --model-class
    config.json gives the class's arguments: as keywords (PyTorchModelHubMixin), or as the one
    config object a PreTrainedModel takes (its config_class, from_dict)."""
    kwargs = {"vocab": 40, "dim": 6, "hidden": 7, "classes": 5}
    mixin = tmp_path / "mixin"
    mixin.mkdir()
    model = user_models.AttentionClassifier(**kwargs).eval()
    safetensors_save_file(model.state_dict(), mixin / "model.safetensors")
    (mixin / "config.json").write_text(json.dumps(kwargs))
    loaded = load_model(mixin, model_class=f"{USER_MODULE}:AttentionClassifier")
    assert "model.safetensors of a saved folder, its config.json as the" in loaded.source
    ids = torch.randint(0, 40, (3, 9), generator=_gen())
    with torch.no_grad():
        _close(loaded.model(ids), model(ids))

    hub = tmp_path / "hub"
    hub.mkdir()
    config = user_models.HubConfig(**kwargs)
    tagger = user_models.HubTagger(config).eval()
    torch.save(tagger.state_dict(), hub / "pytorch_model.bin")
    extra = {"architectures": ["HubTagger"], "model_type": "hub", "transformers_version": "5"}
    (hub / "config.json").write_text(json.dumps({**kwargs, **extra}))
    loaded = load_model(hub, model_class=f"{USER_MODULE}:HubTagger")
    assert "pytorch_model.bin of a saved folder" in loaded.source
    with torch.no_grad():
        _close(loaded.model(ids), tagger(ids))
    # Without a class the weights are a bare state_dict; the load line says what config.json
    # is for.
    assert "--model-class builds your class from its config.json" in load_model(hub).source
    # --model-kwargs given wins over config.json.
    with pytest.raises(ModelLoadError, match="shape mismatch"):
        load_model(
            mixin,
            model_class=f"{USER_MODULE}:AttentionClassifier",
            model_kwargs={**kwargs, "hidden": 8},
        )

    # A class taking one config dict gets config.json whole, as the mixin passes it.
    plain = tmp_path / "plain"
    plain.mkdir()
    dict_model = user_models.DictConfigTagger({"dim": 3, "hidden": 4})
    safetensors_save_file(dict_model.state_dict(), plain / "model.safetensors")
    (plain / "config.json").write_text(json.dumps({"dim": 3, "hidden": 4}))
    assert load_model(plain, model_class=f"{USER_MODULE}:DictConfigTagger").model is not None
    # Errors from config.json's arguments point at that file.
    (plain / "config.json").write_text(json.dumps({"dim": 3}))
    with pytest.raises(ModelLoadError, match=r"plain/config\.json \(or give --model-kwargs\)"):
        load_model(plain, model_class=f"{USER_MODULE}:DictConfigTagger")

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match=r"without model\.safetensors or pytorch_model\.bin"):
        load_model(empty)
    (empty / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="sharded weights"):
        load_model(empty)
    (mixin / "config.json").write_text("[1, 2]")
    with pytest.raises(ModelLoadError, match="expected a JSON object"):
        load_model(mixin, model_class=f"{USER_MODULE}:AttentionClassifier")


def test_an_onnx_graph_given_as_the_model_is_named_as_one(tmp_path):
    """An exported graph where the PyTorch model belongs (arguments swapped, or the .onnx
    given to the export): said in one line, with the commands that take a graph."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [x])
    path = tmp_path / "graph.onnx"
    onnx.save(helper.make_model(graph), str(path))
    renamed = tmp_path / "graph.pt"
    renamed.write_bytes(path.read_bytes())
    for given in (path, renamed):
        with pytest.raises(ModelLoadError, match="is an ONNX graph, not a PyTorch model"):
            load_model(given)
    result = CliRunner().invoke(main, [str(path)])
    assert result.exit_code == 2 and "is an ONNX graph" in result.output
    assert "also the MODEL.pt" not in result.output


def test_state_dict_of_a_sequence_tagger_and_dataparallel_prefix(tmp_path):
    torch.manual_seed(6)
    config = TaggerConfig(cell="lstm", input_size=4, hidden_size=5, output_size=3, vocab_size=20)
    tagger = SequenceTagger(config).eval()
    state = {f"module.{k}": v for k, v in tagger.state_dict().items()}
    loaded = load_model(_save(state, tmp_path / "dp.pt"))
    assert "prefix 'module.' removed" in loaded.source
    ids = torch.randint(0, 20, (4, 7), generator=_gen())
    with torch.no_grad():
        _close(loaded.model(ids), tagger(ids))


def test_unrecognised_layout_lists_keys_and_model_class(tmp_path):
    state = {
        "conv.weight": torch.zeros(4, 3, 3),
        "conv.bias": torch.zeros(4),
        "fc.weight": torch.zeros(2, 4),
    }
    with pytest.raises(ModelLoadError) as info:
        load_model(_save(state, tmp_path / "cnn.pt"))
    message = _one_line_error(info)
    assert "conv.weight" in message and "fc" in message
    assert "--model-class module:Class" in message


def test_two_recurrent_layers_are_not_guessed(tmp_path):
    model = nn.ModuleDict(
        {"a": nn.LSTM(3, 4, batch_first=True), "b": nn.GRU(4, 4), "head": nn.Linear(4, 2)}
    )
    with pytest.raises(ModelLoadError, match="--model-class"):
        load_model(_save(model.state_dict(), tmp_path / "two.pt"))


def test_bare_layer_without_head_needs_model_class(tmp_path):
    torch.manual_seed(13)
    lstm = nn.LSTM(3, 4, bidirectional=True, batch_first=True)
    path = _save(lstm.state_dict(), tmp_path / "lstm.pt")
    kwargs = {"input_size": 3, "hidden_size": 4, "bidirectional": True, "batch_first": True}
    told = f"--model-class torch.nn:LSTM --model-kwargs '{json.dumps(kwargs)}'"
    with pytest.raises(ModelLoadError, match=re.escape(told)):
        load_model(path)
    loaded = load_model(path, model_class="torch.nn:LSTM", model_kwargs=kwargs)
    assert isinstance(loaded.model, BiRNN) and isinstance(loaded.original, nn.LSTM)
    x = torch.randn(4, 7, 3, generator=_gen())
    packed = pack_padded_sequence(x, _lengths(), batch_first=True, enforce_sorted=False)
    with torch.no_grad():
        expected, _ = pad_packed_sequence(lstm(packed)[0], batch_first=True, total_length=7)
        _close(loaded.model(x, _lengths())[0], expected)


def test_bare_lstm_with_projection_is_recognised(tmp_path):
    torch.manual_seed(3)
    lstm = nn.LSTM(3, 6, proj_size=2, num_layers=2, bidirectional=True, batch_first=True)
    model = nn.ModuleDict({"lstm": lstm, "head": nn.Linear(4, 5)})
    loaded = load_model(_save(model.state_dict(), tmp_path / "proj.pt"))
    assert "(2 layer(s), bidirectional, proj_size 2)" in loaded.source
    assert loaded.config["proj_size"] == 2 and loaded.model.rnn.proj_size == 2
    x = torch.randn(4, 7, 3, generator=_gen())
    packed = pack_padded_sequence(x, _lengths(), batch_first=True, enforce_sorted=False)
    with torch.no_grad():
        out = pad_packed_sequence(lstm(packed)[0], batch_first=True, total_length=7)[0]
        _close(loaded.model(x, _lengths()), model["head"](out))
        _close(loaded.original(x, _lengths()), model["head"](out))
    odd = {**model.state_dict(), "lstm.weight_hr_l0": torch.zeros(2, 2)}
    with pytest.raises(ModelLoadError, match=r"weight_hr_l0 \(2, 2\) is not an LSTM projection"):
        load_model(_save(odd, tmp_path / "odd.pt"))


# -- nested checkpoints ------------------------------------------------------------------------


def _training_checkpoint(tagger: SequenceTagger) -> dict:
    optimizer = torch.optim.Adam(tagger.parameters())
    tagger(torch.randn(2, 3, 4)).sum().backward()
    optimizer.step()
    return {
        "model_state_dict": tagger.state_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
        "vocab": {"<pad>": 0, "the": 1},
        "epoch": 12,
        "metrics": {"f1": 0.91},
    }


def test_nested_checkpoint_found(tmp_path):
    torch.manual_seed(7)
    tagger = SequenceTagger(TaggerConfig(cell="gru", input_size=4, hidden_size=5, output_size=3))
    path = _save(_training_checkpoint(tagger), tmp_path / "train.pt")
    loaded = load_model(path)
    assert loaded.source.startswith("state_dict under key 'model_state_dict', built-in GRU")
    x = torch.randn(2, 5, 4, generator=_gen())
    with torch.no_grad():
        _close(loaded.model(x), tagger.eval()(x))


def test_nested_checkpoint_ambiguous_and_state_key(tmp_path):
    torch.manual_seed(8)
    tagger = SequenceTagger(TaggerConfig(cell="lstm", input_size=4, hidden_size=5, output_size=3))
    ema = SequenceTagger(TaggerConfig(cell="lstm", input_size=4, hidden_size=5, output_size=3))
    path = _save(
        {"model": tagger.state_dict(), "ema": ema.state_dict(), "step": 3}, tmp_path / "a.pt"
    )
    with pytest.raises(ModelLoadError) as info:
        load_model(path)
    message = _one_line_error(info)
    assert "'model'" in message and "'ema'" in message and "--state-key" in message

    loaded = load_model(path, state_key="ema")
    assert loaded.source.startswith("state_dict under key 'ema'")
    x = torch.randn(2, 5, 4, generator=_gen())
    with torch.no_grad():
        _close(loaded.model(x), ema.eval()(x))
        assert not torch.allclose(loaded.model(x), tagger.eval()(x))

    with pytest.raises(ModelLoadError) as info:
        load_model(path, state_key="weights")
    message = _one_line_error(info)
    assert "'weights'" in message and "model, ema, step" in message

    with pytest.raises(ModelLoadError, match="holds a int"):
        load_model(path, state_key="step")


def test_checkpoint_without_state_dict(tmp_path):
    with pytest.raises(ModelLoadError, match=r"no state_dict.*epoch"):
        load_model(_save({"epoch": 3, "vocab": {"a": 1}}, tmp_path / "nothing.pt"))
    with pytest.raises(ModelLoadError, match="holds a Tensor"):
        load_model(_save(torch.zeros(3), tmp_path / "tensor.pt"))


# -- the user's own class ----------------------------------------------------------------------


def test_user_attention_classifier(tmp_path, user_models):
    torch.manual_seed(9)
    kwargs = {"vocab": 40, "dim": 6, "hidden": 7, "classes": 5}
    model = user_models.AttentionClassifier(**kwargs).eval()
    path = _save({"state_dict": model.state_dict(), "epoch": 2}, tmp_path / "attn.pt")
    loaded = load_model(path, model_class=f"{USER_MODULE}:AttentionClassifier", model_kwargs=kwargs)
    assert loaded.source == (
        f"state_dict under key 'state_dict' loaded into {USER_MODULE}:AttentionClassifier"
    )
    assert loaded.config is None
    assert isinstance(loaded.original.encoder, nn.LSTM)
    layers = find_recurrent_layers(loaded.model)
    assert [(p, type(m)) for p, m in layers] == [("encoder", BiRNN)]
    ids = torch.randint(0, 40, (3, 9), generator=_gen())
    with torch.no_grad():
        expected = model(ids)
        assert expected.shape == (3, 5)
        _close(loaded.model(ids), expected)
        _close(loaded.original(ids), expected)


def test_a_lightning_checkpoint_loads_the_keys_under_its_model_attribute(tmp_path, user_models):
    torch.manual_seed(9)
    kwargs = {"vocab": 40, "dim": 6, "hidden": 7, "classes": 5}
    model = user_models.AttentionClassifier(**kwargs).eval()
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state["loss_fn.weight"] = torch.ones(5)  # a weighted loss beside the model
    lightning = {"state_dict": state, "epoch": 3, "pytorch-lightning_version": "2.4.0"}
    path = _save(lightning, tmp_path / "epoch=3.ckpt")
    loaded = load_model(path, model_class=f"{USER_MODULE}:AttentionClassifier", model_kwargs=kwargs)
    assert "(prefix 'model.' removed; 1 other key(s) left out)" in loaded.source
    ids = torch.randint(0, 40, (3, 9), generator=_gen())
    with torch.no_grad():
        _close(loaded.original(ids), model(ids))
    state["model.extra"] = torch.ones(1)  # no prefix holds exactly the model's keys: refused
    with pytest.raises(ModelLoadError, match="weights do not fit"):
        load_model(
            _save(lightning, tmp_path / "b.ckpt"),
            model_class=f"{USER_MODULE}:AttentionClassifier",
            model_kwargs=kwargs,
        )


def test_a_serving_wrapper_loads_the_weights_of_the_model_it_holds(tmp_path, user_models):
    # users45: verifying a graph exported through a wrapper takes the wrapper as --model-class;
    # the weights file is the model's, whose keys are the wrapper's under 'model.'
    torch.manual_seed(4)
    kwargs = {"vocab": 40, "dim": 6, "hidden": 7, "classes": 5}
    model = user_models.AttentionClassifier(**kwargs).eval()
    path = _save(model.state_dict(), tmp_path / "classifier.pt")
    loaded = load_model(path, model_class=f"{USER_MODULE}:ArgmaxServing", model_kwargs=kwargs)
    assert (
        "(its keys put under the class's 'model.': the class holds the saved model as 'model')"
        in loaded.source
    )
    ids = torch.randint(0, 40, (3, 9), generator=_gen())
    with torch.no_grad():
        assert torch.equal(loaded.original(ids), model(ids).argmax(-1))
    state = {**model.state_dict(), "extra": torch.ones(1)}  # more than the model: refused
    with pytest.raises(ModelLoadError, match="weights do not fit"):
        load_model(
            _save(state, tmp_path / "b.pt"),
            model_class=f"{USER_MODULE}:ArgmaxServing",
            model_kwargs=kwargs,
        )
    # a wrapper with a parameter of its own: refused naming that alone (review28 L6)
    with pytest.raises(ModelLoadError, match=r"weights do not fit .*: missing \[temperature\]$"):
        load_model(path, model_class=f"{USER_MODULE}:CalibratedServing", model_kwargs=kwargs)


def test_a_fairseq_checkpoint_with_its_argparse_namespace_loads_without_pickle(
    tmp_path, user_models
):
    """fairseq (up to 0.10) saves its args as an argparse.Namespace beside the weights, which
    torch.load(weights_only=True) refuses; it is plain data and is read as such (a class of
    the user's beside it still is not)."""
    import argparse

    kwargs = {"vocab": 40, "dim": 6, "hidden": 7, "classes": 5}
    model = user_models.AttentionClassifier(**kwargs).eval()
    checkpoint = {
        "args": argparse.Namespace(arch="lstm", encoder_hidden_size=7, lr=[0.001]),
        "model": model.state_dict(),
        "optimizer_history": [{"criterion_name": "CrossEntropyCriterion", "num_updates": 30}],
        "extra_state": {"epoch": 3, "val_loss": 1.25},
    }
    path = _save(checkpoint, tmp_path / "checkpoint_best.pt")
    loaded = load_model(path, model_class=f"{USER_MODULE}:AttentionClassifier", model_kwargs=kwargs)
    assert loaded.source.startswith("state_dict under key 'model' loaded into")
    ids = torch.randint(0, 40, (3, 9), generator=_gen())
    with torch.no_grad():
        _close(loaded.model(ids), model(ids))
    checkpoint["extra_state"] = {"meter": user_models.AttentionClassifier}
    with pytest.raises(ModelLoadError, match="--trust-pickle"):
        load_model(_save(checkpoint, tmp_path / "other.pt"))


def test_hyper_parameters_not_applied_are_said(tmp_path, user_models):
    """A Lightning checkpoint's hyper_parameters whose sizes happen to be the class defaults'
    loaded silently with the defaults (its dropout, a flag the weights do not show, lost): the
    load line names those the class takes with another default, and says nothing where they
    all match it (LipNet's dropout_p was named though equal) or --model-kwargs are given."""
    model = user_models.AttentionClassifier().eval()
    weights = {f"model.{k}": v for k, v in model.state_dict().items()}
    cls = f"{USER_MODULE}:AttentionClassifier"
    note = "built with the class's defaults, not the checkpoint's hyper_parameters"
    saved = {"dropout": 0.3, "hidden": 12, "lr": 0.01}  # lr: the class takes no such argument
    path = _save({"state_dict": weights, "hyper_parameters": saved}, tmp_path / "last.ckpt")
    assert f"{note} that differ from them (dropout=0.3)" in load_model(path, model_class=cls).source
    given = load_model(path, model_class=cls, model_kwargs={"hidden": 12})
    assert "hyper_parameters" not in given.source
    saved = {"dropout": 0.1, "hidden": 12, "lr": 0.01}
    path = _save({"state_dict": weights, "hyper_parameters": saved}, tmp_path / "same.ckpt")
    assert "hyper_parameters" not in load_model(path, model_class=cls).source
    # a class taking one dict takes none by name: each is named (it was silent, review15)
    saved = {"hidden": 12, "dropout": 0.3}
    path = _save({"state_dict": weights, "hyper_parameters": saved}, tmp_path / "dict.ckpt")
    source = load_model(path, model_class=f"{USER_MODULE}:HParamsClassifier").source
    assert "that differ from them (hidden=12, dropout=0.3)" in source
    # a subclass passing *args, **kwargs on takes its base's: only those differing are named
    # (each was said to differ, users37)
    for dropout, told in [(0.1, False), (0.3, True)]:
        saved = {"dropout": dropout, "hidden": 12, "lr": 0.01}
        path = _save({"state_dict": weights, "hyper_parameters": saved}, tmp_path / "sub.ckpt")
        source = load_model(path, model_class=f"{USER_MODULE}:PatchedClassifier").source
        assert ("hyper_parameters" in source) is told, source
        assert "hidden" not in source and "lr" not in source
    # a config saved one level down (deepspeech.pytorch's model_cfg) beside entries the class
    # does not take: its entries are compared, and named so --model-kwargs takes them (users28)
    for dropout, told in [(0.0, False), (0.3, True)]:
        saved = {"labels": ["_", "A"], "model_cfg": {"dropout": dropout, "hidden": 12}}
        path = _save({"state_dict": weights, "hyper_parameters": saved}, tmp_path / "cfg.ckpt")
        source = load_model(path, model_class=cls).source
        assert ("that differ from them (dropout=0.3)" in source) is told, source
        assert "labels" not in source and "model_cfg" not in source


def test_weights_under_two_prefixes_or_beside_a_copy_are_not_guessed(tmp_path, user_models):
    kwargs = {"vocab": 40, "dim": 6, "hidden": 7, "classes": 5}
    cls = f"{USER_MODULE}:AttentionClassifier"
    state = user_models.AttentionClassifier(**kwargs).state_dict()
    distill = {f"{who}.{k}": v for who in ("teacher", "student") for k, v in state.items()}
    with pytest.raises(
        ModelLoadError, match=r"under 2 prefixes \('student\.', 'teacher\.'\); pass the one you "
    ):
        load_model(_save(distill, tmp_path / "d.pt"), model_class=cls, model_kwargs=kwargs)
    with_ema = {**state, **{f"ema.{k}": v for k, v in state.items()}}
    with pytest.raises(ModelLoadError, match=r"unexpected \[ema\."):  # the top level holds them
        load_model(_save(with_ema, tmp_path / "e.pt"), model_class=cls, model_kwargs=kwargs)


def test_a_prefix_as_state_key_picks_one_network_of_two(tmp_path, user_models):
    """DESED's mean-teacher checkpoints hold the network twice, under 'sed_student.' and
    'sed_teacher.' in a Lightning state_dict: --state-key names the prefix to load."""
    kwargs = {"vocab": 40, "dim": 6, "hidden": 7, "classes": 5}
    cls = f"{USER_MODULE}:AttentionClassifier"
    student = user_models.AttentionClassifier(**kwargs).state_dict()
    teacher = user_models.AttentionClassifier(**kwargs).state_dict()
    state = {f"sed_student.{k}": v for k, v in student.items()}
    state |= {f"sed_teacher.{k}": v for k, v in teacher.items()}
    path = _save({"state_dict": state, "epoch": 3}, tmp_path / "last.ckpt")
    for key in ("sed_teacher", "sed_teacher."):
        loaded = load_model(path, model_class=cls, model_kwargs=kwargs, state_key=key)
        assert torch.equal(loaded.model.embed.weight, teacher["embed.weight"])
        assert torch.equal(loaded.model.classify.bias, teacher["classify.bias"])
        assert "prefix 'sed_teacher.'" in loaded.source
    with pytest.raises(ModelLoadError, match=r"nor weights whose names start with 'sed_mentor\.'"):
        load_model(path, model_class=cls, model_kwargs=kwargs, state_key="sed_mentor")
    # saved by DataParallel (module.sed_teacher.*), the prefix as the refusal names it
    ddp = _save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "d.ckpt")
    with pytest.raises(ModelLoadError, match=r"as --state-key 'sed_student'"):
        load_model(ddp, model_class=cls, model_kwargs=kwargs)
    loaded = load_model(ddp, model_class=cls, model_kwargs=kwargs, state_key="sed_teacher")
    assert torch.equal(loaded.model.embed.weight, teacher["embed.weight"])


def test_a_prefix_as_state_key_picks_one_network_of_a_pickled_module(tmp_path, user_models):
    kwargs = {"vocab": 40, "dim": 6, "hidden": 7, "classes": 5}
    cls = f"{USER_MODULE}:AttentionClassifier"
    pair = nn.ModuleDict(
        {
            "sed_student": user_models.AttentionClassifier(**kwargs),
            "sed_teacher": user_models.AttentionClassifier(**kwargs),
        }
    )
    path = tmp_path / "mt.pt"
    torch.save(pair, path)
    with pytest.raises(ModelLoadError, match=r"as --state-key 'sed_student'"):
        load_model(path, model_class=cls, model_kwargs=kwargs, trust_pickle=True)
    loaded = load_model(
        path, model_class=cls, model_kwargs=kwargs, trust_pickle=True, state_key="sed_teacher"
    )
    assert torch.equal(loaded.model.embed.weight, pair["sed_teacher"].embed.weight)
    assert "pickled module's state_dict (trusted), prefix 'sed_teacher.'" in loaded.source


def test_sizes_that_do_not_fit_point_at_model_kwargs_and_the_saved_hyper_parameters(
    tmp_path, user_models
):
    kwargs = {"vocab": 40, "dim": 6, "hidden": 7, "classes": 5}
    model = user_models.AttentionClassifier(**kwargs)
    lightning = {"state_dict": model.state_dict(), "hyper_parameters": {**kwargs, "lr": 0.01}}
    path = _save(lightning, tmp_path / "last.ckpt")
    with pytest.raises(ModelLoadError, match="shape mismatch") as caught:
        load_model(path, model_class=f"{USER_MODULE}:AttentionClassifier")
    # the flag to paste, with the arguments the class takes, not the run's lr (users33)
    told = f"--model-kwargs '{json.dumps(kwargs)}'"
    assert told in str(caught.value) and "lr" not in str(caught.value), caught.value
    # a config one level down (deepspeech.pytorch's model_cfg): its sizes, not {} (review18)
    nested = {"labels": ["_", "A"], "model_cfg": kwargs}
    path = _save({"state_dict": model.state_dict(), "hyper_parameters": nested}, path)
    with pytest.raises(ModelLoadError, match="shape mismatch") as caught:
        load_model(path, model_class=f"{USER_MODULE}:AttentionClassifier")
    assert '"hidden": 7' in str(caught.value) and "labels" not in str(caught.value)
    path = _save(model.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(ModelLoadError, match="pass its sizes with --model-kwargs"):
        load_model(path, model_class=f"{USER_MODULE}:AttentionClassifier")
    # layers named otherwise: said, beside the sizes to pass (users46 F4, review28 M3)
    other = {**model.state_dict(), "classify.weight": torch.zeros(5, 3)}
    other = {k.replace("encoder.", "lstm1."): v for k, v in other.items()}
    with pytest.raises(ModelLoadError, match="shape mismatch") as caught:
        load_model(_save(other, path), model_class=f"{USER_MODULE}:AttentionClassifier")
    told = (
        "the class names its layers otherwise than the file ([encoder] where the file has [lstm1])"
    )
    assert told in str(caught.value) and "load the weights into the class" in str(caught.value)
    assert "pass its sizes with --model-kwargs" in str(caught.value)


@pytest.mark.slow
def test_a_failed_export_names_a_verify_command_that_loads_the_model_as_it_did(
    tmp_path, user_models
):
    torch.manual_seed(10)
    path = _save(user_models.ExportsOtherwise(hidden=5).state_dict(), tmp_path / "d.pt")
    kwargs = '{"hidden": 5}'
    model = ["--model-class", f"{USER_MODULE}:ExportsOtherwise", "--model-kwargs", kwargs]
    out = ["-o", str(tmp_path / "d.onnx"), "--input-size", "6"]
    runner = CliRunner()
    report = tmp_path / "report.json"
    tolerances = ["--atol", "0.0001", "--rtol", "0.001"]  # judged as the user asked, again
    failed = runner.invoke(main, [str(path), *out, *model, *tolerances, "--json", str(report)])
    assert failed.exit_code == 1, failed.output
    assert not (tmp_path / "d.onnx").exists()
    saved = json.loads(report.read_text())  # the report of the failure, for CI to keep
    assert saved["written"] is None and saved["error"].startswith("FAIL")
    assert not saved["verification"]["passed"]
    # the model file it was compared against, as a success's says it (review32)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert saved["model_sha256"] == saved["verification"]["model_sha256"] == sha
    assert saved["verification"]["model_file"] == str(path)
    assert saved["error"] == f"{saved['verification']['error']}; nothing was written"
    hint = failed.output.split(
        "To study the failure: re-export with --no-verify and without --atol/--rtol, then "
    )[1]
    study = shlex.split(hint.splitlines()[0])
    assert study[:2] == ["birnn-export", "verify"] and study[-2:] == ["--save-inputs", "cases.json"]
    assert study[study.index("--model-kwargs") + 1] == kwargs
    assert " ".join(tolerances) in " ".join(study)
    assert saved["verification"]["criterion"].startswith("fixed tolerances")
    unjudged = runner.invoke(main, [str(path), *out, *model, "--no-verify", "--atol", "1e-4"])
    assert unjudged.exit_code == 2
    assert "--no-verify (verify=False) skips verification" in unjudged.output
    assert not (tmp_path / "d.onnx").exists()
    written = runner.invoke(main, [str(path), *out, *model, "--no-verify"])
    assert written.exit_code == 0, written.output
    rerun = runner.invoke(main, [*study[1:-2], "--save-inputs", str(tmp_path / "cases.json")])
    assert rerun.exit_code == 1 and "FAIL" in rerun.output  # loaded, verified, failed again
    assert (tmp_path / "cases.json").exists()
    # review41 F5: with a graph at -o, kept, the re-export it names goes beside it
    again = runner.invoke(main, [str(path), *out, *model, *tolerances])
    aside = tmp_path / "d.unverified.onnx"
    assert again.exit_code == 1 and (tmp_path / "d.onnx").exists()
    assert f"re-export with --no-verify -o {aside} and without --atol/--rtol, then " in again.output
    assert f"birnn-export verify {aside} --model " in again.output


def test_user_conv_ctc(tmp_path, user_models):
    torch.manual_seed(10)
    model = user_models.ConvCTC().eval()
    path = _save(model.state_dict(), tmp_path / "ctc.pt")
    loaded = load_model(path, model_class=f"{USER_MODULE}:ConvCTC")
    assert isinstance(loaded.model.gru, BiRNN)
    x = torch.randn(2, 11, 6, generator=_gen())
    with torch.no_grad():
        expected = model(x)
        _close(loaded.model(x), expected)
    assert torch.allclose(expected.exp().sum(-1), torch.ones(2, 11))


@pytest.mark.parametrize(
    ("spec", "kwargs", "match"),
    [
        ("no_colon_here", None, "expected 'package.module:Class'"),
        ("birnn_no_such_module_xyz:Model", None, "cannot import module 'birnn_no_such_module_xyz'"),
        (f"{USER_MODULE}:Missing", None, "has no attribute 'Missing'"),
        (f"{USER_MODULE}:NotAModule", None, "not an nn.Module subclass"),
        (f"{USER_MODULE}:ConvCTC", {"bogus": 1}, "TypeError.*--model-kwargs"),
        (f"{USER_MODULE}:ConvCTC", {"hidden": 4}, "shape mismatch: \\[gru.weight_ih_l0"),
        (f"{USER_MODULE}:AttentionClassifier", None, "missing \\[embed.weight"),
    ],
)
def test_user_class_errors(tmp_path, user_models, spec, kwargs, match):
    torch.manual_seed(11)
    path = _save(user_models.ConvCTC().state_dict(), tmp_path / "ctc.pt")
    with pytest.raises(ModelLoadError, match=match) as info:
        load_model(path, model_class=spec, model_kwargs=kwargs)
    _one_line_error(info)


def test_model_kwargs_need_model_class(tmp_path):
    with pytest.raises(ModelLoadError, match="model_class"):
        load_model(tmp_path / "x.pt", model_kwargs={"a": 1})


# -- pickles: refused unless trusted -----------------------------------------------------------


class _RunsCode:
    """Unpickling this calls the user module's write_marker: code execution from a file."""

    def __init__(self, function, marker: Path) -> None:
        self.function, self.marker = function, marker

    def __reduce__(self):
        return (self.function, (str(self.marker),))


def test_pickled_code_never_runs_without_trust(tmp_path, user_models):
    marker = tmp_path / "marker.txt"
    path = _save({"payload": _RunsCode(user_models.write_marker, marker)}, tmp_path / "evil.pt")
    with pytest.raises(ModelLoadError) as info:
        load_model(path)
    message = _one_line_error(info)
    assert "weights_only" in message and "--trust-pickle" in message
    assert f"{USER_MODULE}.write_marker" in message
    assert not marker.exists()

    # The file really does run code when trusted (so the check above can fail).
    with pytest.raises(ModelLoadError, match="found no state_dict"):
        load_model(path, trust_pickle=True)
    assert marker.read_text() == "code ran"


def test_os_system_pickle_refused(tmp_path):
    marker = tmp_path / "os_marker"

    class Shell:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = _save(Shell(), tmp_path / "shell.pt")
    with pytest.raises(ModelLoadError, match="trust_pickle=True"):
        load_model(path)
    assert not marker.exists()


def test_whole_pickled_module_needs_trust(tmp_path, user_models):
    torch.manual_seed(12)
    model = user_models.ConvCTC().eval()
    path = _save(model, tmp_path / "whole.pt")
    with pytest.raises(ModelLoadError, match=r"ConvCTC.*--trust-pickle"):
        load_model(path)
    loaded = load_model(path, trust_pickle=True)
    assert loaded.source == "pickled module (trusted)"
    assert isinstance(loaded.original.gru, nn.GRU)
    assert isinstance(loaded.model.gru, BiRNN)
    x = torch.randn(2, 8, 6, generator=_gen())
    with torch.no_grad():
        _close(loaded.model(x), model(x))
    forgot_eval = _save(user_models.ConvCTC().train(), tmp_path / "train.pt")
    loaded = load_model(forgot_eval, trust_pickle=True)
    assert "saved in training mode: exported and verified in eval mode" in loaded.source
    assert not loaded.original.training


def test_a_model_quantized_by_torch_is_refused_with_the_float_route(tmp_path, user_models, capfd):
    """quantize_dynamic keeps packed int8 weights (TorchScript objects) in place of nn.LSTM's:
    the pickled module, its state_dict, and that state_dict unpickled with trust are each
    refused in one line that says to export the float model with --quantize int8."""
    import warnings

    torch.manual_seed(12)
    kwargs = {"vocab": 40, "dim": 6, "hidden": 7, "classes": 5}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torch.ao.quantization.quantize_dynamic(
            user_models.AttentionClassifier(**kwargs).eval(), {nn.LSTM, nn.Linear}, torch.qint8
        )
    whole, state = _save(model, tmp_path / "q.pt"), _save(model.state_dict(), tmp_path / "sd.pt")
    user_class = {"model_class": f"{USER_MODULE}:AttentionClassifier", "model_kwargs": kwargs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        linear = torch.ao.quantization.quantize_dynamic(  # the common case: heads only
            user_models.AttentionClassifier(**kwargs).eval(), {nn.Linear}, torch.qint8
        )
    heads = _save(linear.state_dict(), tmp_path / "heads.pt")  # readable without pickle
    for path, options, said in [
        (whole, {"trust_pickle": True}, "'encoder' is a quantized LSTM"),
        (state, user_class, "holds TorchScript objects"),
        (state, {"trust_pickle": True, **user_class}, "encoder._all_weight_values.0.param"),
        (heads, user_class, "._packed_params._packed_params[0] holds a torch.qint8 tensor"),
    ]:
        with pytest.raises(ModelLoadError, match="--quantize int8") as info:
            load_model(path, **options)
        assert said in str(info.value)
        _one_line_error(info)
    capfd.readouterr()
    with pytest.raises(ModelLoadError):
        load_model(heads, **user_class)
    assert capfd.readouterr().err == ""  # torch's deprecation warnings go to the debug log


def test_a_module_pickled_by_the_training_script_loads_with_its_class_named(
    tmp_path, user_models, monkeypatch
):
    """``torch.save(model)`` in ``train.py`` run directly pickles ``__main__.ConvCTC``, which no
    later process has: the refusal names --model-class, and with it the pickle finds the class."""
    torch.manual_seed(13)
    model = user_models.ConvCTC().eval()
    main_module = sys.modules["__main__"]
    monkeypatch.setattr(user_models.ConvCTC, "__module__", "__main__")
    monkeypatch.setattr(main_module, "ConvCTC", user_models.ConvCTC, raising=False)
    path = _save(model, tmp_path / "from_script.pt")
    monkeypatch.undo()
    assert not hasattr(main_module, "ConvCTC")
    with pytest.raises(ModelLoadError, match=r"__main__\.ConvCTC.*--model-class MODULE:ConvCTC"):
        load_model(path, trust_pickle=True)
    loaded = load_model(path, trust_pickle=True, model_class=f"{USER_MODULE}:ConvCTC")
    assert loaded.source == "pickled module (trusted)"
    x = torch.randn(2, 8, 6, generator=_gen())
    with torch.no_grad():
        _close(loaded.model(x), model(x))
    with pytest.raises(ModelLoadError, match=r"not in the module of --model-class"):
        load_model(path, trust_pickle=True, model_class="torch.nn:GRU")


# -- bad files ---------------------------------------------------------------------------------


def _own_checkpoint(tmp_path: Path, **overrides) -> Path:
    config = TaggerConfig(cell="lstm", input_size=3, hidden_size=4, output_size=2)
    payload = {
        "format": "birnn-export",
        "format_version": 1,
        "architecture": "SequenceTagger",
        "config": config.to_dict(),
        "state_dict": SequenceTagger(config).state_dict(),
    }
    payload.update(overrides)
    return _save(payload, tmp_path / "own.pt")


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, pattern the one-line message must contain)."""
    good = tmp_path / "good.pt"
    save_checkpoint(
        SequenceTagger(TaggerConfig(cell="gru", input_size=3, hidden_size=4, output_size=2)), good
    )
    data = good.read_bytes()
    (tmp_path / "folder.pt").mkdir()
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "half.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.pt").write_text("epoch 3: loss 0.12\nepoch 4: loss 0.10\n")
    weights = safetensors_save(SequenceTagger(TaggerConfig("gru", 3, 4, 2)).state_dict())
    (tmp_path / "half.safetensors").write_bytes(weights[: len(weights) // 2])
    files = {
        "missing": (tmp_path / "absent.pt", "no such file"),
        "directory": (tmp_path / "folder.pt", "is a directory"),
        "empty": (tmp_path / "empty.pt", "is empty"),
        "truncated": (tmp_path / "half.pt", "truncated or corrupted"),
        "text": (tmp_path / "notes.pt", "not a PyTorch file"),
        "safetensors_truncated": (
            tmp_path / "half.safetensors",
            "truncated or corrupted safetensors file",
        ),
    }
    own = {
        "version": ({"format_version": 2}, "format_version 2 is not supported"),
        "architecture": ({"architecture": "Transformer"}, "architecture 'Transformer'"),
        "config_unknown": ({"config": {"cell": "lstm", "depth": 3}}, "bad config"),
        "config_cell": (
            {"config": {**TaggerConfig("lstm", 3, 4, 2).to_dict(), "cell": "bogus"}},
            "bad config",
        ),
        "weights": (
            {"config": TaggerConfig("lstm", 3, 5, 2).to_dict()},
            "weights do not fit.*shape mismatch",
        ),
    }
    for name, (overrides, pattern) in own.items():
        folder = tmp_path / name
        folder.mkdir()
        files[f"own_{name}"] = (_own_checkpoint(folder, **overrides), pattern)
    return files


BAD = [
    "missing",
    "directory",
    "empty",
    "truncated",
    "text",
    "safetensors_truncated",
    "own_version",
    "own_architecture",
    "own_config_unknown",
    "own_config_cell",
    "own_weights",
]


@pytest.mark.parametrize("name", BAD)
def test_bad_file_is_one_line_model_load_error(tmp_path, name):
    path, pattern = _bad_files(tmp_path)[name]
    with pytest.raises(ModelLoadError, match=pattern) as info:
        load_model(path)
    _one_line_error(info)


# -- CLI ---------------------------------------------------------------------------------------


def _cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def _assert_one_line_error(result, pattern: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ")
    assert pattern in lines[0]


@pytest.mark.parametrize("name", BAD)
def test_cli_bad_file_exit_2(tmp_path, name):
    path, _ = _bad_files(tmp_path)[name]
    result = _cli(path)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output


def test_cli_pickle_refused_names_flag(tmp_path, user_models):
    marker = tmp_path / "marker.txt"
    path = _save(_RunsCode(user_models.write_marker, marker), tmp_path / "evil.pt")
    _assert_one_line_error(_cli(path), "--trust-pickle")
    assert not marker.exists()


def test_cli_unrecognised_and_ambiguous(tmp_path):
    cnn = _save({"conv.weight": torch.zeros(2, 2, 3)}, tmp_path / "cnn.pt")
    _assert_one_line_error(_cli(cnn), "--model-class")
    sd = nn.Linear(2, 2).state_dict()
    both = _save({"a": sd, "b": sd}, tmp_path / "both.pt")
    _assert_one_line_error(_cli(both), "--state-key")
    _assert_one_line_error(_cli(both, "--state-key", "c"), "keys present")
    _assert_one_line_error(_cli(cnn, "--model-class", "nope_nothing:X"), "cannot import")


def test_cli_passes_loader_options(tmp_path, user_models):
    # Success output belongs to the export command; here only that the flags reach load_model.
    marker = tmp_path / "marker.txt"
    path = _save(_RunsCode(user_models.write_marker, marker), tmp_path / "evil.pt")
    _assert_one_line_error(_cli(path, "--trust-pickle"), "holds a str")
    assert marker.exists()
    ctc = _save({"net": user_models.ConvCTC().state_dict()}, tmp_path / "ctc.pt")
    args = ["--model-class", f"{USER_MODULE}:ConvCTC", "--model-kwargs", '{"hidden": 4}']
    _assert_one_line_error(_cli(ctc, *args), "shape mismatch")
    _assert_one_line_error(_cli(ctc, "--model-kwargs", "{}"), "model_class")


@pytest.mark.parametrize("compile_with", ["script", "trace"])
def test_torchscript_archive_is_named_as_such(
    tmp_path: Path, compile_with: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A torch.jit.save archive is not a corrupted torch.save one: the error says what it is and
    what to save instead, with no warning from torch.load, exit 2 from the command."""
    layer = nn.GRU(4, 5, batch_first=True, bidirectional=True).eval()
    compiled = (
        torch.jit.script(layer)
        if compile_with == "script"
        else torch.jit.trace(layer, torch.randn(2, 3, 4))
    )
    path = tmp_path / "scripted.pt"
    torch.jit.save(compiled, str(path))
    with pytest.raises(ModelLoadError, match=r"TorchScript archive.*state_dict"):
        load_model(path, trust_pickle=True)
    # the line it gives re-saves the weights, which the class it names then loads (users43 F1)
    kwargs = {"input_size": 4, "hidden_size": 5, "batch_first": True, "bidirectional": True}
    with pytest.raises(ModelLoadError, match=r"with --model-class torch\.nn:GRU$") as told:
        load_model(path, model_class="torch.nn:GRU", model_kwargs=kwargs)
    resave = re.search(r"(torch\.save\(.*'weights\.pt'\))", str(told.value))
    assert resave is not None, told.value
    monkeypatch.chdir(tmp_path)
    exec(resave.group(1), {"torch": torch})
    loaded = load_model(tmp_path / "weights.pt", model_class="torch.nn:GRU", model_kwargs=kwargs)
    x = torch.randn(2, 3, 4)
    torch.testing.assert_close(loaded.original(x)[0], layer(x)[0])
    result = CliRunner().invoke(main, [str(path), "-o", str(tmp_path / "out.onnx")])
    assert result.exit_code == 2 and "TorchScript archive" in result.output
    assert "Warning" not in result.output and not (tmp_path / "out.onnx").exists()


def test_a_pruned_state_dict_is_loaded_as_prune_remove_makes_it(tmp_path, user_models):
    """Saved before prune.remove, the weight is weight_orig and weight_mask: refused as keys
    that do not fit the class (users21)."""
    torch.manual_seed(0)
    model = user_models.AttentionClassifier().eval()
    prune.l1_unstructured(model.encoder, "weight_hh_l0", amount=0.5)
    lightning = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}
    ids = torch.randint(1, 50, (3, 9))
    for saved, name in ((model.state_dict(), "encoder"), (lightning, "model.encoder")):
        path = _save(saved, tmp_path / "pruned.pt")
        loaded = load_model(path, model_class=f"{USER_MODULE}:AttentionClassifier")
        assert f"pruned [{name}.weight_hh_l0]: each weight_orig x weight_mask" in loaded.source
        with torch.no_grad():
            _close(loaded.model(ids), model(ids))


def _trained(model: nn.Module) -> None:
    """Move every parameter off the value it started from, as training does: a fold that is
    right only at the start (weight_norm's g equal to ||v||) then shows."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)


_PARAMETRIZATIONS = {
    "weight_norm": lambda m, name: nn.utils.parametrizations.weight_norm(m, name),
    "weight_norm dim 1": lambda m, name: nn.utils.parametrizations.weight_norm(m, name, dim=1),
    "spectral_norm": lambda m, name: nn.utils.parametrizations.spectral_norm(m, name),
    "older weight_norm": lambda m, name: nn.utils.weight_norm(m, name),
    "older spectral_norm": lambda m, name: nn.utils.spectral_norm(m, name),
}


@pytest.mark.filterwarnings("ignore::FutureWarning")  # the older weight_norm API
@pytest.mark.parametrize("how", list(_PARAMETRIZATIONS))
def test_weights_saved_under_a_parametrization_are_folded_as_eval_mode_computes_them(
    tmp_path, user_models, how
):
    """A state_dict saved with weight_norm or spectral_norm on a layer (either API): the plain
    class refused it as missing weights and advised renaming the keys, which for spectral_norm
    loaded its weight before the division by sigma without a word; a bare state_dict's rebuild
    refused it as 'without 2-D weight_ih_l0' (users49 F2, F4). Equal to the model that saved
    them, in eval mode, as torch computes the parametrization."""
    torch.manual_seed(0)
    model = user_models.AttentionClassifier()
    _PARAMETRIZATIONS[how](model.encoder, "weight_hh_l0_reverse")
    _PARAMETRIZATIONS[how](model.classify, "weight")
    _trained(model)  # weight_norm's g no longer ||v|| (review31 CP5: folded as v alone, unseen)
    ids = torch.randint(1, 50, (3, 9))
    model(ids)  # in training mode: spectral_norm's power iteration moves u and v from their start
    model.eval()
    path = _save(model.state_dict(), tmp_path / "w.pt")
    loaded = load_model(path, model_class=f"{USER_MODULE}:AttentionClassifier")
    kind = how.split()[-1] if how.startswith("older") else how.split()[0]
    told = f"({kind} on [encoder.weight_hh_l0_reverse, classify.weight]: folded into plain weights"
    assert told in loaded.source
    with torch.no_grad():
        _close(loaded.model(ids), model(ids))
    rnn = nn.GRU(5, 6, bidirectional=True, batch_first=True)  # a bare state_dict: rebuilt
    reference = _BuiltinModel(rnn, nn.Linear(12, 3), nn.Embedding(30, 5))
    _PARAMETRIZATIONS[how](reference.encoder.rnn, "weight_ih_l0")
    _trained(reference)
    reference(ids % 30, _lengths()[:3])
    reference.eval()
    loaded = load_model(_save(reference.state_dict(), tmp_path / "bare.pt"))
    assert f"({kind} on [encoder.rnn.weight_ih_l0]: folded into plain weights" in loaded.source
    with torch.no_grad():
        _close(loaded.model(ids % 30, _lengths()[:3]), reference(ids % 30, _lengths()[:3]))


def test_parametrizations_the_sizes_do_not_tell_apart_under_a_prefix(tmp_path, user_models):
    """spectral_norm with dim=1 on a square weight, whose u and v fit both dims (it was folded
    as dim 0: wrong weights, and a graph verified against them), and on a Conv1d's 3-D weight
    (refused as custom), weight_norm over every dim, all under a Lightning 'model.' prefix; and
    a class that registers its own parametrization given such a file (review30 H1, H2, M1)."""
    P = nn.utils.parametrizations
    torch.manual_seed(0)
    model = user_models.SquareHeads()
    P.spectral_norm(model.head, dim=1)
    P.spectral_norm(model.conv)
    P.weight_norm(model.lstm, "weight_hh_l0", dim=None)
    x = torch.randn(3, 6, 4)
    model(x)  # training mode: the power iteration moves u and v
    model.eval()
    saved = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}
    loaded = load_model(
        _save(saved, tmp_path / "lit.ckpt"), model_class=f"{USER_MODULE}:SquareHeads"
    )
    assert "spectral_norm on [model.conv.weight, model.head.weight]" in loaded.source
    with torch.no_grad():
        _close(loaded.model(x), model(x))
    own = user_models.NormedHead()
    with torch.no_grad():
        own.head.parametrizations.weight.original0.mul_(1.5)
    own.eval()
    saved = {"state_dict": {f"model.{k}": v for k, v in own.state_dict().items()}}
    loaded = load_model(
        _save(saved, tmp_path / "own.ckpt"), model_class=f"{USER_MODULE}:NormedHead"
    )
    assert "folded" not in loaded.source and "(prefix 'model.' removed)" in loaded.source
    with torch.no_grad():
        _close(loaded.model(x), own(x))


def test_a_parametrization_the_file_does_not_tell_is_refused(tmp_path, user_models):
    """A custom parametrization: its function is code, not in the file; renaming its
    ``original`` to the plain weight, as the refusal advised, loads a weight it never used."""
    from birnn_export.errors import ModelLoadError

    class Doubled(nn.Module):
        def forward(self, weight):
            return 2 * weight

    model = user_models.AttentionClassifier()
    nn.utils.parametrize.register_parametrization(model.encoder, "weight_hh_l0", Doubled())
    path = _save(model.state_dict(), tmp_path / "w.pt")
    told = (
        "encoder.weight_hh_l0 is saved under a parametrization whose function the file does "
        "not tell ([encoder.parametrizations.weight_hh_l0.original]; a custom one, or "
        "spectral_norm of a 1-D tensor, which saves no u and v): load them into a class"
    )
    with pytest.raises(ModelLoadError, match=re.escape(told)):
        load_model(path, model_class=f"{USER_MODULE}:AttentionClassifier")


@pytest.mark.parametrize("wrapper", ["AveragedModel", "DataParallel"])
def test_a_pickled_training_wrapper_is_unwrapped(tmp_path, user_models, wrapper):
    """A pickled SWA/EMA AveragedModel or DataParallel: its forward(*args, **kwargs) told no
    inputs, and the declared ones failed with an IndexError blamed on packing (users21)."""
    torch.manual_seed(0)
    model = user_models.AttentionClassifier().eval()
    wrapped = (
        torch.optim.swa_utils.AveragedModel(model)
        if wrapper == "AveragedModel"
        else nn.DataParallel(model)
    )
    ids = torch.randint(1, 50, (3, 9))
    for saved in (wrapped, {"model": wrapped, "epoch": 3}):  # alone, or in a checkpoint dict
        loaded = load_model(_save(saved, tmp_path / "wrapped.pt"), trust_pickle=True)
        assert f"the module inside its {wrapper}" in loaded.source
        with torch.no_grad():
            _close(loaded.model(ids), model(ids))


def test_an_averaged_models_state_dict_loses_its_count_with_its_prefix(tmp_path, user_models):
    """AveragedModel's n_averaged, beside the module. keys, kept the prefix on and the file
    unreadable without a class (users21)."""
    model = user_models.AttentionClassifier().eval()
    state = torch.optim.swa_utils.AveragedModel(model).state_dict()
    assert "n_averaged" in state
    loaded = load_model(
        _save(state, tmp_path / "swa.pt"), model_class=f"{USER_MODULE}:AttentionClassifier"
    )
    assert "(prefix 'module.' removed)" in loaded.source


@pytest.mark.parametrize("protocol", [2, 5])
def test_a_model_saved_by_pickle_dump_loads_only_when_trusted(tmp_path: Path, protocol) -> None:
    """A model written by ``pickle.dump``: the refusal said "corrupted, or not written by
    torch.save" or "pass --trust-pickle", which then failed inside torch.load with "Invalid
    magic number" after running the file's code (users31). It is told as a plain pickle, and
    trusted it loads."""
    import pickle

    torch.manual_seed(0)
    rnn = nn.LSTM(4, 6, batch_first=True, bidirectional=True)
    model = _BuiltinModel(rnn, nn.Linear(12, 3), None).eval()
    path = tmp_path / "tagger.pkl"
    path.write_bytes(pickle.dumps(model, protocol=protocol))
    told = "a pickle written by pickle.dump" if protocol == 5 else "pass --trust-pickle"
    with pytest.raises(ModelLoadError, match=told):
        load_model(path)
    loaded = load_model(path, trust_pickle=True)
    x, lengths = torch.randn(2, 5, 4), torch.tensor([5, 3])
    torch.testing.assert_close(loaded.original(x, lengths), model(x, lengths))


@pytest.mark.parametrize("protocol", [2, 4])
def test_torchs_legacy_format_is_not_taken_for_pickle_dump(tmp_path: Path, protocol) -> None:
    """torch.save's legacy (non-zip) format begins with its magic number, pickled at the
    protocol asked for: at protocol 4 it was taken for a pickle.dump file and failed to load
    trusted ("holds a int"), told as "written by pickle.dump" untrusted (review21)."""
    torch.manual_seed(0)
    rnn = nn.LSTM(4, 6, batch_first=True, bidirectional=True)
    model = _BuiltinModel(rnn, nn.Linear(12, 3), None).eval()
    path = tmp_path / "legacy.pt"
    torch.save(model, path, _use_new_zipfile_serialization=False, pickle_protocol=protocol)
    with pytest.raises(ModelLoadError) as refused:
        load_model(path)
    assert "pickle.dump" not in str(refused.value) and "--trust-pickle" in str(refused.value)
    loaded = load_model(path, trust_pickle=True)
    x, lengths = torch.randn(2, 5, 4), torch.tensor([5, 3])
    torch.testing.assert_close(loaded.original(x, lengths), model(x, lengths))


def test_a_pickle_needing_a_module_not_on_the_path_is_told_to_add_its_folder(
    tmp_path, user_models, monkeypatch
):
    """The working directory is not searched, so "run from the project that saved it" could not
    work (users37): the message says PYTHONPATH=. there."""
    path = _save(user_models.ConvCTC().eval(), tmp_path / "model.pt")
    monkeypatch.delitem(sys.modules, USER_MODULE)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if "user_code" not in p])
    with pytest.raises(ModelLoadError) as caught:
        load_model(path, trust_pickle=True)
    message = str(caught.value)
    assert f"need module {USER_MODULE!r}" in message and "PYTHONPATH=." in message
    assert "the working directory is not searched" in message and "run from" not in message


@pytest.mark.parametrize("layer", [nn.GRU(5, 4, 2, bidirectional=True), nn.RNN(5, 4, bias=False)])
def test_a_bare_layers_state_dict_is_told_the_options_that_build_it(tmp_path, layer) -> None:
    """A bare nn.LSTM's own state_dict was refused with "pass your class" (users41): the
    refusal gives the --model-class and --model-kwargs that build the layer from its sizes,
    and following it loads the same weights."""
    path = _save(layer.state_dict(), tmp_path / "layer.pt")
    with pytest.raises(ModelLoadError) as caught:
        load_model(path)
    message = str(caught.value)
    name = type(layer).__name__
    assert f"the state_dict of a bare nn.{name} (no model around it)" in message
    assert ('"nonlinearity": "relu" if ReLU' in message) == (name == "RNN")  # not an option
    with pytest.raises(ModelLoadError, match='"batch_first": false'):
        load_model(path, time_major=True)
    told = re.search(r"--model-class (\S+) --model-kwargs '([^']+)'", message)
    assert told is not None and told[1] == f"torch.nn:{name}"
    loaded = load_model(path, model_class=told[1], model_kwargs=json.loads(told[2]))
    for key, value in layer.state_dict().items():
        assert torch.equal(loaded.reference.state_dict()[key], value)


def test_a_checkpoint_with_another_layer_count_is_told_the_kwargs_it_was_built_with(
    tmp_path, user_models
):
    """A Lightning checkpoint of the class built with one layer, not its default two: refused
    as layers the class "names otherwise", advising renamed keys, where a size differing gave
    the --model-kwargs line from its hyper_parameters (users49 F1). A layer count is a size."""
    from birnn_export.errors import ModelLoadError

    torch.manual_seed(0)
    model = user_models.LayeredTagger(hidden=6, num_layers=1).eval()
    saved = {
        "state_dict": {
            **{f"model.{k}": v for k, v in model.state_dict().items()},
            "criterion.weight": torch.ones(5),  # a weighted loss's buffer beside the model
        },
        "hyper_parameters": {"hidden": 6, "num_layers": 1, "lr": 0.01},
    }
    path = _save(saved, tmp_path / "lit.ckpt")
    told = "pass the checkpoint's hyper_parameters that it takes: --model-kwargs '{\"hidden\": 6, "
    with pytest.raises(ModelLoadError, match=re.escape(told + '"num_layers": 1}\'')) as caught:
        load_model(path, model_class=f"{USER_MODULE}:LayeredTagger")
    assert "names its layers otherwise" not in str(caught.value)
    kwargs = {"hidden": 6, "num_layers": 1}
    loaded = load_model(path, model_class=f"{USER_MODULE}:LayeredTagger", model_kwargs=kwargs)
    ids = torch.randint(0, 40, (3, 7))
    with torch.no_grad():
        _close(loaded.model(ids), model(ids))


def test_weights_are_loaded_strictly_where_the_class_cannot_be_built_on_meta(tmp_path, user_models):
    """The shapes check on the meta device is skipped for a class whose __init__ cannot run
    there; loading must still refuse a missing or an extra weight, not keep its random
    initial value in a graph verified against that same model (review29 CP1)."""
    from birnn_export.errors import ModelLoadError

    state = user_models.AttentionClassifier().state_dict()
    short = {k: v for k, v in state.items() if k != "classify.bias"}
    for weights, told in (
        (short, r"missing \[classify\.bias\]"),
        ({**state, "extra": torch.ones(1)}, r"unexpected \[extra\]"),
    ):
        path = _save(weights, tmp_path / "w.pt")
        with pytest.raises(ModelLoadError, match=f"weights do not fit .*{told}"):
            load_model(path, model_class=f"{USER_MODULE}:BuiltOffMeta")
    assert load_model(_save(state, tmp_path / "w.pt"), model_class=f"{USER_MODULE}:BuiltOffMeta")


def test_quantization_aware_training_state_is_named_with_what_to_do(tmp_path, user_models):
    """A model prepared for quantization-aware training saves its fake-quant modules' and
    observers' state beside the weights: refused listing those keys alone (users49 F3)."""
    import torch.ao.quantization as quantization

    from birnn_export.errors import ModelLoadError

    model = user_models.AttentionClassifier()
    model.classify.qconfig = quantization.get_default_qat_qconfig("fbgemm")
    quantization.prepare_qat(model, inplace=True)
    path = _save(model.state_dict(), tmp_path / "qat.pt")
    told = "those are quantization-aware training's fake-quant and observer state"
    with pytest.raises(ModelLoadError, match=re.escape(told)):
        load_model(path, model_class=f"{USER_MODULE}:AttentionClassifier")
