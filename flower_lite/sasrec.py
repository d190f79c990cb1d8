"""SASRec, the auxiliary preference model of Flower's personalised reward (docs/method.md 4).

Self-Attentive Sequential Recommendation (W.-C. Kang, J. McAuley, ICDM 2018), in the small
configuration of the paper: hidden size 64, one block, one head, sequence length 10,
AdamW with learning rate 1e-3, batch 1024.

Model. A history of item ids is cut to its newest ``max_len`` items and *left*-padded with
the padding id N, so the newest item always sits at the last position ``max_len - 1``::

    x_t = E_item[s_t] + E_pos[t]          (padding positions are zeroed)
    block (pre-LayerNorm):  x = x + Attn(LN(x)),  x = x + FFN(LN(x))
    h = LN(x)[:, -1]                       the state after the newest item
    logits = W h + b                       one score per item, [rows, N]
    p_ui = softmax(logits)_i

Attention is causal (position t sees positions <= t) and ignores padding keys; every
position may see itself, so padding rows never divide by zero. The output layer is a
separate linear map, as in the reference's SASRec.

Training. The simplest full-softmax variant: one cross-entropy term per train row, over
all N items, for the row's target at the last position. (The original SASRec scores
every position against one sampled negative; the sliding-window rows already contain every
prefix of a user's sequence, so the last position alone sees the same next-item pairs.)
Model selection: validation NDCG@10 after each epoch, keeping the best weights and stopping
after ``patience`` epochs without improvement. The test split is never looked at.

Randomness comes only from ``SASRecConfig.seed`` (through ``torch.random.fork_rng``, so
the caller's global torch RNG state is left as it was).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .data.splits import NextItemData, Split, pad_histories
from .metrics import rank_metrics
from .threads import num_threads, small_work_threads

__all__ = ["SASRecConfig", "SASRec", "train_sasrec", "target_ranks", "popularity_recommend"]


@dataclass
class SASRecConfig:
    """Hyper-parameters of :class:`SASRec` and :func:`train_sasrec`.

    Attributes:
        hidden: embedding / model width d.
        num_blocks: transformer blocks.
        num_heads: attention heads (must divide ``hidden``).
        dropout: dropout on embeddings, attention weights and the feed-forward path.
        max_len: positions; longer histories keep their newest ``max_len`` items.
        lr, weight_decay: AdamW settings.
        batch_size: rows per optimiser step (also the inference batch).
        max_epochs: upper bound on epochs.
        patience: stop after this many epochs without a better validation NDCG@10.
        eval_k: the K of the selection metric NDCG@K.
        seed: seeds initialisation, shuffling and dropout.
        device: torch device for training and inference.
        progress: show a tqdm progress bar.
        num_threads: torch CPU threads while training and scoring (restored afterwards);
            None: small work's threads (``flower_lite.threads.small_work_threads``, 1 unless
            ``FLOWER_LITE_THREADS`` says more), the fastest for this small model and much faster on a
            machine whose cores are busy with other work.
    """

    hidden: int = 64
    num_blocks: int = 1
    num_heads: int = 1
    dropout: float = 0.1
    max_len: int = 10
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 1024
    max_epochs: int = 200
    patience: int = 20
    eval_k: int = 10
    seed: int = 0
    device: str = "cpu"
    progress: bool = True
    num_threads: int | None = None


class _Block(nn.Module):
    """Pre-LayerNorm transformer block with causal, padding-aware self-attention."""

    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        if d % heads:
            raise ValueError(f"hidden ({d}) must be divisible by num_heads ({heads})")
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d, d))
        self.drop = nn.Dropout(dropout)
        self.attn_drop = dropout

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        """``x``: [B, L, d]; ``allowed``: bool [B, 1, L, L], True where query t sees key s."""
        b, length, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, length, self.heads, d // self.heads).transpose(1, 2)
                   for z in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed,
                                           dropout_p=self.attn_drop if self.training else 0.0)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, length, d)))
        return x + self.drop(self.ff(self.ln2(x)))


class SASRec(nn.Module):
    """SASRec over ``num_items`` items (module docstring); padding id = ``num_items``.

    The initial weights are drawn from torch's global RNG (``train_sasrec`` seeds it with
    ``config.seed``); seed it yourself when you build an untrained model directly.
    """

    def __init__(self, num_items: int, config: SASRecConfig | None = None) -> None:
        super().__init__()
        self.config = config or SASRecConfig()
        c = self.config
        self.num_items = int(num_items)
        self.item_emb = nn.Embedding(self.num_items + 1, c.hidden, padding_idx=self.num_items)
        self.pos_emb = nn.Embedding(c.max_len, c.hidden)
        nn.init.normal_(self.item_emb.weight, 0.0, 0.02)
        nn.init.normal_(self.pos_emb.weight, 0.0, 0.02)
        with torch.no_grad():
            self.item_emb.weight[self.num_items].zero_()
        self.emb_drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(_Block(c.hidden, c.num_heads, c.dropout)
                                    for _ in range(c.num_blocks))
        self.ln_f = nn.LayerNorm(c.hidden)
        self.head = nn.Linear(c.hidden, self.num_items)

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def encode(self, histories: Sequence[Sequence[int]]) -> Tensor:
        """Left-padded id tensor, int64 [rows, max_len] (pad = N), on the model's device."""
        for h in histories:
            if any(not 0 <= int(i) < self.num_items for i in h):
                raise ValueError(f"history item ids must be in 0..{self.num_items - 1}, "
                                 f"got {list(h)}")
        ids = pad_histories(histories, self.config.max_len, self.num_items)
        return torch.from_numpy(ids).to(self.device)

    def forward(self, seq: Tensor) -> Tensor:
        """Logits over items, [B, N], for left-padded ids ``seq`` [B, max_len]."""
        valid = seq != self.num_items                                    # [B, L]
        length = seq.shape[1]
        x = self.item_emb(seq) + self.pos_emb.weight[:length]
        x = self.emb_drop(x) * valid.unsqueeze(-1)
        causal = torch.ones(length, length, dtype=torch.bool, device=seq.device).tril()
        eye = torch.eye(length, dtype=torch.bool, device=seq.device)
        allowed = (causal & valid[:, None, :]) | eye                    # [B, L, L]
        allowed = allowed.unsqueeze(1)                                  # [B, 1, L, L]
        for block in self.blocks:
            x = block(x, allowed)
        return self.head(self.ln_f(x[:, -1]))

    @torch.no_grad()
    def scores(self, histories: Sequence[Sequence[int]]) -> Tensor:
        """Logits [rows, N] (eval mode, batched by ``config.batch_size``), on the CPU."""
        was_training = self.training
        self.eval()
        try:
            with num_threads(self.config.num_threads or small_work_threads()):
                out = [self(self.encode(histories[lo:lo + self.config.batch_size])).cpu()
                       for lo in range(0, len(histories), self.config.batch_size)]
        finally:
            self.train(was_training)
        return torch.cat(out) if out else torch.empty(0, self.num_items)

    def predict_proba(self, histories: Sequence[Sequence[int]]) -> Tensor:
        """p_ui: float [rows, N], softmax over all items for each history (rows sum to 1)."""
        return torch.softmax(self.scores(histories), dim=-1)

    def recommend(self, histories: Sequence[Sequence[int]], k: int = 10,
                  exclude_history: bool = False) -> list[list[int]]:
        """The ``k`` highest-scoring item ids per history, best first.

        ``exclude_history=False`` (default, as in the paper's evaluation) may recommend an
        item already in the history; ``True`` removes them.
        """
        s = self.scores(histories)
        if exclude_history:
            for r, h in enumerate(histories):
                s[r, list(h)] = -math.inf
        k = min(int(k), self.num_items)
        return torch.topk(s, k, dim=-1).indices.tolist()


