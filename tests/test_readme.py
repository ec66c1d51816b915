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


def test_readme_deploy_example_runs(tmp_path, monkeypatch):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme.split("## Deploy", 1)[1], re.S).group(1)
    monkeypatch.chdir(tmp_path)  # the ONNX file goes here
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert (tmp_path / "ela.onnx").stat().st_size > 0
    assert namespace["logits"].shape == (2, 10) and namespace["logits"].dtype == namespace["torch"].bfloat16
    x = namespace["torch"].randn(3, 1, 96, 80)
    assert namespace["program"].module()(x).shape == (3, 10)
