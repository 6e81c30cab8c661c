"""Class-aware multi-category datamodules built on anomalib's single-category ones.

anomalib 2.7's datamodules take one ``category``. Rather than re-implementing each dataset, a
multi-class datamodule here asks anomalib's own datamodule of each category for its sample table
(so downloads, VisA's split preparation, Real-IAD's JSON parsing and BTech's layout stay anomalib's),
concatenates them with a ``category`` column, and serves :class:`MultiClassImageBatch`es whose
``class_index`` follows one fixed ``category_names`` order.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import re
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from anomalib import TaskType
from anomalib.data.datamodules.base.image import AnomalibDataModule
from anomalib.data.utils import LabelName, Split, TestSplitMode, ValSplitMode
from anomalib.data.utils.split import random_split
from torchvision.transforms.v2 import Transform

from anomalib_multiclass.data.dataset import MultiClassDataset, verify_images

logger = logging.getLogger(__name__)

RUN_FOLDER_MAX_LENGTH = 64


class UnknownCategoryError(ValueError):
    """A requested category is not part of the dataset."""


class EmptyCategoryError(ValueError):
    """A category has no training images."""


class MultiClassDataModule(AnomalibDataModule):
    """Base of the multi-category datamodules: several categories, one class-index space.

    Its arguments are anomalib's ``AnomalibDataModule`` arguments plus the category selection, the second training
    view and the image check; every multi-class datamodule of this package takes them.

    Args:
        categories: Categories to load; null loads all the dataset has (folders: every category sub-folder;
            mixtures: namespaced names such as ``mvtecad/bottle``).
        category_names: Order of the class indices (name at index i is class i); default: ``categories`` in the
            order given, sorted when all are used. At inference pass the trained model's order.
        train_batch_size: Images per training batch (32).
        eval_batch_size: Images per validation and test batch (32).
        num_workers: Data-loading worker processes for every dataloader (8); 0 loads in the main process.
        train_augmentations: torchvision transform applied to the training images before the model's
            pre-processor; default ``augmentations``. Any training augmentation turns the frozen-feature cache off.
        val_augmentations: torchvision transform applied to the validation images; default ``augmentations``.
        test_augmentations: torchvision transform applied to the test images; default ``augmentations``.
        augmentations: torchvision transform used for every split that has no augmentation of its own.
        test_split_mode: Where the test set comes from: ``from_dir`` (the dataset's test folders), ``synthetic``
            (synthetic anomalies on normal images) or ``none``.
        test_split_ratio: Fraction of the training images moved to the test set when it has no normal images.
        val_split_mode: Where the validation set (thresholds, normalisation) comes from: ``same_as_test`` (the test
            set, as anomalib's MVTec AD), ``from_test`` / ``from_train`` (a part of each category's test / training
            images), ``synthetic`` or ``none``.
        val_split_ratio: Fraction of each category's test (``from_test``) or training (``from_train``) images
            that become the validation set.
        seed: Random seed of the validation and test splits; null: random splits.
        verify: Decode every image and mask at setup and fail on the first unreadable file (slower, thorough).
        calibration_images_per_category: Training images of each category that calibrate an INT8 OpenVINO export.
    """

    def __init__(
        self,
        categories: Sequence[str] | None = None,
        category_names: Sequence[str] | None = None,
        train_batch_size: int = 32,
        eval_batch_size: int = 32,
        num_workers: int = 8,
        train_augmentations: Transform | None = None,
        val_augmentations: Transform | None = None,
        test_augmentations: Transform | None = None,
        augmentations: Transform | None = None,
        test_split_mode: TestSplitMode | str = TestSplitMode.FROM_DIR,
        test_split_ratio: float = 0.2,
        val_split_mode: ValSplitMode | str = ValSplitMode.SAME_AS_TEST,
        val_split_ratio: float = 0.5,
        seed: int | None = None,
        verify: bool = False,
        calibration_images_per_category: int = 32,
    ) -> None:
        super().__init__(
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            train_augmentations=train_augmentations,
            val_augmentations=val_augmentations,
            test_augmentations=test_augmentations,
            augmentations=augmentations,
            test_split_mode=test_split_mode,
            test_split_ratio=test_split_ratio,
            val_split_mode=val_split_mode,
            val_split_ratio=val_split_ratio,
            seed=seed,
        )
        if categories is not None and len(categories) == 0:
            msg = (
                f"{type(self).__name__}: `categories` is an empty list. Name at least one category, or leave "
                "`categories` out (None) to use all of them."
            )
            raise ValueError(msg)
        self._requested_categories = list(categories) if categories is not None else None
        self._requested_names = list(category_names) if category_names is not None else None
        self.verify = verify
        if calibration_images_per_category < 1:
            msg = f"calibration_images_per_category must be at least 1, got {calibration_images_per_category}."
            raise ValueError(msg)
        self.calibration_images_per_category = calibration_images_per_category
        self._categories: list[str] | None = None
        self._category_names: list[str] | None = None

    # --- what a concrete dataset provides -------------------------------------------------------
    @abstractmethod
    def available_categories(self) -> list[str]:
        """All categories of the dataset (for folder datasets: the sub-folders found on disk)."""

    def category_datamodule(self, category: str) -> AnomalibDataModule:
        """Anomalib's single-category datamodule for ``category`` (its prepare/setup are reused)."""
        msg = f"{self.name} reads its categories itself ({type(self).__name__}.read_category), not through anomalib."
        raise NotImplementedError(msg)

    # --- categories ------------------------------------------------------------------------------
    @property
    def categories(self) -> list[str]:
        """The categories this datamodule loads, validated against the dataset."""
        if self._categories is None:
            available = self.available_categories()
            if self._requested_categories is None:
                if not available:
                    msg = f"{self.name}: no categories found. Check the dataset root."
                    raise EmptyCategoryError(msg)
                self._categories = sorted(available)
            else:
                unknown = [c for c in self._requested_categories if c not in available]
                if unknown:
                    msg = (
                        f"{self.name}: unknown categor{'y' if len(unknown) == 1 else 'ies'} {unknown}. "
                        f"Available: {sorted(available)}."
                    )
                    raise UnknownCategoryError(msg)
                self._categories = list(dict.fromkeys(self._requested_categories))
        return self._categories

    @property
    def category_names(self) -> list[str]:
        """Ordered category names: ``category_names[class_index]`` is the category of that index."""
        if self._category_names is None:
            if self._requested_names is not None:
                missing = [c for c in self.categories if c not in self._requested_names]
                if missing:
                    msg = (
                        f"{self.name}: categories {missing} are not in the given category_names "
                        f"{self._requested_names}. Add them or drop them from `categories`."
                    )
                    raise UnknownCategoryError(msg)
                self._category_names = list(self._requested_names)
            else:
                self._category_names = list(self.categories)
        return self._category_names

    @property
    def category(self) -> str:
        """Anomalib reads ``datamodule.category`` for result paths: the categories' short run-folder name."""
        return run_folder_name(self.categories) if self._categories or self._requested_categories else "all"

    @category.setter
    def category(self, category: str) -> None:
        del category  # a multi-class datamodule has no single category

    # --- anomalib hooks --------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Let anomalib download / prepare each category (real download code, not reachable offline)."""
        for category in self.categories:
            self.category_datamodule(category).prepare_data()

    def read_category(self, category: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Train and test sample tables of one category, from anomalib's parser for the dataset."""
        datamodule = self.category_datamodule(category)
        try:
            datamodule._setup()
        except (RuntimeError, ValueError, KeyError) as error:
            msg = f"{self.name}: could not read category {category!r} with anomalib's parser: {error}"
            raise EmptyCategoryError(msg) from error
        return datamodule.train_data.samples.copy(), datamodule.test_data.samples.copy()

    def category_samples(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Train and test sample tables of all categories, with a ``category`` column."""
        train_frames, test_frames = [], []
        for category in self.categories:
            train, test = self.read_category(category)
            train = train[train["split"] == Split.TRAIN.value] if "split" in train else train
            if len(train) == 0 or not (train["label_index"] == LabelName.NORMAL).any():
                msg = (
                    f"{self.name}: category {category!r} has no normal training images. "
                    "Put normal images in its train/good folder."
                )
                raise EmptyCategoryError(msg)
            train["category"] = category
            test["category"] = category
            train_frames.append(train)
            test_frames.append(test)
        return pd.concat(train_frames, ignore_index=True), pd.concat(test_frames, ignore_index=True)

    def _task(self, test: pd.DataFrame) -> tuple[TaskType, list[str]]:
        """Segmentation when any category has masks, and the categories without any (their pixel metrics: n/a).

        A category whose anomalous test images all lack masks is evaluated at image level only; one where only
        some lack them is an error (a mask file is missing, and which pixels are defective is unknown).
        """
        anomalous = test[test["label_index"] == LabelName.ABNORMAL]
        if len(anomalous) == 0:
            return TaskType.SEGMENTATION, []
        if "mask_path" in anomalous:
            has_masks = anomalous["mask_path"].map(lambda p: isinstance(p, str) and bool(p))
        else:
            has_masks = pd.Series(False, index=anomalous.index)
        without: list[str] = []
        for category, masked in has_masks.groupby(anomalous["category"], sort=False):
            if bool(masked.any()) and not bool(masked.all()):
                missing = anomalous.loc[masked.index[~masked], "image_path"].tolist()
                msg = (
                    f"{self.name}: {len(missing)} anomalous test image(s) of category {category!r} have no mask, "
                    f"e.g. {missing[0]}. Add the masks, or remove those images; a category without any masks is "
                    "evaluated at image level only."
                )
                raise ValueError(msg)
            if not bool(masked.any()):
                without.append(str(category))
        with_masks = sorted(set(anomalous["category"].astype(str)) - set(without))
        if not with_masks:
            return TaskType.CLASSIFICATION, []
        if without:
            logger.warning(
                "%s: categor%s %s ha%s no ground-truth masks: %s pixel metrics are n/a (images only); the other "
                "categories are evaluated at pixel level too. Add a ground_truth/ folder to evaluate %s pixels.",
                self.name,
                "y" if len(without) == 1 else "ies",
                without,
                "s" if len(without) == 1 else "ve",
                "its" if len(without) == 1 else "their",
                "its" if len(without) == 1 else "their",
            )
        return TaskType.SEGMENTATION, without

    def _setup(self, _stage: str | None = None) -> None:
        train, test = self.category_samples()
        # every file of every split opened once before training (headers; verify=True: every pixel)
        verify_images(pd.concat([train, test], ignore_index=True), decode=self.verify)
        task, without_masks = self._task(test)
        names = self.category_names
        self.train_data = MultiClassDataset(train, names, task=task, categories_without_masks=without_masks)
        self.test_data = MultiClassDataset(test, names, task=task, categories_without_masks=without_masks)
        if without_masks:
            self._warn_mask_readers(without_masks)

    def _warn_mask_readers(self, without_masks: list[str]) -> None:
        """Name the model's components that read every ``gt_mask`` (anomalib's own): they see the placeholders."""
        trainer = getattr(self, "trainer", None)
        model = getattr(trainer, "lightning_module", None) if trainer is not None else None
        for role in ("post_processor", "evaluator"):
            component = getattr(model, role, None)
            if component is not None and not getattr(component, "skips_placeholder_masks", False):
                logger.warning(
                    "%s: the %s %s reads every image's gt_mask: the images of %s (no ground-truth masks) carry "
                    "all-zero placeholder masks and count as defect-free there. The package's defaults "
                    "(ClassAwarePostProcessor, PerCategoryEvaluator) leave them out.",
                    self.name,
                    role.replace("_", "-"),
                    type(component).__name__,
                    without_masks,
                )

    def _create_val_split(self) -> None:
        """Anomalib's split, but per category so that every category gets validation images."""
        if self.val_split_mode not in {ValSplitMode.FROM_TEST, ValSplitMode.FROM_TRAIN}:
            super()._create_val_split()
            return
        source_name = "test_data" if self.val_split_mode == ValSplitMode.FROM_TEST else "train_data"
        source: MultiClassDataset = getattr(self, source_name)
        keep_parts, val_parts = [], []
        for category in self.categories:
            indices = source.samples.index[source.samples["category"] == category].tolist()
            subset = source.subsample(indices)
            keep, val = random_split(subset, self.val_split_ratio, label_aware=True, seed=self.seed)
            keep_parts.append(keep.samples)
            val_parts.append(val.samples)
        remaining = copy.deepcopy(source)
        remaining.samples = pd.concat(keep_parts, ignore_index=True)
        val = copy.deepcopy(source)
        val.samples = pd.concat(val_parts, ignore_index=True)
        setattr(self, source_name, remaining)
        self.val_data = val


def run_folder_name(categories: Sequence[str], max_length: int = RUN_FOLDER_MAX_LENGTH) -> str:
    """A short, file-system-safe folder name for a run on ``categories``.

    The names joined by ``+`` when that is short and plain (letters, digits, ``._-``); otherwise as much of it as
    fits in ``max_length``, the number of categories and a short hash of the full list (so two lists never share
    a folder, and 30 Real-IAD names or namespaced ``dataset/category`` names do not make an invalid path).
    """
    joined = "+".join(categories)
    plain = re.sub(r"[^A-Za-z0-9._+-]", "_", joined)
    if plain == joined and len(joined) <= max_length:
        return joined
    digest = hashlib.sha1("\n".join(categories).encode()).hexdigest()[:8]
    suffix = f"-{len(categories)}cat-{digest}"
    return plain[: max_length - len(suffix)].rstrip("+_.-") + suffix


def resolve_root(root: str | Path | None, default: str) -> Path:
    """The dataset root as a path, with anomalib's default location when ``None``."""
    return Path(root) if root is not None else Path("./datasets") / default
