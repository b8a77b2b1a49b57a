"""LaCTTask: parameter groups, the warmup + cosine schedule, skipping a bad step, media helpers."""

import io
import math
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.trainer.states import TrainerFn
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from lact_app.callbacks.media import add_gif, gif_summary
from lact_app.media import encode_gif
from lact_app.nn import FastWeightConfig, LaCTLayer
from tasks.base import LaCTTask, WarmupCosine
from tests.toy import ToyTask

pytestmark = pytest.mark.timeout(60)


class FastToy(ToyTask):
    """ToyTask plus a LaCT layer with its own projections and low-rank initial fast weights."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.fast = LaCTLayer(4, FastWeightConfig(w_init="low_rank", low_rank=2, use_momentum=True))


def _groups(task):
    return {g["name"]: g for g in task.parameter_groups()}


def test_parameter_groups():
    task = FastToy(lr=1e-3, weight_decay=0.1, fast_weight_lr_multiplier=10.0)
    groups = _groups(task)
    assert set(groups) == {"decay", "no_decay", "fast_decay", "fast_no_decay"}
    assert groups["decay"]["weight_decay"] == 0.1 and groups["no_decay"]["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in groups["decay"]["params"])
    assert all(p.ndim < 2 for p in groups["no_decay"]["params"])
    # the multiplier covers the LaCT layer's fast-weight machinery, not its qkv / output projections
    fast = {id(p) for _, p in task.fast.fast_parameters()}
    assert {id(p) for p in groups["fast_decay"]["params"] + groups["fast_no_decay"]["params"]} == fast
    assert {id(task.fast.qkv.weight), id(task.fast.out_proj.weight)} <= {id(p) for p in groups["decay"]["params"]}
    assert {id(task.fast.branch.w0_left), id(task.fast.lr_proj.weight)} <= fast
    assert groups["fast_decay"]["lr"] == pytest.approx(1e-2) and groups["decay"]["lr"] == 1e-3
    n_params = sum(len(g["params"]) for g in groups.values())
    assert n_params == len(list(task.parameters()))


def test_warmup_cosine_values():
    f = WarmupCosine(warmup_steps=4, total_steps=14, min_ratio=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(1.0)
    assert f(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(14) == pytest.approx(0.1) and f(100) == pytest.approx(0.1)


def test_configure_optimizers_keeps_group_multiplier():
    task = FastToy(lr=1e-3, warmup_steps=2, max_steps_for_schedule=10, fast_weight_lr_multiplier=3.0)
    config = task.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step"
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs["fast_decay"] == pytest.approx(3 * lrs["decay"]) and lrs["decay"] == pytest.approx(5e-4)
    optimizer.step()
    scheduler.step()
    assert {g["name"]: g["lr"] for g in optimizer.param_groups}["decay"] == pytest.approx(1e-3)



def _backward(task, scale=1.0):
    x = torch.randn(8, 4)
    (task.model(x).sum() * scale).backward()


@pytest.mark.parametrize("bad", ["inf", "threshold"])
def test_bad_step_is_skipped_and_adamw_state_untouched(bad, monkeypatch):
    task = ToyTask(lr=1e-2, grad_skip_threshold=1e3)
    monkeypatch.setattr(LaCTTask, "global_step", property(lambda self: 5))
    task.log = lambda *a, **k: None
    optimizer = torch.optim.AdamW(task.parameter_groups(), lr=1e-2)
    _backward(task)
    task.on_before_optimizer_step(optimizer)
    optimizer.step()
    optimizer.zero_grad()
    before_params = [p.detach().clone() for p in task.parameters()]
    before_state = {k: {n: v.clone() for n, v in s.items()} for k, s in optimizer.state.items()}

    _backward(task, scale=math.inf if bad == "inf" else 1e6)
    task.on_before_optimizer_step(optimizer)
    optimizer.step()

    assert task.skipped_steps == 1
    assert all(torch.equal(a, b) for a, b in zip(before_params, task.parameters()))
    for key, state in optimizer.state.items():
        assert all(torch.equal(state[n], before_state[key][n]) for n in state)


def test_threshold_waits_for_grad_skip_after(monkeypatch):
    task = ToyTask(grad_skip_threshold=1e-9, grad_skip_after=10)
    monkeypatch.setattr(LaCTTask, "global_step", property(lambda self: 3))
    assert not task.should_skip_step(torch.tensor(1.0))
    assert task.should_skip_step(torch.tensor(float("nan")))


def test_gif_summary_is_an_animated_gif():
    video = torch.rand(2, 5, 3, 8, 6)  # [N, T, C, H, W]
    data, height, width = encode_gif(video)
    assert data[:6] in (b"GIF87a", b"GIF89a") and (height, width) == (8, 12)
    image = gif_summary("val/video", video[0]).value[0].image
    assert image.encoded_image_string[:3] == b"GIF" and image.width == 6


def test_add_gif_writes_an_animated_gif_to_the_event_file(tmp_path, caplog):
    writer = SummaryWriter(str(tmp_path))
    add_gif(writer, "val/video", torch.rand(2, 5, 3, 8, 6), step=7)
    writer.close()
    add_gif(writer, "val/late", torch.rand(5, 3, 8, 6), step=8)  # closed: skipped, with a warning
    events = EventAccumulator(str(tmp_path)).Reload()
    assert events.Tags()["images"] == ["val/video"]
    (image,) = events.Images("val/video")
    assert image.step == 7 and (image.height, image.width) == (8, 12)
    assert Image.open(io.BytesIO(image.encoded_image_string)).n_frames == 5  # animated
    assert "'val/late' at step 8 not logged" in caplog.text


def test_activation_checkpointing_keeps_gradients():
    torch.manual_seed(0)
    plain = ToyTask()
    checkpointed = ToyTask(activation_checkpointing=True, compile=True)
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.configure_model()
    x = torch.randn(5, 4)
    for task in (plain, checkpointed):
        task.model(x).square().sum().backward()
    for a, b in zip(plain.parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a.grad, b.grad)


def test_activation_checkpointing_recomputes_each_block_in_backward():
    task = ToyTask(activation_checkpointing=True)
    task.configure_model()
    calls = []
    task.model[0][0].register_forward_hook(lambda *args: calls.append(1))
    task.model(torch.randn(5, 4)).sum().backward()
    assert len(calls) == 2  # the forward, then the recomputation in backward
    assert type(task.model[0]) is torch.nn.Sequential  # checkpointed in place: names unchanged


def test_inference_weights_use_the_checkpoint_ema_except_while_fitting():
    task = FastToy()
    task.loaded_ema = {n: p.detach() + 1.0 for n, p in task.named_parameters()}
    weight = task.fast.qkv.weight
    raw = weight.detach().clone()
    with task.inference_weights():  # no trainer: the checkpoint's EMA, restored on exit
        assert torch.equal(weight, raw + 1.0)
    assert torch.equal(weight, raw)
    with task.inference_weights(use_ema=False):
        assert torch.equal(weight, raw)
    # fitting without an EMA callback: the loaded EMA is stale, so the live weights sample
    task._trainer = SimpleNamespace(state=SimpleNamespace(fn=TrainerFn.FITTING), callbacks=[])
    with task.inference_weights():
        assert torch.equal(weight, raw)
