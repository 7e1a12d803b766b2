"""SyntheticImages: seeded random images with learnable class structure, the data of the tests."""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

__all__ = ["SyntheticImages"]


class SyntheticImages(Dataset):
    """Seeded random images with learnable structure: each class is a smooth random pattern plus noise.

    Pixel values in [0, 1] like decoded images, so the same transforms apply. For tests, never a default.
    """

    def __init__(self, size: int, num_classes: int = 10, img_size: int = 32, seed: int = 0, split_seed: int = 0,
                 noise: float = 0.15, transform=None):
        g = torch.Generator().manual_seed(seed)
        coarse = torch.rand(num_classes, 3, 4, 4, generator=g)  # shared by both splits: same classes
        self.prototypes = torch.nn.functional.interpolate(coarse, size=(img_size, img_size), mode="bilinear",
                                                          align_corners=False)
        g = torch.Generator().manual_seed(seed * 7919 + split_seed + 1)
        self.labels = torch.randint(0, num_classes, (size,), generator=g)
        self.noise = torch.randn(size, 3, img_size, img_size, generator=g) * noise
        self.transform = transform
        self.classes = [f"class_{i}" for i in range(num_classes)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        img = (self.prototypes[self.labels[i]] + self.noise[i]).clamp(0, 1)
        return (self.transform(img) if self.transform else img), int(self.labels[i])
