"""Benchmark file parsers shared by `data/` (the TFDS builders) and `eval/`
(the benchmark runs): each reads a local file in the published schema and
fails naming the file and the record (`jsonfiles.DatasetError`)."""
