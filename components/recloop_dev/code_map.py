"""The generated parts of docs/architecture.md, so they cannot drift from the code or the contracts.

`code map`: every module of `recloop`, `recloop_dev` and `dags/` with the first sentence of its docstring
(read with `ast`: nothing is imported), and every package of `recloop` with the packages it may import,
worked out from the import-linter contracts in pyproject.toml (`[tool.importlinter]`: the layers, minus
what independence and forbidden contracts bar, plus what protected contracts allow).
`steps`: the steps of `recloop.steps.graph`, the one declaration of them, with what each reads and writes.

    python -m recloop_dev.code_map           # exit 1 when docs/architecture.md is out of date
    python -m recloop_dev.code_map --write   # rewrite its generated block (`make docs` runs this)
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DOC = Path("docs/architecture.md")
REGENERATE = "python -m recloop_dev.code_map --write"
BEGIN = "<!-- BEGIN GENERATED: {name} -->"
END = "<!-- END GENERATED -->"
PACKAGE_ROOTS = ("components/recloop", "components/recloop_dev")
SCRIPT_DIRS = ("dags",)
_SENTENCE_END = re.compile(r"(?<!e\.g\.)(?<!i\.e\.)(?<=[.!?])\s+(?=[A-Z`(])")  # not after e.g. or i.e.


# ---------------------------------------------------------------------------------------------- contracts


@dataclass(frozen=True)
class Layer:
    """One line of a layers contract: its packages and whether they may import each other."""

    packages: tuple[str, ...]
    independent: bool


@dataclass(frozen=True)
class Contracts:
    """What the import-linter contracts say about the packages of one layered container (`recloop`)."""

    container: str
    others: tuple[str, ...]  # the other root packages (developer tools), outside the layers
    layers: tuple[Layer, ...]
    barred: frozenset[tuple[str, str]]  # (importer, imported) pairs an independence/forbidden contract bars
    externals: Mapping[str, tuple[str, ...]]  # package -> outside packages only it (and its peers) may import
    excused: tuple[str, ...]  # ignore_imports entries, as written

    @property
    def packages(self) -> list[str]:
        return [p for layer in self.layers for p in layer.packages]

    def layer_of(self, package: str) -> int:
        """1 for the top layer."""
        for number, layer in enumerate(self.layers, 1):
            if package in layer.packages:
                return number
        raise KeyError(package)

    def may_import(self, package: str) -> list[str]:
        """The container's packages `package` may import, top to bottom."""
        number = self.layer_of(package)
        layer = self.layers[number - 1]
        peers = [] if layer.independent else [p for p in layer.packages if p != package]
        below = [p for lower in self.layers[number:] for p in lower.packages]
        return [p for p in peers + below if (package, p) not in self.barred]


def _layer(text: str) -> Layer:
    for delimiter, independent in (("|", True), (":", False)):
        if delimiter in text:
            return Layer(tuple(p.strip() for p in text.split(delimiter)), independent)
    return Layer((text.strip(),), True)


def _short(module: str, container: str) -> str:
    prefix = container + "."
    return module[len(prefix) :] if module.startswith(prefix) else module


def read_contracts(pyproject: Path) -> Contracts:
    """The one layers contract with `containers` and the contracts that refine it, from pyproject.toml."""
    config = tomllib.loads(pyproject.read_text(encoding="utf-8"))["tool"]["importlinter"]
    contracts: list[dict[str, Any]] = config["contracts"]
    layered = [c for c in contracts if c["type"] == "layers" and c.get("containers")]
    if len(layered) != 1 or len(layered[0]["containers"]) != 1:
        raise ValueError(f"{pyproject}: the code map needs exactly one layers contract with one container")
    container = layered[0]["containers"][0]
    layers = tuple(_layer(line) for line in layered[0]["layers"])
    known = {p for layer in layers for p in layer.packages}
    barred: set[tuple[str, str]] = set()
    externals: dict[str, tuple[str, ...]] = {}
    for contract in contracts:
        if contract["type"] == "independence":
            names = [_short(m, container) for m in contract["modules"]]
            barred |= {(a, b) for a in names for b in names if a != b}
        elif contract["type"] == "forbidden":
            sources = [_short(m, container) for m in contract["source_modules"]]
            if container in contract["source_modules"]:
                sources = sorted(known)
            barred |= {(s, _short(f, container)) for s in sources for f in contract["forbidden_modules"]}
        elif contract["type"] == "protected":
            for importer in contract["allowed_importers"]:
                externals[_short(importer, container)] = tuple(contract["protected_modules"])
    excused = tuple(entry for c in contracts for entry in c.get("ignore_imports", ()))
    others = tuple(r for r in config["root_packages"] if r != container)
    return Contracts(container, others, layers, frozenset(barred), externals, excused)


# ---------------------------------------------------------------------------------------------- modules


def summary(path: Path) -> str:
    """The first sentence of a module's docstring, on one line."""
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    if not docstring:
        raise ValueError(f"{path} has no docstring; say in its first sentence what the module is")
    paragraph = " ".join(docstring.strip().split("\n\n", 1)[0].split())
    return _SENTENCE_END.split(paragraph, 1)[0].rstrip(":").replace("|", "\\|")


