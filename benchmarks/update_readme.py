"""Copy the benchmark scripts' latest tables into README.md, so no number there is typed by hand.

    python -m benchmarks.update_readme

README.md marks each table's place with `<!-- results:NAME -->` ... `<!-- /results:NAME -->`; the text between
is replaced by `benchmarks/results/NAME.md`, which the benchmark NAME writes each time it runs.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"(<!-- results:(?P<name>[\w-]+) -->\n)(.*?)(<!-- /results:(?P=name) -->)", re.DOTALL)


def fill(readme: str, results: Path) -> str:
    def replace(match: re.Match) -> str:
        table = (results / f"{match['name']}.md").read_text().strip()
        return f"{match[1]}{table}\n{match[4]}"

    return BLOCK.sub(replace, readme)


def main() -> None:
    readme = ROOT / "README.md"
    readme.write_text(fill(readme.read_text(), ROOT / "benchmarks" / "results"))
    print(f"updated {readme}")


if __name__ == "__main__":
    main()
