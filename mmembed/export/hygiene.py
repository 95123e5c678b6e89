"""What every export writer does last: no trace of the build machine in the files, and permissions that let
the other users of a shared cluster read a released model.

`torch.onnx.export` stores each node's Python stack trace (absolute source paths of this machine, its venv
and user) in the node's metadata; those entries are removed. safetensors and tempfile write files 0600; the
files an export wrote get 0666 minus the umask, like any file written with open().
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmembed.integrity import shareable

# Node metadata keys that hold build-machine paths (torch's dynamo ONNX exporter).
PATH_METADATA_KEYS = frozenset({"pkg.torch.onnx.stack_trace"})

FileStamps = dict[Path, tuple[int, int]]


def file_stamps(root: Path) -> FileStamps:
    """(inode, mtime in ns) of every file under `root`: call before writing, pass to `finish_export`."""
    if not root.is_dir():
        return {}
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def finish_export(root: Path, before: FileStamps) -> None:
    """Scrub the ONNX files and fix the permissions of every file under `root` the export created or rewrote.

    Files that were in `root` before the export and were not touched by it (e.g. a user's own) stay as they are.
    """
    for path, stamp in sorted(file_stamps(root).items()):
        if before.get(path) == stamp or path.is_symlink():
            continue
        if path.suffix == ".onnx":
            scrub_onnx(path)
        shareable(path)


def scrub_onnx(path: Path) -> None:
    """Remove build-machine paths (stack traces, doc strings naming source files) from an ONNX model file."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    changed = _scrub_graph(model.graph)
    for function in model.functions:
        changed |= _scrub_nodes(function.node)
    if changed:
        onnx.save(model, str(path))


def _scrub_graph(graph: Any) -> bool:
    return _scrub_nodes(graph.node)


def _scrub_nodes(nodes: Any) -> bool:
    changed = False
    for node in nodes:
        keep = [p for p in node.metadata_props if p.key not in PATH_METADATA_KEYS]
        if len(keep) != len(node.metadata_props):
            del node.metadata_props[:]
            node.metadata_props.extend(keep)
            changed = True
        if 'File "' in node.doc_string:
            node.doc_string = ""
            changed = True
        for attribute in node.attribute:  # control-flow subgraphs (If, Loop, Scan)
            for sub in [attribute.g, *attribute.graphs] if attribute.HasField("g") else attribute.graphs:
                changed |= _scrub_graph(sub)
    return changed
