"""Weights in and out: export / verify / load (`checkpoints`), the shipped pretrained tags and their manifest
(`pretrained`), and `kanvision predict` (`predict`)."""
