"""`mmembed consolidate`: the full model folder (what eval and export load) from a sharded (FSDP) checkpoint.

Training writes it into the final checkpoint by itself; this command makes it for any other checkpoint. By
default the folder goes into the checkpoint (`<checkpoint>/model/`) and its files join the checkpoint's
checksums, so `mmembed eval/export <run>` verify it like any checkpoint's model; `--out DIR` writes a
standalone folder instead. The checkpoint is verified first; the stitching checks that the shards tile
every tensor.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from mmembed.checkpoint import (
    CHECKPOINT_META,
    SHARDS_DIR,
    atomic_write_text,
    load_config,
    save_state_dir,
)
from mmembed.errors import MissingFileError, UserError
from mmembed.integrity import describe_files, list_files, share_tree
from mmembed.train.checkpointing import verify_checkpoint
from mmembed.train.resume_select import read_latest
from mmembed.train.sharded_checkpoint import ShardedLayout, consolidated_state

log = logging.getLogger("mmembed.train")
MODEL_DIR = "model"


def find_checkpoint(path: Path) -> Path:
    """A checkpoint folder as given, or the one a run folder's checkpoints/LATEST names."""
    if (path / CHECKPOINT_META).is_file():
        return path
    latest = read_latest(path / "checkpoints")
    if latest is not None and (path / "checkpoints" / latest / CHECKPOINT_META).is_file():
        return path / "checkpoints" / latest
    raise MissingFileError(f"{path} is neither a training checkpoint (no {CHECKPOINT_META}) nor a run folder whose "
                           "checkpoints/LATEST names one; pass a run folder or a checkpoints/step_* folder")


def consolidate(path: Path, out: Path | None = None) -> Path:
    """Write the stitched model folder of the checkpoint at `path` (or a run folder's latest); return it."""
    checkpoint = find_checkpoint(Path(path))
    meta = verify_checkpoint(checkpoint)
    if meta.get("layout") != ShardedLayout.name:
        raise UserError(f"{checkpoint} is not a sharded checkpoint: its {MODEL_DIR}/ folder is the full model "
                        "already (eval and export load it as is)")
    if out is None and f"{MODEL_DIR}/model.safetensors" in meta.get("files", {}):
        log.info("%s already holds its consolidated model (verified)", checkpoint)
        return checkpoint / MODEL_DIR
    state = consolidated_state(checkpoint, int(meta["world_size"]))
    config = load_config(checkpoint / SHARDS_DIR)
    if out is not None:
        save_state_dir(out, state, config)
        share_tree(out)
        return out
    return _into_checkpoint(checkpoint, meta, state, config)


def _into_checkpoint(checkpoint: Path, meta: dict, state: dict, config: object) -> Path:
    """Temp folder, rename, then trainer.json with the new files' checksums (written atomically)."""
    tmp, final = checkpoint / f".{MODEL_DIR}.tmp", checkpoint / MODEL_DIR
    shutil.rmtree(tmp, ignore_errors=True)
    save_state_dir(tmp, state, config)  # type: ignore[arg-type]
    share_tree(tmp)
    if final.exists():  # left by a consolidation killed before it recorded the checksums
        shutil.rmtree(final)
    tmp.rename(final)
    names = [f"{MODEL_DIR}/{name}" for name in list_files(final)]
    meta["files"] = dict(sorted({**meta["files"], **describe_files(checkpoint, names)}.items()))
    atomic_write_text(checkpoint / CHECKPOINT_META, json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return final
