"""open_clip's synthetic training data, for benchmarks that compare step time against open_clip_train.

Like `open_clip_train.data.SyntheticDataset`: one blank RGB image and the caption "Dummy caption", run
through the model's own preprocessors for every sample (so transform cost is included, decode cost is not).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mmembed.data.collate import collate_samples
from mmembed.data.samples import Preprocessor

CAPTION = "Dummy caption"
AUDIO_RATE, AUDIO_SECONDS = 16000, 1.0


class SyntheticBatches(IterableDataset):
    def __init__(self, preprocessors: Mapping[str, Preprocessor], image_size: int, batch_size: int) -> None:
        self.preprocessors = dict(preprocessors)
        self.image = Image.new("RGB", (image_size, image_size))
        self.batch_size = batch_size

    def _raw(self, modality: str) -> Any:
        raw = {"image": self.image, "text": CAPTION,
               "audio": (np.zeros(int(AUDIO_RATE * AUDIO_SECONDS), np.float32), AUDIO_RATE)}
        return raw[modality]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker = info.id if info else 0
        for step in itertools.count():
            samples = [{**{m: fn(self._raw(m)) for m, fn in self.preprocessors.items()},
                        "index": -1, "__key__": f"synthetic-{worker}-{step}-{i}"}
                       for i in range(self.batch_size)]
            batch = collate_samples(samples, list(self.preprocessors), ())
            batch.update({"__worker__": worker, "__consumed__": (step + 1) * self.batch_size,
                          "__skipped__": 0})
            yield batch


def build_synthetic_loader(preprocessors: Mapping[str, Preprocessor], *, image_size: int, batch_size: int,
                           num_workers: int) -> DataLoader:
    return DataLoader(SyntheticBatches(preprocessors, image_size, batch_size), batch_size=None,
                      num_workers=num_workers, persistent_workers=num_workers > 0)
