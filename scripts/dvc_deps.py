"""The code dependencies of every DVC stage, derived from maskfocus's import graph.

A stage runs `maskfocus <command>` (maskfocus/cli.py and the modules that command imports) or papermill on an
experiment notebook (the maskfocus modules its code cells import). Its code deps are the transitive closure of those
entry points over the import graph: every `import` / `from ... import` anywhere in a module (top level or inside a
function, absolute or relative; `from pkg import name` counts `pkg.name` when that is a module), plus the plugin
strings `"maskfocus.pkg.mod:Attr"` that `maskfocus.core.resolve` imports at run time (registries such as
`maskfocus.models.tokenizer.TOKENIZERS`). Package `__init__.py` files and the generated `_modidx.py` are left out.

    python scripts/dvc_deps.py            # print each stage's derived code deps
    python scripts/dvc_deps.py --check    # exit 1 naming each stage whose maskfocus/*.py deps differ
    python scripts/dvc_deps.py --write    # rewrite the maskfocus/*.py lines of every deps block of dvc.yaml
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "maskfocus"
PLUGIN = re.compile(rf"^({PACKAGE}(?:\.\w+)+):\w[\w.]*$")  # "maskfocus.toy.tokenizer:PatchTokenizer"
CODE_DEP = re.compile(rf"^{PACKAGE}/\S+\.py$")  # a deps entry that is a module of the package


def module_files(root: Path) -> dict[str, Path]:
    "Dotted module name -> file, for every module and package of the package under `root`."
    out = {}
    for p in sorted((root / PACKAGE).rglob("*.py")):
        if p.name == "_modidx.py":
            continue
        parts = p.relative_to(root).with_suffix("").parts
        out[".".join(parts[:-1] if p.name == "__init__.py" else parts)] = p
    return out


def imports_of(tree: ast.AST, module: str = "", is_package: bool = False) -> set[str]:
    "Every dotted name a syntax tree imports (anywhere in it) or names in a plugin string; relative ones resolved."
    package = module if is_package else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                up = parts[: len(parts) - node.level + 1] if node.level > 1 else parts
                base = ".".join(up + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names if a.name != "*")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and (m := PLUGIN.match(node.value)):
            out.add(m[1])
    return out


def graph(root: Path) -> dict[str, set[str]]:
    "Module -> the package's modules it imports (names that are not modules of the package are dropped)."
    files = module_files(root)
    g = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        g[name] = {m for m in imports_of(tree, name, path.name == "__init__.py") if m in files and m != name}
    return g


def closure(g: dict[str, set[str]], start: set[str]) -> set[str]:
    "Every module reachable from `start` (included)."
    seen, todo = set(), [m for m in start if m in g]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(g[m] - seen)
    return seen


def cli_commands(root: Path) -> dict[str, set[str]]:
    "`maskfocus <command>` -> the modules cli.py imports to run it (module level plus the command's lazy imports)."
    path = root / PACKAGE / "cli.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    module = f"{PACKAGE}.cli"
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}

    def reach(fn: str, seen: set[str]) -> set[str]:  # imports of a function and of the cli functions it names
        seen.add(fn)
        out = imports_of(funcs[fn], module)
        for n in ast.walk(funcs[fn]):
            if isinstance(n, ast.Name) and n.id in funcs and n.id not in seen:
                out |= reach(n.id, seen)
        return out

    commands, current = {}, None
    calls = sorted((n for n in ast.walk(tree) if isinstance(n, ast.Call)), key=lambda n: (n.lineno, n.col_offset))
    for node in calls:  # build_parser: sub.add_parser("name", ...) ... s.set_defaults(func=cmd_x)
        if isinstance(node.func, ast.Attribute):
            if node.func.attr == "add_parser" and node.args and isinstance(node.args[0], ast.Constant):
                current = node.args[0].value
            for kw in node.keywords if node.func.attr == "set_defaults" else ():
                if kw.arg == "func" and isinstance(kw.value, ast.Name) and current:
                    commands[current] = reach(kw.value.id, set())
    for node in ast.walk(tree):  # main: `if argv[:1] == ["train"]: from ... import ...` (commands parsing their own)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
            for c in node.test.comparators:
                if isinstance(c, (ast.List, ast.Tuple)) and len(c.elts) == 1 and isinstance(c.elts[0], ast.Constant):
                    commands[c.elts[0].value] = imports_of(ast.Module(body=node.body, type_ignores=[]), module)
    for node in ast.walk(funcs["build_parser"]):  # `from maskfocus.rl.plan import add_plan_parser`: a module's command
        if isinstance(node, ast.ImportFrom) and any(a.name.endswith("_parser") for a in node.names):
            sub_tree = ast.parse((root / (node.module.replace(".", "/") + ".py")).read_text())
            for n in ast.walk(sub_tree):
                if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "add_parser":
                    if n.args and isinstance(n.args[0], ast.Constant):
                        commands[n.args[0].value] = {node.module}
    top = set()  # what importing cli.py itself imports
    for n in tree.body:
        if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
            top |= imports_of(n, module)
    return {c: deps | top | {module} for c, deps in commands.items()}


def notebook_imports(path: Path) -> set[str]:
    "The dotted names the code cells of a notebook import (IPython magics and shell lines skipped)."
    out = set()
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] != "code":
            continue
        src = "".join(cell["source"])
        src = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in src.splitlines())
        out |= imports_of(ast.parse(src, filename=str(path)))
    return out


def stage_entry_points(cmd: str, root: Path, commands: dict[str, set[str]]) -> set[str]:
    "The modules a stage's command line starts from."
    out = set()
    for part in re.split(r"&&|\|\||;|\|", cmd):
        words = shlex.split(part)
        if words[:1] == [PACKAGE] and len(words) > 1:
            if words[1] not in commands:
                raise SystemExit(f"error: `maskfocus {words[1]}` is not a command of {PACKAGE}/cli.py")
            out |= commands[words[1]]
        elif words[:1] == ["papermill"]:
            nb = next(w for w in words[1:] if w.endswith(".ipynb"))
            out |= notebook_imports(root / nb)
    return out


def stages(root: Path) -> dict[str, dict]:
    "Stage name -> its definition (`foreach`/`matrix` stages: their `do` body / the stage itself)."
    import yaml

    out = {}
    for name, st in yaml.safe_load((root / "dvc.yaml").read_text())["stages"].items():
        out[name] = st.get("do", st)
    return out


def derive(root: Path = ROOT) -> dict[str, list[str]]:
    "Stage -> its code deps (`maskfocus/<path>.py`, sorted), for every stage that runs maskfocus code."
    g, files, commands = graph(root), module_files(root), cli_commands(root)
    out = {}
    for name, st in stages(root).items():
        start = stage_entry_points(st["cmd"], root, commands)
        cli = {f"{PACKAGE}.cli"} & start  # cli.py runs, but only the command's branch of it: not all its imports
        mods = closure(g, start - cli) | cli
        paths = sorted(files[m].relative_to(root).as_posix() for m in mods if files[m].name != "__init__.py")
        if paths:
            out[name] = paths
    return out


def _deps_block(lines: list[str], start: int) -> tuple[int, int, str]:
    "(first, end, indent) of the list items after the `deps:` line at `start`."
    i, indent = start + 1, None
    while i < len(lines):
        m = re.match(r"^(\s*)- ", lines[i])
        if not m or (indent is not None and m[1] != indent):
            break
        indent = m[1]
        i += 1
    return start + 1, i, indent or " " * (len(lines[start]) - len(lines[start].lstrip()) + 2)


def rewrite(text: str, derived: dict[str, list[str]]) -> str:
    "dvc.yaml with the code deps of every stage replaced by the derived ones (one sorted block where they were)."
    lines, out, stage, i = text.splitlines(keepends=True), [], None, 0
    while i < len(lines):
        line = lines[i]
        if m := re.match(r"^  (\w+):\s*$", line):
            stage = m[1]
        out.append(line)
        i += 1
        if re.match(r"^\s+deps:\s*$", line) and stage in derived:
            first, end, indent = _deps_block(lines, i - 1)
            items = lines[first:end]
            is_code = [bool(CODE_DEP.match(x.strip()[2:].strip())) for x in items]
            at = is_code.index(True) if any(is_code) else len(items)
            keep = [x for x, c in zip(items, is_code) if not c]
            block = [f"{indent}- {p}\n" for p in derived[stage]]
            out.extend(keep[: at - sum(is_code[:at])] + block + keep[at - sum(is_code[:at]) :])
            i = end
    return "".join(out)


def listed(root: Path = ROOT) -> dict[str, set[str]]:
    "Stage -> the code deps dvc.yaml lists now."
    return {n: {d for d in st.get("deps", []) if CODE_DEP.match(str(d))} for n, st in stages(root).items()}


def check(root: Path = ROOT) -> list[str]:
    "The problems: per stage the missing and extra code deps; empty when dvc.yaml agrees with the import graph."
    derived, now, problems = derive(root), listed(root), []
    for name in now:
        want, have = set(derived.get(name, [])), now[name]
        if want != have:
            problems.append(
                f"stage {name}: missing {sorted(want - have) or 'none'}; extra {sorted(have - want) or 'none'}"
            )
    text = (root / "dvc.yaml").read_text()
    if not problems and rewrite(text, derived) != text:
        problems.append("dvc.yaml: code deps are not in the generated order (run scripts/dvc_deps.py --write)")
    return problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if dvc.yaml's code deps differ from the import graph")
    p.add_argument("--write", action="store_true", help="rewrite the code deps of dvc.yaml in place")
    p.add_argument("--root", default=str(ROOT), help="repository root (default: this script's repository)")
    args = p.parse_args(argv)
    root = Path(args.root)
    if args.write:
        f = root / "dvc.yaml"
        text = f.read_text()
        new = rewrite(text, derive(root))
        if new != text:
            f.write_text(new)
        print(f"dvc.yaml: {'rewritten' if new != text else 'unchanged'}")
        return 0
    if args.check:
        problems = check(root)
        for line in problems:
            print(line, file=sys.stderr)
        if problems:
            print("fix: python scripts/dvc_deps.py --write", file=sys.stderr)
        return 1 if problems else 0
    for name, deps in derive(root).items():
        print(f"{name}:\n" + "".join(f"  {d}\n" for d in deps), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
