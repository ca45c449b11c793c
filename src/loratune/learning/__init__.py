"""How loratune tells learning from copying: held-out references, copy risk, CMMD and the per-epoch diagnosis.

A LoRA that copies its training images scores high on identity against those images; one that is over-trained keeps
identity and loses the prompt. The pieces here keep the two apart: ``holdout`` keeps images out of training to serve
as identity references, ``copy_risk`` measures each sample's nearest training image (a search constraint, not an
axis), ``cmmd`` measures the distance of an epoch's samples from the held-out set, and ``diagnosis`` names each
epoch ``underfit``, ``good``, ``overfit`` or ``copying`` with the rule that fired.
"""
