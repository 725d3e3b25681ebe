"""Imports point one way: each module of `smsagent` sits in a layer and imports only from its
own package or a lower layer; packages form no cycle; a function-level import is listed with its
reason and hides no cycle; plugin-side code sees `smsagent.agent` through `handler_api` alone.

Every module is read with `ast` (nothing is imported), so a failure names the importing module,
the line, the imported module and the rule broken.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Optional

from smsagent.cli import SUBCOMMANDS

REPO: Final = Path(__file__).resolve().parents[2]
TOP: Final = "smsagent"

# Top to bottom. A module belongs to the package listed here that is the longest prefix of its
# name (`smsagent` itself matches only the package's `__init__`, so a new top-level module must
# be given a layer here).
LAYERS: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    (
        "L6 commands and applications",
        (
            "smsagent.cli",
            "smsagent.__main__",
            "smsagent.service_cli",
            "smsagent.status",
            "smsagent.version_cli",
            "smsagent.emulator",
        ),
    ),
    ("L5 service", ("smsagent.service",)),
    ("L4 handlers", ("smsagent.migration", "smsagent.commands")),
    ("L3 checks", ("smsagent.checks",)),
    ("L2 agent", ("smsagent.agent",)),
    ("L1 this server and the target", ("smsagent.target", "smsagent.inventory")),
    ("L0 api", ("smsagent.api",)),
    (
        "base",
        (
            "smsagent.config",
            "smsagent.log",
            "smsagent.journal",
            "smsagent.sdnotify",
            "smsagent.errors",
            "smsagent.waits",
            "smsagent.units",
            "smsagent.childproc",
            "smsagent.outside",
            "smsagent.taskfiles",
            "smsagent.cgroups",
            "smsagent",
        ),
    ),
)

# Imports between different packages of one layer, each with its reason.
SAME_LAYER: Final[Mapping[tuple[str, str], str]] = {
    ("smsagent.__main__", "smsagent.cli"): "`python -m smsagent` is the `smsagent` command",
    ("smsagent.cli", "smsagent.service_cli"): "the `run` subcommand",
    ("smsagent.cli", "smsagent.status"): "the `status` subcommand",
    ("smsagent.cli", "smsagent.version_cli"): "the `version` subcommand",
    ("smsagent.cli", "smsagent.emulator"): "the `emulator` subcommand",
    ("smsagent.log", "smsagent.journal"): "journald's own protocol, when systemd-python is absent",
    ("smsagent.childproc", "smsagent.waits"): "a child's stop waits with the one wait helper",
    ("smsagent.outside", "smsagent.childproc"): "a command outside the sandbox gets a child's env",
}

# Imports made inside a function (or by name through importlib), each with its reason.
LAZY: Final[Mapping[tuple[str, str], str]] = {
    ("smsagent.migration.file_task", "smsagent.migration.migrate"): (
        "an agent waiting for work holds neither the movers nor the drill (test_idle_footprint)"
    ),
    ("smsagent.migration.block.task", "smsagent.migration.block.work"): (
        "an agent waiting for work holds neither the block copy nor zstandard and xxhash "
        "(test_idle_footprint)"
    ),
    **{
        ("smsagent.commands.upload_log", module): (
            "an agent waiting for work holds neither the log bundle nor the OBS client "
            "(test_idle_footprint)"
        )
        for module in ("smsagent.commands.logbundle", "smsagent.commands.obsupload")
    },
    **{
        ("smsagent.cli", module): "a subcommand is imported only when it is chosen"
        for module, _ in SUBCOMMANDS.values()
    },
}

# Plugin-side code: of `smsagent.agent` it may import `handler_api` alone.
PLUGIN_SIDE: Final = ("smsagent.commands", "smsagent.migration", "smsagent.checks.premigrate")
PLUGIN_DIRS: Final = (REPO / "tests" / "plugins" / "fsplugin",)
AGENT: Final = "smsagent.agent"
HANDLER_API: Final = "smsagent.agent.handler_api"


@dataclass(frozen=True)
class Import:
    """One import of a `smsagent` module.

    Attributes:
        importer: the importing module.
        line: where.
        imported: the module imported (for `from m import name`, `m.name` if that is a module).
        lazy: made inside a function, or by name through importlib: it runs when called.
    """

    importer: str
    line: int
    imported: str
    lazy: bool

    def describe(self, rule: str) -> str:
        """The failure message: who imports what, where, and the rule it breaks."""
        where = "inside a function" if self.lazy else "at module level"
        return f"{self.importer}:{self.line} imports {self.imported} ({where}): {rule}"


def modules_under(root: Path, package: str) -> dict[str, Path]:
    """Every module of `package` (a directory under `root`) by dotted name."""
    found: dict[str, Path] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_import_module(call: ast.Call) -> bool:
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr == "import_module"
    return isinstance(func, ast.Name) and func.id == "import_module"


def _wanted(name: str, top: str) -> bool:
    return name == top or name.startswith(top + ".")


class _Collector(ast.NodeVisitor):
    """Collects the imports of one module, noting which are made inside a function."""

    def __init__(self, module: str, is_package: bool, known: Iterable[str], top: str) -> None:
        self.module = module
        self.package = module if is_package else module.rpartition(".")[0]
        self.known = frozenset(known)
        self.top = top
        self.found: list[Import] = []
        self.depth = 0
        self.imports_by_name = False

    def _add(self, line: int, name: str) -> None:
        if _wanted(name, self.top):
            self.found.append(Import(self.module, line, name, self.depth > 0))

    def _in_function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = _in_function
    visit_AsyncFunctionDef = _in_function
    visit_Lambda = _in_function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node.lineno, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            base = base[: len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        for alias in node.names:
            submodule = f"{source}.{alias.name}"
            self._add(node.lineno, submodule if submodule in self.known else source)

    def visit_Call(self, node: ast.Call) -> None:
        if _is_import_module(node):
            self.imports_by_name = True
            if node.args and isinstance(node.args[0], ast.Constant):
                name = node.args[0].value
                if isinstance(name, str):
                    self._add(node.lineno, name)
        self.generic_visit(node)


def imports_of(path: Path, module: str, known: Iterable[str], top: str = TOP) -> list[Import]:
    """The `top` imports of one module: statements at any depth, and importlib by name.

    In a module that calls `import_module`, a string naming a known module counts as an import
    of it made when called (the `smsagent` command's subcommand table).
    """
    known = frozenset(known)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    collector = _Collector(module, path.name == "__init__.py", known, top)
    collector.visit(tree)
    found = {(i.line, i.imported): i for i in collector.found}
    if collector.imports_by_name:
        names = (n for n in ast.walk(tree) if isinstance(n, ast.Constant))
        for node in names:
            key = (node.lineno, node.value)
            if isinstance(node.value, str) and node.value in known and key not in found:
                found[node.lineno, node.value] = Import(module, node.lineno, node.value, True)
    return [found[key] for key in sorted(found)]


@dataclass(frozen=True)
class Place:
    """Where a module sits: its layer (0 is the lowest) and its package."""

    layer: int
    layer_name: str
    package: str


def place_of(module: str) -> Optional[Place]:
    """The layer and package of `module`, or None if the table gives it none."""
    best: Optional[Place] = None
    for height, (layer_name, packages) in enumerate(reversed(LAYERS)):
        for package in packages:
            matches = module == package or (package != TOP and module.startswith(package + "."))
            if matches and (best is None or len(package) > len(best.package)):
                best = Place(height, layer_name, package)
    return best


def _all_imports() -> tuple[dict[str, Path], list[Import]]:
    modules = modules_under(REPO, TOP)
    found: list[Import] = []
    for module, path in modules.items():
        found += imports_of(path, module, modules)
    return modules, found


MODULES, IMPORTS = _all_imports()


def _fail(problems: list[str], what: str) -> None:
    if problems:
        raise AssertionError(f"{len(problems)} {what}:\n" + "\n".join(problems))


def test_every_module_has_a_layer_and_every_layer_entry_exists() -> None:
    """A new package or top-level module must be placed in LAYERS before it can be imported."""
    problems = [f"{m}: no layer; add its package to LAYERS" for m in MODULES if not place_of(m)]
    listed = [package for _, packages in LAYERS for package in packages]
    problems += [f"{p}: in LAYERS but no such module" for p in listed if p not in MODULES]
    _fail(problems, "modules without a layer")


def test_no_import_points_to_a_higher_layer() -> None:
    """(a) A module imports from its own layer or lower ones."""
    problems = []
    for imp in IMPORTS:
        source, target = place_of(imp.importer), place_of(imp.imported)
        if source and target and target.layer > source.layer:
            rule = f"{target.layer_name} is above {source.layer_name}"
            problems.append(imp.describe(rule))
    _fail(problems, "upward imports")


def test_no_import_between_packages_of_one_layer_unless_listed() -> None:
    """(b) Packages side by side in one layer stay apart, except the pairs in SAME_LAYER."""
    problems = []
    for imp in IMPORTS:
        source, target = place_of(imp.importer), place_of(imp.imported)
        if not (source and target) or source.layer != target.layer:
            continue
        if source.package != target.package and (source.package, target.package) not in SAME_LAYER:
            rule = f"{source.package} and {target.package} share {source.layer_name}"
            problems.append(imp.describe(rule + " and are not listed in SAME_LAYER"))
    _fail(problems, "imports across one layer")


def _edges(imports: Iterable[Import], key: dict[str, str]) -> dict[str, dict[str, Import]]:
    """node -> node it imports -> the first import making that edge (self-edges dropped)."""
    graph: dict[str, dict[str, Import]] = {}
    for imp in imports:
        a, b = key.get(imp.importer), key.get(imp.imported)
        if a and b and a != b:
            graph.setdefault(a, {}).setdefault(b, imp)
    return graph


def find_cycle(graph: Mapping[str, Mapping[str, object]]) -> Optional[list[str]]:
    """One cycle of `graph` as [a, b, ..., a], or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> Optional[list[str]]:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        for nxt in sorted(graph.get(node, {})):
            cycle = visit(nxt, [*path, node])
            if cycle:
                return cycle
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start, [])
        if cycle:
            return cycle
    return None


