"""Data: corpora -> documents -> tokens -> chunks (one chunk is one optimizer step).

- ``documents.py``: what a dataset name and split stand for (embedded, local, hub).
- ``readers.py``: records from local files (JSON lines, zstd, parquet), bad ones counted.
- ``embedded.py``: the offline default corpus.
- ``holdout.py``: which documents form the validation split.
- ``hub.py``: whether the Hugging Face hub can be reached.
- ``tokenizer.py``: the byte tokenizer, ``tokenizer.json`` files and hub tokenizers.
- ``chunks.py``: ``ChunkStream``, documents -> [B, T+1] token chunks.
"""
