"""Training stage: VAE, WGAN-GP and a char-level GPT, exported as self-describing safetensors."""
