"""The house rules the code is held to: short functions, programs that read as programs, and
imports that go one way (programs -> pianogpt -> model.py)."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = sorted(p.name for p in ROOT.glob("*.py"))
LIBRARY = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "pianogpt").rglob("*.py"))


def tree_of(relative):
    return ast.parse((ROOT / relative).read_text(), filename=relative)


@pytest.mark.parametrize("relative", PROGRAMS + LIBRARY)
def test_no_function_is_over_60_lines(relative):
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(tree_of(relative))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - (node.decorator_list[0].lineno if node.decorator_list else node.lineno) + 1 > 60]
    assert not long, f"{relative}: {', '.join(long)}"


@pytest.mark.parametrize("program", ["train.py", "evaluate.py"])
def test_the_loop_and_the_evaluation_programs_stay_under_400_lines(program):
    assert len((ROOT / program).read_text().splitlines()) <= 400


def test_no_lambda_is_passed_into_the_training_step():
    """train.py's loop calls the step; the step calls nothing back."""
    lambdas = [node.lineno for node in ast.walk(tree_of("train.py")) if isinstance(node, ast.Lambda)]
    main = next(node for node in tree_of("train.py").body if isinstance(node, ast.FunctionDef) and node.name == "main")
    assert all(main.lineno <= line <= main.end_lineno for line in lambdas), f"lambdas at lines {lambdas}"


@pytest.mark.parametrize("relative", LIBRARY)
def test_the_library_never_imports_a_program(relative):
    programs = {name.removesuffix(".py") for name in PROGRAMS} - {"model"}
    imported = {alias.name.split(".")[0] for node in ast.walk(tree_of(relative)) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree_of(relative))
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & programs, f"{relative} imports {imported & programs}"


@pytest.mark.parametrize("program", [p for p in PROGRAMS if p != "model.py"])
def test_every_program_runs_as_a_script(program):
    """`python X.py` calls main(): a program whose main is only importable does nothing from the shell."""
    guards = [node for node in tree_of(program).body if isinstance(node, ast.If)
              and ast.unparse(node.test).replace("'", '"') == '__name__ == "__main__"']
    assert guards and "main()" in ast.unparse(guards[0]), f"{program} has no `if __name__ == \"__main__\": main()`"
