"""The library without optional extras: nothing imports them at import time, and a component that needs one
says which extra to install. (CI also builds a real venv without extras and trains the demo in it.)"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mmembed.registry import MissingDependencyError, Registry

# A finder that refuses the optional packages makes this process behave as a base install for every import
# mmembed makes. torch._dynamo probes optional libraries on its own when first imported (and may load
# transformers), so it is loaded first and whatever it pulled in of the blocked packages is dropped again.
BLOCKED_SCRIPT = textwrap.dedent("""
    import importlib.abc, sys
    import torch._dynamo
    BLOCKED = {"transformers", "sentence_transformers", "onnx", "onnxruntime", "onnxscript", "faiss", "pyarrow"}
    for name in [m for m in sys.modules if m.split(".")[0] in BLOCKED]:
        del sys.modules[name]

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named '{name}'", name=name)
            return None

    sys.meta_path.insert(0, Block())
    import mmembed.cli, mmembed.model, mmembed.eval, mmembed.data, mmembed.export, mmembed.checkpoint
    import mmembed.losses, mmembed.reinforce, mmembed.embed, mmembed.recipe, mmembed.reinforced_format.media
    from mmembed.config.model import TowerSpec
    from mmembed.registry import MissingDependencyError
    from mmembed.towers import build_tower
    tower = build_tower(TowerSpec(type="open_clip_text", args={"text_cfg": {"context_length": 8, "width": 16,
                                  "heads": 2, "layers": 1}, "embed_dim": 8}))
    try:
        build_tower(TowerSpec(type="hf_text", args={"path": "x"}), where="model.modalities.text.tower")
    except MissingDependencyError as err:
        print("ERROR:", err)
    loaded = sorted({m.split(".")[0] for m in sys.modules} & BLOCKED)
    print("LOADED:", loaded)
""")


def test_library_imports_and_builds_without_optional_extras(tmp_path: Path) -> None:
    script = tmp_path / "base.py"
    script.write_text(BLOCKED_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300,
                         check=True).stdout
    assert "ERROR: tower 'hf_text' needs 'transformers', which is not installed: pip install 'mmembed[hf]'" in out
    assert "LOADED: []" in out


def test_declared_entry_imports_on_first_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry: Registry[object] = Registry("widget")
    (tmp_path / "widget_ok.py").write_text(textwrap.dedent("""
        from test_base_install_registry import REGISTRY
        @REGISTRY.register("ok")
        def build():
            return "built"
    """))
    (tmp_path / "widget_needs_extra.py").write_text("import not_installed_lib_xyz\n")
    (tmp_path / "widget_silent.py").write_text("X = 1\n")
    holder = tmp_path / "test_base_install_registry.py"
    holder.write_text("REGISTRY = None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import test_base_install_registry

    test_base_install_registry.REGISTRY = registry
    registry.declare("ok", "widget_ok")
    registry.declare("fancy", "widget_needs_extra", extra="fancy")
    registry.declare("silent", "widget_silent")
    assert registry.names() == ["fancy", "ok", "silent"] and "fancy" in registry
    assert "widget_ok" not in sys.modules
    assert registry.build("ok") == "built"
    with pytest.raises(MissingDependencyError, match=r"needs 'not_installed_lib_xyz'.*mmembed\[fancy\]"):
        registry.get("fancy")
    with pytest.raises(KeyError, match="declared to register it, but does not"):
        registry.get("silent")
    with pytest.raises(KeyError, match="already registered or declared"):
        registry.declare("ok", "widget_ok")
