"""The unpaired split of a paired training set as folders of links: the halves
`derain train DATA --method lir --split-unpaired` trains on (docs/weights/lir-small.rain100l.md).

Pairs sorted as ``derain train`` sorts them; every 20th held out as paired validation (the pairs
``derain train`` holds out by default, --val-split 0.05); of the rest, the rainy picture of every
even-numbered pair goes to ``rainy/`` and the clean picture of every odd-numbered one to
``clean/``, so no scene appears in both. Symbolic links, nothing copied.

    python benchmarks/unpaired_split.py ../shared/data/rain100l/train -o ~/.local/share/derain/unpaired_rain100l
"""

from __future__ import annotations

import argparse
from pathlib import Path

from derain_cli.data.pairs import find_pairs
from derain_cli.training.trainer import split_pairs
from derain_cli.training.objectives.unpaired import unpaired_halves


def split(source: Path, out: Path) -> dict[str, int]:
    pairs = find_pairs(source)
    rest, held = split_pairs(pairs, 0.05)
    rainy, clean = unpaired_halves(rest)
    links = {"rainy": rainy, "clean": clean,
             "val/rain": [p.rainy for p in held], "val/norain": [p.clean for p in held]}
    for folder, files in links.items():
        (out / folder).mkdir(parents=True, exist_ok=True)
        for f in files:
            link = out / folder / f.name
            if not link.is_symlink():
                link.symlink_to(f.resolve())
    return {folder: len(files) for folder, files in links.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args()
    print(split(args.source, args.out.expanduser()))


if __name__ == "__main__":
    main()
