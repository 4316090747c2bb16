"""Fine-tuning loop for the answer model: data builder, SFT and KTO with LoRA, merge, r sweep, adapter registry.

Nothing heavy is imported here: `python -m faq_bot train ...` imports `training.cli` at start-up.
"""
