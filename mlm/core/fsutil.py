"""Files written so that readers never see them half-made."""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager


@contextmanager
def written_whole(path: str):
    """Yields a temporary name beside `path` to write to; renamed to `path` once the block ends without error,
    removed if it fails: a crash never leaves half a file in place of an earlier one."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def publish_folder(tmp_dir: str, final_dir: str, marker: str) -> None:
    """Rename a finished cache folder into place (atomic: no reader ever sees half of it); if another process
    published one first (its `marker` file is there), keep theirs and drop ours."""
    try:
        os.rename(tmp_dir, final_dir)
    except OSError:
        if not os.path.isfile(os.path.join(final_dir, marker)):
            raise
        shutil.rmtree(tmp_dir, ignore_errors=True)