def target_ranks(scores: Tensor, targets: Tensor | np.ndarray) -> Tensor:
    """0-based rank of each target among all items, int64 [rows]: the number of items with a
    strictly higher score (ties count in the target's favour). ``scores``: [rows, N]."""
    t = torch.as_tensor(np.array(targets, dtype=np.int64))
    own = scores.gather(1, t.view(-1, 1))
    return (scores > own).sum(1)


def popularity_recommend(counts: np.ndarray, rows: int, k: int = 10) -> list[list[int]]:
    """The popularity baseline: the same ``k`` most counted items (ties: smaller id first)
    for each of ``rows`` rows. ``counts``: [N]."""
    top = np.argsort(-np.asarray(counts), kind="stable")[:k].tolist()
    return [list(top) for _ in range(rows)]


def _evaluate(model: SASRec, split: Split, k: int) -> dict[str, float]:
    return rank_metrics(target_ranks(model.scores(split.history), split.target).numpy(), (k,))


def train_sasrec(data: NextItemData, config: SASRecConfig | None = None
                 ) -> tuple[SASRec, list[dict[str, float]]]:
    """Train SASRec on ``data.train``, select on ``data.valid`` NDCG@K (module docstring).

    Returns the model with the best validation weights (in eval mode) and the history: one
    dict per epoch with ``epoch``, ``loss`` (mean train cross-entropy), ``valid_hit@K`` and
    ``valid_ndcg@K``.
    """
    c = config or SASRecConfig()
    if len(data.train) == 0 or len(data.valid) == 0:
        raise ValueError("SASRec needs non-empty train and valid splits")
    history: list[dict[str, float]] = []
    with num_threads(c.num_threads or small_work_threads()):
        model = _fit(data, c, history)
    return model, history


def _fit(data: NextItemData, c: SASRecConfig, history: list[dict[str, float]]) -> SASRec:
    device = torch.device(c.device)
    forked = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked):
        torch.manual_seed(c.seed)
        gen = torch.Generator().manual_seed(c.seed)
        model = SASRec(data.num_items, c).to(c.device)
        opt = torch.optim.AdamW(model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        seq_all = torch.from_numpy(data.train.padded_histories(c.max_len, data.num_items))
        tgt_all = torch.from_numpy(data.train.target.copy())
        rows = len(tgt_all)
        best, best_state, since_best = -1.0, None, 0
        bar = tqdm(range(1, c.max_epochs + 1), desc="SASRec", disable=not c.progress)
        for epoch in bar:
            model.train()
            total = 0.0
            for idx in torch.randperm(rows, generator=gen).split(c.batch_size):
                seq, tgt = seq_all[idx].to(c.device), tgt_all[idx].to(c.device)
                loss = F.cross_entropy(model(seq), tgt)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            m = _evaluate(model, data.valid, c.eval_k)
            ndcg = m[f"ndcg@{c.eval_k}"]
            history.append({"epoch": epoch, "loss": total / rows,
                            **{f"valid_{key}": v for key, v in m.items()}})
            bar.set_postfix(loss=f"{total / rows:.3f}", ndcg=f"{ndcg:.4f}")
            if ndcg > best:
                best, best_state, since_best = ndcg, copy.deepcopy(model.state_dict()), 0
            else:
                since_best += 1
                if since_best >= c.patience:
                    break
        bar.close()
    if best_state is not None:  # max_epochs = 0: the initial (untrained, seeded) model
        model.load_state_dict(best_state)
    model.eval()
    return model

