"""kvqa: the block fine-tuning recipe of kvblock (synthetic retrieval QA, a small byte-level Llama,
the Block-Attention training mask and Hugging Face export)."""
