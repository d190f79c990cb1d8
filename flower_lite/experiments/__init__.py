"""What the notebooks and the command line run: recipes (dataclasses and named configurations) and drivers.

* :mod:`~flower_lite.experiments.demo` — ``flower-lite demo``: the tabular toy on the default catalogue (notebook 02's comparison).
* :mod:`~flower_lite.experiments.rq1` — distribution fitting with a causal LM, the paper's RQ1 (notebook 03, ``flower-lite fit``).
* :mod:`~flower_lite.experiments.rq2` — next-item recommendation, the paper's RQ2 / RQ4 (notebooks 04 and 05, ``flower-lite compare``).

Nothing below this package imports it.
"""
