"""The package's layers (docs/architecture.md): a module imports only from its own layer or
below -- at module level or inside a function -- and the module-level imports have no cycle.
``fitsketch.storage`` is checked on its own (tests/test_storage.py): it imports nothing of the
engine."""
import ast
import pathlib

import fitsketch

ROOT = pathlib.Path(fitsketch.__file__).parent

# lowest first; a module may import from its layer and the layers before it
LAYERS = [
    ("storage+kernels", {"storage", "kernels"}),   # import nothing of the engine
    ("base", {"errors", "results", "validate", "plan", "config", "extras"}),
    ("algorithms", {"quantize", "partitions", "minhash", "jslsh", "sketch", "data", "exact", "coverage", "coverage_batch",
                    "coverage_spaces", "profiles", "growable", "screen", "coarse", "accuracy", "accuracy_records",
                    "signature_records", "band_blocks", "accuracy_gauss", "accuracy_pool", "accuracy_perf", "accuracy_proxy",
                    "accuracy_batch", "accuracy_bound", "accuracy_cache", "simex", "autoencoder", "deephash", "faiss_files",
                    "embedding_indexes", "embeddings", "probelog_descriptors", "probelog", "protocol"}),
    ("methods", {"methods"}),
    ("pipeline", {"planner", "candidates", "indexes", "parts", "prepare_procs", "pipeline", "adding"}),
    ("hub", {"hub", "chunked", "distributed", "parquet_units"}),
    ("service", {"sharded", "client", "server", "server_ops", "server_sockets"}),
    ("front", {"cli", "formatting", "plots", "contrib", "workloads", "demo", "text_encoder", "__init__"}),
]
# the only imports against the layers, each with its reason
ALLOWED_UP = {
    ("config", "methods"): "config.METHODS (a module __getattr__) reads the registry's names when asked",
    ("plan", "plots"): "Plan.plot (hub.explain(...).plot()) draws with plots, loaded only when a picture is asked for",
}


def _layer(mod: str) -> int:
    head = mod.split(".")[1] if mod.count(".") else "__init__"
    for i, (_, names) in enumerate(LAYERS):
        if head in names:
            return i
    raise AssertionError(f"fitsketch module {mod} is in no layer: add it to tests/test_layers.py LAYERS")


def _modules():
    out = {}
    for f in sorted(ROOT.rglob("*.py")):
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(["fitsketch"] + parts)] = f
    return out


def _imports(mod: str, f: pathlib.Path):
    """(imported fitsketch module, at module level?) of every import in ``f``."""
    mods = _modules()
    pkg = mod if f.name == "__init__.py" else mod.rsplit(".", 1)[0]
    tree = ast.parse(f.read_text())
    top = {id(n) for n in tree.body}
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom):
            if n.level:
                base = pkg.split(".")[:len(pkg.split(".")) - (n.level - 1)]
                tgt = ".".join(base + ([n.module] if n.module else []))
            else:
                tgt = n.module or ""
            if tgt.split(".")[0] != "fitsketch":
                continue
            for a in n.names:
                sub = f"{tgt}.{a.name}"
                yield (sub if sub in mods else tgt), id(n) in top
        elif isinstance(n, ast.Import):
            for a in n.names:
                if a.name.split(".")[0] == "fitsketch":
                    yield a.name, id(n) in top


def _head(mod):
    return mod.split(".")[1] if mod.count(".") else "__init__"


def test_no_module_imports_a_higher_layer():
    bad = []
    for mod, f in _modules().items():
        for tgt, _ in _imports(mod, f):
            if tgt == "fitsketch" or tgt.startswith("fitsketch.storage") and mod.startswith("fitsketch.storage"):
                continue
            if _layer(tgt) > _layer(mod) and (_head(mod), _head(tgt)) not in ALLOWED_UP:
                bad.append(f"{mod} ({LAYERS[_layer(mod)][0]}) imports {tgt} ({LAYERS[_layer(tgt)][0]})")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_module_level_imports_have_no_cycle():
    mods = _modules()
    graph = {m: sorted({t for t, top in _imports(m, f) if top and t in mods and t != m}) for m, f in mods.items()}
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in graph.get(m, []):
            if t.startswith(m + "."):   # a package importing its own submodules
                continue
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
