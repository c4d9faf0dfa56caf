"""Data layer: readers, the decoded-image cache, the built-in dataset, splits and augmentation."""
