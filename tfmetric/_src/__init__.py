"""Internal mechanics shared by the public packages of tfmetric.

Nothing here is public API: names may change without notice. Every module of
`tfmetric` may import from `tfmetric._src`; `tfmetric._src` imports nothing
from the rest of `tfmetric`, so shared helpers live in one place and no
package reaches into another package's private modules.

- `validation`: argument checks (numbers, integers, choices, bools) raising
  errors that name the argument.
- `inputs`: the one validator of class labels and the validators of
  embeddings (tensors and numpy arrays); label masks.
- `numerics`: NaN-free building blocks (guarded square root, L2
  normalisation, masked log-sum-exp, cross-entropy).
- `reduction`: per-sample loss values and the normalisers of their reductions.
- `distribute`: `tf.distribute` replica helpers (all-gather, local rows).
- `triplet_mining`: the O(B²) triplet-mining kernel of the triplet losses.
- `files`: atomic file and directory writes with umask-based modes, and the
  clean-up of temporaries left by dead processes.
- `cache`: a bounded cache of compiled functions keyed by distance.
"""
