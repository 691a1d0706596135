"""Opening the images: a Hub dataset, a local image folder or local tar/parquet shards, as a `datasets` stream of
{"image", "label"} with undecoded images, split into many shards so loader workers and processes share it.
"""

from __future__ import annotations

import glob
import os
import tarfile
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from huggingface_hub.errors import GatedRepoError
from transformers.utils import logging

from .decoding import describe_error
from .errors import unreadable_shard_error


if TYPE_CHECKING:  # `datasets` is imported where a stream is opened: decoding and transforms work without it
    import datasets

logger = logging.get_logger(__name__)

IMAGE_COLUMN_CANDIDATES = ("image", "img", "jpg", "jpeg", "png", "webp")
LABEL_COLUMN_CANDIDATES = ("label", "labels", "cls", "class")
SOURCE_COLUMNS = ("__url__",)  # kept when present: a skipped shard member is logged as `shard:member`
# Folder names read as splits (value: the split) when a folder holds nothing else (`find_split_folder`).
SPLIT_FOLDERS = {
    **dict.fromkeys(("train", "training"), "train"),
    **dict.fromkeys(("val", "valid", "validation", "dev", "eval"), "validation"),
    **dict.fromkeys(("test", "testing"), "test"),
}
MAX_IMAGE_FOLDER_SHARDS = 1024  # divisible by every power-of-two worker x process count up to 1024


def _load_from_hub(
    dataset_name: str, dataset_config_name: str | None, split: str, streaming: bool
) -> datasets.Dataset | datasets.IterableDataset:
    """`load_dataset` from the Hub; access errors come back saying how to get access."""
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    try:
        return datasets.load_dataset(dataset_name, dataset_config_name, split=split, streaming=streaming)
    except (DatasetNotFoundError, GatedRepoError) as error:
        raise DatasetNotFoundError(
            f"{error}\nIf '{dataset_name}' is gated (ImageNet is), accept its terms on "
            f"https://huggingface.co/datasets/{dataset_name}, then run `huggingface-cli login` or set HF_TOKEN."
        ) from error


def _builder_for_files(data_files: list[str] | str) -> str:
    """Picks the `datasets` builder from the file extensions: .tar -> webdataset, .parquet -> parquet."""
    files = [data_files] if isinstance(data_files, str) else list(data_files)
    builders = {"webdataset" if f.endswith(".tar") else "parquet" if f.endswith(".parquet") else None for f in files}
    if len(builders) != 1 or None in builders:
        raise ValueError(f"data_files={files} must all end in .tar (webdataset shards) or all in .parquet.")
    return builders.pop()


def _as_stream(dataset: datasets.Dataset) -> datasets.IterableDataset:
    """Streams a prepared dataset from up to 64 shards (divisible by the usual world sizes)."""
    if len(dataset) == 0:
        raise ValueError("The dataset has no examples: check the split and the data location.")
    return dataset.to_iterable_dataset(num_shards=min(64, len(dataset)))


def _resolve_column(columns: list[str], requested: str | None, candidates: Sequence[str], kind: str) -> str | None:
    """Returns the requested column, else the first known name present, else None."""
    if requested is not None and requested not in columns:
        raise ValueError(f"No column '{requested}' in the dataset; its columns are {columns}. Fix --{kind}_column.")
    return requested or next((name for name in candidates if name in columns), None)


def find_split_folder(root: str, split: str) -> str:
    """`root` itself, or its `split` subfolder when every subfolder of `root` is named for a split (`train/`, `val/`,
    `test/`, ...) and `root` holds no file of its own: ImageNet's layout passed by its top folder."""
    entries = [entry for entry in os.scandir(root) if not entry.name.startswith(".")]
    folders = {entry.name for entry in entries if entry.is_dir()}
    if not folders or len(folders) < len(entries) or any(name.lower() not in SPLIT_FOLDERS for name in folders):
        return root
    matches = sorted(name for name in folders if SPLIT_FOLDERS[name.lower()] == SPLIT_FOLDERS.get(split, split))
    if not matches:
        raise ValueError(
            f"{root} holds the split folders {sorted(folders)} but none for the {split!r} split: give the folder to "
            "read itself (e.g. --train_dir DIR/train)."
        )
    others = sorted(folders - {matches[0]})
    logger.info(f"Reading {os.path.join(root, matches[0])}, the {split!r} split of {root} (not {', '.join(others)}).")
    return os.path.join(root, matches[0])


