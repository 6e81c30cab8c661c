"""Multi-class versions of anomalib's MVTec AD, VisA, Real-IAD and BTAD datamodules, folders, and mixtures."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from anomalib.data.datamodules.base.image import AnomalibDataModule
from anomalib.data.datamodules.image.btech import BTech
from anomalib.data.datamodules.image.mvtecad import MVTecAD
from anomalib.data.datamodules.image.realiad import RealIAD
from anomalib.data.datamodules.image.visa import Visa
from anomalib.data.datasets.image.btech import CATEGORIES as BTECH_CATEGORIES
from anomalib.data.datasets.image.mvtecad import CATEGORIES as MVTEC_CATEGORIES
from anomalib.data.datasets.image.realiad import CATEGORIES as REALIAD_CATEGORIES
from anomalib.data.datasets.image.visa import CATEGORIES as VISA_CATEGORIES

from anomalib_multiclass.data.datamodule import EmptyCategoryError, MultiClassDataModule, resolve_root
from anomalib_multiclass.data.folder import IMAGE_EXTENSIONS, is_image, read_category_folder

logger = logging.getLogger(__name__)

_COMMON = ("train_batch_size", "eval_batch_size", "num_workers")


class _RootedMultiClassDataModule(MultiClassDataModule):
    """A multi-class datamodule over one dataset root.

    Args:
        root: Folder of the dataset; null: ``./datasets/<default_root>``.
    """

    default_root = "dataset"

    def __init__(self, root: str | Path | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root = resolve_root(root, self.default_root)

    def _single(self, cls: type[AnomalibDataModule], **kwargs: Any) -> AnomalibDataModule:
        common = {key: getattr(self, key) for key in _COMMON}
        return cls(root=self.root, **common, **kwargs)


class MultiClassMVTecAD(_RootedMultiClassDataModule):
    """MVTec AD, all 15 categories (or ``categories``) in one class-aware datamodule.

    Args:
        root: MVTec AD folder, the one holding a sub-folder per category; null: ``./datasets/MVTecAD``.

    Example:
        >>> datamodule = MultiClassMVTecAD(root="./datasets/MVTecAD")  # doctest: +SKIP
    """

    default_root = "MVTecAD"

    def available_categories(self) -> list[str]:
        """The 15 MVTec AD categories."""
        return list(MVTEC_CATEGORIES)

    def category_datamodule(self, category: str) -> AnomalibDataModule:
        """Anomalib's ``MVTecAD`` for one category."""
        return self._single(MVTecAD, category=category)

    def read_category(self, category: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Anomalib's parser; a category without ``ground_truth/`` (which that parser cannot read) by ours.

        The layout is the same, so the folder parser reads it exactly; the category's pixel metrics are then n/a.
        """
        folder = self.root / category
        if (folder / "test").is_dir() and not (folder / "ground_truth").exists():
            logger.info("%s: %s has no ground_truth/ folder: reading it without masks", self.name, folder)
            files = read_category_folder(folder)
            return files.train, files.test
        return super().read_category(category)


class MultiClassVisA(_RootedMultiClassDataModule):
    """VisA, all 12 categories (or ``categories``), with anomalib's 1-class split preparation.

    Args:
        root: VisA folder (anomalib prepares its ``visa_pytorch`` split there); null: ``./datasets/visa``.
    """

    default_root = "visa"

    def available_categories(self) -> list[str]:
        """The 12 VisA categories."""
        return list(VISA_CATEGORIES)

    def category_datamodule(self, category: str) -> AnomalibDataModule:
        """Anomalib's ``Visa`` for one category."""
        return self._single(Visa, category=category)


class MultiClassRealIAD(_RootedMultiClassDataModule):
    """Real-IAD, all 30 categories (or ``categories``), through anomalib's ``RealIAD`` parsing.

    Args:
        root: Real-IAD folder, holding the image folders and ``realiad_jsons``; null: ``./datasets/realiad``.
        resolution: Image resolution folder to read: 256, 512, 1024 or ``raw`` (anomalib's argument).
        json_path: Split file relative to ``root``; ``{category}`` is replaced by each category (e.g. the
            single-view split ``realiad_jsons/realiad_jsons_sv/{category}.json``).
    """

    default_root = "realiad"

    def __init__(
        self,
        root: str | Path | None = None,
        resolution: str | int = 1024,
        json_path: str | Path = "realiad_jsons/realiad_jsons/{category}.json",
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, **kwargs)
        self.resolution = resolution
        self.json_path = json_path

    def available_categories(self) -> list[str]:
        """The 30 Real-IAD categories."""
        return list(REALIAD_CATEGORIES)

    def category_datamodule(self, category: str) -> AnomalibDataModule:
        """Anomalib's ``RealIAD`` for one category."""
        json_path = str(self.json_path).format(category=category)
        return self._single(RealIAD, category=category, resolution=self.resolution, json_path=json_path)


class MultiClassBTAD(_RootedMultiClassDataModule):
    """BTAD (BeanTech), its 3 categories, through anomalib's ``BTech``.

    Args:
        root: BTAD folder, holding the categories ``01``, ``02``, ``03``; null: ``./datasets/BTech``.
    """

    default_root = "BTech"

    def available_categories(self) -> list[str]:
        """The 3 BTAD categories."""
        return list(BTECH_CATEGORIES)

    def category_datamodule(self, category: str) -> AnomalibDataModule:
        """Anomalib's ``BTech`` for one category."""
        return self._single(BTech, category=category)


class MultiClassFolder(_RootedMultiClassDataModule):
    """Any folder with one MVTec-like tree per category, in every image format anomalib's ``Folder`` reads.

    Layout: ``<root>/<category>/train/good/*``, ``<root>/<category>/test/good/*``,
    ``<root>/<category>/test/<defect>/*`` and, for pixel metrics, ``<root>/<category>/ground_truth/<defect>/*``
    (mask names: the image stem with ``_mask``, any image extension). Images may be png, jpg/jpeg, bmp, tif/tiff,
    ppm, pgm or webp, in any case. Every sub-folder of ``root`` that has a ``train`` folder is a category; the
    others are skipped with a log line. Files that are not used (other formats, hidden files, stray masks) are
    counted in a warning, and each is named when ``verify=True``; ``unused_files`` holds them all.

    Args:
        root: Folder holding one MVTec-like sub-folder per category; null: ``./datasets/folder``.
    """

    default_root = "folder"

    def __init__(self, root: str | Path | None = None, **kwargs: Any) -> None:
        super().__init__(root=root, **kwargs)
        self._unused: dict[str, list[tuple[Path, str]]] = {}

    @property
    def unused_files(self) -> list[tuple[Path, str]]:
        """Every file under the categories' folders that is not used, with the reason (after setup)."""
        return [entry for category in sorted(self._unused) for entry in self._unused[category]]

    def available_categories(self) -> list[str]:
        """Sub-folders of ``root`` that look like categories (each one skipped is logged with the reason)."""
        if not self.root.is_dir():
            msg = f"Dataset root {self.root} does not exist. Pass the folder that holds one sub-folder per category."
            raise FileNotFoundError(msg)
        categories = []
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            if folder.name.startswith("."):
                logger.info("%s: skipping hidden folder %s.", self.name, folder)
            elif not (folder / "train").is_dir():
                logger.warning(
                    "%s: skipping folder %s: it has no train/ folder, so it is not a category "
                    "(a category needs train/good with normal images).",
                    self.name,
                    folder,
                )
            else:
                categories.append(folder.name)
        return categories

    def _check_train_folder(self, category: str) -> None:
        train = self.root / category / "train" / "good"
        if not any(is_image(f) for f in train.rglob("*")):
            msg = (
                f"Category {category!r}: {train} is missing or has no images ({', '.join(IMAGE_EXTENSIONS)}). "
                "Put normal images there."
            )
            raise EmptyCategoryError(msg)

    def read_category(self, category: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The category folder's images in every supported format; the files left out are reported."""
        self._check_train_folder(category)
        files = read_category_folder(self.root / category)
        self._report_unused(category, files.unused)
        return files.train, files.test

    def _report_unused(self, category: str, unused: list[tuple[Path, str]]) -> None:
        self._unused[category] = unused
        if not unused:
            return
        if self.verify:
            for path, reason in unused:
                logger.warning("%s: not using %s: %s.", self.name, path, reason)
        else:
            logger.warning(
                "%s: category %r: %d file(s) not used, e.g. %s (%s). Pass verify=True to list them all.",
                self.name,
                category,
                len(unused),
                unused[0][0],
                unused[0][1],
            )

    def prepare_data(self) -> None:
        """A local folder has nothing to download; only check that every category has training images."""
        for category in self.categories:
            self._check_train_folder(category)


class MixedMultiClassDataModule(MultiClassDataModule):
    """Several multi-class datamodules as one (the papers' "all-in-all" setting).

    Category names are namespaced by dataset (``mvtecad/toothbrush`` and ``realiad/toothbrush`` are two
    classes), one class-index space covers them all, and the batches mix datasets.

    The other arguments are those of :class:`MultiClassDataModule` (batch sizes, splits, ...) and apply to the
    mixture; the children's own batch sizes are ignored.

    Args:
        datamodules: The multi-class datamodules to mix (each with its own root and options).
        prefixes: Namespace of each datamodule's categories; default: the lower-cased class name without
            ``MultiClass`` (``mvtecad``, ``visa``, ...).
    """

    def __init__(
        self,
        datamodules: Sequence[MultiClassDataModule],
        prefixes: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not datamodules:
            msg = "MixedMultiClassDataModule needs at least one datamodule."
            raise ValueError(msg)
        self.datamodules = list(datamodules)
        self.prefixes = list(prefixes) if prefixes is not None else [_prefix(dm) for dm in self.datamodules]
        if len(set(self.prefixes)) != len(self.prefixes) or len(self.prefixes) != len(self.datamodules):
            msg = f"Each datamodule needs its own prefix, got {self.prefixes}."
            raise ValueError(msg)

    def available_categories(self) -> list[str]:
        """All namespaced categories of the children."""
        return [f"{p}/{c}" for p, dm in zip(self.prefixes, self.datamodules, strict=True) for c in dm.categories]

    def category_datamodule(self, category: str) -> AnomalibDataModule:
        """The child's anomalib datamodule for a namespaced category."""
        prefix, name = category.split("/", 1)
        return self.datamodules[self.prefixes.index(prefix)].category_datamodule(name)

    def category_samples(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Children's sample tables, their categories namespaced, restricted to ``self.categories``."""
        trains, tests = [], []
        for prefix, datamodule in zip(self.prefixes, self.datamodules, strict=True):
            train, test = datamodule.category_samples()
            for frame in (train, test):
                frame["category"] = prefix + "/" + frame["category"]
            trains.append(train)
            tests.append(test)
        train, test = pd.concat(trains, ignore_index=True), pd.concat(tests, ignore_index=True)
        keep = set(self.categories)
        return train[train["category"].isin(keep)].reset_index(drop=True), test[
            test["category"].isin(keep)
        ].reset_index(drop=True)

    def prepare_data(self) -> None:
        """Each child prepares (downloads) its own data."""
        for datamodule in self.datamodules:
            datamodule.prepare_data()


def _prefix(datamodule: MultiClassDataModule) -> str:
    name = type(datamodule).__name__.removeprefix("MultiClass").lower()
    return name or "dataset"
