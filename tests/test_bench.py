"""The benchmarks' own accounting, on tiny models (the benchmarks themselves are not run here):
the sampling / decoding state they report is exactly the tensors the caches hold."""

import torch

from bench.lm import build, cache_mib, generation_setting, model_args
from bench.video import cache_bytes, final_caches
from lact_app.models.video import VideoDiffusionModel
from lact_app.nn import BackboneConfig, FastWeightConfig

FRAME = 32  # bench.video's FRAME_SIZE side


def test_video_sampling_state_is_fast_weights_plus_one_clean_chunk_of_keys():
    model = VideoDiffusionModel(backbone=BackboneConfig(dim=32, depth=2, heads=2), patch_size=8, chunk_frames=2,
                                fast_weight=FastWeightConfig(heads=2, inter_multi=2.0))  # fmt: skip
    tokens = 2 * (FRAME // 8) ** 2  # one chunk of 2 frames of 4×4 patches
    kv = 2 * tokens * 32 * 4  # keys + values of one clean chunk, fp32
    fast = 2 * (2 * 32 * 16) * 4 + 2 * (16 * 32) * 4  # per fast-weight head: w02 [2H, D] and w1 [D, H], fp32
    for frames in (4, 8):
        assert cache_bytes(final_caches(model, frames)) == 2 * (kv + fast)  # constant in the video length


def test_lm_bench_builds_the_config_model_and_counts_its_cache():
    args = model_args()
    assert args["memory"] == "lact" and args["backbone"]["dim"] == 256 and args["fast_weight"]["chunk"] == 512
    model = build("lact").eval()
    cache = model.new_cache()
    with torch.no_grad():
        model(torch.randint(0, model.vocab_size, (1, 600)), cache)
    expected = sum(t.numel() * t.element_size() for layer in cache
                   for t in (layer.keys, layer.values, *layer.pending, *vars(layer.fast).values())
                   if isinstance(t, torch.Tensor))  # fmt: skip
    assert cache_mib(cache) * 2**20 == expected
    # preallocated: a ring of `window` keys and one chunk of pending inputs (600 % 512 of them valid)
    assert cache[0].keys.size(2) == args["window"] and cache[0].pending.k.size(1) == args["fast_weight"]["chunk"]


def test_lm_generation_rows_time_both_memories_in_one_process():
    rows = generation_setting(16, 3, blocks=3)
    assert [{k: row[k] for k in ("memory", "context", "blocks", "tokens_per_block")} for row in rows] == [
        {"memory": memory, "context": 16, "blocks": 3, "tokens_per_block": 3} for memory in ("lact", "full_attention")]
    assert all(row["ms_per_token"] > 0 and row["cpu_ms_per_token"] > 0 for row in rows)


def test_ns_sensitivity_accounting_with_our_op_standing_in_for_the_official():
    from bench.ns_sensitivity import measure, ours

    row = measure(0, lambda t, bf16: ours(t, torch.bfloat16 if bf16 else None))
    assert row["ours_vs_official_fp32"] == row["ours_vs_official_bf16"] == 0
    assert row["official_noise"] == row["ours_noise"] > 0  # 1e-7 on q, k, v moves the bf16 output
    assert row["official_noise_of_gap"] == row["official_noise"] / row["gap"]
