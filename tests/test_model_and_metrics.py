import math

import pytest
import torch

from slimtrack.config import ModelConfig, TrainConfig
from slimtrack.metrics import MetricHistory, TrainingMetrics, records_frame, records_from_json
from slimtrack.train.model import GPT
from slimtrack.train.loop import compute_loss, learning_rate, loss_sums_by_source


def tiny_model(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=64, **kw))


def test_gpt_shapes_and_tied_embeddings():
    model = tiny_model()
    logits = model(torch.randint(0, 64, (3, 16)))
    assert logits.shape == (3, 16, 64)
    assert model.lm_head.weight is model.wte.weight
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_gpt_is_causal():
    model = tiny_model().eval()
    x = torch.randint(0, 64, (1, 16))
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 1) % 64  # change only the future
    with torch.no_grad():
        assert torch.allclose(model(x)[0, :10], model(y)[0, :10], atol=1e-6)


def test_param_groups_split_matrices_from_vectors():
    groups = tiny_model().param_groups(0.1)
    assert all(p.dim() >= 2 for p in groups[0]["params"]) and groups[0]["weight_decay"] == 0.1
    assert all(p.dim() < 2 for p in groups[1]["params"]) and groups[1]["weight_decay"] == 0.0


def test_learning_rate_warmup_then_cosine():
    cfg = TrainConfig(max_chunks=100, warmup_steps=10, lr=1e-3, min_lr_ratio=0.1)
    assert learning_rate(1, cfg) == pytest.approx(1e-4)
    assert learning_rate(10, cfg) == pytest.approx(1e-3)
    assert learning_rate(100, cfg) == pytest.approx(1e-4)
    lrs = [learning_rate(s, cfg) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_torch_loss_matches_cross_entropy_and_argmax():
    torch.manual_seed(0)
    logits = torch.randn(12, 50, requires_grad=True)
    targets = torch.randint(0, 50, (12,))
    loss, acc, rows = compute_loss(logits, targets, "torch")
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, targets).item(), rel=1e-6)
    assert acc.item() == pytest.approx((logits.argmax(-1) == targets).float().mean().item())
    assert rows.shape == (12,) and not rows.requires_grad


def test_loss_sums_by_source():
    rows = torch.tensor([1.0, 3.0, 5.0, 7.0])
    sources = torch.tensor([0, 0, 1, 1])
    assert loss_sums_by_source(rows, sources, ["A", "B", "C"]) == {"A": (4.0, 2), "B": (12.0, 2)}


def record(step, **kw):
    base = dict(step=step, loss=2.0, accuracy=0.5, tokens_per_sec=1000.0, learning_rate=1e-3, timestamp=1.0)
    return TrainingMetrics(**{**base, **kw})


def test_record_metric_keys():
    r = record(3, loss_by_source={"PythonDocs": 1.5}, val_loss=2.5, val_accuracy=0.4)
    keys = r.as_metrics()
    for key in ("loss", "accuracy", "tokens_per_sec", "learning_rate", "gpu_memory_mb", "grad_norm",
                "step_time_ms", "tokens_seen", "loss_by_source/PythonDocs", "val_loss", "val_accuracy"):
        assert key in keys
    assert "val_loss" not in record(4).as_metrics()
    assert "step 3 | loss 2.0000 | acc 50.0% | 1,000 tok/s | lr 1.0e-03" in r.console_line()


def test_records_frame_and_json_round_trip():
    recs = [record(2, loss=math.nan), record(1, loss_by_source={"A": 1.0})]
    frame = records_frame(recs)
    assert list(frame["step"]) == [1, 2]
    assert "loss_by_source/A" in frame.columns
    back = records_from_json(MetricHistory(recs).to_json())
    assert [r.step for r in back] == [2, 1]
    assert math.isnan(back[0].loss) and back[1].loss_by_source == {"A": 1.0}
    assert records_frame([]).empty


def test_metric_history_grows_and_backfills_new_columns():
    history = MetricHistory()
    for step in range(1, 3001):  # past the initial capacity twice
        extra = {"loss_by_source": {"late": 0.5}} if step > 2000 else {}
        history.append(record(step, **extra))
    early = history.frame(10)
    assert list(early["step"]) == list(range(1, 11)) and early["step"].dtype == "int64"
    frame = history.frame()
    assert len(frame) == 3000 and frame["loss_by_source/late"].isna().sum() == 2000
    assert frame["loss_by_source/late"].iloc[-1] == 0.5
    back = records_from_json(history.to_json(2001))
    assert len(back) == 2001 and back[0].loss_by_source == {} and back[-1].loss_by_source == {"late": 0.5}
    assert back[-1].loss == frame["loss"].iloc[2000]
