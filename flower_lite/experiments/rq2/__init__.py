"""Next-item recommendation with an LLM on the title trie, the paper's RQ2 / RQ4 (docs/method.md 4, 6, 7).

One job per module: :mod:`.setup` (data, prompts, SASRec preferences, rewards, :func:`~.setup.rq2_setup`,
:func:`~.setup.rq2_config`), :mod:`.methods` (training, decoding, scoring, every baseline), :mod:`.compare`
(the RQ2 table) and :mod:`.diagnostics` (the reward's own ranking, exposure, the target-fit control).
Notebooks 04 and 05 and ``flower-lite compare`` use them.
"""
from .compare import METHODS, TABLE_KEYS, results_table, rq2_table, run_comparison
from .diagnostics import exposure_by_group, reversed_popularity, reward_ranking, target_fit, target_fit_comparison
from .methods import (MethodResult, bigrec, d3, decode, decode_many, flower, ifairlrs, ifairlrs_group_weights, ifairlrs_weights,
                      popularity, redecode, run_method, sasrec, score, sft_family, sft_temperature, train_model)
from .setup import (CATEGORY_NOUNS, FLOWER, INSTRUCTION, DecodeSettings, RecommendConfig, RecSetup, history_prompts,
                    instruction, prepare, preference_rows, reward_fn, rq2_config, rq2_data, rq2_setup, subsample,
                    tiny_policy)

__all__ = [
    "CATEGORY_NOUNS", "FLOWER", "INSTRUCTION", "DecodeSettings", "RecommendConfig", "RecSetup", "history_prompts",
    "instruction", "prepare", "preference_rows", "reward_fn", "rq2_config", "rq2_data", "rq2_setup", "subsample",
    "tiny_policy", "MethodResult", "bigrec", "d3", "decode", "flower", "ifairlrs", "ifairlrs_group_weights",
    "ifairlrs_weights", "decode_many", "sft_family", "popularity", "redecode", "run_method", "sasrec", "score", "sft_temperature", "train_model",
    "METHODS", "TABLE_KEYS", "results_table", "rq2_table", "run_comparison", "exposure_by_group", "reversed_popularity", "reward_ranking",
    "target_fit", "target_fit_comparison",
]
