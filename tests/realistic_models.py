"""Models shaped like real ones, with torch's built-in recurrent layers (test fixtures)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class AttentionClassifier(nn.Module):
    """Embedding -> 3-layer BiLSTM -> additive attention over all positions -> Linear."""

    def __init__(
        self, vocab_size: int = 50, embed_dim: int = 12, hidden: int = 10, classes: int = 4
    ):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden, num_layers=3, batch_first=True, bidirectional=True)
        self.attn_proj = nn.Linear(2 * hidden, hidden)
        self.attn_score = nn.Linear(hidden, 1, bias=False)
        self.classifier = nn.Linear(2 * hidden, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        states, _ = self.lstm(self.embedding(ids))
        weights = torch.softmax(self.attn_score(torch.tanh(self.attn_proj(states))), dim=1)
        return self.classifier((weights * states).sum(dim=1))


class ConvBiGRUCTC(nn.Module):
    """Conv1d front-end -> BiGRU -> Linear -> log_softmax (a CTC head), with lengths."""

    def __init__(self, features: int = 8, channels: int = 12, hidden: int = 10, symbols: int = 7):
        super().__init__()
        self.conv = nn.Conv1d(features, channels, kernel_size=3, padding=1)
        self.gru = nn.GRU(channels, hidden, num_layers=2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, symbols)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        feats = torch.relu(self.conv(x.transpose(1, 2))).transpose(1, 2)
        packed = pack_padded_sequence(feats, lengths.cpu(), batch_first=True, enforce_sorted=False)
        states, _ = pad_packed_sequence(
            self.gru(packed)[0], batch_first=True, total_length=x.shape[1]
        )
        return torch.log_softmax(self.head(states), dim=-1)


class MaskedConvCTC(nn.Module):
    """Features zeroed past each row's length, then Conv1d -> BiGRU -> log_softmax (a speech
    front end: the convolution must not read the padding, whatever the batch holds there)."""

    def __init__(self, features: int = 8, channels: int = 12, hidden: int = 10, symbols: int = 7):
        super().__init__()
        self.conv = nn.Conv1d(features, channels, kernel_size=5, padding=2)
        self.gru = nn.GRU(channels, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, symbols)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        valid = torch.arange(x.shape[1])[None, :] < lengths[:, None]
        x = x.masked_fill(~valid[..., None], 0.0)
        feats = torch.relu(self.conv(x.transpose(1, 2))).transpose(1, 2)
        packed = pack_padded_sequence(feats, lengths.cpu(), batch_first=True, enforce_sorted=False)
        states, _ = pad_packed_sequence(
            self.gru(packed)[0], batch_first=True, total_length=x.shape[1]
        )
        return torch.log_softmax(self.head(states), dim=-1)


class PackingTagger(nn.Module):
    """The usual training-time pattern: pack, run the built-in layer, unpack."""

    def __init__(self, features: int = 6, hidden: int = 5, tags: int = 3):
        super().__init__()
        self.rnn = nn.LSTM(features, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, tags)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return self.head(out)


class SentencePairMatcher(nn.Module):
    """ESIM-style sentence-pair classifier: one BiLSTM encodes both sentences, each packed with
    its own lengths; attention across them, a second BiLSTM, masked pooling, a Linear."""

    def __init__(self, vocab: int = 40, dim: int = 8, hidden: int = 6, classes: int = 3):
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim, padding_idx=0)
        self.encoder = nn.LSTM(dim, hidden, batch_first=True, bidirectional=True)
        self.compose = nn.LSTM(8 * hidden, hidden, batch_first=True, bidirectional=True)
        self.classifier = nn.Linear(8 * hidden, classes)

    @staticmethod
    def _run(rnn: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(rnn(packed)[0], batch_first=True, total_length=x.shape[1])
        return out

    def forward(
        self,
        premise: torch.Tensor,
        premise_lengths: torch.Tensor,
        hypothesis: torch.Tensor,
        hypothesis_lengths: torch.Tensor,
    ) -> torch.Tensor:
        pm = torch.arange(premise.shape[1])[None, :] < premise_lengths[:, None]
        hm = torch.arange(hypothesis.shape[1])[None, :] < hypothesis_lengths[:, None]
        a = self._run(self.encoder, self.embedding(premise), premise_lengths)
        b = self._run(self.encoder, self.embedding(hypothesis), hypothesis_lengths)
        scores = a @ b.transpose(1, 2)
        att_a = torch.softmax(scores.masked_fill(~hm[:, None, :], -1e9), dim=2) @ b
        att_b = torch.softmax(scores.transpose(1, 2).masked_fill(~pm[:, None, :], -1e9), 2) @ a
        ma = torch.cat([a, att_a, a - att_a, a * att_a], -1)
        mb = torch.cat([b, att_b, b - att_b, b * att_b], -1)
        va = self._run(self.compose, ma, premise_lengths)
        vb = self._run(self.compose, mb, hypothesis_lengths)
        pooled = []
        for v, m, n in ((va, pm, premise_lengths), (vb, hm, hypothesis_lengths)):
            pooled.append((v * m[..., None]).sum(1) / n[:, None].to(v.dtype))
            pooled.append(v.masked_fill(~m[..., None], -1e9).max(1).values)
        return self.classifier(torch.cat(pooled, -1))


class SiamesePair(nn.Module):
    """Two questions through one packed BiLSTM; their final hidden states compared."""

    def __init__(self, vocab: int = 40, dim: int = 8, hidden: int = 6):
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim, padding_idx=0)
        self.encoder = nn.LSTM(dim, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Linear(8 * hidden, 2)

    def encode(self, ids: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(
            self.embedding(ids), lens.cpu(), batch_first=True, enforce_sorted=False
        )
        h = self.encoder(packed)[1][0]
        return torch.cat([h[-2], h[-1]], dim=-1)

    def forward(
        self, q1: torch.Tensor, q1_lens: torch.Tensor, q2: torch.Tensor, q2_lens: torch.Tensor
    ) -> torch.Tensor:
        u, v = self.encode(q1, q1_lens), self.encode(q2, q2_lens)
        return self.head(torch.cat([u, v, (u - v).abs(), u * v], dim=-1))


class FeaturePair(nn.Module):
    """Two clips' features through one packed 2-layer BiGRU, each cut to its own longest row
    (``pad_packed_sequence`` without ``total_length``) and mean-pooled: a verification pair."""

    def __init__(self, features: int = 6, hidden: int = 5):
        super().__init__()
        self.gru = nn.GRU(features, hidden, num_layers=2, batch_first=True, bidirectional=True)
        self.score = nn.Linear(4 * hidden, 1)

    def embed(self, x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x, lens.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(self.gru(packed)[0], batch_first=True)
        return out.sum(1) / lens[:, None].to(out.dtype)

    def forward(
        self, a: torch.Tensor, a_lens: torch.Tensor, b: torch.Tensor, b_lens: torch.Tensor
    ) -> torch.Tensor:
        return self.score(torch.cat([self.embed(a, a_lens), self.embed(b, b_lens)], -1))


class PointerReader(nn.Module):
    """Reading comprehension: question and context through one packed BiGRU; start scores over
    the context, cut to its longest row (``pad_packed_sequence`` without ``total_length``) and
    masked past each row's length."""

    def __init__(self, vocab: int = 40, dim: int = 8, hidden: int = 6):
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim, padding_idx=0)
        self.gru = nn.GRU(dim, hidden, batch_first=True, bidirectional=True)
        self.project = nn.Linear(2 * hidden, 2 * hidden)

    def _run(self, ids: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        packed = pack_padded_sequence(
            self.embedding(ids), lens.cpu(), batch_first=True, enforce_sorted=False
        )
        out, h = self.gru(packed)
        return pad_packed_sequence(out, batch_first=True)[0], torch.cat([h[0], h[1]], -1)

    def forward(
        self,
        question: torch.Tensor,
        question_lengths: torch.Tensor,
        context: torch.Tensor,
        context_lengths: torch.Tensor,
    ) -> torch.Tensor:
        _, q = self._run(question, question_lengths)
        c, _ = self._run(context, context_lengths)
        scores = (self.project(c) @ q[:, :, None]).squeeze(-1)
        valid = torch.arange(c.shape[1])[None, :] < context_lengths[:, None]
        return scores.masked_fill(~valid, -1e4)


class QueryDocument(nn.Module):
    """A retrieval scorer: the query comes with its lengths, the document with a mask (as its
    tokenizer gives it); one packed BiGRU encodes both, their final states scored."""

    def __init__(self, vocab: int = 40, dim: int = 8, hidden: int = 6):
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim, padding_idx=0)
        self.gru = nn.GRU(dim, hidden, batch_first=True, bidirectional=True)
        self.score = nn.Linear(4 * hidden, 1)

    def encode(self, ids: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(
            self.embedding(ids), lens, batch_first=True, enforce_sorted=False
        )
        return torch.cat(list(self.gru(packed)[1]), dim=-1)

    def forward(
        self,
        query: torch.Tensor,
        query_lens: torch.Tensor,
        document: torch.Tensor,
        document_mask: torch.Tensor,
    ) -> torch.Tensor:
        pair = [self.encode(query, query_lens), self.encode(document, document_mask.sum(1))]
        return self.score(torch.cat(pair, dim=-1))


class CharWordTagger(nn.Module):
    """A named-entity tagger of Lample et al. (2016): each word's characters through a packed
    char BiLSTM (its final states), joined to the word's embedding, then a packed word BiLSTM
    and a Linear per word. Padding words hold one padding character (as NCRF++ pads them)."""

    def __init__(self, words: int = 60, chars: int = 30, hidden: int = 6) -> None:
        super().__init__()
        self.word_embedding = nn.Embedding(words, 8, padding_idx=0)
        self.char_embedding = nn.Embedding(chars, 5, padding_idx=0)
        self.char_lstm = nn.LSTM(5, 4, batch_first=True, bidirectional=True)
        self.word_lstm = nn.LSTM(16, hidden, batch_first=True, bidirectional=True)
        self.tags = nn.Linear(2 * hidden, 5)

    def forward(
        self,
        words: torch.Tensor,
        lengths: torch.Tensor,
        chars: torch.Tensor,
        char_lengths: torch.Tensor,
    ) -> torch.Tensor:
        b, t, c = chars.shape
        flat = self.char_embedding(chars.reshape(b * t, c))
        packed = pack_padded_sequence(
            flat, char_lengths.reshape(b * t).clamp(min=1), batch_first=True, enforce_sorted=False
        )
        h = self.char_lstm(packed)[1][0]
        spelled = torch.cat([h[0], h[1]], dim=-1).reshape(b, t, 8)
        x = torch.cat([self.word_embedding(words), spelled], dim=-1)
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out = pad_packed_sequence(self.word_lstm(packed)[0], batch_first=True, total_length=t)[0]
        return self.tags(out)


class CharCNNTagger(nn.Module):
    """Ma and Hovy's (2016) tagger: each word's characters through a convolution and a max over
    them (no lengths: padding characters have id 0), joined to the word's embedding, then a
    packed word BiLSTM and a Linear per word."""

    def __init__(self, words: int = 60, chars: int = 30, hidden: int = 6) -> None:
        super().__init__()
        self.word_embedding = nn.Embedding(words, 8, padding_idx=0)
        self.char_embedding = nn.Embedding(chars, 5, padding_idx=0)
        self.conv = nn.Conv1d(5, 7, kernel_size=3, padding=1)
        self.word_lstm = nn.LSTM(15, hidden, batch_first=True, bidirectional=True)
        self.tags = nn.Linear(2 * hidden, 5)

    def forward(
        self, words: torch.Tensor, lengths: torch.Tensor, chars: torch.Tensor
    ) -> torch.Tensor:
        b, t, c = chars.shape
        spelled = self.char_embedding(chars.reshape(b * t, c)).transpose(1, 2)
        spelled = self.conv(spelled).max(dim=-1).values.reshape(b, t, 7)
        x = torch.cat([self.word_embedding(words), spelled], dim=-1)
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out = pad_packed_sequence(self.word_lstm(packed)[0], batch_first=True, total_length=t)[0]
        return self.tags(out)


class SortedCharTagger(CharWordTagger):
    """:class:`CharWordTagger` as NCRF++ writes it: the words sorted by their characters'
    lengths for ``enforce_sorted=True`` packing, their features put back in order after."""

    def forward(
        self,
        words: torch.Tensor,
        lengths: torch.Tensor,
        chars: torch.Tensor,
        char_lengths: torch.Tensor,
    ) -> torch.Tensor:
        b, t, c = chars.shape
        spelling, order = char_lengths.reshape(b * t).clamp(min=1).sort(0, descending=True)
        flat = self.char_embedding(chars.reshape(b * t, c)[order])
        h = self.char_lstm(pack_padded_sequence(flat, spelling, batch_first=True))[1][0]
        spelled = torch.cat([h[0], h[1]], dim=-1)[order.argsort()].reshape(b, t, 8)
        x = torch.cat([self.word_embedding(words), spelled], dim=-1)
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out = pad_packed_sequence(self.word_lstm(packed)[0], batch_first=True, total_length=t)[0]
        return self.tags(out)


class MaskedCharTagger(CharWordTagger):
    """:class:`CharWordTagger` fed masks instead of lengths: a mask of each row's words
    ``[batch, seq]`` and of each word's characters ``[batch, seq, chars]``."""

    def forward(  # type: ignore[override]
        self,
        words: torch.Tensor,
        word_mask: torch.Tensor,
        chars: torch.Tensor,
        char_mask: torch.Tensor,
    ) -> torch.Tensor:
        return super().forward(words, word_mask.sum(1), chars, char_mask.sum(-1))


class SelfAttentionTagger(nn.Module):
    """A packed BiLSTM, a Transformer encoder layer over its outputs, then self-attention
    (``nn.MultiheadAttention``), both with a key padding mask: the tags of each token and the
    attention weights, ``[batch, seq, seq]``, returned in a dict."""

    def __init__(self, vocab: int = 50, dim: int = 8, hidden: int = 6) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim, padding_idx=0)
        self.lstm = nn.LSTM(dim, hidden, batch_first=True, bidirectional=True)
        self.encoder = nn.TransformerEncoderLayer(2 * hidden, 2, 16, 0.0, batch_first=True)
        self.attention = nn.MultiheadAttention(2 * hidden, 2, batch_first=True)
        self.tags = nn.Linear(4 * hidden, 5)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> dict[str, torch.Tensor]:
        t = tokens.shape[1]
        packed = pack_padded_sequence(
            self.embedding(tokens), lengths, batch_first=True, enforce_sorted=False
        )
        h = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=t)[0]
        padding = torch.arange(t)[None, :] >= lengths[:, None]
        h = self.encoder(h, src_key_padding_mask=padding)
        context, weights = self.attention(h, h, h, key_padding_mask=padding)
        return {"logits": self.tags(torch.cat([h, context], dim=-1)), "attention": weights}


