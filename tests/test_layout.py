"""The layout rules of docs/design.md, read from the source with ast: the plumbing folder imports nothing of stm
outside itself, no stage script imports another stage script, no module imports another's private (_name), and
there is no import circle among stm's modules. (Mutation: `import sample` added to train.py fails the stage rule;
`from others import segment` in plumbing/video.py fails the plumbing rule.)"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = {"decompose", "train", "sample", "evaluate"}


def modules():
    """{dotted name: path} of every stm module (top level, plumbing/, others/)."""
    out = {p.stem: p for p in ROOT.glob("*.py")}
    for pkg in ("plumbing", "others"):
        out.update({f"{pkg}.{p.stem}": p for p in (ROOT / pkg).glob("*.py") if p.stem != "__init__"})
    return out


def imports(name, path, known):
    """-> [(imported stm module, [names taken from it])] of one module, wherever in the file the import is."""
    pkg = name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name in known]
        elif isinstance(node, ast.ImportFrom):
            base = (pkg if node.level else "") + ("." if node.level and node.module else "") + (node.module or "")
            if base in known:
                found.append((base, [a.name for a in node.names]))
            else:                                         # from plumbing import video, weights
                found += [(f"{base}.{a.name}", []) for a in node.names if f"{base}.{a.name}" in known]
    return found


def graph():
    known = modules()
    return {n: imports(n, p, known) for n, p in known.items()}


def test_plumbing_imports_nothing_of_ours_outside_itself():
    bad = [(n, m) for n, deps in graph().items() if n.startswith("plumbing.")
           for m, _ in deps if not m.startswith("plumbing.")]
    assert not bad, bad


def test_no_stage_imports_another_stage():
    bad = [(n, m) for n, deps in graph().items() for m, _ in deps if n in STAGES and m in STAGES]
    assert not bad, bad


def test_no_private_name_crosses_a_file():
    bad = [(n, m, x) for n, deps in graph().items() for m, names in deps for x in names if x.startswith("_")]
    assert not bad, bad


def test_no_import_circle():
    g = {n: {m for m, _ in deps} for n, deps in graph().items()}
    state, cycles = {}, []

    def visit(n, stack):
        state[n] = "open"
        for m in g.get(n, ()):
            if state.get(m) == "open":
                cycles.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m, stack + [m])
        state[n] = "done"
    for n in g:
        if n not in state:
            visit(n, [n])
    assert not cycles, cycles
