"""What every framework adapter shares: it imports its framework only when used, and names its extra."""

import subprocess
import sys

import pytest


def run_python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize(("module", "hidden", "extra"), [
    ("langchain", ("langchain_core",), "langchain"),
    ("llama_index", ("llama_index", "llama_index.core"), "llama-index"),
    ("haystack", ("haystack",), "haystack"),
])
def test_a_missing_framework_names_the_extra(module, hidden, extra):
    code = (f"import sys; sys.modules.update(dict.fromkeys({hidden!r}))\n"
            f"try:\n    import genrank.integrations.{module}\n"
            "except ImportError as e:\n    print(e)")
    assert f"pip install 'genrank[{extra}]'" in run_python(code)


def test_importing_genrank_integrations_imports_no_framework():
    code = ("import sys, genrank.integrations; "
            "print(sorted(m for m in ('langchain_core', 'llama_index', 'haystack') if m in sys.modules))")
    assert run_python(code).strip() == "[]"
