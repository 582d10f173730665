"""The layering of docs/architecture.md, checked from the modules' own import statements.

Every module of the project packages is parsed with ``ast`` (never imported), relative imports
are resolved, and each import — at module level, inside functions, under ``TYPE_CHECKING``, or
a literal ``importlib.import_module("…")`` — is checked against the rules below. A failure
lists every violation as ``module → import``.

Also here: no hand-written file is longer than 450 lines unless its docstring says why.
"""
from __future__ import annotations

import ast
import dataclasses
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Where each top-level project package lives (pc_client is under clients/).
PACKAGE_DIRS = {
    "pc_common": ROOT / "pc_common",
    "pc_rules": ROOT / "pc_rules",
    "pc_node": ROOT / "pc_node",
    "pc_coordinator": ROOT / "pc_coordinator",
    "pc_devkit": ROOT / "pc_devkit",
    "pc_client": ROOT / "clients" / "pc_client",
    "pc_console": ROOT / "clients" / "pc_console",
}

# The public-key side of pc_node.secure_agg: what the coordinator may import from pc_node (it
# adds, sums, masks and garbles ciphertexts under the requester's public key; it never
# generates keys, decrypts, or touches PSI or the node's steps, server and store). Exact module
# names; "x.*" would stand for x and everything below it.
COORDINATOR_MAY_IMPORT_FROM_NODE = [
    "pc_node.secure_agg",            # the package: get_backend and the interface it re-exports
    "pc_node.secure_agg.backend",
    "pc_node.secure_agg.bfv",
    "pc_node.secure_agg.paillier",
    "pc_node.secure_agg.verdict",       # the masking plan (plaintext additions, re-randomisation)
    "pc_node.secure_agg.query_release",  # queries: threshold masks, pads, label-keyed release
    "pc_node.secure_agg.query_paillier",  # queries with products: packs, group sums, statistical pads
    "pc_node.secure_agg.position_release",  # query-private: the same masks over provider positions
    "pc_node.secure_agg.gc",            # garbled-circuit comparison, the garbler's side:
    "pc_node.secure_agg.gc.compare",    # ComparisonGarbler (the session)
    "pc_node.secure_agg.gc.masking",    # the masks the garbler adds under encryption
    "pc_node.secure_agg.gc.spec",       # what the circuit computes
]

# Transport: what a protocol core may not import. Third-party top-level names that start with
# "grpc" (grpc, grpc_health, grpc_status, …) and pc_common's gRPC plumbing.
TRANSPORT_THIRD_PARTY_PREFIX = "grpc"
TRANSPORT_MODULES = ["pc_common.rpc", "pc_common.tls", "pc_common.pb.common_pb2_grpc",
                     "pc_common.pb.coordinator_pb2_grpc", "pc_common.pb.node_pb2_grpc"]

MAX_LINES = 450
REASON = "Longer than usual because"
SIZE_ROOTS = ["clients", "scripts", "tests"]          # plus every pc_*/ folder at the top