def module_name(path: Path, root: Path) -> str:
    """`components/recloop/steps/base.py` -> `recloop.steps.base`; a package's `__init__` -> the package."""
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def python_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def top_level(module: str) -> str:
    """`recloop.steps.base` -> `steps`; `recloop.cli` -> `cli`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


# ---------------------------------------------------------------------------------------------- rendering


def _names(packages: Iterable[str]) -> str:
    return ", ".join(f"`{p}`" for p in packages) or "nothing"


def _joined_layers(contracts: Contracts) -> str:
    joined = [
        str(n) for n, layer in enumerate(contracts.layers, 1) if not layer.independent and len(layer.packages) > 1
    ]
    return f", except in layer {', '.join(joined)}, whose packages may import each other" if joined else ""


def _table(rows: Sequence[tuple[str, str]], header: tuple[str, str]) -> list[str]:
    lines = [f"| {header[0]} | {header[1]} |", "| --- | --- |"]
    return lines + [f"| `{name}` | {what} |" for name, what in rows]


def render_code_map(repo: Path) -> str:
    """The generated block's content (between the markers), from the checkout at `repo`."""
    contracts = read_contracts(repo / "pyproject.toml")
    container = contracts.container
    modules = {
        module_name(path, repo / root): (path, summary(path))
        for root in PACKAGE_ROOTS
        for path in python_files(repo / root)
    }
    undeclared = sorted({top_level(m) for m in modules if m.startswith(container + ".")} - set(contracts.packages))
    if undeclared:
        raise ValueError(
            f"pyproject.toml's layers contract does not place {', '.join(undeclared)}; add each to the layer "
            "it belongs to"
        )

    out = [
        f"<!-- Generated by `{REGENERATE}` from the module docstrings and pyproject.toml's import "
        "contracts; edit those, not this block. -->",
        "",
        *_table([(container, modules[container][1])], ("package root", "what it is")),
        "",
        "### Layers",
        "",
        f"Top to bottom; a package of `{container}` may import only the packages named in its row (all under "
        f"`{container}.`), which are those of the layers below it, less what an independence or forbidden "
        "contract bars. Packages sharing a layer number are independent of each other"
        + _joined_layers(contracts)
        + ".",
        "",
        "| layer | package | may import |",
        "| --- | --- | --- |",
    ]
    for number, layer in enumerate(contracts.layers, 1):
        for package in layer.packages:
            allowed = _names(contracts.may_import(package))
            extra = contracts.externals.get(package)
            if extra:
                allowed += f"; the only package that may import {', '.join(f'`{e}`' for e in extra)}"
            out.append(f"| {number} | `{container}.{package}` | {allowed} |")
    for package in contracts.packages:
        members = sorted(m for m in modules if top_level(m) == package)
        out += ["", f"### `{container}.{package}` (layer {contracts.layer_of(package)})", ""]
        out.append(modules[f"{container}.{package}"][1])
        submodules = [(m, modules[m][1]) for m in members if m != f"{container}.{package}"]
        if submodules:
            out += [""] + _table(submodules, ("module", "what it is"))
    outside = [f"`{r}`" for r in contracts.others] + [f"`{d}/`" for d in SCRIPT_DIRS]
    out += ["", f"### Outside the layers: {', '.join(outside)}", ""]
    for other in contracts.others:
        never = all((p, other) in contracts.barred for p in contracts.packages)
        out.append(
            f"`{other}` may import any part of `{container}`"
            + (f"; nothing in `{container}` may import `{other}`." if never else ".")
        )
    out += [f"`{d}/` holds files Airflow loads, outside the contracts; they may import anything." for d in SCRIPT_DIRS]
    out.append("")
    dev_modules = sorted(m for m in modules if m.split(".")[0] in contracts.others)
    scripts = [
        (path.relative_to(repo).as_posix(), summary(path)) for d in SCRIPT_DIRS for path in python_files(repo / d)
    ]
    out += _table([(m, modules[m][1]) for m in dev_modules] + scripts, ("module", "what it is"))
    out += [
        "",
        "### Excused imports",
        "",
        "Imports the contracts let through (`ignore_imports`), each with its reason in pyproject.toml:",
        "",
    ]
    out += [f"- `{entry}`" for entry in contracts.excused] or ["None."]
    return "\n".join(out) + "\n"


def render_steps() -> str:
    """The steps table: each step of the training and feedback graphs with what it reads and writes."""
    from recloop.steps.graph import FEEDBACK, TRAINING

    rows = [
        f"<!-- Generated by `{REGENERATE}` from `recloop.steps.graph`; edit the step declarations there. -->",
        "",
        "| DAG | step | what it does | reads | writes |",
        "| --- | --- | --- | --- | --- |",
    ]
    for dag, graph in (("training", TRAINING), ("feedback", FEEDBACK)):
        for step in graph:
            name = f"`{step.name}`" + (" (one per candidate)" if step.per_candidate else "")
            cells = (dag, name, step.summary(), step.describe_inputs(), step.describe_output())
            rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"


def render_doc(text: str, blocks: Mapping[str, str]) -> str:
    """`text` with each generated block replaced by its new content."""
    for name, block in blocks.items():
        begin = BEGIN.format(name=name)
        start = text.find(begin)
        end = text.find(END, start)
        if start < 0 or end < 0:
            raise ValueError(f"{DOC} needs a '{begin}' line followed by an '{END}' line")
        text = text[: start + len(begin)] + "\n" + block + text[end:]
    return text


def stale(repo: Path) -> str | None:
    """The doc's new text when the committed one differs from the generated one, else None."""
    path = repo / DOC
    text = path.read_text(encoding="utf-8")
    new = render_doc(text, {"steps": render_steps(), "code map": render_code_map(repo)})
    return None if new == text else new


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recloop_dev.code_map", description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help=f"rewrite {DOC} instead of checking it")
    parser.add_argument("--repo", type=Path, default=Path("."), help="the recloop checkout (default: .)")
    args = parser.parse_args(argv)
    new = stale(args.repo)
    if new is None:
        print(f"{DOC} is up to date")
        return 0
    if args.write:
        (args.repo / DOC).write_text(new, encoding="utf-8")
        print(f"rewrote {DOC}")
        return 0
    print(f"{DOC} is out of date: run `{REGENERATE}` (or `make docs`) and commit the result", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
