"""Datasets held in memory as uint8 tensors, class-balanced subsets, and batch augmentation.

>>> from vitscope.data import load_dataset, BatchAugment
>>> train = load_dataset("fashion-mnist", train=True)          # doctest: +SKIP
>>> aug = BatchAugment(mean=train.info.mean, std=train.info.std, num_classes=10)
"""

from .augment import BatchAugment, normalize, rand_augment, soft_cross_entropy
from .datasets import (
    DATASETS,
    DatasetInfo,
    ImageData,
    cache_dir,
    dataset_info,
    list_datasets,
    load_dataset,
    read_idx,
)
from .download import download_url, md5sum
from .subsets import balanced_subset

__all__ = [
    "DATASETS",
    "BatchAugment",
    "DatasetInfo",
    "ImageData",
    "balanced_subset",
    "cache_dir",
    "dataset_info",
    "download_url",
    "list_datasets",
    "load_dataset",
    "md5sum",
    "normalize",
    "rand_augment",
    "read_idx",
    "soft_cross_entropy",
]