class EncoderThenGRU(nn.Module):
    """Features through a Transformer encoder (with a final LayerNorm) and a key padding mask,
    then a BiGRU over the padded batch (unpacked: its backward direction starts in the padding,
    which the encoder's eager fast path fills with 0, normed), zeroed past each row's end."""

    def __init__(self, features: int = 6, dim: int = 8, hidden: int = 5) -> None:
        super().__init__()
        self.project = nn.Linear(features, dim)
        layer = nn.TransformerEncoderLayer(dim, 2, 16, 0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(dim))
        self.gru = nn.GRU(dim, hidden, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * hidden, 4)

    def forward(self, x: torch.Tensor, src_key_padding_mask: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.project(x), src_key_padding_mask=src_key_padding_mask)
        h = self.gru(h)[0] * (~src_key_padding_mask)[..., None]
        return self.out(h)


class HierarchicalAttention(nn.Module):
    """A document classifier of Yang et al. (2016): each sentence's words through a packed
    BiGRU and attention, then the sentences through another; ``docs`` is ``[batch, sentences,
    words]``, a length per document and per sentence."""

    def __init__(self, vocab: int = 50, dim: int = 8, hidden: int = 5) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim, padding_idx=0)
        self.word_gru = nn.GRU(dim, hidden, batch_first=True, bidirectional=True)
        self.sentence_gru = nn.GRU(2 * hidden, hidden, batch_first=True, bidirectional=True)
        self.word_score = nn.Linear(2 * hidden, 1)
        self.sentence_score = nn.Linear(2 * hidden, 1)
        self.classes = nn.Linear(2 * hidden, 3)

    @staticmethod
    def attend(score: nn.Module, h: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        valid = torch.arange(h.shape[1])[None, :] < lengths[:, None]
        weights = torch.softmax(score(h).squeeze(-1).masked_fill(~valid, -1e4), dim=-1)
        return (weights[..., None] * h).sum(1)

    def run(self, gru: nn.Module, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        return pad_packed_sequence(gru(packed)[0], batch_first=True, total_length=x.shape[1])[0]

    def forward(
        self, docs: torch.Tensor, doc_lengths: torch.Tensor, sentence_lengths: torch.Tensor
    ) -> torch.Tensor:
        b, s, w = docs.shape
        words = sentence_lengths.reshape(b * s).clamp(min=1)
        h = self.run(self.word_gru, self.embedding(docs.reshape(b * s, w)), words)
        sentences = self.attend(self.word_score, h, words).reshape(b, s, -1)
        h = self.run(self.sentence_gru, sentences, doc_lengths)
        return self.classes(self.attend(self.sentence_score, h, doc_lengths))


class TutorialEncoder(nn.Module):
    """The encoder of PyTorch's seq2seq tutorials: time-major ids ``[seq, batch]``, packed."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(40, 8)
        self.rnn = nn.GRU(8, 6, bidirectional=True)

    def forward(self, src: torch.Tensor, src_len: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(self.embed(src), src_len, enforce_sorted=False)
        return pad_packed_sequence(self.rnn(packed)[0], total_length=src.shape[0])[0]


# -- architectures of the trained fixtures (scripts/make_trained_models.py) --------------------


class TokenGRUTagger(nn.Module):
    """Embedding -> 2-layer BiGRU on packed input -> Linear per token (ids and lengths)."""

    def __init__(self, vocab_size: int = 40, embed_dim: int = 16, hidden: int = 16, tags: int = 6):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.gru = nn.GRU(embed_dim, hidden, num_layers=2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, tags)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(
            self.embedding(ids), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        states, _ = pad_packed_sequence(
            self.gru(packed)[0], batch_first=True, total_length=ids.shape[1]
        )
        return self.head(states)


class ReluRNNTagger(nn.Module):
    """Features -> 2-layer bidirectional nn.RNN(relu) on packed input -> Linear per step."""

    def __init__(self, features: int = 8, hidden: int = 16, tags: int = 5):
        super().__init__()
        self.rnn = nn.RNN(
            features,
            hidden,
            num_layers=2,
            nonlinearity="relu",
            batch_first=True,
            bidirectional=True,
        )
        self.head = nn.Linear(2 * hidden, tags)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        states, _ = pad_packed_sequence(
            self.rnn(packed)[0], batch_first=True, total_length=x.shape[1]
        )
        return self.head(states)


class DeepLSTMTagger(nn.Module):
    """Features -> 3-layer BiLSTM on packed input -> Linear per step."""

    def __init__(self, features: int = 8, hidden: int = 16, tags: int = 5):
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, num_layers=3, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, tags)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        states, _ = pad_packed_sequence(
            self.lstm(packed)[0], batch_first=True, total_length=x.shape[1]
        )
        return self.head(states)


class TimeMajorCTC(nn.Module):
    """Features ``[B, T, F]`` -> time-major 2-layer BiLSTM (``batch_first=False``) on packed
    input -> Linear -> log_softmax, returned time-major ``[T, B, C]`` as ``nn.CTCLoss`` takes
    it."""

    def __init__(self, features: int = 8, hidden: int = 16, symbols: int = 6):
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, num_layers=2, bidirectional=True)
        self.head = nn.Linear(2 * hidden, symbols)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x.transpose(0, 1), lengths.cpu(), enforce_sorted=False)
        states, _ = pad_packed_sequence(self.lstm(packed)[0], total_length=x.shape[1])
        return torch.log_softmax(self.head(states), dim=-1)


class DictBatchTagger(nn.Module):
    """``forward(batch)`` with the dict a collate function makes: ``batch["tokens"]``,
    ``batch["lengths"]`` (read first) and an optional ``batch.get("mask")``, never given."""

    def __init__(self, vocab: int = 50, dim: int = 8, hidden: int = 6, tags: int = 5) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim, padding_idx=0)
        self.lstm = nn.LSTM(dim, hidden, num_layers=2, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * hidden, tags)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        lengths = batch["lengths"]
        x = self.embedding(batch["tokens"])
        if batch.get("mask") is not None:
            x = x * batch["mask"][..., None]
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        states, _ = pad_packed_sequence(
            self.lstm(packed)[0], batch_first=True, total_length=x.shape[1]
        )
        return self.out(states)


class AttributeBatchEncoder(nn.Module):
    """``forward(batch)`` reading ``batch.feats`` and ``batch.feat_lens`` (a dataclass)."""

    def __init__(self, features: int = 7, hidden: int = 5) -> None:
        super().__init__()
        self.project = nn.Linear(features, 8)
        self.gru = nn.GRU(8, hidden, batch_first=True, bidirectional=True)

    def forward(self, batch: object) -> torch.Tensor:
        x = torch.tanh(self.project(batch.feats))  # type: ignore[attr-defined]
        lengths = batch.feat_lens.cpu()  # type: ignore[attr-defined]
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        return pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=x.shape[1])[
            0
        ]


class LearnedStatesLSTM(nn.Module):
    """A packed 2-layer BiLSTM starting from learned initial states (``nn.Parameter`` h0, c0
    expanded to the batch), as speech models train them."""

    def __init__(self, features: int = 6, hidden: int = 5, layers: int = 2) -> None:
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, layers, batch_first=True, bidirectional=True)
        self.h0 = nn.Parameter(torch.randn(2 * layers, 1, hidden) * 0.5)
        self.c0 = nn.Parameter(torch.randn(2 * layers, 1, hidden) * 0.5)
        self.out = nn.Linear(2 * hidden, 3)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        states = (self.h0.expand(-1, batch, -1).contiguous(), self.c0.expand(-1, batch, -1))
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        y = pad_packed_sequence(
            self.lstm(packed, states)[0], batch_first=True, total_length=x.shape[1]
        )
        return self.out(y[0])


class ConvPoolBiLSTM(nn.Module):
    """An ECG / activity classifier: two Conv1d + BatchNorm + ReLU + MaxPool1d blocks over a
    signal ``[batch, 1, time]``, a BiLSTM, mean and max over time, a Linear."""

    def __init__(self, channels: int = 8, hidden: int = 6, classes: int = 5) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv1d(1, channels, 7, padding=3),
            nn.BatchNorm1d(channels),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(channels, channels, 5, padding=2),
            nn.BatchNorm1d(channels),
            nn.ReLU(),
            nn.MaxPool1d(3, stride=2, padding=1),
        )
        self.lstm = nn.LSTM(channels, hidden, batch_first=True, bidirectional=True)
        self.out = nn.Linear(4 * hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lstm(self.conv(x).transpose(1, 2))[0]
        return self.out(torch.cat([h.mean(1), h.max(1).values], -1))


class DualPathBiLSTM(nn.Module):
    """A dual-path separator block (DPRNN, Luo et al. 2020) on features ``[batch, N, time]``:
    padded to whole chunks, a BiLSTM within each chunk (rows: batch x chunks), another across
    the chunks (rows: batch x chunk positions), back to ``[batch, N, time]``."""

    def __init__(self, features: int = 6, hidden: int = 4, chunk: int = 8) -> None:
        super().__init__()
        self.chunk = chunk
        self.intra = nn.LSTM(features, hidden, batch_first=True, bidirectional=True)
        self.intra_out = nn.Linear(2 * hidden, features)
        self.inter = nn.LSTM(features, hidden, batch_first=True, bidirectional=True)
        self.inter_out = nn.Linear(2 * hidden, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, features, steps = x.shape
        k = self.chunk
        padded = nn.functional.pad(x, (0, (k - steps % k) % k))
        s = padded.shape[-1] // k
        chunks = padded.reshape(batch, features, s, k)
        rows = chunks.permute(0, 2, 3, 1).reshape(batch * s, k, features)
        within = self.intra_out(self.intra(rows)[0]).reshape(batch, s, k, features)
        h = chunks + within.permute(0, 3, 1, 2)
        across = h.permute(0, 3, 2, 1).reshape(batch * k, s, features)
        between = self.inter_out(self.inter(across)[0]).reshape(batch, k, s, features)
        h = h + between.permute(0, 3, 2, 1)
        return h.reshape(batch, features, s * k)[..., :steps]


class SubsamplingBLSTMP(nn.Module):
    """ESPnet's BLSTMP encoder (``RNNP``): each layer packs its input, pads it back to the
    longest row, keeps every second frame (``ys_pad[:, ::2]``, lengths ``(l + 1) // 2``) and
    projects it; returns the features and their lengths."""

    def __init__(
        self, features: int = 6, hidden: int = 5, subsample: tuple[int, ...] = (2, 2, 1)
    ) -> None:
        super().__init__()
        self.rnns = nn.ModuleList(
            nn.LSTM(features if i == 0 else hidden, hidden, batch_first=True, bidirectional=True)
            for i in range(len(subsample))
        )
        self.projections = nn.ModuleList(nn.Linear(2 * hidden, hidden) for _ in subsample)
        self.subsample = subsample  # after each layer (ESPnet's subsample[1:])

    def forward(self, xs_pad: torch.Tensor, ilens: torch.Tensor):
        for rnn, projection, sub in zip(self.rnns, self.projections, self.subsample, strict=True):
            packed = pack_padded_sequence(xs_pad, ilens, batch_first=True, enforce_sorted=False)
            ys_pad, ilens = pad_packed_sequence(rnn(packed)[0], batch_first=True)
            if sub > 1:
                ys_pad, ilens = ys_pad[:, ::sub], (ilens + 1) // sub
            xs_pad = torch.tanh(projection(ys_pad))
        return xs_pad, ilens


class SubsamplingTokenEncoder(SubsamplingBLSTMP):
    """:class:`SubsamplingBLSTMP` on token ids that finds its lengths itself (padding id 0)."""

    def __init__(self, vocab: int = 30, subsample: tuple[int, ...] = (2, 1)) -> None:
        super().__init__(features=6, subsample=subsample)
        self.embedding = nn.Embedding(vocab, 6, padding_idx=0)

    def forward(self, ids: torch.Tensor):  # type: ignore[override]
        return super().forward(self.embedding(ids), (ids != 0).sum(1))[0]


class RelativeLengthsLSTM(nn.Module):
    """SpeechBrain's ``nnet.RNN.LSTM`` on features: ``wav_lens`` are fractions of the padded
    length, multiplied back by it inside (in float) and truncated by packing."""

    def __init__(self, features: int = 6, hidden: int = 5) -> None:
        super().__init__()
        self.rnn = nn.LSTM(features, hidden, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor, wav_lens: torch.Tensor) -> torch.Tensor:
        lengths = wav_lens * x.size(1)
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        return pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=x.size(1))[0]


class AbsoluteLengthsLSTM(RelativeLengthsLSTM):
    """What birnn-export advises for relative lengths: a subclass taking absolute ones."""

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return super().forward(x, (lengths + 0.25) / x.shape[1])


class PadTrimBLSTM(nn.Module):
    """Demucs's length handling around a BiLSTM: pad the waveform to a length the strided conv
    covers (``valid_length``, Python arithmetic on the size: ``math.ceil``, ``max``, ``int``),
    and trim the decoder's output back to it (``center_trim``: ``if delta:``). The trace freezes
    that arithmetic: the graph computes other lengths than the model."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Conv1d(2, 16, 8, 4)
        self.lstm = nn.LSTM(16, 16, bidirectional=True)
        self.lin = nn.Linear(32, 16)
        self.dec = nn.ConvTranspose1d(16, 2, 8, 4)

    @staticmethod
    def valid_length(length: int) -> int:
        length = max(1, math.ceil((length - 8) / 4) + 1)
        return int((length - 1) * 4 + 8)

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        length = mix.shape[-1]
        delta = self.valid_length(length) - length
        x = self.enc(nn.functional.pad(mix, (delta // 2, delta - delta // 2)))
        x = self.lin(self.lstm(x.permute(2, 0, 1))[0]).permute(1, 2, 0)
        x = self.dec(x)
        delta = x.size(-1) - length
        if delta:
            x = x[..., delta // 2 : -(delta - delta // 2)]
        return x


def global_layer_norm(x: torch.Tensor) -> torch.Tensor:
    """asteroid's gLN: its reduction dims made a Python list of a tensor (``.tolist()``)."""
    dims = torch.arange(1, len(x.shape)).tolist()
    return (x - x.mean(dim=dims, keepdim=True)) / (x.std(dim=dims, keepdim=True) + 1e-8)


class NormedBiLSTM(nn.Module):
    """A BiLSTM whose output goes through :func:`global_layer_norm` (a helper of another file)."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(4, 5, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return global_layer_norm(self.rnn(x)[0])


class PackedDataHead(nn.Module):
    """A head on ``PackedSequence.data``: one row of scores per valid step of every row
    (review46 F4), which the graph, keeping the padded batch, cannot return."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 16, batch_first=True, bidirectional=True)
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        return self.head(self.lstm(packed)[0].data)
