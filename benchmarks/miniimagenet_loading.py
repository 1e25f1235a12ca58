"""Seconds and memory to load Mini-ImageNet: the first load decodes, the next maps the cache.

    python benchmarks/miniimagenet_loading.py --data_dir=DIR

Loads train + test (what a run reads) and then val, each first into an empty cache folder (a new
temporary one unless --cache_dir is given) and then again from it. Prints one JSON object as its
last line.
"""

import argparse
import json
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_reptile.data.miniimagenet import (  # noqa: E402
    IMAGES_PER_CLASS,
    find_miniimagenet,
    load_miniimagenet,
    load_miniimagenet_split,
)

_MB = 1e6


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / _MB  # Linux: KiB.


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024 / _MB


def load_all(data_dir: str, **options) -> tuple[dict[str, float], dict]:
    """Times train + test, then val; returns the seconds and the three splits."""
    start = time.perf_counter()
    splits = load_miniimagenet(data_dir, **options)
    train_test = time.perf_counter() - start
    start = time.perf_counter()
    val = load_miniimagenet_split(data_dir, "val", **options)
    val_s = time.perf_counter() - start
    arrays = {"train": splits.train.images, "val": val.images, "test": splits.test.images}
    return {"train_test_s": train_test, "val_s": val_s, "all_s": train_test + val_s}, arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=os.environ.get("KERAS_REPTILE_DATA_DIR"))
    parser.add_argument("--cache_dir", help="cache folder (default: a new temporary folder)")
    parser.add_argument("--num_workers", type=int, help="decoding threads (default: Python's)")
    parser.add_argument("--images_per_class", type=int, default=IMAGES_PER_CLASS)
    args = parser.parse_args()
    if not args.data_dir:
        parser.error("--data_dir is required")
    rss_before = rss_mb()
    with tempfile.TemporaryDirectory(prefix="miniimagenet_cache_") as tmp:
        options = dict(
            images_per_class=args.images_per_class,
            num_workers=args.num_workers,
            cache_dir=args.cache_dir or tmp,
        )
        start = time.perf_counter()
        files = find_miniimagenet(args.data_dir, images_per_class=args.images_per_class)
        find_s = time.perf_counter() - start

        first, arrays = load_all(args.data_dir, **options)
        peak_first = peak_rss_mb()
        sizes = {name: list(a.shape) for name, a in arrays.items()}
        nbytes = {name: a.nbytes / _MB for name, a in arrays.items()}
        del arrays

        cached, arrays = load_all(args.data_dir, **options)
        start = time.perf_counter()
        checksum = sum(int(a.sum(dtype="uint64")) for a in arrays.values())  # Reads every page.
        read_s = time.perf_counter() - start
        rss_cached = rss_mb()
        del arrays

    images = sum(len(paths) for paths in files.values())
    print(
        f"{images} images: first load {first['all_s']:.2f} s "
        f"({images / first['all_s']:.0f} images/s), cached {cached['all_s']:.3f} s "
        f"+ {read_s:.2f} s to read every byte; peak RSS {peak_first:.0f} MB for "
        f"{sum(nbytes.values()):.0f} MB of images"
    )
    result = {
        "images": images,
        "num_workers": args.num_workers,
        "cpus": os.cpu_count(),
        "find_files_s": round(find_s, 3),
        "first_load_train_test_s": round(first["train_test_s"], 3),
        "first_load_val_s": round(first["val_s"], 3),
        "first_load_s": round(first["all_s"], 3),
        "first_load_images_per_s": round(images / first["all_s"], 1),
        "cached_load_train_test_s": round(cached["train_test_s"], 3),
        "cached_load_s": round(cached["all_s"], 3),
        "cached_read_every_byte_s": round(read_s, 3),
        "rss_before_mb": round(rss_before, 1),
        "peak_rss_after_first_load_mb": round(peak_first, 1),
        "rss_with_cached_splits_read_mb": round(rss_cached, 1),
        "array_mb": {name: round(mb, 1) for name, mb in nbytes.items()},
        "array_shapes": sizes,
        "checksum": checksum,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
