"""Use a trained model: load it, evaluate it on a test set, export it.

Modules: :mod:`.loading` (:func:`load_model` from a run folder, a checkpoint or an export),
:mod:`.export` (``model.safetensors`` + ``model.json``), :mod:`.predict` (the test set's logits
through the training's own evaluation, optionally with flip TTA), :mod:`.metrics` (top-k,
superclass figures, per-class accuracy, confusions, calibration), :mod:`.plots` (reliability
diagram, confusion matrix) and :mod:`.report` (``eval.json`` + ``eval.md`` + the PNGs).
The commands are ``python -m fastcifar.evaluate`` and ``python -m fastcifar.export``.
"""
