"""cache_info: the image sizes of a folder kept in its metadata_cache.json, the file sd-scripts
writes and reads, so a large folder is not opened image by image before every run. Torch-free.
"""

from __future__ import annotations

import json
from pathlib import Path

from ti_core.atomic import write_text_atomic
from ti_core.data.images import image_size
from ti_core.data.spec import ImageEntry
from ti_core.errors import DatasetError

INFO_CACHE_FILE = "metadata_cache.json"  # sd-scripts' DreamBoothDataset.IMAGE_INFO_CACHE_FILE


def use_info_cache(path: Path, entries: list[ImageEntry]) -> str:
    """Set the entries' sizes from the cache `path` where an image is unchanged (its bytes and
    mtime as recorded), else from the image's header, and write the cache again when anything
    changed. Returns why it could not be written ("" when it was, or had not changed).

    The file is sd-scripts' ({path: {"caption": ..., "resolution": [w, h]}}) plus our "bytes"
    and "mtime_ns": sd-scripts reads ours, and an entry of its own (without them) is read again
    once. Captions are still read from the caption files (sd-scripts takes the cached ones),
    so an edited caption counts at once."""
    try:
        recorded = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        recorded = {}  # a torn or foreign file is only a cache: made again
    recorded = recorded if isinstance(recorded, dict) else {}
    by_name = {Path(key).name: info for key, info in recorded.items() if isinstance(info, dict)}
    fresh = {}
    for entry in entries:
        stat = entry.path.stat()
        stamp = {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        info = by_name.get(entry.path.name, {})
        size = info.get("resolution")
        unchanged = all(info.get(key) == value for key, value in stamp.items())
        if unchanged and isinstance(size, list) and [type(side) for side in size] == [int, int]:
            entry.size = (size[0], size[1])
        else:
            try:
                entry.size = image_size(entry.path)
            except DatasetError:
                continue  # left to the image checks, which name the file
        fresh[str(entry.path)] = {"caption": entry.caption, "resolution": list(entry.size), **stamp}
    if fresh == recorded:
        return ""
    try:
        write_text_atomic(path, json.dumps(fresh, ensure_ascii=False, indent=2))
    except OSError as error:
        return error.strerror or str(error)
    return ""
