"""Checkpoints from other ecosystems: Hugging Face transformers folders and timm weights."""
