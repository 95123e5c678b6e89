"""Offline tools that write WebDataset shards for mmembed (run as `python -m data_tools.<tool>`)."""
