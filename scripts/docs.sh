#!/usr/bin/env bash
# Build the documentation site from the notebooks, offline: `make docs` (or `bash scripts/docs.sh` with the venv on
# PATH) writes _docs/, a static site to open in a browser (_docs/index.html) or serve with
# `python -m http.server -d _docs`.
#
#   1. stage: copy the notebooks into a scratch folder (_proc/docs/); nbs/ is never written. An experiment notebook
#      is taken from its executed copy, results/<stage>/<name>.ipynb (papermill's output for the committed results;
#      sweep/<stage>/ for the sweep pipeline), when there is one; library notebooks (committed without outputs) are
#      staged to be executed.
#   2. execute: `nbdev-test --save` runs the staged library notebooks, two at a time with one torch thread each, and
#      writes their outputs into the scratch copies (cells flagged notest/slow/cuda are skipped, as in `make test`).
#   3. process: nbdev's docs processors (the ones `nbdev-docs` applies before quarto) turn each notebook into its
#      page: the API documentation of every exported symbol (show_doc), hidden cells removed, symbols linked.
#   4. render: nbconvert writes one HTML page per notebook (plots embedded), with a sidebar: the home page is
#      nbs/index.ipynb (it shows README.md); markdown pages (nbs/**/*.md) and, when it exists, the generated
#      results/REPORT.md (report.html) are pages too. Links to notebooks point at their pages; other repository
#      files that pages link or show (figures) are copied under files/.
# quarto, which `nbdev-docs` needs for step 4, cannot be installed offline (the quarto-cli package downloads its
# binary at install time), hence nbconvert. Pages are named as nbdev names them: nbs/rl/07_grpo.ipynb -> rl/grpo.html.
#
# Usage: scripts/docs.sh [--out DIR] [--work DIR] [--jobs N] [--no-exec] [NOTEBOOK ...]
#   NOTEBOOK  paths or globs relative to nbs/ (e.g. rl/07_grpo.ipynb 'toy/*'): build only those pages (default: all)
#   --out     the site folder (default _docs; emptied first)      --work  scratch folder (default _proc/docs)
#   --jobs    notebooks executed / processed at once (default 2)  --no-exec  render without executing (no outputs)
# Exit status 1 when a notebook fails to execute (its page is still written, without outputs).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=_docs WORK=_proc/docs JOBS=2 EXEC=1 SEL=()
while (($#)); do
    case "$1" in
        --out) OUT=$2; shift 2 ;;
        --work) WORK=$2; shift 2 ;;
        --jobs) JOBS=$2; shift 2 ;;
        --no-exec) EXEC=0; shift ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d'; exit 0 ;;
        -*) echo "docs.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) SEL+=("$1"); shift ;;
    esac
done
# the scratch folder must sit inside the repository (the notebooks find their data from the repository root)
case "$(realpath -m "$WORK")/" in
    "$PWD"/*) ;;
    *) echo "docs.sh: --work must be inside the repository" >&2; exit 2 ;;
esac
export OMP_NUM_THREADS=1 MPLBACKEND=Agg
T0=$SECONDS

echo "== stage notebooks into $WORK"
python scripts/docs_site.py stage "$WORK" "${SEL[@]}"
FAILED=0
if ((EXEC)) && [ -d "$WORK/run" ]; then
    echo "== execute (nbdev-test --save, $JOBS at a time)"
    nbdev-test "$WORK/run" --save --n-workers "$JOBS" --timing || FAILED=1
    echo "   executed in $((SECONDS - T0)) s"
fi
echo "== process and render into $OUT"
python scripts/docs_site.py render "$WORK" "$OUT" "$JOBS" "${SEL[@]}"
echo "== $OUT: $(find "$OUT" -name '*.html' | wc -l) pages, $(du -sh "$OUT" | cut -f1), $((SECONDS - T0)) s"
if ((FAILED)); then echo "docs.sh: some notebooks failed to execute (see above); their pages have no outputs" >&2; fi
exit "$FAILED"
