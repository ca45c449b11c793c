"""The known-truth world: procedural characters and scenes, a pre-trained tiny base model, and a pixel oracle.

- ``loratune.world.scene``: the world (``CHARACTERS``, ``SCENES``, ``TARGETS``, ``render``, ``caption``).
- ``loratune.world.oracle``: the truth read from pixels (``scene_of``, ``has_character``, ``identity``, ``quality``,
  ``diversity``, ``judge``).
- ``loratune.world.folder``: ``write_world(dir)`` — the base model, a target-character dataset with held-out
  references, and a ``loratune.yaml`` (the ``loratune world DIR`` command).
- ``loratune.world.scorers``: the world-trained CLIP behind ``clipscore`` and ``clip_i`` in a world folder (committed in
  ``weights/clip``, open_clip's own layout; ``python -m loratune.world.scorers`` trains it again).
- ``loratune.world.pretrain``: how the committed base model in ``weights/`` was trained (``scripts/pretrain_world.py``).

Nothing here imports torch until a model is built or loaded.
"""
