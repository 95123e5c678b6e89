"""`clip_benchmark` with its crash under numpy >= 2.4 avoided: the same command line, run as

    python -m data_tools.clip_benchmark_run eval --model_type open_clip --model local-dir:$PWD/exported/open_clip \
        --pretrained none --dataset wds/demo --dataset_root data/demo_clip_benchmark ...

clip_benchmark (1.6.2, the newest release, and every earlier one) computes top-k accuracy as
`float(tensor.numpy())` on a one-element 1-d array; numpy 2.4 turned that long-deprecated conversion into a
TypeError, so every zero-shot classification run ends in a traceback after all the work is done. Pinning
numpy below 2.4 is not an option in an environment that shares numpy with torch and the rest of mmembed.
When, and only when, the installed clip_benchmark's `accuracy` fails on a two-sample probe, it is replaced
by the same quantity computed without that conversion (the fraction of samples whose label is among the k
highest logits); everything else runs clip_benchmark's own code. A fixed release makes this a no-op.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch


def topk_accuracy(logits: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1,)) -> list[float]:
    """Per k: the fraction of rows of `logits` [N, C] whose label `target` [N] is among the k largest."""
    top = logits.topk(max(topk), dim=1).indices
    hits = top == target.reshape(-1, 1)
    return [hits[:, :k].any(dim=1).sum().item() / len(target) for k in topk]


def accuracy_needs_fix() -> bool:
    """Whether the installed clip_benchmark's accuracy raises the numpy >= 2.4 TypeError."""
    from clip_benchmark.metrics import zeroshot_classification

    try:
        zeroshot_classification.accuracy(torch.tensor([[0.2, 0.8], [0.9, 0.1]]), torch.tensor([1, 1]))
    except TypeError:
        return True
    return False


def patch_clip_benchmark() -> bool:
    """Swap in `topk_accuracy` where clip_benchmark's own fails; True when it did."""
    from clip_benchmark.metrics import zeroshot_classification

    if not accuracy_needs_fix():
        return False
    zeroshot_classification.accuracy = topk_accuracy
    return True


def main(argv: Sequence[str] | None = None) -> int:
    try:
        from clip_benchmark import cli
    except ImportError as err:
        print(f"clip_benchmark is not installed ({err}); install it with: pip install 'mmembed[bench]'",
              file=sys.stderr)
        return 2
    patch_clip_benchmark()
    sys.argv = ["clip_benchmark", *(sys.argv[1:] if argv is None else argv)]
    cli.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
