"""`python -m ti_core.cli.caption_fix --config RUN.toml`: the caption fixes a run's datasets need,
as JSON on stdout. The GUI runs it as a child process (reading a run's datasets may build the
demo dataset, which needs torch); the fixes themselves are ti_core/data/caption_fix.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ti_core.config.toml_io import load_config
from ti_core.data.caption_fix import FixPlan, plan_fixes
from ti_core.data.run_data import dataset_specs, uses_templates
from ti_core.errors import TiError


def plan_for_config(config_path: str | Path) -> FixPlan:
    """The fixes for the datasets of a run config."""
    config = load_config(config_path)
    specs = dataset_specs(config)
    if uses_templates(config):  # captions are not read: nothing to fix
        plan = FixPlan(config.token.token_string, "")
        plan.notes.append("use_object_template / use_style_template is on: the run trains on "
                          "templates with the token and reads no captions.")  # fmt: skip
        return plan
    return plan_fixes(specs, config.token.token_string)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ti_core.cli.caption_fix",
        description="Print (JSON) the caption fixes that would put the token into a run's "
        "captions.",
    )
    parser.add_argument("--config", required=True, help="the run's config TOML")
    args = parser.parse_args(argv)
    try:
        plan = plan_for_config(args.config)
    except TiError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(plan.to_dict(), ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
