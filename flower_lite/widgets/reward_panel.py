"""The reward-shaping panel of notebook 01: sliders that reshape R(i) and redraw the target and the trie."""
from __future__ import annotations

from typing import Callable, Sequence

import ipywidgets as W
import numpy as np
import torch

from .. import metrics, viz
from ..rewards import mix_uniform, personalised_log_rewards, popularity_rewards
from ..trie import Trie
from .display import panel_bundle, redraw


class RewardShapingPanel:
    """Sliders that reshape the item rewards R(i) of a title trie, with live figures.

    The reward of item i, in this order (docs/method.md section 4):

    1. popularity: R_pop(i) = (c(i) + eps) ** alpha  (``rewards.popularity_rewards``);
    2. personalisation (only with ``user_prefs``): log R_u(i) from the chosen user u's preference
       row p_u (``rewards.personalised_log_rewards`` with log p_pop = log R_pop / Z_pop and the
       weight w = ``weight``):
       * ``variant="add_log_s"`` (default): log R_u(i) = log p_pop(i) + w log s'_ui, with s'_ui
         the min-max scaled preference;
       * ``variant="div_s"``: a geometric blend of popularity and the paper's div_s reward,
         log R_u(i) = (1 - w) log p_pop(i) + w log p_pop(i) / s_ui (w in [0, 1]);
       w = 0 is popularity only;
    3. uniform mix: P(i) = (1 - beta) R(i) / Z + beta / N  (``rewards.mix_uniform``).

    The trie is built once; every change calls ``trie.reweight(P)``, so ``panel.trie.structure``
    stays the original structure object. The trie's rewards are then normalised (Z = 1).

    Args:
        catalog_titles: [N] item titles (duplicates allowed).
        counts: [N] popularity counts c(i).
        sequences: [N] token ids of each title, without T (one tokenization everywhere).
        eos_id: the termination token T.
        token_text: token id -> text, for the trie figure.
        user_prefs: [num_users, N] preference probabilities p_ui of an auxiliary recommender, or None.
        alpha, beta, weight, user: initial values; eps: smoothing of the counts (unseen items keep a reward).
        top: number of titles drawn in the distribution figure (None: all).
        max_depth, max_children: passed to ``viz.trie_figure``.
        head_fraction: the head is the ``head_fraction`` most popular titles (for ``head_share``).

    State: ``panel.trie`` (current trie), ``panel.target()`` (current P over distinct titles, in
    ``panel.trie.terminal_nodes`` order, duplicates pooled), ``panel.item_target()`` ([N] over
    items), ``panel.title_labels``, ``panel.head_share()``, ``panel.figures()`` ({"target", "trie"}),
    ``panel.widget`` (display this). Sliders: ``panel.alpha``, ``panel.beta``, ``panel.weight``;
    ``panel.user`` (Dropdown, only with ``user_prefs``).
    """

    def __init__(
        self,
        catalog_titles: Sequence[str],
        counts,
        sequences: Sequence[Sequence[int]],
        eos_id: int,
        token_text: Callable[[int], str],
        user_prefs=None,
        *,
        alpha: float = 1.0,
        beta: float = 0.0,
        weight: float = 0.0,
        user: int = 0,
        eps: float = 1.0,
        variant: str = "add_log_s",
        top: int | None = None,
        max_depth: int = 2,
        max_children: int = 10,
        head_fraction: float = 0.2,
    ):
        if variant not in ("add_log_s", "div_s"):
            raise ValueError(f"variant must be 'add_log_s' or 'div_s', got {variant!r}")
        self.titles = list(catalog_titles)
        self.counts = np.asarray(counts, dtype=np.float64)
        if self.counts.shape != (len(self.titles),) or len(sequences) != len(self.titles):
            raise ValueError("catalog_titles, counts and sequences must all have one entry per item")
        self.token_text = token_text
        self.eps, self.variant, self.top = eps, variant, top
        self.max_depth, self.max_children, self.head_fraction = max_depth, max_children, head_fraction
        self.prefs = None if user_prefs is None else torch.as_tensor(np.asarray(user_prefs, dtype=np.float64))
        if self.prefs is not None and (self.prefs.ndim != 2 or self.prefs.shape[1] != len(self.titles)):
            raise ValueError(f"user_prefs must have shape [num_users, {len(self.titles)}], got {tuple(self.prefs.shape)}")

        self.base_trie = Trie.from_sequences(sequences, np.ones(len(self.titles)), eos_id)
        self.trie = self.base_trie
        title_of_item = self.base_trie.item_title.numpy()
        self.title_labels = [""] * int(self.base_trie.terminal_nodes.numel())
        for i in range(len(self.titles) - 1, -1, -1):
            self.title_labels[title_of_item[i]] = self.titles[i]
        self.title_counts = np.bincount(title_of_item, weights=self.counts, minlength=len(self.title_labels))

        style = {"description_width": "150px"}
        layout = W.Layout(width="480px")
        self.alpha = W.FloatSlider(value=alpha, min=0.0, max=2.0, step=0.05, continuous_update=False,
                                   description="popularity α", style=style, layout=layout,
                                   tooltip="R(i) = (c(i) + eps)^α: 0 = uniform, 1 = empirical")
        self.beta = W.FloatSlider(value=beta, min=0.0, max=1.0, step=0.05, continuous_update=False,
                                  description="uniform mix β", style=style, layout=layout,
                                  tooltip="P(i) = (1 - β) R(i)/Z + β/N")
        weight_max = 1.0 if variant == "div_s" else 2.0
        self.weight = W.FloatSlider(value=weight, min=0.0, max=weight_max, step=0.05, continuous_update=False,
                                    description="personalisation w", style=style, layout=layout,
                                    disabled=self.prefs is None)
        controls = [self.alpha, self.beta, self.weight]
        self.user = None
        if self.prefs is not None:
            self.user = W.Dropdown(options=[(f"user {u}", u) for u in range(self.prefs.shape[0])], value=user,
                                   description="user", style=style, layout=W.Layout(width="300px"))
            controls.append(self.user)
        self.summary = W.HTML()
        self.out_target, self.out_trie = W.Output(), W.Output()
        self.y_range = self._fixed_y_range()
        self.widget = W.VBox([W.HBox([W.VBox(controls), self.summary]), self.out_target, self.out_trie])
        self._figures: dict = {}
        for w in controls:
            w.observe(self._on_change, names="value")
        self.update()

    # ------------------------------------------------------------------ the math
    def item_target(self) -> np.ndarray:
        """[N] P(i): the current normalised item rewards (steps 1-3 of the class docstring)."""
        r = popularity_rewards(self.counts, self.alpha.value, self.eps)
        weight = self.weight.value
        if self.prefs is not None and weight > 0:
            log_pop = torch.as_tensor(np.log(r) - np.log(r.sum()))
            p_u = self.prefs[self.user.value][None, :]
            log_r = personalised_log_rewards(p_u, log_pop, self.variant, weight)[0]
            r = (log_r - log_r.max()).exp().numpy()
        return mix_uniform(r, self.beta.value)

    def target(self) -> np.ndarray:
        """[num_titles] P(title) = F(title·T) / Z of the current trie (duplicate titles pooled)."""
        return self.trie.title_log_probs().exp().numpy()

    def head_share(self, fraction: float | None = None) -> float:
        """Target mass on the head: the ``fraction`` (default ``head_fraction``) most popular titles by c."""
        frac = self.head_fraction if fraction is None else fraction
        return 1.0 - metrics.tail_share(self.target(), self.title_counts, head_fraction=frac)

    def figures(self) -> dict:
        """The current figures: {"target": distribution figure, "trie": trie figure}."""
        return dict(self._figures)

    def _fixed_y_range(self) -> list[float]:
        """log10 range of the target figure's y axis, fixed over the α slider (so moving α moves the curve,
        not the axis): from the flattest (α = 0) to the steepest (α at its maximum) popularity target."""
        probs = []
        for a in (self.alpha.min, self.alpha.max):
            r = popularity_rewards(self.counts, a, self.eps)
            probs.append(self.base_trie.reweight(r).title_log_probs().exp().numpy())
        p = np.concatenate(probs)
        p = p[p > 0]
        return [float(np.log10(p.min())) - 0.5, float(np.log10(max(p.max(), 1e-12))) + 0.2]

    # ------------------------------------------------------------------ updating
    def _on_change(self, change) -> None:
        self.update()

    def update(self) -> None:
        """Re-weight the trie (no rebuild) and redraw the figures."""
        self.trie = self.base_trie.reweight(self.item_target())
        p = self.target()
        who = f", user {self.user.value}" if self.user is not None and self.weight.value > 0 else ""
        self._figures = {
            "target": viz.distribution_figure(
                p, labels=self.title_labels, top=self.top, target_name="target P",
                title=f"Target P(title) = F(title·T)/Z  (α = {self.alpha.value:.2f}, β = {self.beta.value:.2f}, "
                      f"w = {self.weight.value:.2f}{who})"),
            "trie": viz.trie_figure(self.trie, self.token_text, self.max_depth, self.max_children),
        }
        self._figures["target"].update_yaxes(range=self.y_range, autorange=False)
        self.summary.value = (
            f"<div style='padding-left:1em'><b>target</b><br>"
            f"head share (top {self.head_fraction:.0%} titles): {self.head_share():.3f}<br>"
            f"entropy: {metrics.entropy(p):.3f} nats (uniform: {np.log(p.size):.3f})<br>"
            f"Gini: {metrics.gini(p):.3f}<br>titles: {p.size}, trie nodes: {self.trie.num_nodes}</div>")
        redraw(self.out_target, self._figures["target"])
        redraw(self.out_trie, self._figures["trie"])

    def _repr_mimebundle_(self, **kwargs) -> dict:
        """The live panel, with its figures as static HTML for exported notebooks (``display.panel_bundle``)."""
        return panel_bundle(self.widget, self._figures.values())
