"""Documents -> chunks on real files in the SlimPajama layout, bad records, the embedded corpus."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slimpajama_fixture import (
    SET_NAMES,
    jsonl_bytes,
    make_slimpajama_tree,
    slimpajama_records,
    write_jsonl,
    write_jsonl_zst,
    write_parquet,
    write_raw_zst,
)
from slimtrack.data import readers
from slimtrack.data.chunks import ChunkStream, make_chunks, piece_bounds
from slimtrack.data.documents import Document, SkipStats, iter_documents, validate_dataset
from slimtrack.data.holdout import is_held_out
from slimtrack.data.embedded import DOCS_SET, STDLIB_SET, embedded_entries
from slimtrack.errors import DataError, UserError
from slimtrack.data.readers import data_files_under
from slimtrack.data.tokenizer import ByteTokenizer, HuggingFaceTokenizer


def read_all(dataset, split="train", **shard) -> tuple[list[Document], SkipStats]:
    skips = SkipStats()
    return list(iter_documents(str(dataset), split, skips, **shard)), skips


def expected_documents(split, **sizes) -> list[Document]:
    files = slimpajama_records(split, **sizes)
    return [Document(r["text"], r["meta"]["redpajama_set_name"]) for records in files for r in records]


def good_records(n: int, prefix: str = "doc") -> list[dict]:
    return [{"text": f"{prefix} {i} ✓", "meta": {"redpajama_set_name": SET_NAMES[i % 3]}} for i in range(n)]


# ---------------------------------------------------------------- the SlimPajama layout


@pytest.fixture
def tree(tmp_path) -> Path:
    return make_slimpajama_tree(tmp_path / "SlimPajama", n_chunks=3, files_per_chunk=2, docs_per_file=6)


def test_reads_both_splits_of_a_slimpajama_tree_in_order(tree):
    sizes = dict(n_chunks=3, files_per_chunk=2, docs_per_file=6)
    for split in ("train", "validation"):
        documents, skips = read_all(tree, split)
        assert documents == expected_documents(split, **sizes)
        assert skips.total == 0
    assert {d.source for d in read_all(tree)[0]} == set(SET_NAMES)
    assert read_all(tree / "train")[0][0] == expected_documents("train", **sizes)[0]  # a split folder directly


def test_files_are_ordered_naturally(tmp_path):
    for chunk in (1, 2, 10, 11):
        for file in (0, 2, 10):
            path = tmp_path / "train" / f"chunk{chunk}" / f"example_train_{file}.jsonl.zst"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
    (tmp_path / "train" / "chunk1" / "notes.txt").write_text("not data")
    names = [p.relative_to(tmp_path / "train").as_posix() for p in data_files_under(tmp_path / "train")]
    assert names == [f"chunk{c}/example_train_{f}.jsonl.zst" for c in (1, 2, 10, 11) for f in (0, 2, 10)]


def test_chunks_are_the_concatenated_documents_with_eos(tree):
    tokenizer = ByteTokenizer()
    documents = read_all(tree)[0]
    stream, skips = make_chunks(str(tree), "train", tokenizer, batch_size=3, seq_len=16)
    chunks = list(stream)

    flat_tokens = np.concatenate([[*tokenizer.encode(d.text), tokenizer.eos_id] for d in documents])
    flat_sources = np.concatenate([[stream.source_names.index(d.source)] * (len(d.text.encode()) + 1)
                                   for d in documents])
    per_chunk = 3 * 17
    assert len(chunks) == len(flat_tokens) // per_chunk > 3
    for k, chunk in enumerate(chunks):
        assert chunk.index == k
        assert chunk.tokens.shape == chunk.sources.shape == (3, 17)
        assert str(chunk.tokens.dtype) == str(chunk.sources.dtype) == "torch.int64"
        window = slice(k * per_chunk, (k + 1) * per_chunk)
        assert chunk.tokens.flatten().tolist() == flat_tokens[window].tolist()
        assert chunk.sources.flatten().tolist() == flat_sources[window].tolist()
    assert skips.total == 0


def test_eos_takes_the_source_of_the_document_it_ends():
    documents = [Document("ab", "A"), Document("cde", "B"), Document("f", "A"), Document("ghij", "C")]
    chunk = next(iter(ChunkStream(documents, ByteTokenizer(), batch_size=2, seq_len=4)))
    assert chunk.tokens.tolist() == [[97, 98, 256, 99, 100], [101, 256, 102, 256, 103]]
    assert chunk.sources.tolist() == [[0, 0, 0, 1, 1], [1, 1, 0, 0, 2]]


def test_a_long_document_spans_many_chunks():
    documents = [Document("x" * 10_000, "A"), Document("y", "B")]
    chunks = list(ChunkStream(documents, ByteTokenizer(), batch_size=2, seq_len=99))
    assert len(chunks) == 10_002 // 200
    assert all(c.tokens.flatten().tolist() == [120] * 200 for c in chunks)


def whole_document_chunks(documents, tokenizer, batch_size, seq_len) -> list[tuple[list, list]]:
    """(tokens, sources) of each chunk, from each document encoded whole: the reference."""
    names = list(dict.fromkeys(d.source for d in documents))
    tokens = [t for d in documents for t in [*tokenizer.encode(d.text), tokenizer.eos_id]]
    sources = [names.index(d.source) for d in documents for _ in range(len(tokenizer.encode(d.text)) + 1)]
    size = batch_size * (seq_len + 1)
    return [(tokens[k:k + size], sources[k:k + size]) for k in range(0, len(tokens) - size + 1, size)]


def test_documents_longer_than_a_piece_give_the_chunks_of_whole_documents():
    tokenizer = ByteTokenizer()
    long_text = "".join(f"word{i} naïve 東京 🚀 \ud800\n" for i in range(300))  # multi-byte and a lone surrogate
    documents = [Document("ab", "A"), Document(long_text, "B"), Document("short ✓", "A"),
                 Document(long_text[::-1], "C"), Document("tail", "B")]
    expected = whole_document_chunks(documents, tokenizer, batch_size=3, seq_len=10)
    assert len(expected) > 100
    for piece_chars in (1, 7, 64, 10**9):
        stream = ChunkStream(documents, tokenizer, batch_size=3, seq_len=10, piece_chars=piece_chars)
        chunks = [(c.tokens.flatten().tolist(), c.sources.flatten().tolist()) for c in stream]
        assert chunks == expected, piece_chars
        assert stream.source_names == ["A", "B", "C"]
    resumed = ChunkStream(documents, tokenizer, batch_size=3, seq_len=10, piece_chars=7)
    resumed.skip(40)
    assert [c.tokens.flatten().tolist() for c in resumed] == [tokens for tokens, _ in expected[40:]]


@pytest.mark.parametrize("cuts_anywhere", [True, False])
def test_pieces_cover_the_text_and_cut_where_allowed(cuts_anywhere):
    text = "alpha  beta\tgamma\n\n" + "x" * 50 + " delta epsilon zeta eta " + "y" * 7
    for piece_chars in (1, 3, 8, 20, len(text) - 1, len(text)):
        bounds = list(piece_bounds(text, piece_chars, cuts_anywhere))
        assert bounds[0][0] == 0 and bounds[-1][1] == len(text)
        assert all(end == next_start for (_, end), (next_start, _) in zip(bounds, bounds[1:]))
        assert all(start < end for start, end in bounds)
        for start, end in bounds[:-1]:
            if cuts_anywhere:
                assert end - start == piece_chars
            else:
                assert piece_chars <= end - start <= 2 * piece_chars
                at_word_end = not text[end - 1].isspace() and text[end].isspace()
                assert at_word_end or end - start == 2 * piece_chars
    assert list(piece_bounds("short", 10, cuts_anywhere)) == [(0, 5)]


def test_a_byte_level_bpe_gives_the_same_ids_in_pieces():
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    rust = RustTokenizer(models.BPE())
    rust.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    corpus = ["the quick brown fox jumps over the lazy dog", "naïve café, it's 42 times\n\n  indented"] * 5
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    rust.train_from_iterator(corpus, trainer)
    tokenizer = HuggingFaceTokenizer(rust, name="test-bpe")
    documents = [Document("   ".join(corpus) * 3, "A"), Document("over the lazy dog\n" * 4 + "the end", "B")]
    expected = whole_document_chunks(documents, tokenizer, batch_size=2, seq_len=8)
    for piece_chars in (13, 16, 40):  # above the longest word with its spaces: every cut is at a word end
        stream = ChunkStream(documents, tokenizer, batch_size=2, seq_len=8, piece_chars=piece_chars)
        assert [(c.tokens.flatten().tolist(), c.sources.flatten().tolist()) for c in stream] == expected


@pytest.mark.parametrize("compressed", [False, True])
def test_lines_longer_than_a_read_block_are_read_whole(tmp_path, monkeypatch, compressed):
    monkeypatch.setattr(readers, "_READ_BLOCK", 16)
    records = [{"text": "x" * 100 + " ✓ " + "y" * 57, "meta": {"redpajama_set_name": "A"}},
               {"text": "short", "meta": {"redpajama_set_name": "B"}},
               {"text": "z" * 40, "meta": {"redpajama_set_name": "C"}}]
    payload = b"\xef\xbb\xbf" + jsonl_bytes(records).rstrip(b"\n")  # a byte order mark, no newline at the end
    path = tmp_path / ("a.jsonl.zst" if compressed else "a.jsonl")
    if compressed:
        write_raw_zst(path, payload)
    else:
        path.write_bytes(payload)
    skips = SkipStats()
    documents = list(readers.read_file(path, skips, readers.Shard()))
    assert documents == [Document(r["text"], r["meta"]["redpajama_set_name"]) for r in records]
    assert skips.total == 0


def test_a_long_document_is_held_at_most_twice(tmp_path):
    import torch  # noqa: F401  (the first chunk imports it; its own memory is not measured)

    text = "".join(f"w{i % 997} " + ("\n" if i % 13 == 0 else "") for i in range(1_500_000))
    size = len(text)  # ASCII: one byte per character in the line, the str and the tokens
    write_jsonl(tmp_path / "train" / "a.jsonl", [{"text": text, "meta": {"redpajama_set_name": "A"}}])
    write_jsonl(tmp_path / "validation" / "b.jsonl", good_records(1))  # so train is read without the hold-out
    del text
    stream, _ = make_chunks(str(tmp_path), "train", ByteTokenizer(), 4, 63)
    chunks = iter(stream)
    tracemalloc.start()
    try:
        next(chunks)
        held_while_consumed, peak = tracemalloc.get_traced_memory()
        for _ in range(50):
            next(chunks)
    finally:
        tracemalloc.stop()
    assert peak < 2.5 * size  # read, decoded, parsed: never three copies at once
    assert held_while_consumed < 1.5 * size  # the text, and tokens of one piece only


def test_skip_equals_dropping_chunks(tree):
    tokenizer = ByteTokenizer()
    full = list(make_chunks(str(tree), "train", tokenizer, 2, 8)[0])
    resumed, _ = make_chunks(str(tree), "train", tokenizer, 2, 8)
    resumed.skip(5)
    rest = list(resumed)
    assert [c.index for c in rest] == list(range(5, len(full)))
    assert all((a.tokens == b.tokens).all() and (a.sources == b.sources).all() for a, b in zip(full[5:], rest))


def test_max_chunks_limits_the_stream(tree):
    stream, _ = make_chunks(str(tree), "train", ByteTokenizer(), 2, 8, max_chunks=4)
    stream.skip(1)
    assert [c.index for c in stream] == [1, 2, 3]


def test_ranks_take_disjoint_shares_that_cover_everything(tree):
    everything = read_all(tree)[0]
    shares = [read_all(tree, rank=r, world_size=3)[0] for r in range(3)]
    assert sorted(d.text for share in shares for d in share) == sorted(d.text for d in everything)
    assert shares[1] == everything[1::3]


# ---------------------------------------------------------------- other local formats


def test_single_files_and_folders_of_files(tmp_path):
    records = good_records(300)
    plain = write_jsonl(tmp_path / "plain" / "a.jsonl", records)
    zst = write_jsonl_zst(tmp_path / "zst" / "a.jsonl.zst", records)
    for dataset in (plain, zst, plain.parent):
        train, validation = read_all(dataset, "train")[0], read_all(dataset, "validation")[0]
        # no validation/ folder: ~2% are held out by hash, disjoint from train, together everything
        assert {d.text for d in train}.isdisjoint(d.text for d in validation)
        assert sorted(d.text for d in train + validation) == sorted(r["text"] for r in records)
        assert all(is_held_out(d) for d in validation) and 0 < len(validation) < 20


def test_tree_without_validation_folder_carves_it_from_train(tmp_path):
    root = make_slimpajama_tree(tmp_path / "sp", n_chunks=2, files_per_chunk=5, docs_per_file=30, splits=["train"])
    train, validation = read_all(root, "train")[0], read_all(root, "validation")[0]
    assert validation and {d.text for d in train}.isdisjoint(d.text for d in validation)
    assert sorted(d.text for d in train + validation) == sorted(d.text for d in expected_documents(
        "train", n_chunks=2, files_per_chunk=5, docs_per_file=30))
    with pytest.raises(UserError, match="no 'test' split"):
        iter_documents(str(root), "test", SkipStats())
    with pytest.raises(UserError):
        iter_documents("embedded", "test", SkipStats())


@pytest.mark.parametrize("meta_as_json", [False, True])
def test_parquet_with_meta_as_struct_or_json_string(tmp_path, meta_as_json):
    records = good_records(20)
    path = write_parquet(tmp_path / "train" / "part-0.parquet", records, meta_as_json=meta_as_json)
    documents, skips = read_all(path.parent.parent, "train")
    assert documents == [Document(r["text"], r["meta"]["redpajama_set_name"]) for r in records]
    assert skips.total == 0


def test_multi_frame_zst_is_read_to_the_end(tmp_path):
    compressor = zstandard.ZstdCompressor()
    path = tmp_path / "multi.jsonl.zst"
    path.write_bytes(compressor.compress(jsonl_bytes(good_records(5))) + compressor.compress(jsonl_bytes(good_records(4, "b"))))
    assert len(read_all(path)[0] + read_all(path, "validation")[0]) == 9


# ---------------------------------------------------------------- bad records


def test_each_kind_of_bad_record_is_skipped_and_counted(tmp_path):
    good = good_records(10)
    lines = jsonl_bytes(good).splitlines(keepends=True)
    bad_lines = [
        b'{"text": "broken\n',  # bad_json
        b'[1, 2, 3]\n',  # bad_json: not an object
        b'{"meta": {"redpajama_set_name": "X"}}\n',  # no_text
        b'{"text": null}\n',  # no_text
        b'{"text": ""}\n',  # empty_text
        b'{"text": "  \\n "}\n',  # empty_text
        b'{"text": 42}\n',  # not_string
        b'{"text": ["a"]}\n',  # not_string
        b'{"text": "bad \xff\xfe bytes"}\n',  # bad_utf8
        b'{"text": "lone \\ud800 surrogate"}\n',  # bad_utf8
    ]
    root = tmp_path / "data" / "train"
    write_raw_zst(root / "chunk1" / "example_train_0.jsonl.zst", b"".join(lines[:5] + bad_lines + lines[5:]))
    compressed = zstandard.ZstdCompressor(write_checksum=True).compress(jsonl_bytes(good_records(50, "t")))
    (root / "chunk1" / "example_train_1.jsonl.zst").write_bytes(compressed[: len(compressed) // 2])  # truncated
    (root / "chunk1" / "example_train_2.jsonl.zst").write_bytes(b"\x00garbage, not zstd" * 10)  # corrupt
    write_jsonl_zst(root / "chunk2" / "example_train_0.jsonl.zst", good_records(3, "after"))
    (tmp_path / "data" / "validation").mkdir()
    write_jsonl_zst(tmp_path / "data" / "validation" / "example_holdout_0.jsonl.zst", good_records(2))

    documents, skips = read_all(tmp_path / "data")
    texts = [d.text for d in documents]
    # the records after the malformed line are read exactly once, and the later files too
    assert texts == [r["text"] for r in good + good_records(3, "after")]
    assert dict(skips.by_reason) == {"bad_json": 2, "no_text": 2, "empty_text": 2, "not_string": 2,
                                     "bad_utf8": 2, "corrupt_file": 2}
    assert skips.total == 12
    assert skips.by_file[str(root / "chunk1" / "example_train_0.jsonl.zst")] == 10
    assert skips.by_file[str(root / "chunk1" / "example_train_1.jsonl.zst")] == 1
    summary = skips.summary()
    assert "\n" not in summary and "example_train_0.jsonl.zst" in summary and "bad_json 2" in summary


def test_truncated_file_keeps_the_records_before_the_cut(tmp_path):
    payload = jsonl_bytes(good_records(3_000))
    compressed = zstandard.ZstdCompressor(level=1).compress(payload)
    path = tmp_path / "cut.jsonl.zst"
    path.write_bytes(compressed[: int(len(compressed) * 0.9)])
    documents, skips = read_all(path.parent)
    held_out, _ = read_all(path.parent, "validation")
    assert 0 < len(documents) + len(held_out) < 3_000
    assert dict(skips.by_reason) == {"corrupt_file": 1}


def test_corrupt_parquet_is_counted(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 but not really parquet")
    write_parquet(tmp_path / "good.parquet", good_records(80))
    documents, skips = read_all(tmp_path)
    assert len(documents) > 60 and skips.by_reason == {"corrupt_file": 1}


def test_dataset_without_usable_documents_is_a_data_error(tmp_path):
    write_jsonl(tmp_path / "train" / "a.jsonl", [{"text": ""}, {"nope": 1}])
    with pytest.raises(DataError, match="no usable documents"):
        read_all(tmp_path)
    with pytest.raises(DataError, match="no usable documents"):
        list(make_chunks(str(tmp_path), "train", ByteTokenizer(), 2, 8)[0])


def test_folder_without_data_files_is_a_data_error(tmp_path):
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(DataError):
        validate_dataset(str(tmp_path))


def test_nonexistent_path_is_a_user_error(tmp_path):
    for missing in (str(tmp_path / "nowhere"), "./no/such/dir/x.jsonl.zst"):
        with pytest.raises(UserError) as info:
            validate_dataset(missing)
        assert type(info.value) is UserError and "embedded" in str(info.value)
        with pytest.raises(UserError):
            read_all(missing)


@pytest.mark.parametrize("offline_variable", [False, True])
def test_hub_id_offline_is_a_quick_data_error(monkeypatch, offline_variable):
    if offline_variable:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(DataError) as info:
        validate_dataset("cerebras/SlimPajama-627B")
    with pytest.raises(DataError):
        read_all("made-up-owner/made-up-dataset")
    assert time.monotonic() - started < 15
    message = str(info.value)
    assert "\n" not in message and "--dataset embedded" in message and ".jsonl.zst" in message


# ---------------------------------------------------------------- the embedded corpus


def test_embedded_validation_is_disjoint_from_train_and_has_both_sets():
    train, validation = embedded_entries("train"), embedded_entries("validation")
    assert set(train).isdisjoint(validation)
    assert {e.set_name for e in validation} == {STDLIB_SET, DOCS_SET}
    assert 0.01 < len(validation) / (len(train) + len(validation)) < 0.04
    assert embedded_entries("train") == train  # deterministic order


def test_embedded_corpus_is_deterministic_and_mixes_sets_early():
    first = [make_chunks("embedded", "train", ByteTokenizer(), 4, 64)[0] for _ in range(2)]
    chunks = [[next(iter(stream)) for _ in range(3)] for stream in first]
    assert all((a.tokens == b.tokens).all() for a, b in zip(*chunks))
    skips = SkipStats()
    documents = iter_documents("embedded", "train", skips)
    early_sets = {next(documents).source for _ in range(60)}
    assert early_sets == {STDLIB_SET, DOCS_SET}
    validate_dataset("embedded")


def test_embedded_validation_documents_read():
    documents, skips = read_all("embedded", "validation")
    assert {d.source for d in documents} == {STDLIB_SET, DOCS_SET}
    assert all(d.text.strip() for d in documents)


# ---------------------------------------------------------------- robustness property


def _mutate(data: bytes, edits: list[tuple[float, int]]) -> bytes:
    mutated = bytearray(data)
    for where, value in edits:
        mutated[min(int(where * len(mutated)), len(mutated) - 1)] = value
    return bytes(mutated)


EDITS = st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=4)


@settings(max_examples=30, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=EDITS, compressed=st.booleans())
def test_randomly_damaged_files_never_crash_the_reader(tmp_path, edits, compressed):
    records = good_records(40)
    payload = jsonl_bytes(records)
    if compressed:
        data = zstandard.ZstdCompressor(write_checksum=True).compress(payload)
        path = tmp_path / "damaged.jsonl.zst"
    else:
        data, path = payload, tmp_path / "damaged.jsonl"
    path.write_bytes(_mutate(data, edits))

    train_skips = SkipStats()  # each split reads every line, so count the bad ones once
    documents = _read_quietly(path, "train", train_skips) + _read_quietly(path, "validation", SkipStats())
    n, k = len(records), len(edits)
    if compressed:
        assert len(documents) <= n + k
        assert train_skips.total >= 1 or len(documents) == n  # damage is either counted or harmless
    else:
        # every non-blank line is a document or a skip; each edited byte can merge two
        # lines into one ("\n" overwritten) or split one into two (a "\n" written)
        assert n - k <= len(documents) + train_skips.total <= n + k


def _read_quietly(path: Path, split: str, skips: SkipStats) -> list[Document]:
    try:
        return list(iter_documents(str(path), split, skips))
    except DataError:  # all records damaged (or none held out): allowed, it is the documented answer
        return []
