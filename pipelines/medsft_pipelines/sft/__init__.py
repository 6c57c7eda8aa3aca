"""Supervised fine-tuning of Qwen-VL models with DeepSpeed (the ``medsft-train`` entry point).

* :mod:`.train` — the trainer script: the training recipe, top to bottom, and ``main()``.
* :mod:`.distributed` — the process group, its reductions and batch fingerprints.
* :mod:`.steps` — the step plan every rank agrees on, and the walk over epochs.
* :mod:`.data` — rows to micro-batches: chat rendering, assistant-only labels, packing, resume.
* :mod:`.deepspeed_config` — the DeepSpeed config generated from the spec.
* :mod:`.checkpointing` — checkpoints to storage and exact resume.
* :mod:`.model_files` — base-model checks and the final export (the download is
  :mod:`medsft_pipelines.models.fetch`).
* :mod:`.telemetry` — MFU estimate and the loss curve.
* :mod:`.layout` — where things go under the output URI (no heavy imports; the operator uses it).
"""
