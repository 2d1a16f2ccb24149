"""The Python half of scripts/docs.sh: `stage` copies the notebooks into the scratch folder, `render` turns them
into the site's pages (see scripts/docs.sh for the steps and options)."""

import json, os, re, shutil, sys
from fnmatch import fnmatch
from html import escape
from pathlib import Path

import nbformat
import yaml

ROOT = Path.cwd()
NBS = ROOT / "nbs"
SECTIONS = {
    "": "maskfocus",
    "models": "maskfocus.models",
    "rl": "maskfocus.rl",
    "scoring": "maskfocus.scoring",
    "toy": "maskfocus.toy",
    "report": "maskfocus.report",
    "explanations": "Explanations",
    "experiments": "Experiments (one per figure or table)",
}


def page_of(rel):
    "Site page of a notebook path relative to nbs/, named as nbdev names it (rl/07_grpo.ipynb -> rl/grpo.html)"
    from nbdev.config import nbpath2html

    return nbpath2html(Path(rel)).as_posix()


def notebooks(sel):
    "Notebooks under nbs/ (relative paths), as nbdev finds them, filtered by the globs in `sel`"
    sel = [s.removeprefix("nbs/") for s in sel]
    found = sorted(
        p.relative_to(NBS).as_posix()
        for p in NBS.rglob("*.ipynb")
        if not any(part[0] in "_." for part in p.relative_to(NBS).parts)
    )
    return [r for r in found if not sel or any(fnmatch(r, s) for s in sel)]


def executed_copy(rel):
    "papermill's executed copy of an experiment notebook, a DVC stage output: results/<stage>/ or <pipeline>/<stage>/"
    found = sorted(ROOT.glob(f"*/*/{Path(rel).name}"))
    return [p for p in found if p.relative_to(ROOT).parts[0] != "nbs" and p.relative_to(ROOT).parts[0][0] not in "_."]


def markdown_pages(sel):
    "Markdown pages: nbs/**/*.md (e.g. nbs/explanations/), and the generated results/REPORT.md when it exists"
    mds = sorted(p for p in NBS.rglob("*.md") if not any(part[0] in "_." for part in p.relative_to(NBS).parts))
    sel = [s.removeprefix("nbs/") for s in sel]
    mds = [p for p in mds if not sel or any(fnmatch(p.relative_to(NBS).as_posix(), s) for s in sel)]
    return mds + [p for p in [ROOT / "results" / "REPORT.md"] if p.exists()]


def stage(work, *sel):
    "Copy the notebooks into work/run (to execute) and work/done (executed copies from results/)"
    work = Path(work)
    shutil.rmtree(work, ignore_errors=True)
    todo = notebooks(sel)
    if not todo:
        sys.exit(f"docs.sh: no notebook under nbs/ matches {' '.join(sel)}")
    for rel in todo:
        done = executed_copy(rel) if rel.startswith("experiments/") else []
        dest = work / ("done" if done else "run") / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(done[0] if done else NBS / rel, dest)
        print(f"  {rel:45} <- {(done[0] if done else NBS / rel).relative_to(ROOT)}")
    print(f"{len(todo)} notebooks staged, {sum(1 for _ in (work / 'run').rglob('*.ipynb'))} to execute")


def _filters():
    "nbdev's docs processors, except that a cell re-run only for its imports may fail (it keeps its executed outputs)"
    from nbdev.processors import FilterDefaults, exec_show_docs

    class exec_show_docs_(exec_show_docs):
        def __call__(self, cell):
            outs = cell.get("outputs")
            try:
                super().__call__(cell)
            except Exception:
                if getattr(cell, "has_sd", False) or cell.directives_.keys() & {"export", "exports", "exporti"}:
                    raise
                self.k.exc, cell.outputs = None, outs

    class Filters(FilterDefaults):
        def base_procs(self):
            return [exec_show_docs_ if p is exec_show_docs else p for p in super().base_procs()]

    return Filters


def _proc_one(job):
    src, dst = job
    import warnings

    warnings.filterwarnings("ignore", "Found cells containing imports")  # nbdev's FAQ hint, once per such cell
    from nbdev.serve_drv import main

    dst.parent.mkdir(parents=True, exist_ok=True)
    main((src, dst, _filters()))
    return dst


