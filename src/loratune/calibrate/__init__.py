"""``loratune calibrate``: teach the composite your taste by answering "which is better?" about pairs of checkpoints.

``candidates`` (the run's scored checkpoints as an axis-score matrix) · ``preferences`` (RUN/preferences.jsonl) ·
``fit`` (Bradley–Terry weights, regularised toward the run's) · ``pairs`` (which pair to ask next) · ``session`` (the
live state) · ``server`` (the local page) · ``apply`` (re-rank the run with the calibrated weights).
"""