def list_image_folder(train_dir: str, split: str = "train") -> tuple[list[str], list[str] | None]:
    """(sorted image paths, the class of each or None) of an image folder.

    Images are the files under the folder, at any depth, with an extension PIL opens (hidden folders are skipped).
    When every image sits in a subfolder, the first-level subfolder is its class, whatever folders lie below it
    (`train/n01440764/2020/x.jpg` is class n01440764). A folder made only of split folders reads the `split` one
    (`find_split_folder`); otherwise a class may have any name, `test` or `val` included.
    """
    from PIL import Image

    root = find_split_folder(train_dir, split)
    extensions = {extension.lower() for extension in Image.registered_extensions()}
    files, seen = [], set()
    for folder, subfolders, names in os.walk(root, followlinks=True):
        seen.add(os.path.realpath(folder))  # a linked folder is read once, and a link loop ends
        subfolders[:] = [
            name
            for name in subfolders
            if not name.startswith(".") and os.path.realpath(os.path.join(folder, name)) not in seen
        ]
        files += [os.path.join(folder, name) for name in names if os.path.splitext(name)[1].lower() in extensions]
    if not files:
        raise ValueError(f"{root} holds no image files (extensions {sorted(extensions)[:8]}...).")
    files.sort()
    relative = [os.path.relpath(path, root) for path in files]
    in_class_folders = all(os.sep in path for path in relative)
    return files, [path.split(os.sep)[0] for path in relative] if in_class_folders else None


def _image_folder_examples(chunks: list[list[tuple[str, int | None]]]) -> Iterator[dict]:
    """The generator of `open_image_folder`: one chunk of (path, label) per shard; images stay undecoded."""
    for chunk in chunks:
        for path, label in chunk:
            yield {"image": {"bytes": None, "path": path}} | ({} if label is None else {"label": label})


def open_image_folder(train_dir: str, split: str = "train", num_shards: int | None = None) -> datasets.IterableDataset:
    """An image folder as a stream of many shards: the sorted file list cut into interleaved chunks (shard k holds
    files k, k + n, k + 2n, ..., so every shard spans every class), given to `IterableDataset.from_generator` as a list
    in `gen_kwargs`, which `datasets` splits among processes (`split_dataset_by_node`) and loader workers, and
    whose order `shuffle` redraws each epoch. Reading a file is left to the loader workers."""
    import datasets

    files, classes = list_image_folder(train_dir, split)
    num_shards = min(len(files), num_shards or MAX_IMAGE_FOLDER_SHARDS)
    features = {"image": datasets.Image(decode=False)}
    labels = [None] * len(files)
    if classes is not None:
        class_names = sorted(set(classes))
        features["label"] = datasets.ClassLabel(names=class_names)
        label_of = {name: index for index, name in enumerate(class_names)}
        labels = [label_of[name] for name in classes]
    examples = list(zip(files, labels, strict=True))
    return datasets.IterableDataset.from_generator(
        _image_folder_examples,
        features=datasets.Features(features),
        gen_kwargs={"chunks": [examples[shard::num_shards] for shard in range(num_shards)]},  # the list: shards
    )


