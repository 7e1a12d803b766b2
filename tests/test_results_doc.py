"""scripts/results_doc.py: the findings on docs/results.md are computed from the data, so they must follow it."""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("results_doc", ROOT / "scripts" / "results_doc.py")
results_doc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(results_doc)

TAG = "kan_mixer_tiny_p4_32.cifar10_"


def model(lam, above, params, gap):
    return {"top": {"values": [lam]}, "num_params": params, "scores": {"gap_top1": gap},
            "relative_counts": [{"fraction": 0.1, "slq": above, "slq_per_param": above / params}]}


def data(mlp_above, bspline_above, images=256):
    return {"settings": {"batch_size": images, "batches": 1, "probes": 10, "steps": 20},
            "models": {TAG + "none": model(16.0, mlp_above, 1_000_000, 0.03),
                       TAG + "bspline": model(20.0, bspline_above, 2_500_000, 0.01)}}


def test_hessian_verdict_follows_the_counts():
    more = results_doc.hessian_finding([("a.json", data(40.0, 200.0))], [])
    assert "has more eigenvalues above 0.1 lambda_max than the MLP (more per parameter): in the paper's direction" in more
    # 60 vs 40 is more in count but fewer per parameter (2.5x the parameters)
    mixed = results_doc.hessian_finding([("a.json", data(40.0, 60.0))], [])
    assert "has more eigenvalues above 0.1 lambda_max than the MLP (fewer per parameter)" in mixed
    fewer = results_doc.hessian_finding([("a.json", data(40.0, 10.0))], [])
    assert "against the paper's direction" in fewer and "at 256 images and SLQ 10 x 20, one seed" in fewer
    assert "MLP: lambda_max 16, 40 above 0.1 lambda_max (SLQ; 4.00e-05 per parameter)" in fewer


def test_the_size_matched_mlp_is_compared_when_present():
    d = data(40.0, 60.0)
    d["models"][TAG + "none_match_bspline"] = model(12.0, 70.0, 2_500_000, 0.03)
    text = results_doc.hessian_finding([("a.json", d)], [])
    assert "Against the size-matched MLP it has fewer (60 vs 70) and a larger lambda_max." in text
    assert "size-matched MLP: lambda_max 12, 70 above 0.1 lambda_max" in text


def test_missing_models_are_named_and_a_lone_mlp_gives_no_verdict():
    lone = {"settings": {"batch_size": 1000, "batches": 1, "probes": 10, "steps": 80},
            "models": {TAG + "none": model(16.0, 40.0, 1_000_000, 0.03)}}
    text = results_doc.hessian_finding([("g.json", lone)], [TAG + "bspline"])
    assert text.startswith("No source has both the MLP and a KAN model yet.")
    assert "Not computed at the full scale yet: " + TAG + "bspline" in text


def test_memory_ratio_span_reads_the_rows():
    rows = [{"model": "m:bspline", "impl": "reference", "ratio_to_mlp": r} for r in (9.06, 10.65, 10.26)]
    rows += [{"model": "m:bspline", "impl": "fast", "ratio_to_mlp": 0.62}]
    assert results_doc._ratio_span({"rows": rows}, "bspline", "reference") == "9.06-10.65x"
    assert results_doc._ratio_span({"rows": rows}, "bspline", "fast") == "0.62-0.62x"
    assert results_doc._ratio_span(None, "bspline", "fast") == "not run"
    assert results_doc._ratio_span({"rows": rows}, "rswaf", "fast") == "not run"


@pytest.mark.parametrize("images,steps,probes,full", [(1000, 80, 10, True), (256, 20, 10, False), (1000, 40, 10, False)])
def test_findings_count_only_full_scale_runs_as_done(images, steps, probes, full):
    d = data(40.0, 200.0, images)
    d["settings"].update(steps=steps, probes=probes)
    text = "\n".join(results_doc.findings({"rows": []}, None, [("x.json", d)]))
    missing = text.split("Not computed at the full scale yet: ")[1].split(" (HVP cost")[0].split(", ")
    assert TAG + "rswaf" in missing and TAG + "none_match_bspline" in missing
    assert (TAG + "bspline" in missing) is (not full) and (TAG + "none" in missing) is (not full)
    assert results_doc.full_scale(d["settings"]) is full


def test_each_architecture_pair_gets_its_own_verdict():
    conv = "kan_convmixer_128_8_p4.cifar10_"
    d = data(40.0, 60.0)
    d["models"][conv + "none"] = model(30.0, 20.0, 170_000, 0.02)
    d["models"][conv + "bspline"] = model(25.0, 10.0, 1_350_000, 0.00)
    text = results_doc.hessian_finding([("c.json", d)], [conv + "bspline"])
    mixer, convmixer = text.split("ConvMixer pair: ")
    assert "Mixer pair: MLP: lambda_max 16, 40 above" in mixer and "The B-spline Mixer has more" in mixer
    assert convmixer.startswith("MLP: lambda_max 30, 20 above 0.1 lambda_max (SLQ; 1.18e-04 per parameter)")
    assert "The B-spline ConvMixer has fewer eigenvalues above 0.1 lambda_max than the MLP (fewer per parameter): " \
           "against the paper's direction" in convmixer
    assert "no second seed yet" in text and "ConvMixer pair at any scale" not in text
    assert "no second seed and no Hessian of the ConvMixer pair at any scale yet" in \
        results_doc.hessian_finding([("a.json", data(1, 2))], ["x"])
    assert results_doc.short(conv + "bspline") == "ConvMixer bspline" and results_doc.short(TAG + "none") == "Mixer none"


