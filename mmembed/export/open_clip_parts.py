"""Which open_clip slot a model's tower fills, and with what: each tower's own `export_spec.open_clip`
(mmembed.towers) builds its part; this module checks that the tower has one and that its head is a linear
map (open_clip has one projection per tower and no slot after it)."""

from __future__ import annotations

from torch import nn

from mmembed.towers.open_clip_slots import NotExpressibleError, OpenClipPart, PartOptions

__all__ = ["NotExpressibleError", "OpenClipPart", "PartOptions", "open_clip_part"]


def open_clip_part(tower: nn.Module, head: nn.Module, tower_type: str, slot: str,
                   opts: PartOptions) -> OpenClipPart:
    """The open_clip `slot` ("visual" | "text") part of `tower` + `head`; NotExpressibleError says why not."""
    spec = tower.export_spec
    if not spec.supports("open_clip"):
        raise NotExpressibleError(f"{tower_type} tower cannot be expressed in open_clip: "
                                  f"{spec.unsupported.get('open_clip', 'no open_clip part')}")
    if spec.open_clip_slot != slot:
        raise NotExpressibleError(f"{tower_type} tower fills open_clip's '{spec.open_clip_slot}' slot, not "
                                  f"'{slot}'")
    linear = head.linear_map()
    if linear is None:
        what = "image" if slot == "visual" else "text"
        raise NotExpressibleError(f"{what} head: a '{type(head).__name__}' head cannot be expressed in open_clip, "
                                  "which has one linear projection per tower and no slot for a head after it")
    return spec.open_clip(tower, linear, opts)
