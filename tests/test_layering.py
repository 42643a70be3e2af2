"""The layers hold: the library never imports the command, no import goes up a layer, no import circle is back.

Read from the source with the AST (imports inside functions included), so a lazy import cannot hide a dependency.
"""

from __future__ import annotations

import ast

from _import_graph import DOC, END, START, diagram, graph, layer_of, modules, node


def _cycles(edges: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_library_never_imports_the_command():
    everything = graph(runtime_only=False)  # annotations-only imports count too
    library = [m for m in everything if node(m) != "command"]
    assert "hf_distill.command.cli" in modules() and len(library) > 30  # the scan sees both sides
    offenders = {m: sorted(t for t in everything[m] if node(t) == "command") for m in library}
    assert {m: ts for m, ts in offenders.items() if ts} == {}


def test_the_scan_sees_imports_inside_functions():
    source = "def f():\n    from .command.workflow import prepare_run\n"
    assert any(isinstance(n, ast.ImportFrom) and n.module == "command.workflow" for n in ast.walk(ast.parse(source)))
    # and the scan of a real module finds its lazy imports: teacher_cache imports token_kd inside functions only
    assert "hf_distill.token_kd" in graph()["hf_distill.teacher_cache"]


def test_no_import_goes_up_a_layer():
    upward = {
        (module, target)
        for module, targets in graph().items()
        for target in targets
        if layer_of(target) > layer_of(module)
    }
    assert upward == set()


def test_no_import_circle_but_the_task_modules_data_preparation():
    edges = graph()
    cycles = _cycles(edges)
    # The one circle left: a task module's prepare_data imports task_data's helpers (lazily), and task_data's
    # dispatch (resolve_task, prepare_task_data) asks the task registry.
    data_preparation = {"hf_distill.task_data", "hf_distill.image_data"}  # a task's prepare_data and its helpers
    tasks_and_data = {m for m in edges if m.startswith("hf_distill.tasks") or m in data_preparation}
    assert all(cycle <= tasks_and_data for cycle in cycles), cycles
    for first, second in [("trainer", "checks"), ("checks", "guards"), ("trainer", "guards"),
                          ("command.cli", "command.workflow"), ("command.evaluation", "task_metrics")]:  # fmt: skip
        assert not any({f"hf_distill.{first}", f"hf_distill.{second}"} <= cycle for cycle in cycles)


def test_the_architecture_diagram_is_the_real_import_graph():
    text = DOC.read_text(encoding="utf-8")
    assert START in text and END in text, f"{DOC} lost its generated block"
    block = text[text.index(START) : text.index(END) + len(END)]
    assert block == diagram(), "run `python tests/_import_graph.py` and paste its output into docs/architecture.md"