def process(work, jobs):
    "nbdev's docs processors (show_doc API docs, hidden cells, symbol links) on every staged notebook"
    from fastcore.parallel import parallel

    work = Path(work)
    srcs = sorted(p for d in ("run", "done") for p in (work / d).rglob("*.ipynb"))
    todo = [(s, work / "pages" / s.relative_to(work / s.relative_to(work).parts[0])) for s in srcs]
    sys.path.insert(0, str(Path(__file__).parent))
    import docs_site  # the workers unpickle `_proc_one` from this module (a spawned worker's __main__ lacks it)

    parallel(docs_site._proc_one, todo, n_workers=int(jobs), method="spawn")  # as nbdev-docs: a fresh shell each
    return sorted(dst for _, dst in todo)


_re_dir = re.compile(r"^#\|\s*([\w-]+)\s*:\s*(.*?)\s*$")


def _directives(cell):
    "Quarto cell options (`#| echo: false`) left by nbdev's processors, turned into nbconvert's removal tags"
    lines, opts = cell.source.splitlines(), {}
    while lines and _re_dir.match(lines[0]):
        k, v = _re_dir.match(lines.pop(0)).groups()
        opts[k] = v.lower()
    cell.source = "\n".join(lines)
    tags = set(cell.metadata.get("tags", []))
    if opts.get("include") == "false" or not (cell.source.strip() or cell.get("outputs")):
        tags.add("remove_cell")
    if opts.get("echo") == "false" or not cell.source.strip():
        tags.add("remove_input")
    if opts.get("output") == "false":
        tags.add("remove_output")
    cell.metadata["tags"] = sorted(tags)


def _source_link(md):
    "show_doc's quarto-styled [source](url){...} link: a plain link, or none without a repository URL (/blob/...)"

    def f(m):
        return "" if m.group(1).startswith("/") else f'<a class="mf-source" href="{m.group(1)}">source</a>'

    return re.sub(r"\[source\]\(([^)]*)\)\{[^}]*\}", f, md)


_CELL_KEYS = {"cell_type", "id", "metadata", "source", "outputs", "execution_count", "attachments"}


def prepare(nb, head=True):
    "Title cell from nbdev's front matter (if `head`: the home page shows README's); directives to tags"
    title, desc, cells = "", "", []
    for c in nb.cells:
        for k in set(c) - _CELL_KEYS:
            del c[k]  # nbdev's own fields (has_sd, ...) that nbformat refuses
        c.metadata = {"tags": c.metadata["tags"]} if "tags" in c.metadata else {}  # (execnb's timings are floats)
        if c.cell_type == "raw" and c.source.startswith("---"):
            fm = yaml.safe_load(c.source.strip().strip("-")) or {}
            title, desc = str(fm.get("title", "")), str(fm.get("description", ""))
            continue
        if c.cell_type == "code":
            _directives(c)
        for o in c.get("outputs", []):
            if "text/markdown" in o.get("data", {}):
                o.data["text/markdown"] = _source_link(o.data["text/markdown"])
        if "remove_cell" not in c.metadata.get("tags", []):
            cells.append(c)
    top = nbformat.v4.new_markdown_cell(f"# {title}" + (f"\n\n*{desc}*" if desc else ""))
    nb.cells = ([top] if title and head else []) + cells
    return nb, title


def _rel(target, page):
    return os.path.relpath(target, Path(page).parent.as_posix() or ".")


def _code(title):
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escape(title, quote=False))


def nav(pages, here):
    "The sidebar: one section per subpackage, then the experiments; `pages` maps page -> (title, section)"
    home = f' href="{_rel("index.html", here)}"' if "index.html" in pages else ""  # (a partial build has none)
    items = [f'<a class="mf-home"{home}>maskfocus</a>']
    if "report.html" in pages:
        items.append(f'<a href="{_rel("report.html", here)}">Results report</a>')
    more = {s: s for _, s in pages.values() if s is not None and s not in SECTIONS}  # a new folder of nbs/
    for sec, label in {**SECTIONS, **more}.items():
        links = [(p, t) for p, (t, s) in pages.items() if s == sec and p not in ("index.html", "report.html")]
        if not links:
            continue
        lis = "".join(
            f'<li{" class=mf-here" if p == here else ""}><a href="{_rel(p, here)}">{_code(t)}</a></li>'
            for p, t in links
        )
        items.append(f"<details open><summary>{label}</summary><ul>{lis}</ul></details>")
    return '<nav class="mf-nav">' + "".join(items) + "</nav>"


def _target(src, pages):
    "The site page of a linked notebook or markdown file, if it has one"
    if src == ROOT / "results" / "REPORT.md":
        return "report.html"
    for base in (NBS, ROOT / "results"):
        if src.is_relative_to(base) and src.suffix in (".ipynb", ".md"):
            rel = src.relative_to(base)
            tgt = page_of(rel) if base == NBS else page_of(Path("experiments") / rel.name)
            return tgt if tgt in pages else None


