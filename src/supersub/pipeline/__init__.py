"""Orchestration: the steps of a run, in the order data flows through them.

``inputs`` (records -> decoded image pool) -> ``stages`` (which model trains on which rows) -> training
(:mod:`supersub.training`) -> ``evidence`` (a model's outputs on its stage's rows) -> ``calibration``
(thresholds, detectors, probabilities) -> ``predict`` / ``evaluate``. ``train`` strings them together for
``supersub train``. The maths lives below (:mod:`supersub.novelty`, :mod:`supersub.metrics`); this layer
decides what runs on what and where the results are saved. Across runs, ``grid`` and ``experiment`` train a
grid of run directories and ``compare`` sets their evaluations side by side.
"""
