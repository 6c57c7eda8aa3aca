"""Supervised fine-tuning of Qwen-VL models with DeepSpeed (the ``medsft-train`` entry point).

* :mod:`.recipe` — the training recipe, top to bottom, and ``main()``.
* :mod:`.data` — rows to micro-batches: chat rendering, assistant-only labels, packing, resume.
* :mod:`.deepspeed_config` — the DeepSpeed config generated from the spec.
* :mod:`.checkpointing` — checkpoints to storage and exact resume.
* :mod:`.model_files` — base-model download/checks and the final export.
* :mod:`.telemetry` — MFU estimate and the loss curve.
* :mod:`.layout` — where things go under the output URI (no heavy imports; the operator uses it).
"""