def _fix_link(m, page, srcdir, pages, out):
    "Links to notebooks -> their pages; nbdev's root-absolute symbol links -> relative; other local files copied"
    attr, url = m.group(1), m.group(2)
    path, frag = (url.split("#", 1) + [""])[:2]
    if not path or re.match(r"^([a-z]+:|data:)", url):
        return m.group(0)
    frag = f"#{frag}" if frag else ""
    if path.startswith("/") and path.lstrip("/") in pages:
        return f'{attr}="{_rel(path.lstrip("/"), page)}{frag}"'
    here = os.path.normpath(Path(page).parent / path)
    if here in pages or (out / here).exists():
        return m.group(0)  # already a link within the site
    src = (srcdir / path).resolve()
    if tgt := _target(src, pages):
        return f'{attr}="{_rel(tgt, page)}{frag}"'
    if src.is_file() and src.is_relative_to(ROOT) and src.suffix != ".ipynb":
        dest = Path("files") / src.relative_to(ROOT)  # a figure, a text file: copied under files/
        (out / dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, out / dest)
        return f'{attr}="{_rel(dest.as_posix(), page)}{frag}"'
    return m.group(0)


def html(nb, title, page, srcdir, pages, out):
    "One page: nbconvert's lab template, the stylesheet, the sidebar, links fixed"
    from nbconvert import HTMLExporter
    from traitlets.config import Config

    cfg = Config()
    cfg.TemplateExporter.update(exclude_input_prompt=True, exclude_output_prompt=True)
    cfg.TagRemovePreprocessor.update(
        enabled=True,
        remove_cell_tags={"remove_cell"},
        remove_input_tags={"remove_input"},
        remove_all_outputs_tags={"remove_output"},
    )
    body, _ = HTMLExporter(config=cfg, template_name="lab").from_notebook_node(
        nb, resources={"metadata": {"name": f"{title} – maskfocus" if title else "maskfocus", "path": str(srcdir)}}
    )
    head, body = body.split("</head>", 1)
    styles = re.findall(r"<style[^>]*>(.*?)</style>", head, flags=re.S)  # nbconvert's 270 KB of CSS, shared
    if not (out / "notebook.css").exists():
        (out / "notebook.css").write_text("\n".join(styles))
    head = re.sub(r"<style[^>]*>.*?</style>\s*", "", head, flags=re.S)
    css = "".join(f'<link rel="stylesheet" href="{_rel(f, page)}">\n' for f in ("notebook.css", "styles.css"))
    body = head + css + "</head>" + body
    body = re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + nav(pages, page), body, count=1)
    body = re.sub(r'\b(href|src)="([^"]*)"', lambda m: _fix_link(m, page, srcdir, pages, out), body)
    dest = out / page
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(body)


def render(work, out, jobs, *sel):
    "Process the staged notebooks and write the site into `out`"
    work, out = Path(work), Path(out)
    entries = []  # (page, notebook, title, source folder, section)
    for dst in process(work, jobs):
        rel = dst.relative_to(work / "pages")
        nb, title = prepare(nbformat.read(dst, as_version=4), head=rel.as_posix() != "index.ipynb")
        sec = rel.parts[0] if len(rel.parts) > 1 else ""
        srcdir = ROOT if rel.as_posix() == "index.ipynb" else NBS / rel.parent  # the home page shows README.md
        entries.append((page_of(rel), nb, title or rel.stem, srcdir, sec))
    for md in markdown_pages(sel):
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(md.read_text())])
        title = next((ln[2:].strip() for ln in md.read_text().splitlines() if ln.startswith("# ")), md.stem)
        rel = md.relative_to(NBS) if md.is_relative_to(NBS) else None
        page = Path(rel).with_suffix(".html").as_posix() if rel else "report.html"
        sec = (rel.parts[0] if len(rel.parts) > 1 else "") if rel else None
        entries.append((page, nb, title if rel else "Results report", md.parent, sec))
    if NBS.resolve().is_relative_to(out.resolve()):
        sys.exit(f"docs.sh: --out {out} would hold the notebooks")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    shutil.copy2(NBS / "styles.css", out / "styles.css")
    pages = {p: (t, s) for p, _, t, _, s in entries}
    for page, nb, title, srcdir, _ in entries:
        html(nb, "" if page == "index.html" else title, page, srcdir, pages, out)
    print(f"{len(entries)} pages written to {out}/")


if __name__ == "__main__":
    globals()[sys.argv[1]](*sys.argv[2:])
