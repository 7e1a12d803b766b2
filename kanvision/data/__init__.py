"""Data: the LightningDataModule for CIFAR-10/100, image folders and synthetic images (`datamodule`)."""
from kanvision.data.datamodule import DataError, ImageDataModule
from kanvision.data.synthetic import SyntheticImages

__all__ = ["DataError", "ImageDataModule", "SyntheticImages"]
