"""Shape figures of the package for the architecture issue: the longest function, the largest argument list,
and how often the code branches on the model family (``seq2seq`` or its successor).

    python tools/code_stats.py            # src/nlora
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

FAMILY_NAMES = {"seq2seq", "is_seq2seq", "encoder_decoder"}


def _branches_on_family(test: ast.AST) -> bool:
    names = {n.id for n in ast.walk(test) if isinstance(n, ast.Name)}
    attrs = {n.attr for n in ast.walk(test) if isinstance(n, ast.Attribute)}
    return bool((names | attrs) & FAMILY_NAMES)


def stats(root: Path) -> dict:
    functions, branches, mentions = [], 0, 0
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        tree = ast.parse(text)
        rel = str(path.relative_to(root.parent))
        mentions += sum(text.count(name) for name in FAMILY_NAMES if name == "seq2seq")
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                a = node.args
                n_args = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + bool(a.vararg) + bool(a.kwarg)
                n_positional = len(a.posonlyargs) + len(a.args)
                if a.args and a.args[0].arg in ("self", "cls"):
                    n_args, n_positional = n_args - 1, n_positional - 1
                functions.append(
                    {
                        "name": f"{rel}:{node.name}",
                        "lines": node.end_lineno - node.lineno + 1,
                        "args": n_args,
                        "positional": n_positional,
                    }
                )
            if isinstance(node, ast.If | ast.IfExp | ast.While) and _branches_on_family(node.test):
                branches += 1
    longest = max(functions, key=lambda f: f["lines"])
    widest = max(functions, key=lambda f: f["args"])
    most_positional = max(functions, key=lambda f: f["positional"])
    return {
        "functions": len(functions),
        "longest_function": longest,
        "largest_argument_list": widest,
        "most_positional_arguments": most_positional,
        "family_branches": branches,
        "seq2seq_mentions": mentions,
    }


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "src" / "nlora"
    print(json.dumps(stats(root), indent=1))