def open_image_dataset(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    split: str = "train",
    train_dir: str | None = None,
    data_files: list[str] | str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    streaming: bool = True,
) -> datasets.IterableDataset:
    """Opens a Hub dataset, a local image folder or local tar/parquet shards as a stream of {"image", "label"}.

    Images stay undecoded ({"bytes", "path"}) so that a broken file can be skipped instead of crashing the iterator.
    An image folder streams as up to 1,024 shards of file paths (`open_image_folder`). With `streaming=False` the
    data is first prepared in the local Arrow cache, then streamed from 64 shards (divisible by common world sizes).
    """
    import datasets

    if sum(source is not None for source in (dataset_name, train_dir, data_files)) != 1:
        raise ValueError(
            "Give exactly one of dataset_name (Hub), train_dir (image folder) or data_files (.tar/.parquet)."
        )
    if dataset_name is not None:
        dataset = _load_from_hub(dataset_name, dataset_config_name, split, streaming)
    elif train_dir is not None and streaming:
        dataset = open_image_folder(train_dir, split)
    elif train_dir is not None:
        stream = open_image_folder(train_dir, split)
        dataset = datasets.Dataset.from_list(list(stream), features=stream.features)  # keeps the class names
    else:
        builder = _builder_for_files(data_files)
        try:  # `datasets` reads the first shard's first examples here, to learn the columns
            dataset = datasets.load_dataset(builder, data_files=data_files, split=split, streaming=streaming)
        except tarfile.TarError as error:
            raise unreadable_shard_error(error) from error
    if not streaming:
        dataset = _as_stream(dataset)
    columns = dataset.column_names or list(next(iter(dataset), {}))  # some Hub streams only know them after a read
    image_column = _resolve_column(columns, image_column, IMAGE_COLUMN_CANDIDATES, "image")
    if image_column is None:
        raise ValueError(f"No image column among the dataset's columns {columns}: name it with --image_column.")
    label_column = _resolve_column(columns, label_column, LABEL_COLUMN_CANDIDATES, "label")
    kept = [image_column] + ([label_column] if label_column else [])
    dataset = dataset.select_columns(kept + [name for name in SOURCE_COLUMNS if name in columns])
    if dataset.features is not None and not (
        isinstance(dataset.features[image_column], datasets.Image) and not dataset.features[image_column].decode
    ):  # keep images undecoded; a stream without features yields raw values anyway
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    renames = {old: new for old, new in ((image_column, "image"), (label_column, "label")) if old and old != new}
    return dataset.rename_columns(renames) if renames else dataset


def find_unreadable_tar_shards(data_files: list[str] | str) -> dict[str, str]:
    """The local `.tar` files (paths or globs) that cannot be read to their end, with the reason: not an archive, or
    cut short (a member's data runs past the end of the file). Reads the headers only, so it is quick even for
    ImageNet's shards; what it finds is what makes `datasets` stop with `tarfile.ReadError` mid-stream."""
    patterns = [data_files] if isinstance(data_files, str) else data_files
    paths = sorted({path for pattern in patterns for path in glob.glob(pattern) if path.endswith(".tar")})
    problems = {}
    for path in paths:
        size = os.path.getsize(path)
        try:
            with tarfile.open(path, "r:") as archive:
                cut = next((member for member in archive if member.offset_data + member.size > size), None)
        except (tarfile.TarError, OSError) as error:
            problems[path] = describe_error(error)
            continue
        if cut is not None:
            problems[path] = (
                f"member {cut.name} ends {cut.offset_data + cut.size - size} bytes past the end of the file"
            )
    return problems


def shard_for_process(
    dataset: datasets.IterableDataset, process_index: int, num_processes: int
) -> datasets.IterableDataset:
    """Gives this process its part of the stream; refuses a split that would leave a process without shards."""
    if num_processes == 1:
        return dataset
    num_shards = dataset.num_shards
    if num_shards < num_processes:
        raise ValueError(
            f"{num_shards} shards cannot feed {num_processes} processes: write at least {num_processes} shards, "
            f"e.g. `write_demo_tar_shards(..., num_shards={num_processes})` or `Dataset.to_parquet` per shard, "
            "or use an image folder (streamed as up to 1,024 shards)."
        )
    if num_shards % num_processes:
        logger.warning(
            f"{num_shards} shards do not divide among {num_processes} processes: each process reads every shard "
            f"and keeps 1/{num_processes} of the examples (no duplicates, no drops, but {num_processes}x the "
            "reading). Write a multiple of the process count to read each shard once."
        )
    from datasets.distributed import split_dataset_by_node

    return split_dataset_by_node(dataset, rank=process_index, world_size=num_processes)
