"""Before a merge runs: the table rows (inspect summary, kept strengths, experts), overlap warnings per transformer,
the checks of a request (one sentence, nothing written), and the arguments it builds, run through the real CLI and
compared with W + m·(α/r)·B·A computed here from the files' tensors."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from backend.__main__ import main
from backend.compose.merge_plan import (BOTH, NO_EXPERT, Pick, lora_files, overlap_lines, picks_from_rows,
                                        recorded_expert, table_rows)
from backend.compose.merge_request import DitMerge, LoraMerge
from backend.compose.output_names import (PAIR_VARIANTS, free_path, high_noise_partner, merged_dit_stem,
                                          merged_lora_stem)
from backend.compose.summaries import merge_summary
from backend.errors import UserError
from backend.loraid.allocation import allocate
from backend.loraid.patterns import network_args_entries
from backend.models.loading import save_transformer_original

BLOCKS = 4  # the tiny model of tests/compose/conftest.py


@pytest.fixture
def setup(tmp_path, kit):
    """A workspace-like folder: base.safetensors and loras/ with a (blocks 0-1, LORAID 1), b (blocks 2-3, LORAID 2)
    and c (blocks 1-2, overlapping both)."""
    model = kit.make_tiny_wan()
    base = save_transformer_original(model, tmp_path / "base.safetensors")
    loras = tmp_path / "loras"
    files = {}
    for name, loraid, k, seed in (("a", 1, 2, 1), ("b", 2, 2, 2)):
        allocation = allocate(loraid, BLOCKS, k)
        args = network_args_entries(allocation)
        files[name] = kit.save_network(kit.make_network(model, args, seed=seed), loras / f"{name}.safetensors", args,
                                       loraid=loraid, allocation=allocation)
    args = [r"exclude_patterns=['blocks\.[03]\..*']"]
    files["c"] = kit.save_network(kit.make_network(model, args, seed=3), loras / "c.safetensors", args)
    return tmp_path, base, files


def expected_merge(base_tensors: dict, lora_path, multiplier: float) -> dict:
    """W + m·(α/r)·up·down for every module of a plain LoRA file, from its raw tensors."""
    lora = load_file(lora_path)
    merged = dict(base_tensors)
    for key in lora:
        if not key.endswith(".lora_down.weight"):
            continue
        prefix = key[: -len(".lora_down.weight")]
        down, up, alpha = lora[key], lora[f"{prefix}.lora_up.weight"], lora[f"{prefix}.alpha"]
        module = prefix.removeprefix("lora_unet_").replace("_", ".")
        module = module.replace("self.attn", "self_attn").replace("cross.attn", "cross_attn")
        weight = f"{module}.weight"
        merged[weight] = merged[weight] + multiplier * (float(alpha) / down.shape[0]) * (up @ down)
    return merged


def test_rows_show_the_summary_and_keep_typed_strengths(setup):
    root, _, files = setup
    paths = lora_files(root, root / "loras", ["a.safetensors"], "loras/b.safetensors\n\n")
    assert paths == [files["a"].resolve(), files["b"].resolve()]
    rows = table_rows(root, paths, None, pair=False)
    assert rows == [["loras/a.safetensors", "lora", "4", "1", "blocks 0-1", NO_EXPERT, 1.0],
                    ["loras/b.safetensors", "lora", "4", "2", "blocks 2-3", NO_EXPERT, 1.0]]
    rows[1][6] = 0.7
    again = table_rows(root, [files["c"], *paths], rows, pair=False)
    assert [row[0] for row in again] == ["loras/c.safetensors", "loras/a.safetensors", "loras/b.safetensors"]
    assert [row[6] for row in again] == [1.0, 1.0, 0.7]
    assert again[0][3:5] == ["-", "blocks 1-2"]
    picks = picks_from_rows(root, again, pair=False)
    assert [(p.path.name, p.multiplier, p.expert) for p in picks] == [("c.safetensors", 1.0, None),
                                                                      ("a.safetensors", 1.0, None),
                                                                      ("b.safetensors", 0.7, None)]


def test_bad_picks_are_one_sentence(setup):
    root, _, files = setup
    with pytest.raises(UserError, match=r"missing\.safetensors does not exist; pick a file"):
        lora_files(root, root / "loras", [], "loras/missing.safetensors")
    rows = table_rows(root, [files["a"]], None, pair=True)
    rows[0][6] = "strong"
    with pytest.raises(UserError, match="The multiplier `strong` of a.safetensors is not a number"):
        picks_from_rows(root, rows, pair=True)
    rows[0][6], rows[0][5] = 1.0, "middle"
    with pytest.raises(UserError, match="The expert `middle` of a.safetensors is not one of high, low or both"):
        picks_from_rows(root, rows, pair=True)


def test_overlap_lines_per_transformer(setup, kit, tmp_path):
    root, _, files = setup
    assert overlap_lines([Pick(files["a"], 1.0), Pick(files["b"], 1.0)], pair=False) == []
    lines = overlap_lines([Pick(files["a"], 1.0), Pick(files["b"], 1.0), Pick(files["c"], 1.0)], pair=False)
    assert len(lines) == 2
    assert lines[0].startswith("a.safetensors and c.safetensors both change block 1 (modules blocks.1.")
    assert lines[1].startswith("b.safetensors and c.safetensors both change block 2 (modules blocks.2.")
    # on an A14B pair, the same blocks on different experts never meet; a "both" LoRA meets each
    on_pair = [Pick(files["a"], 1.0, "high"), Pick(files["c"], 1.0, "low")]
    assert overlap_lines(on_pair, pair=True) == []
    lines = overlap_lines([Pick(files["a"], 1.0, "high"), Pick(files["c"], 1.0, BOTH)], pair=True)
    assert len(lines) == 1 and lines[0].startswith("On the high-noise expert: a.safetensors and c.safetensors")


def test_recorded_expert_from_allocation_or_name(tmp_path, kit):
    model = kit.make_tiny_wan()
    allocation = allocate(1, BLOCKS, 2, expert="high")
    args = network_args_entries(allocation)
    high = kit.save_network(kit.make_network(model, args), tmp_path / "x.safetensors", args, loraid=1,
                            allocation=allocation)
    named = kit.save_network(kit.make_network(model), tmp_path / "run-low_noise.safetensors")
    plain = kit.save_network(kit.make_network(model), tmp_path / "plain.safetensors")
    assert [recorded_expert(p) for p in (high, named, plain)] == ["high", "low", None]
    rows = table_rows(tmp_path, [high, named, plain], None, pair=True)
    assert [row[5] for row in rows] == ["high", "low", BOTH]


def test_dit_request_checks_refuse_before_anything_is_written(setup):
    root, base, files = setup
    out = root / "outputs" / "merged" / "m.safetensors"
    a, b, c = (Pick(files[name], 1.0) for name in "abc")
    cases = [(DitMerge([], base, out), "No LoRA file is picked"),
             (DitMerge([a], root / "nope.safetensors", out), r"The base DiT .*nope\.safetensors does not exist"),
             (DitMerge([a], None, out), "No base DiT is chosen"),
             (DitMerge([a, c], base, out), r"a\.safetensors and c\.safetensors both change block 1 .*tick "
                                           r"“Allow overlap”"),
             (DitMerge([a], base, root / "m.ckpt"), "must end in .safetensors"),
             (DitMerge([a], base, base), "is one of the inputs"),
             (DitMerge([a], base, out, dtype="fp8"), r"^Output dtype is 'fp8'; choose one of same, fp32, bf16, fp16\.$"),
             (DitMerge([a], base, out, device="tpu"), r"^Compute on is 'tpu'; choose one of cpu, cuda\.$")]
    for request, message in cases:
        with pytest.raises(UserError, match=message):
            request.check()
    assert not (root / "outputs").exists()
    assert DitMerge([a, c], base, out, allow_overlap=True).check()[0].startswith("a.safetensors and c.safetensors")
    out.parent.mkdir(parents=True)
    out.write_bytes(b"earlier")
    with pytest.raises(UserError, match="already exists; type another output name or tick “Overwrite”"):
        DitMerge([a, b], base, out).check()
    assert out.read_bytes() == b"earlier"


def test_a_lora_for_another_model_is_refused_from_headers(setup, tmp_path):
    root, base, _ = setup
    from backend.adapters.formats import save_lora
    foreign = save_lora(tmp_path / "foreign.safetensors",
                        {"lora_unet_blocks_9_ffn_0.lora_down.weight": torch.randn(2, 32),
                         "lora_unet_blocks_9_ffn_0.lora_up.weight": torch.randn(64, 2),
                         "lora_unet_blocks_9_ffn_0.alpha": torch.tensor(2.0)})
    with pytest.raises(UserError, match="foreign.safetensors changes `lora_unet_blocks_9_ffn_0`, which "
                                        "base.safetensors does not have"):
        DitMerge([Pick(foreign, 1.0)], base, root / "m.safetensors").check()


def test_dit_arguments_run_the_merge_the_user_asked_for(setup):
    root, base, files = setup
    out = root / "outputs" / "merged" / "ab.safetensors"
    request = DitMerge([Pick(files["a"], 1.0), Pick(files["b"], 0.7)], base, out)
    assert request.check() == []
    assert main(request.arguments()) == 0
    merged, base_tensors = load_file(out), load_file(base)
    expected = expected_merge(expected_merge(base_tensors, files["a"], 1.0), files["b"], 0.7)
    assert merged.keys() == base_tensors.keys()
    changed = [key for key in base_tensors if not torch.equal(merged[key], base_tensors[key])]
    assert changed and all(key.startswith(("blocks.0.", "blocks.1.", "blocks.2.", "blocks.3.")) for key in changed)
    for key in base_tensors:
        torch.testing.assert_close(merged[key], expected[key], atol=1e-5, rtol=0)
    lines = merge_summary(out)
    assert lines[0] == "Merged 2 LoRAs into base.safetensors, dtype as in the base:"
    assert lines[1].startswith("a.safetensors × 1: LORAID 1, lora, 20 modules, sha256 ")
    assert lines[2].startswith("b.safetensors × 0.7: LORAID 2, lora, 20 modules, sha256 ")
    assert lines[3] == "LORAIDs: 1, 2"
    assert lines[4] == f"Output: {out} ({out.stat().st_size / 1024:.1f} KiB)"


def test_pair_arguments_give_each_expert_its_loras(setup, kit):
    root, low_base, files = setup
    high_base = save_transformer_original(kit.make_tiny_wan(seed=7), root / "high_noise.safetensors")
    out = root / "pair.safetensors"
    request = DitMerge([Pick(files["a"], 1.0, "high"), Pick(files["b"], 0.5, BOTH)], low_base, out, high_base)
    request.check()
    args = request.arguments()
    assert args[args.index("--lora") + 1: args.index("--multiplier")] == [str(files["b"])]
    assert args[args.index("--lora_high_noise") + 1: args.index("--multiplier_high_noise")] == \
        [str(files["a"]), str(files["b"])]
    assert main(args) == 0
    outputs = request.outputs()
    assert outputs == {"high": root / "pair-high_noise.safetensors", "low": root / "pair-low_noise.safetensors"}
    expected_high = expected_merge(expected_merge(load_file(high_base), files["a"], 1.0), files["b"], 0.5)
    expected_low = expected_merge(load_file(low_base), files["b"], 0.5)
    for path, expected in ((outputs["high"], expected_high), (outputs["low"], expected_low)):
        merged = load_file(path)
        for key in expected:
            torch.testing.assert_close(merged[key], expected[key], atol=1e-5, rtol=0)
    assert "(high-noise expert)" in merge_summary(outputs["high"])[0]
    only_high = DitMerge([Pick(files["a"], 1.0, "high")], low_base, root / "h.safetensors", high_base)
    assert only_high.outputs() == {"high": root / "h-high_noise.safetensors"}
    assert only_high.arguments()[:2] == ["merge", f"--dit={high_base}"]
    with pytest.raises(UserError, match="high-noise and low-noise experts are the same file"):
        DitMerge([Pick(files["a"], 1.0, "high")], low_base, out, low_base).check()


def test_lora_merge_arguments_and_checks(setup):
    root, _, files = setup
    out = root / "loras" / "a+b.safetensors"
    with pytest.raises(UserError, match=r"^Rank is 0; it must be at least 1\.$"):
        LoraMerge([Pick(files["a"], 1.0), Pick(files["b"], 1.0)], out, rank=0).check()
    with pytest.raises(UserError, match="needs at least two files; 1 is picked"):
        LoraMerge([Pick(files["a"], 1.0)], out).check()
    with pytest.raises(UserError, match="c.safetensors both change block 1"):
        LoraMerge([Pick(files["a"], 1.0), Pick(files["c"], 1.0)], out).check()
    request = LoraMerge([Pick(files["a"], 1.0), Pick(files["b"], 0.7)], out)
    request.check()
    assert main(request.arguments()) == 0
    merged, a, b = load_file(out), load_file(files["a"]), load_file(files["b"])
    for source, multiplier in ((a, 1.0), (b, 0.7)):
        prefix = "lora_unet_blocks_0_self_attn_q" if source is a else "lora_unet_blocks_3_ffn_2"
        down, up = merged[f"{prefix}.lora_down.weight"], merged[f"{prefix}.lora_up.weight"]
        scale = float(merged[f"{prefix}.alpha"]) / down.shape[0]
        wanted = multiplier * float(source[f"{prefix}.alpha"]) / 4 * (source[f"{prefix}.lora_up.weight"] @
                                                                     source[f"{prefix}.lora_down.weight"])
        torch.testing.assert_close(scale * up @ down, wanted, atol=1e-6, rtol=0)
    lines = merge_summary(out)
    assert lines[0] == "Merged 2 LoRAs into one LoRA, exact (ranks concatenated):"
    assert lines[3] == "LORAIDs: 1, 2"


def test_output_names(tmp_path):
    assert merged_dit_stem(tmp_path / "demo-t2v" / "transformer.safetensors",
                           [tmp_path / "alice.safetensors", tmp_path / "bob.safetensors"]) == "demo-t2v+alice+bob"
    assert merged_dit_stem(tmp_path / "wan14b.safetensors", []) == "wan14b"
    assert merged_lora_stem([tmp_path / f"{n}.safetensors" for n in "abcde"]) == "a+b+3-more"
    assert free_path(tmp_path, "x") == tmp_path / "x.safetensors"
    (tmp_path / "x.safetensors").write_bytes(b"")
    (tmp_path / "x-2-low_noise.safetensors").write_bytes(b"")
    assert free_path(tmp_path, "x") == tmp_path / "x-2.safetensors"
    assert free_path(tmp_path, "x", PAIR_VARIANTS) == tmp_path / "x.safetensors"  # no x-high/low_noise file
    assert free_path(tmp_path, "x-2", PAIR_VARIANTS) == tmp_path / "x-2-2.safetensors"
    low = tmp_path / "wan2.2_t2v_low_noise_14B.safetensors"
    low.write_bytes(b"")
    assert high_noise_partner(low) is None
    (tmp_path / "wan2.2_t2v_high_noise_14B.safetensors").write_bytes(b"")
    assert high_noise_partner(low) == tmp_path / "wan2.2_t2v_high_noise_14B.safetensors"
    assert high_noise_partner(tmp_path / "x.safetensors") is None
