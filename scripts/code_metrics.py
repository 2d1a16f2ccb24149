"""Size metrics of a Python package: the house rules of maskfocus, measured.

Prints the mean length of the non-blank lines, the share of lines over 120 characters (the first line of nbdev's
generated `__all__` counted apart), the longest function and the
largest module (goals: mean <= 55, no line over 120, no function over 60 lines, no module over 20 KB).

    python scripts/code_metrics.py [maskfocus] [--json]
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

MAX_LINE, MAX_FUNCTION, MAX_MODULE_KB = 120, 60, 20
# nbdev wraps the exported names at 120 characters, then writes `__all__ = ` before the first line (up to 130)
GENERATED_ALL = "__all__ = ["


def modules(package: Path) -> list[Path]:
    "The package's source files, generated index (`_modidx.py`) excluded."
    return sorted(p for p in package.rglob("*.py") if p.name != "_modidx.py")


def functions(path: Path) -> list[tuple[str, int]]:
    "(qualified name, lines) of every function and method in a file, decorators excluded."
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []

    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                out.append((name, child.end_lineno - child.lineno + 1))
                walk(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                walk(child, f"{prefix}{child.name}.")

    walk(tree, "")
    return out


def measure(package: Path) -> dict:
    "The metrics of every module of `package` together."
    files = modules(package)
    lines = [line for p in files for line in p.read_text().splitlines() if line.strip()]
    lengths = [len(line) for line in lines]
    over = [line for line in lines if len(line) > MAX_LINE]
    generated = [line for line in over if line.startswith(GENERATED_ALL)]
    funcs = [(f"{p.relative_to(package.parent)}:{n}", k) for p in files for n, k in functions(p)]
    sizes = [(str(p.relative_to(package.parent)), p.stat().st_size) for p in files]
    longest = max(funcs, key=lambda f: f[1]) if funcs else ("-", 0)
    largest = max(sizes, key=lambda s: s[1]) if sizes else ("-", 0)
    return {
        "modules": len(files),
        "nonblank_lines": len(lengths),
        "mean_line_length": round(sum(lengths) / max(1, len(lengths)), 1),
        "lines_over_120": len(over) - len(generated),
        "share_over_120": round((len(over) - len(generated)) / max(1, len(lengths)), 4),
        "generated_all_lines_over_120": len(generated),
        "longest_function": {"name": longest[0], "lines": longest[1]},
        "functions_over_60": sorted(f"{n} ({k})" for n, k in funcs if k > MAX_FUNCTION),
        "largest_module": {"name": largest[0], "kb": round(largest[1] / 1024, 1)},
        "modules_over_20kb": sorted(f"{n} ({s / 1024:.1f} KB)" for n, s in sizes if s > MAX_MODULE_KB * 1024),
        "median_module_kb": round(sorted(s for _, s in sizes)[len(sizes) // 2] / 1024, 1) if sizes else 0,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("package", nargs="?", default="maskfocus", help="package folder (default: maskfocus)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    args = p.parse_args(argv)
    m = measure(Path(args.package))
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    print(f"modules {m['modules']}, non-blank lines {m['nonblank_lines']}")
    print(f"mean line length {m['mean_line_length']} (goal <= 55)")
    print(
        f"lines over 120: {m['lines_over_120']} ({100 * m['share_over_120']:.1f} %),"
        f" besides {m['generated_all_lines_over_120']} first lines of nbdev's generated `__all__`"
    )
    print(f"longest function: {m['longest_function']['name']} ({m['longest_function']['lines']} lines)")
    print(f"functions over 60 lines: {len(m['functions_over_60'])}")
    print(
        f"largest module: {m['largest_module']['name']} ({m['largest_module']['kb']} KB);"
        f" median {m['median_module_kb']} KB; over 20 KB: {len(m['modules_over_20kb'])}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
