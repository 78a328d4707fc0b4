"""The nodes' in-app help pages (web/docs/<NodeId>.md), the README's shape, and the error texts the docs quote.

ComfyUI's frontend shows `/extensions/<pack folder>/docs/<NodeId>.md` as a node's help; the root
`__init__.py`'s `WEB_DIRECTORY` serves `web/` there. Node ids and input names are read from the node
sources by AST (`io.Schema(node_id=..., inputs=[...])`, following the input factories they call), wherever
under `nodes/` the node classes live, so this runs without ComfyUI.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parents[2]
PAGES = PACK_ROOT / "web" / "docs"
README = PACK_ROOT / "README.md"
README_MAX_LINES = 250
TEST_COMMAND = "python -m pytest tests -ra -n 2 --dist loadfile"
# Quoted messages that are not the pack's own: the docs mark them with one of these right after the quote.
FOREIGN = ("(ComfyUI)", "(PyTorch)")


def _sources(*folders: str) -> list[Path]:
    paths = (path for folder in folders for path in (PACK_ROOT / folder).rglob("*.py"))
    return sorted(path for path in paths if "__pycache__" not in path.parts)


def _module_strings(tree: ast.Module) -> dict[str, str]:
    """Module-level names bound to string constants (`NAME = "..."`, `A, B = "...", "..."`)."""
    found = {}
    for statement in tree.body:
        if not isinstance(statement, ast.Assign):
            continue
        for target in statement.targets:
            pairs = [(target, statement.value)]
            if isinstance(target, ast.Tuple) and isinstance(statement.value, ast.Tuple):
                pairs = list(zip(target.elts, statement.value.elts))
            for name, value in pairs:
                if isinstance(name, ast.Name) and isinstance(value, ast.Constant) and isinstance(value.value, str):
                    found[name.id] = value.value
    return found


def _input_names(expression: ast.AST, functions: dict[str, ast.FunctionDef],
                 seen: frozenset = frozenset()) -> list[str]:
    """Names of the `<Socket>.Input("name", ...)` calls in `expression`, following calls of the given functions."""
    names = []
    for node in ast.walk(expression):
        if not isinstance(node, ast.Call):
            continue
        if isinstance(node.func, ast.Attribute) and node.func.attr == "Input" and node.args \
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            names.append(node.args[0].value)
        elif isinstance(node.func, ast.Name) and node.func.id in functions and node.func.id not in seen:
            names += _input_names(functions[node.func.id], functions, seen | {node.func.id})
    return names


def registered_nodes() -> dict[str, dict]:
    """node id -> {"display_name", "inputs", "file"} for every `io.Schema(node_id=...)` under nodes/."""
    trees = {path: ast.parse(path.read_text(encoding="utf-8"), str(path)) for path in _sources("nodes")}
    functions = {node.name: node for tree in trees.values() for node in tree.body if isinstance(node, ast.FunctionDef)}
    nodes = {}
    for path, tree in trees.items():
        local = {**functions, **{node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}}
        strings = _module_strings(tree)
        for call in ast.walk(tree):
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "Schema"):
                continue
            keywords = {keyword.arg: keyword.value for keyword in call.keywords}
            node_id = keywords.get("node_id")
            if not (isinstance(node_id, ast.Constant) and isinstance(node_id.value, str)):
                continue
            assert node_id.value not in nodes, (
                f"node id {node_id.value} is registered twice ({nodes[node_id.value]['file']}, {path})")
            display = keywords.get("display_name")
            display_name = (display.value if isinstance(display, ast.Constant)
                            else strings.get(display.id) if isinstance(display, ast.Name) else None)
            inputs = _input_names(keywords["inputs"], local) if "inputs" in keywords else []
            nodes[node_id.value] = {"display_name": display_name, "inputs": inputs, "file": path.relative_to(PACK_ROOT)}
    return nodes


def sections(text: str) -> dict[str, str]:
    """The text under each `## ` heading of a markdown page, up to the next one."""
    parts = re.split(r"^## +(.+?)\s*$", text, flags=re.MULTILINE)
    return {title: body for title, body in zip(parts[1::2], parts[2::2])}


def bullets(text: str) -> list[str]:
    """Top-level list items, each with its continuation lines joined by single spaces."""
    items = []
    for line in text.splitlines():
        if line.startswith("- "):
            items.append(line[2:].strip())
        elif items and line.startswith("  ") and line.strip():
            items[-1] += " " + line.strip()
    return items


def test_the_pack_registers_its_nodes_with_inputs():
    nodes = registered_nodes()
    assert len(nodes) >= 16, sorted(nodes)
    assert {"model", "gradient_every"} <= set(nodes["MotionCloneSampler"]["inputs"])
    assert "guided_fraction" in nodes["MotionCloneScheduler"]["inputs"]  # through the input factories


def test_every_node_has_exactly_one_help_page_and_no_page_is_orphaned():
    nodes = registered_nodes()
    files = sorted(path.name for path in PAGES.iterdir())
    assert files == sorted(f"{node_id}.md" for node_id in nodes), (
        f"missing pages: {sorted(f'{n}.md' for n in nodes if not (PAGES / f'{n}.md').is_file())}; "
        f"orphaned: {sorted(set(files) - {f'{n}.md' for n in nodes})}")


def test_every_page_is_titled_with_the_display_name_and_has_inputs_and_outputs():
    for node_id, node in registered_nodes().items():
        text = (PAGES / f"{node_id}.md").read_text(encoding="utf-8")
        assert text.splitlines()[0] == f"# {node['display_name']}", f"{node_id}.md: the first line is the display name"
        assert {"Inputs", "Outputs"} <= set(sections(text)), f"{node_id}.md has no Inputs or Outputs section"


def test_every_page_names_every_input_of_its_node_and_no_other():
    for node_id, node in registered_nodes().items():
        inputs = sections((PAGES / f"{node_id}.md").read_text(encoding="utf-8"))["Inputs"]
        named = set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", inputs))
        assert not set(node["inputs"]) - named, f"{node_id}.md does not describe {sorted(set(node['inputs']) - named)}"
        listed = {re.match(r"`([^`]+)`", item).group(1) for item in bullets(inputs) if item.startswith("`")}
        assert listed <= set(node["inputs"]), (
            f"{node_id}.md describes inputs the node does not have: {sorted(listed - set(node['inputs']))}")
        if not node["inputs"]:
            assert inputs.strip() == "None.", f"{node_id}.md: a node without inputs says 'None.'"


def test_readme_is_short_and_links_every_help_page():
    text = README.read_text(encoding="utf-8")
    lines = len(text.splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; at most {README_MAX_LINES}"
    for node_id in registered_nodes():
        assert f"](web/docs/{node_id}.md)" in text, f"README.md does not link web/docs/{node_id}.md"


def test_readme_states_the_command_ci_runs():
    assert f"\n{TEST_COMMAND}\n" in README.read_text(encoding="utf-8")
    assert "-m pytest tests -ra -n 2 --dist loadfile" in (PACK_ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_relative_links_of_the_docs_lead_to_files():
    pages = [README, *sorted((PACK_ROOT / "docs").glob("*.md")), *sorted(PAGES.glob("*.md"))]
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            assert path.exists(), f"{page.relative_to(PACK_ROOT)} links {target}, which does not exist"


def _code_templates() -> list[str]:
    """Every string literal of nodes/ and motionclone/, f-strings with '…' for each replacement field, whitespace
    collapsed (implicitly concatenated literals are one literal)."""
    templates = []
    for path in _sources("nodes", "motionclone"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                templates.append(node.value)
            elif isinstance(node, ast.JoinedStr):
                parts = (part.value if isinstance(part, ast.Constant) else "…" for part in node.values)
                templates.append("".join(parts))
    return [" ".join(template.split()) for template in templates]


def quoted_messages() -> list[tuple[str, str]]:
    """(where, message): the error texts the docs quote as the pack's own. A message is a code span at the start
    of a bullet of a page's "Common errors" section (several joined by " / "), or any code span in the first
    cell of a table row under a README or docs/troubleshooting.md heading with "errors" in it."""
    found = []
    for path in sorted(PAGES.glob("*.md")):
        for item in bullets(sections(path.read_text(encoding="utf-8")).get("Common errors", "")):
            lead = re.match(r"((?:`[^`]+`\s*/\s*)*`[^`]+`)(.*)", item)
            if lead and not lead.group(2).lstrip().startswith(FOREIGN):
                found += [(path.name, span) for span in re.findall(r"`([^`]+)`", lead.group(1))]
    for path in (README, PACK_ROOT / "docs" / "troubleshooting.md"):
        for title, body in sections(path.read_text(encoding="utf-8")).items():
            if "error" not in title.lower():
                continue
            for row in re.findall(r"^\|(.+?)\|.*\|\s*$", body, flags=re.MULTILINE):
                if set(row.strip()) <= set("-: ") or row.strip() == "message" or any(mark in row for mark in FOREIGN):
                    continue
                found += [(f"{path.name} ({title})", span) for span in re.findall(r"`([^`]+)`", row)]
    return found


def test_quoted_error_messages_are_what_the_code_says():
    templates = _code_templates()
    quoted = quoted_messages()
    assert len(quoted) >= 40, len(quoted)  # the parser sees the quotes at all
    for where, message in quoted:
        pieces = [piece.strip() for piece in " ".join(message.split()).split("…")]
        assert max(map(len, pieces)) >= 8, f"{where}: {message!r} quotes too little to be checked"
        for piece in pieces:
            if len(piece) >= 3:
                assert any(piece in template for template in templates), (
                    f"{where} quotes {message!r}, but no message in nodes/ or motionclone/ contains {piece!r} "
                    "('…' stands for what the code fills in)")