# ----- reading imports ------------------------------------------------------------------------------
def module_files() -> dict[str, pathlib.Path]:
    """Every project module by dotted name (packages by their own name)."""
    out = {}
    for top, folder in PACKAGE_DIRS.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            parts = [top, *rel.parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = module_files()


def _resolve_relative(module: str, is_package: bool, level: int, name: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[:len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def imports_in(source: str, module: str, is_package: bool = False, known=MODULES) -> list[tuple[int, str]]:
    """(line, imported module) for every import in ``source``.

    ``from a.b import c`` names ``a.b.c`` when that is a project module, else ``a.b``.
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = (_resolve_relative(module, is_package, node.level, node.module) if node.level
                    else node.module or "")
            if base == "__future__":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((node.lineno, sub if sub in known else base))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
            if name in ("import_module", "__import__"):
                found.append((node.lineno, node.args[0].value))
    return found


def _imports_of(module: str) -> list[tuple[int, str]]:
    path = MODULES[module]
    return imports_in(path.read_text(encoding="utf-8"), module, path.name == "__init__.py")


IMPORTS = {m: _imports_of(m) for m in MODULES}


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def matches(name: str, pattern: str) -> bool:
    """``pattern`` is an exact module name, or ``x.*`` for x and every module below it."""
    return within(name, pattern[:-2]) if pattern.endswith(".*") else name == pattern


def is_project(name: str) -> bool:
    return name.split(".")[0] in PACKAGE_DIRS


def is_transport(name: str) -> bool:
    return name.split(".")[0].startswith(TRANSPORT_THIRD_PARTY_PREFIX) or name in TRANSPORT_MODULES


# ----- the rules ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Rule:
    name: str
    sources: tuple[str, ...]                     # modules under these packages are checked
    may_import: tuple[str, ...] | None = None    # if set: the only project modules allowed (patterns)
    must_not: tuple[str, ...] = ()               # never these, nor below them (project or third-party)
    no_transport: bool = False                   # never grpc* nor pc_common's gRPC plumbing

    def checked(self) -> list[str]:
        return [m for m in MODULES if any(within(m, s) for s in self.sources)]

    def broken_by(self, target: str) -> bool:
        if any(within(target, p) for p in self.must_not):
            return True
        if self.no_transport and is_transport(target):
            return True
        if self.may_import is not None and is_project(target):
            return not any(matches(target, p) for p in self.may_import)
        return False


RULES = [
    Rule("pc_common imports no other project package", ("pc_common",), may_import=("pc_common.*",)),
    Rule("pc_rules imports only pc_common", ("pc_rules",), may_import=("pc_common.*", "pc_rules.*")),
    Rule("pc_node.psi (protocol core) imports only pc_common and itself, no transport",
         ("pc_node.psi",), may_import=("pc_common.*", "pc_node.psi.*"), no_transport=True,
         must_not=("pc_node.steps", "pc_node.server", "pc_node.store")),
    Rule("pc_node.secure_agg (protocol core) imports only pc_common and itself, no transport",
         ("pc_node.secure_agg",), may_import=("pc_common.*", "pc_node.secure_agg.*"), no_transport=True,
         must_not=("pc_node.steps", "pc_node.server", "pc_node.store")),
    Rule("pc_coordinator imports pc_common, pc_rules and only the public side of pc_node.secure_agg",
         ("pc_coordinator",),
         may_import=("pc_common.*", "pc_rules.*", "pc_coordinator.*", *COORDINATOR_MAY_IMPORT_FROM_NODE),
         must_not=("pc_node.steps", "pc_node.psi", "pc_node.server", "pc_node.store")),
    Rule("pc_node never imports pc_coordinator, pc_client or pc_devkit",
         ("pc_node",), must_not=("pc_coordinator", "pc_client", "pc_devkit")),
    Rule("pc_client.sdk never imports pc_node, pc_coordinator, pc_devkit or pc_client.sandbox",
         ("pc_client.sdk",), must_not=("pc_node", "pc_coordinator", "pc_devkit", "pc_client.sandbox")),
    Rule("pc_console reaches nodes and the coordinator only through the SDK (pc_client.sdk, pc_client.report)",
         ("pc_console",), may_import=("pc_common.*", "pc_rules.*", "pc_console.*", "pc_client.sdk", "pc_client.report"),
         must_not=("pc_node", "pc_coordinator", "pc_devkit", "pc_client.sandbox", "pc_client.cli")),
    Rule("servers, shared code and the SDK never import pc_console",
         ("pc_common", "pc_rules", "pc_node", "pc_coordinator", "pc_client.sdk"), must_not=("pc_console",)),
    Rule("servers and shared code never import pc_devkit",
         ("pc_common", "pc_rules", "pc_node", "pc_coordinator"), must_not=("pc_devkit",)),
]


def violations(rule: Rule) -> list[str]:
    out = set()
    for module in rule.checked():
        for line, target in IMPORTS[module]:
            if rule.broken_by(target):
                out.add(f"{module} → {target}  ({MODULES[module].relative_to(ROOT)}:{line})")
    return sorted(out)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_import_rule(rule):
    assert rule.checked(), f"no modules under {rule.sources}: the rule would pass vacuously"
    found = violations(rule)
    assert not found, f"{rule.name}: {len(found)} violation(s)\n" + "\n".join(found)


def test_the_public_side_list_names_only_secure_agg_modules():
    coordinator = next(r for r in RULES if r.sources == ("pc_coordinator",))
    for name in COORDINATOR_MAY_IMPORT_FROM_NODE:
        assert within(name, "pc_node.secure_agg") and not name.endswith(".*"), name
        assert not coordinator.broken_by(name), name
    for key_side in ("pc_node.secure_agg.bfv_keys", "pc_node.secure_agg.paillier_keys",
                     "pc_node.secure_agg.interpret", "pc_node.secure_agg.gc.ot", "pc_node.secure_agg.gc.garble",
                     "pc_node.steps.common", "pc_node.psi", "pc_node.psi.combine", "pc_node.store", "pc_node",
                     "pc_devkit.synth_city"):
        assert coordinator.broken_by(key_side), key_side


# ----- controls: the reader sees what it must ----------------------------------------------------------
def test_reader_resolves_every_kind_of_import():
    known = {"pc_node.secure_agg", "pc_node.secure_agg.blinding", "pc_node.psi", "pc_node.psi.curve"}
    src = """
from __future__ import annotations
import grpc
import pc_common.tls as t
from pc_node.secure_agg import blinding, get_backend
from . import curve
from .. import secure_agg
from ..secure_agg.blinding import less_than
def lazy():
    from pc_devkit.synth_city import generate_city
    importlib.import_module("pc_coordinator.server")
"""
    got = [name for _, name in imports_in(src, "pc_node.psi", is_package=True, known=known)]
    assert got == ["grpc", "pc_common.tls", "pc_node.secure_agg.blinding", "pc_node.secure_agg",
                   "pc_node.psi.curve", "pc_node.secure_agg", "pc_node.secure_agg.blinding",
                   "pc_devkit.synth_city", "pc_coordinator.server"]
    # A plain module (not a package) resolves relative imports from its parent.
    got = [name for _, name in imports_in("from .curve import x\nfrom ..steps import y\n",
                                          "pc_node.psi.lookup", known=known)]
    assert got == ["pc_node.psi.curve", "pc_node.steps"]


def test_rules_catch_a_planted_violation():
    core = next(r for r in RULES if r.sources == ("pc_node.secure_agg",))
    for target in ("grpc", "grpc_health.v1", "pc_common.rpc", "pc_node.steps.verify", "pc_node.store",
                   "pc_node.psi.curve", "pc_coordinator"):
        assert core.broken_by(target), target
    for target in ("pc_common.errors", "pc_node.secure_agg.bfv", "numpy", "tenseal"):
        assert not core.broken_by(target), target
    # The reader finds the imports that really exist in the tree.
    assert any(t == "pc_common.audit" for _, t in IMPORTS["pc_coordinator.server"])


# ----- file sizes ---------------------------------------------------------------------------------------
def _generated(path: pathlib.Path, text: str) -> bool:
    if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
        return True
    head = "\n".join(text.splitlines()[:5]).lower()
    return "do not edit" in head and "generated" in head


def _docstring_gives_reason(text: str) -> bool:
    try:
        doc = ast.get_docstring(ast.parse(text)) or ""
    except SyntaxError:
        return False
    first_lines = " ".join(doc.splitlines()[:6])
    return REASON in first_lines


def hand_written_files() -> list[pathlib.Path]:
    roots = [p for p in sorted(ROOT.glob("pc_*")) if p.is_dir()] + [ROOT / r for r in SIZE_ROOTS]
    return [p for root in roots for p in sorted(root.rglob("*.py"))
            if not any(part.startswith(".") or part == "__pycache__" for part in p.relative_to(ROOT).parts)]


def test_no_hand_written_file_is_longer_than_450_lines_without_a_reason():
    too_long = []
    files = hand_written_files()
    assert len(files) > 50
    for path in files:
        text = path.read_text(encoding="utf-8")
        n = len(text.splitlines())
        if n > MAX_LINES and not _generated(path, text) and not _docstring_gives_reason(text):
            too_long.append(f"{path.relative_to(ROOT)}: {n} lines")
    assert not too_long, (f"over {MAX_LINES} lines without '{REASON} …' at the top of the docstring:\n"
                          + "\n".join(too_long))


def test_size_check_controls():
    assert _generated(ROOT / "pc_common" / "pb" / "node_pb2.py", "")
    assert not _generated(ROOT / "x.py", '"""Nothing generated here."""\n')
    assert _docstring_gives_reason('"""Audit log.\n\nLonger than usual because the chain and its checks '
                                   'belong together.\n"""\n')
    assert not _docstring_gives_reason('"""Audit log."""\n# Longer than usual because of comments\n')