def _cycle_lines(cycle: list[str], graph: Mapping[str, Mapping[str, Import]]) -> str:
    steps = [graph[a][b].describe(f"edge {a} -> {b}") for a, b in zip(cycle, cycle[1:])]
    return " -> ".join(cycle) + "\n  " + "\n  ".join(steps)


def test_no_cycle_between_packages() -> None:
    """(c) The package graph (every import, lazy ones too) has no cycle."""
    packages = {m: place.package for m in MODULES if (place := place_of(m))}
    graph = _edges(IMPORTS, packages)
    cycle = find_cycle(graph)
    assert cycle is None, "package cycle: " + _cycle_lines(cycle, graph)


def _loaded_with(imp: Import) -> Iterator[Import]:
    """An import, plus the packages Python runs first (`a.b.c` runs `a` and `a.b`)."""
    yield imp
    parts = imp.imported.split(".")
    for n in range(1, len(parts)):
        yield Import(imp.importer, imp.line, ".".join(parts[:n]), imp.lazy)


def _module_graph() -> dict[str, dict[str, Import]]:
    eager = [loaded for imp in IMPORTS if not imp.lazy for loaded in _loaded_with(imp)]
    return _edges(eager, {m: m for m in MODULES})


def test_no_cycle_between_modules_at_import_time() -> None:
    """(c) What a module imports at module level never leads back to it."""
    graph = _module_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "module cycle: " + _cycle_lines(cycle, graph)


