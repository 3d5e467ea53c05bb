"""`slimtrack tokenizer train`: a byte-level BPE trained offline, loaded with --tokenizer,
and logged as an artifact by the runs that use it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from slimtrack.cli import main
from slimtrack.data.tokenizer import EOS_MARKER, HuggingFaceTokenizer, load_tokenizer
from slimtrack.train.job import log_tokenizer

TEXT = "def hello(name):\n    return f'Hello, {name}!'  # naïve café 東京 🚀\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tokenizer") / "bpe.json"
    assert main(["tokenizer", "train", "--dataset", "embedded", "--vocab-size", "512",
                 "--max-documents", "200", "--out", str(path)]) == 0
    return path


def test_trained_tokenizer_loads_and_round_trips(trained, capsys):
    tokenizer = load_tokenizer(str(trained))
    assert isinstance(tokenizer, HuggingFaceTokenizer)
    assert tokenizer.vocab_size == 512
    assert tokenizer.decode([tokenizer.eos_id]) == EOS_MARKER  # the trained special token, not an added one
    assert json.loads(trained.read_text())["added_tokens"][0]["content"] == EOS_MARKER
    ids = tokenizer.encode(TEXT)
    assert len(ids) < len(TEXT.encode("utf-8"))  # merges were learned
    assert tokenizer.decode(ids) == TEXT
    assert max(ids) < tokenizer.vocab_size and tokenizer.eos_id not in ids


def test_prints_one_line_with_size_and_path(tmp_path, capsys):
    out = tmp_path / "folder"
    out.mkdir()  # a folder: its tokenizer.json
    assert main(["tokenizer", "train", "--dataset", "embedded", "--vocab-size", "300",
                 "--max-documents", "20", "--min-frequency", "3", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "300 tokens" in lines[0] and str(out / "tokenizer.json") in lines[0]
    assert load_tokenizer(str(out)).vocab_size == 320  # 300, padded to a multiple of 64
    assert [p.name for p in out.iterdir()] == ["tokenizer.json"]  # no temporary file left


@pytest.mark.parametrize("flags, fragment", [
    (["--dataset", "/no/such/corpus"], "/no/such/corpus"),
    (["--vocab-size", "200"], "--vocab-size"),
    (["--vocab-size", "1000000000"], "--vocab-size"),
    (["--vocab-size", "0"], "--vocab-size"),
    (["--out", "{blocker}/sub/tokenizer.json"], "not writable"),
    (["--max-documents", "-3"], "--max-documents"),
])
def test_bad_input_is_one_line_and_exit_2(flags, fragment, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    given = dict(zip(flags[::2], flags[1::2]))
    args = {"--dataset": "embedded", "--vocab-size": "512", "--out": str(tmp_path / "t.json"), **given}
    argv = ["tokenizer", "train", *[str(v).format(blocker=blocker) for pair in args.items() for v in pair]]
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("slimtrack: error:") and fragment in err, err
    assert captured.out == "" and not (tmp_path / "t.json").exists()


def test_run_with_the_trained_tokenizer_logs_it(trained, tmp_path, mlflow_store):
    out = tmp_path / "out"
    assert main(["train", "--test", "--kernels", "torch", "--max-chunks", "3", "--no-log-model",
                 "--tokenizer", str(trained), "--output-dir", str(out)]) == 0
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("slimtrack").experiment_id])
    assert len(runs) == 1
    logged = [a.path for a in client.list_artifacts(runs[0].info.run_id, "tokenizer")]
    assert logged == ["tokenizer/bpe.json"]
    local = Path(client.download_artifacts(runs[0].info.run_id, "tokenizer/bpe.json", str(tmp_path / "dl")))
    assert local.read_bytes() == trained.read_bytes()


class RecordingTracker:
    def __init__(self) -> None:
        self.artifacts: list[tuple[Path, str | None]] = []

    def log_artifact(self, local_path: Path, artifact_path: str | None = None) -> None:
        self.artifacts.append((Path(local_path), artifact_path))


def test_byte_tokenizer_is_logged_as_its_description(tmp_path):
    tracker = RecordingTracker()
    log_tokenizer("byte", tmp_path, tracker)
    path = tmp_path / "tokenizer" / "byte_tokenizer.json"
    assert tracker.artifacts == [(path, "tokenizer")]
    described = json.loads(path.read_text())
    assert (described["kind"], described["vocab_size"], described["eos_id"]) == ("byte", 320, 256)


def test_tokenizer_folder_is_logged_as_its_file(trained, tmp_path):
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "tokenizer.json").write_bytes(trained.read_bytes())
    tracker = RecordingTracker()
    log_tokenizer(str(folder), tmp_path, tracker)
    assert tracker.artifacts == [(folder / "tokenizer.json", "tokenizer")]
