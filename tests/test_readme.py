"""The README's Python examples run, and its doctest-style lines hold."""

import doctest
import pathlib
import re

import keras
import numpy as np

import keras_winit

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_python_examples():
    assert BLOCKS


def test_readme_examples_run():
    for block in BLOCKS:
        namespace = {"keras": keras, "keras_winit": keras_winit, "np": np}
        if block.lstrip().startswith(">>>"):
            parser = doctest.DocTestParser()
            test = parser.get_doctest(block, namespace, "README", None, 0)
            runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
            runner.run(test)
            assert runner.failures == 0, block
        else:
            exec(compile(block, "README.md", "exec"), namespace)


def test_ci_runs_exactly_the_readme_test_command():
    commands = re.findall(r"```bash\n(.*?)\n```", README.read_text(), re.S)
    assert len(commands) >= 2
    ci = (README.parent / ".ci" / "run").read_text()
    assert commands[1] in ci.splitlines()


def test_readme_stays_short():
    # Guides live in docs/; the README keeps the commands, one example per
    # tool, the API table and links (issue 17: at most 12 KB).
    assert len(README.read_bytes()) <= 12 * 1024
