"""Post-processing: an optional step after training and evaluation.

Two calibrations of a trained model, each chosen on valid recall@20 among
the candidates config.postprocess lists (none by default):

- `item_id_table`: the item-ID embedding table scaled, or shrunk toward its
  k-means centroids (`postprocess.item_id_scales`, `item_id_clusters`);
- `user_refit`: the user vectors refit to the final item vectors, with a
  per-item score offset (`postprocess.user_refit_penalties`,
  `user_refit_steps`).

`run` (in `choose`) makes the choice and writes it to <workdir>/postprocess.json
(what was chosen, every candidate's valid and test recall@20, the step it
applies to; a chosen refit's vectors go to user_refit.npz beside it). The
checkpoint keeps the model as trained; `mmjax.load`, export and recommend
apply the choice from postprocess.json.
"""

from mmjax.postprocess.choose import FILE, check_catalog, describe, enabled, run