# --- Figure 4: the paper's Eq. (1) beside the measured memory ---

MIXER = "kan_mixer_tiny_p4_32"


def test_eq1_curves_rebuild_the_measured_models():
    # A one-block, 16-wide Mixer: its B-spline model has two KAN layers (channel fc1, fc2), I = O = 16, on 64 tokens
    # (32 / 4 squared), G = 5, S = 3. Per layer at batch 2 (B = 128): forward 16*9*128 = 18,432, reverse
    # 16*7*128 - 16*128 = 12,288, parameters 16*16*10 - 16*17 = 2,288; two layers: 36,864 + 24,576 + 4,576 = 66,016
    # elements = 264,064 float32 bytes. At batch 4 the B-terms double: 73,728 + 49,152 + 4,576 = 127,456.
    settings = {"model": MIXER, "kan": ["none", "bspline", "rswaf"], "checkpoint": None, "num_classes": 3, "seed": 0,
                "model_kwargs": '{"num_blocks": 1, "embed_dim": 16}', "kan_kwargs": '{"compile": false}'}
    rows = [{"model": f"{MIXER}:{k}", "batch_size": b} for k in ("none", "bspline") for b in (2, 4)]
    curves = results_doc.eq1_curves({"settings": settings, "rows": rows})
    assert list(curves) == [f"{MIXER}:bspline"]  # the MLP has no B-spline layer; RSWAF was not measured
    two, four = curves[f"{MIXER}:bspline"][2], curves[f"{MIXER}:bspline"][4]
    assert (two["forward_pass"], two["reverse_pass"], two["parameter_count"]) == (36_864, 24_576, 4_576)
    assert two["total"] == 66_016 and two["total_bytes"] == 264_064 and four["total"] == 127_456
    assert [shape for _, *shape in two["layers"]] == [[16, 16, 64, 5, 3]] * 2
    assert results_doc._layer_shapes(two["layers"]) == "2 x (I 16, O 16, 64 rows/image, G 5, S 3)"


def _est(total_mib):
    return {"forward_pass": 1, "reverse_pass": 2, "parameter_count": 3, "parameter_count_sec31": 3,
            "total_bytes": total_mib * 2**20, "element_size": 4, "layers": [("a", 8, 8, 4, 5, 3)]}


def test_eq1_paragraph_and_finding_follow_the_data():
    # Eq. (1): 100 MiB at batch 8, 1000 at 128. Measured reference 500 / 4000 MiB: 5.00x and 4.00x; fast 20 / 250:
    # 0.20x and 0.25x. Growth per image over the 120 images: Eq. (1) 900 / 120 = 7.50, reference 3500 / 120 =
    # 29.17, fast 230 / 120 = 1.92, MLP (30 -> 450) 420 / 120 = 3.50 MiB.
    m = "m:bspline"
    measured = {("m:none", "n/a"): (30, 450), (m, "fast"): (20, 250), (m, "reference"): (500, 4000)}
    rows = [{"model": k, "impl": i, "batch_size": b, "bytes": v * 2**20, "method": "x: y"}
            for (k, i), vals in measured.items() for b, v in zip((8, 128), vals)]
    data = {"mlp_reference": "m:none", "rows": rows}
    curves = {m: {8: _est(100), 128: _est(1000)}}
    text = " ".join(results_doc.eq1_paragraph("CUDA", data, curves))
    assert "summed over the 1 B-spline layers of m:bspline, 1 x (I 8, O 8, 4 rows/image, G 5, S 3)" in text
    assert "total 100.0 / 1000.0 MiB" in text and "equal to Section 3.1's" in text
    assert "reference step is 4.00-5.00x this total and the fast step 0.20-0.25x" in text
    assert ("Eq. (1) 7.50 MiB; measured m:bspline reference 29.17 MiB, m:bspline fast 1.92 MiB, "
            "m:none (MLP) 3.50 MiB.") in text
    finding = results_doc.eq1_finding(data, None, {"CPU": curves})
    assert "CPU m:bspline: reference 4.00-5.00x (above it), fast 0.20-0.25x (below it)." in finding
    assert "was not evaluated" in results_doc.eq1_finding(data, None, {})
    section = "\n".join(results_doc.memory_section(data, None, {"CPU": curves}))
    assert "CPU figure, dashed: the paper's Eq. (1)" in section and "dashed = the paper's Eq. (1)" in section


def test_weights_table_averages_the_seeds_of_a_setting():
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    from weights_doc import mean_spread, seed_groups, weights_table

    base = dict(kan="bspline", model_kwargs=None, params=10, trained_on="cpu", val_top1=0.5, test_top5=0.9)
    entries = [dict(base, tag="m.cifar10_bspline", seed=0, test_top1=0.70),
               dict(base, tag="m.cifar10_bspline_seed1", seed=1, test_top1=0.74),
               dict(base, tag="m.cifar10_none", seed=0, kan="none", test_top1=0.75)]
    groups = seed_groups(entries)
    assert [len(v) for v in groups.values()] == [2, 1] and list(groups) == [("m", "cifar10_bspline"), ("m", "cifar10_none")]
    assert mean_spread([0.70, 0.74]) == pytest.approx((0.72, 0.02)) and mean_spread([0.75]) == (0.75, None)
    rows = weights_table(entries)
    assert "| m | bspline | 0, 1 | 10 | 50.00% ± 0.00% | 72.00% ± 2.00% |" in rows[2]
    assert "| m | none | 0 | 10 | 50.00% | 75.00% |" in rows[3]
