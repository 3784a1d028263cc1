"""Loading a family's models: Hugging Face names, folders and GGUF files, timm, quantized and
dispatched weights, and the tested layouts of each family's architectures."""
