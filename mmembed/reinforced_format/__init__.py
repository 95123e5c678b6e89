"""The reinforced shard format: what `mmembed reinforce` writes and the training reader reads.

Both sides import this package and nothing of each other: member names, the embedding codecs, augmentation
records and their replay, audio crop records, and one handler per medium (image, audio).
"""
