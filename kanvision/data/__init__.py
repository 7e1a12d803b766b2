"""Data: the LightningDataModule for CIFAR-10/100, image folders and synthetic images (`datamodule`), and image
files read as the RGB the models expect (`images`).

Names are imported on first use: `kanvision predict` reads images through `kanvision.data.images` and should
not pay for importing Lightning, which `datamodule` does.
"""
from importlib import import_module

__all__ = ["DataError", "ImageDataModule", "SyntheticImages"]
_WHERE = {"DataError": "datamodule", "ImageDataModule": "datamodule", "SyntheticImages": "synthetic"}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(f"kanvision.data.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'kanvision.data' has no attribute {name!r}")
