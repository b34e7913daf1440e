"""Keep this step: a saved checkpoint becomes the run's final file (the Run view's button for the
suggested step). The final file it replaces is kept beside it as <name>-final-replaced<suffix>,
and each file appears whole or not at all. Torch-free: the GUI does it in its own process.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ti_core.atomic import atomic_path
from ti_core.errors import TiError
from ti_core.run_folder.reader import read_run_folder

REPLACED = "-final-replaced"


def keep_step(folder: str | Path, checkpoint: str | Path) -> Path:
    """Copy `checkpoint` (a file of the run in `folder`) over the run's final file; returns the
    final file. The old final file is moved to <name>-final-replaced first."""
    reader = read_run_folder(folder)
    final = reader.final_file()
    source = reader.find(str(checkpoint)) or Path(checkpoint)
    if final is None:
        raise TiError(f"{folder}: the run has no final embedding yet; wait until it is saved.")
    if not source.is_file():
        raise TiError(f"{checkpoint}: that checkpoint file is gone (pruned or moved).")
    if source.resolve() == final.resolve():
        return final
    if source.suffix != final.suffix:
        raise TiError(
            f"{source.name} is a {source.suffix} file and the final one a {final.suffix}: "
            "keep a checkpoint of the same format."
        )
    replaced = final.with_name(final.stem + REPLACED + final.suffix)
    with atomic_path(replaced) as temporary:
        shutil.copyfile(final, temporary)
    with atomic_path(final) as temporary:
        shutil.copyfile(source, temporary)
    return final