def _path(graph: Mapping[str, Mapping[str, object]], start: str, goal: str) -> Optional[list[str]]:
    """A path start -> ... -> goal in `graph`, or None."""
    todo, came_from = [start], {start: start}
    while todo:
        node = todo.pop()
        if node == goal:
            path = [goal]
            while path[-1] != start:
                path.append(came_from[path[-1]])
            return path[::-1]
        for nxt in sorted(graph.get(node, {})):
            if nxt not in came_from:
                came_from[nxt] = node
                todo.append(nxt)
    return None


def test_function_level_imports_are_listed_and_hide_no_cycle() -> None:
    """(d) A lazy import needs a reason in LAZY, and at module level it would make no cycle."""
    graph = _module_graph()
    problems = []
    for imp in (i for i in IMPORTS if i.lazy):
        if (imp.importer, imp.imported) not in LAZY:
            problems.append(imp.describe("not listed in LAZY with a reason"))
        back = _path(graph, imp.imported, imp.importer)
        if back:
            rule = "at module level it would close the cycle " + " -> ".join([*back, imp.imported])
            problems.append(imp.describe(rule))
    made = {(i.importer, i.imported) for i in IMPORTS if i.lazy}
    problems += [
        f"LAZY lists {a} -> {b}, which no longer exists" for a, b in LAZY if (a, b) not in made
    ]
    _fail(problems, "function-level import problems")


