"""Keep README.md's option table in step with ti_core/config/run_config.py.

python tools/options_table.py          rewrite the table in README.md
python tools/options_table.py --check  exit 1 if README.md's table is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ti_core.config.run_config import FIELDS, SECTIONS  # noqa: E402
from ti_core.config.toml_io import show  # noqa: E402

README = ROOT / "README.md"
START, END = "<!-- options:start -->", "<!-- options:end -->"


def options_table() -> str:
    lines = [START, "", "| section | option | default | what it does |", "|---|---|---|---|"]
    for section in SECTIONS:
        for info in (i for i in FIELDS.values() if i.section == section):
            text = info.help
            if info.choices:
                text += " One of: " + ", ".join(f"`{c}`" for c in info.choices) + "."
            default = show(info.default).replace("|", "\\|")
            lines.append(f"| `[{section}]` | `--{info.name}` | `{default}` | {text} |")
    return "\n".join([*lines, "", END])


def main() -> int:
    readme = README.read_text(encoding="utf-8")
    before, rest = readme.split(START, 1)
    _, after = rest.split(END, 1)
    updated = before + options_table() + after
    if "--check" in sys.argv:
        if updated != readme:
            print("README.md's option table is out of date: run python tools/options_table.py")
            return 1
        return 0
    README.write_text(updated, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
