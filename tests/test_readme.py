"""The README's ten-line API example runs as written."""

import re
from pathlib import Path


def test_readme_api_example_runs(tmp_path, monkeypatch):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## The API in ten lines", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 11
    monkeypatch.chdir(tmp_path)  # save_pretrained writes 'my_model' here
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["again"].state_dict().keys() == namespace["net"].state_dict().keys()