def test_same_layer_list_has_no_stale_entries() -> None:
    """Every pair in SAME_LAYER is still used, so the list stays the truth."""
    packages = {m: place.package for m in MODULES if (place := place_of(m))}
    used = {(packages.get(i.importer), packages.get(i.imported)) for i in IMPORTS}
    stale = [f"SAME_LAYER lists {a} -> {b}, which no longer exists" for a, b in SAME_LAYER]
    _fail([text for text, pair in zip(stale, SAME_LAYER) if pair not in used], "stale entries")


def _plugin_imports() -> list[Import]:
    found = [i for i in IMPORTS if any(_wanted(i.importer, p) for p in PLUGIN_SIDE)]
    for plugin_dir in PLUGIN_DIRS:
        for package in sorted(p.parent.name for p in plugin_dir.glob("*/__init__.py")):
            plugin_modules = modules_under(plugin_dir, package)
            known = set(MODULES) | set(plugin_modules)
            for module, path in plugin_modules.items():
                found += imports_of(path, module, known)
    return found


def test_plugins_see_the_agent_only_through_handler_api() -> None:
    """(e) Plugin-side modules import nothing of `smsagent.agent` but `handler_api`."""
    problems = [
        imp.describe(f"plugin-side code imports only {HANDLER_API} of {AGENT}")
        for imp in _plugin_imports()
        if _wanted(imp.imported, AGENT) and imp.imported != HANDLER_API
    ]
    _fail(problems, "plugin imports past handler_api")


def test_the_scan_finds_every_kind_of_import(tmp_path: Path) -> None:
    """Statements at any depth, relative imports, submodules and importlib by name are seen."""
    pkg = tmp_path / "demo"
    (pkg / "sub").mkdir(parents=True)
    for name in ("__init__.py", "low.py", "sub/__init__.py", "sub/leaf.py", "sub/mod.py"):
        (pkg / name).write_text("")
    (pkg / "sub" / "mod.py").write_text(
        "import importlib\n"
        "import demo.low as low\n"
        "from . import leaf\n"
        "from ..low import thing\n"
        "def later():\n"
        "    from demo.sub import leaf\n"
        "    return importlib.import_module('demo.low')\n"
    )
    modules = modules_under(tmp_path, "demo")
    found = imports_of(pkg / "sub" / "mod.py", "demo.sub.mod", modules, top="demo")
    assert [(i.line, i.imported, i.lazy) for i in found] == [
        (2, "demo.low", False),
        (3, "demo.sub.leaf", False),
        (4, "demo.low", False),
        (6, "demo.sub.leaf", True),
        (7, "demo.low", True),
    ]
