"""Measurements of trained models on the shapes world's ``eval`` and ``heldout`` splits.

- :mod:`cascade.evaluation.world_cases`: evaluation scenes, their renders and captions, and
  caption variants that differ in one attribute (for zero-shot classification);
- :mod:`cascade.evaluation.cascade_eval` (``cascade eval``): renders world prompts and scores what
  the world reader reads back; :mod:`cascade.evaluation.drawn` says what was drawn instead;
- :mod:`cascade.evaluation.clip_eval`: the world CLIP: text-to-image retrieval among 100
  candidates and per-attribute zero-shot accuracy
  (``python -m cascade.evaluation.clip_eval --clip weights/shapes/clip``);
- :mod:`cascade.evaluation.prior_eval`: the diffusion prior: cosine similarity of sampled to true
  image embeddings and the true image's retrieval rank, against the text-embedding baseline
  (``python -m cascade.evaluation.prior_eval --prior weights/shapes/prior``).

Every metric is a library function over tensors; the ``main`` of each module prints a table and
writes JSON.
"""
