"""Stop 5: distill a teacher run into a small student (encoder or LoRA), quantize it, filter teacher answers."""
