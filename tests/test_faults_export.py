"""Fault injection, released files: no export file carries the build machine's paths, and every file an
export writes is readable as the umask allows (not safetensors' 0600)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from test_export_support import AUDIO, IMAGE, TEXT, make_model, model_tree
from train_support import REPO

from mmembed.export import export_towers
from mmembed.export.open_clip_export import export_open_clip


def _machine_paths(tmp_path: Path) -> list[bytes]:
    """Strings that would identify the build machine: the source tree, the venv, the home and work folders."""
    paths = {str(REPO), str(Path(sys.prefix)), str(Path(sys.prefix).resolve()), str(tmp_path), str(Path.home()),
             str(Path(os.__file__).parent)}
    return sorted({p.encode() for p in paths if len(p) > 1})


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every export format (ONNX of an image and an audio tower, safetensors, open_clip), under umask 027."""
    root = tmp_path_factory.mktemp("released")
    model, config = make_model(model_tree({"image": IMAGE, "text": TEXT}, {}))
    (root / "towers").mkdir()
    (root / "towers" / "README.user").write_text("the user's own file")
    os.chmod(root / "towers" / "README.user", 0o600)
    old = os.umask(0o027)
    try:
        export_towers(model, config, root / "towers", "onnx", ["image"])
        export_towers(model, config, root / "towers", "safetensors")
        export_open_clip(model, config, root / "open_clip")
        audio_model, audio_config = make_model(model_tree({"audio": AUDIO, "text": TEXT}, {},
                                                          pairs=[("audio", "text", "infonce")]))
        export_towers(audio_model, audio_config, root / "audio", "onnx", ["audio"])
    finally:
        os.umask(old)
    return root


def test_no_export_file_names_the_build_machine(exported: Path, tmp_path: Path) -> None:
    files = [p for p in exported.rglob("*") if p.is_file() and p.name != "README.user"]
    suffixes = {p.suffix for p in files}
    assert {".onnx", ".json", ".safetensors"} <= suffixes, suffixes
    needles = [*_machine_paths(tmp_path), str(exported).encode()]
    for path in files:
        data = path.read_bytes()
        leaks = [n.decode() for n in needles if n in data]
        assert not leaks, f"{path.relative_to(exported)} contains {leaks}"


def test_exported_files_follow_the_umask_and_leave_other_files_alone(exported: Path) -> None:
    modes = {p.relative_to(exported).as_posix(): p.stat().st_mode & 0o777
             for p in exported.rglob("*") if p.is_file()}
    assert modes.pop("towers/README.user") == 0o600
    assert any(name.endswith(".safetensors") for name in modes)
    assert modes == dict.fromkeys(modes, 0o640), modes
