"""LaCTLM on packed documents (``cu_seqlens``): every document computed exactly as if alone."""

import pytest
import torch

from lact_app.models.lm import LaCTLM
from lact_app.nn import BackboneConfig, FastWeightConfig
from lact_app.nn.packing import Packing
from tests.models.test_lm import one_thread  # noqa: F401 (an autouse fixture)

pytestmark = pytest.mark.timeout(120)

VOCAB, CHUNK, WINDOW = 50, 8, 12
#: 1 token, shorter than a chunk, exactly a chunk, 3 chunks + a remainder (longer than the window),
#: a chunk + a remainder.
LENGTHS = (1, 5, 8, 29, 13)
MEMORIES = ("lact", "full_attention", "none")


def _model(memory: str) -> LaCTLM:
    torch.manual_seed(0)
    fast_weight = FastWeightConfig(chunk=CHUNK, heads=2, inter_multi=1.0, use_momentum=True, use_muon=True,
                                   w_init="low_rank", low_rank=4)  # fmt: skip
    backbone = BackboneConfig(dim=32, depth=2, heads=4, mlp_ratio=None, rope_theta=1e6)
    return LaCTLM(VOCAB, backbone=backbone, window=WINDOW, memory=memory, fast_weight=fast_weight,
                  initializer_range=0.2)  # fmt: skip


def _documents(seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=g) for n in LENGTHS]


def _pack(docs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """-> input_ids [1, T], cu_seqlens [N + 1] int32."""
    lengths = torch.tensor([0] + [d.numel() for d in docs])
    return torch.cat(docs)[None], lengths.cumsum(0).to(torch.int32)


@pytest.mark.parametrize("memory", MEMORIES)
def test_packed_documents_equal_their_solo_runs(memory):
    model, docs = _model(memory), _documents()
    ids, cu_seqlens = _pack(docs)
    with torch.no_grad():
        packed = model(ids, cu_seqlens=cu_seqlens)[0].split(LENGTHS)
        for doc, out in zip(docs, packed):
            torch.testing.assert_close(out, model(doc[None])[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("memory", MEMORIES)
def test_a_changed_document_leaves_the_others_bit_identical(memory):
    model, docs = _model(memory), _documents()
    changed = list(docs)
    changed[3] = (docs[3] + 1) % VOCAB
    with torch.no_grad():
        before = model(*_pack(docs)[:1], cu_seqlens=_pack(docs)[1])[0].split(LENGTHS)
        after = model(*_pack(changed)[:1], cu_seqlens=_pack(changed)[1])[0].split(LENGTHS)
    for i, (a, b) in enumerate(zip(before, after)):
        assert torch.equal(a, b) == (i != 3), f"document {i}"


@pytest.mark.parametrize("memory", MEMORIES)
def test_packed_gradients_equal_the_sum_of_solo_gradients(memory):
    """Within fp32 rounding: the lr and momentum heads run in fp32 whatever the model dtype, and the
    fast-weight chain (Muon, renormalisation) amplifies it to ~1e-5 of the gradient's norm."""
    model, docs = _model(memory), _documents()
    ids, cu_seqlens = _pack(docs)
    model(ids, cu_seqlens=cu_seqlens).square().mean(-1).sum().backward()
    packed = torch.cat([p.grad.flatten() for p in model.parameters()])
    model.zero_grad()
    for doc in docs:
        model(doc[None]).square().mean(-1).sum().backward()
    solo = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert (packed - solo).norm() < 5e-5 * solo.norm()


@pytest.mark.parametrize("memory", MEMORIES)
def test_windows_of_one_length_run_as_a_batch(memory):
    """A row of equal documents (windows cut from long texts) is the batch of those windows."""
    model = _model(memory)
    ids = torch.randint(0, VOCAB, (3, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        packed = model(ids.reshape(1, 60), cu_seqlens=torch.tensor([0, 20, 40, 60], dtype=torch.int32))
        assert torch.equal(packed, model(ids).reshape(1, 60, VOCAB))
        for row, out in zip(ids, packed[0].split(20)):
            torch.testing.assert_close(out, model(row[None])[0], rtol=1e-5, atol=1e-5)


def test_packed_positions_and_masks_stop_at_document_starts():
    packing = Packing(torch.tensor([0, 2, 5], dtype=torch.int32), 5)
    assert packing.positions.tolist() == [0, 1, 0, 1, 2]
    (block,) = packing.attention_blocks(None)
    expected = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 1]])
    assert block.keys == ((0, 5),) and torch.equal(block.mask, expected.bool())
    block = Packing([0, 5], 5).attention_blocks(2)[1]  # window 2: queries 2..3 over keys 1..3
    assert block.keys == ((1, 4),) and torch.equal(block.mask, torch.tensor([[1, 1, 0], [0, 1, 1]]).bool())


def test_packing_errors_are_clear():
    model = _model("lact")
    with pytest.raises(ValueError, match=r"need one row \[1, T\] and no cache, got input_ids \(2, 4\)"):
        model(torch.zeros(2, 4, dtype=torch.long), cu_seqlens=torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="cu_seqlens must run from 0 to the row length 4"):
        model(torch.zeros(1, 4, dtype=torch.long), cu_seqlens=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="strictly increasing"):
        model(torch.zeros(1, 4, dtype=torch.long), cu_seqlens=torch.tensor([0, 2, 2, 4]))
