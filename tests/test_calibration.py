"""`lychee calibrate`: the threshold chooser on hand-made scores, user preset files (format, lookup, layering,
fingerprints), and calibration end to end on a tiny model, from Python and from the command line."""

from __future__ import annotations

import dataclasses
import json
import random
from types import SimpleNamespace

import pytest

from lychee_memory import presets
from lychee_memory.calibration import (
    AnsweredThreshold,
    CalibrationSettings,
    QuestionScores,
    answer_at_thresholds,
    answer_candidates,
    calibrate,
    calibration_samples,
    candidate_thresholds,
    choose_by_answers,
    choose_threshold,
    focus_on_answer,
)
from lychee_memory.cli import main
from lychee_memory.errors import ConfigurationError
from lychee_memory.presets import ModelPreset, preset_for, read_preset_file, write_preset_file

from .conftest import make_engine

TINY = ["--model", "tiny-random-llama", "--chunk-tokens", "64", "--max-memory-tokens", "8", "--max-answer-tokens", "6"]
# SmolLM2-135M's config, as far as presets look at it: the shipped preset matches it.
SMOLLM2 = SimpleNamespace(
    model_type="llama",
    hidden_size=576,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
)


@pytest.fixture(autouse=True)
def no_user_presets(monkeypatch, tmp_path):
    """Every test starts with no $LYCHEE_PRESETS and an empty user presets directory of its own."""
    monkeypatch.delenv(presets.PRESETS_ENV, raising=False)
    monkeypatch.setenv("LYCHEE_CACHE_DIR", str(tmp_path / "cache"))


# The threshold chooser -----------------------------------------------------------------------------------


def test_the_threshold_has_the_best_recall_within_the_read_budget():
    # Question 1: fact 3.0, others 1.0 and 0.0. Question 2: fact 2.0, others 2.5 and -1.0.
    scores = [QuestionScores((3.0,), (1.0, 0.0)), QuestionScores((2.0,), (2.5, -1.0))]
    # Budget 0.5 (one other block over two questions): both facts pass for t in (1.0, 2.0], where only 2.5 also
    # passes; the middle of that gap is 1.5.
    chosen = choose_threshold(scores, read_budget=0.5)
    assert (chosen.threshold, chosen.recall, chosen.false_reads, chosen.gap) == (1.5, 1.0, 0.5, 1.0)
    # Budget 0: nothing but facts may pass, so t > 2.5; only the 3.0 fact remains: t in (2.5, 3.0] -> 2.75.
    chosen = choose_threshold(scores, read_budget=0.0)
    assert (chosen.threshold, chosen.recall, chosen.false_reads, chosen.gap) == (2.75, 0.5, 0.0, 0.5)
    # Budget 2 lets everything through, but lower thresholds add nothing; among the gaps of width 1 (-1..0, 0..1,
    # 1..2) the highest midpoint wins.
    assert choose_threshold(scores, read_budget=2.0).threshold == 1.5


def test_ties_break_to_the_widest_gap_and_a_target_recall_takes_the_fewest_false_reads():
    scores = [QuestionScores((5.0,), (0.0, 4.0))]
    # Budget 1: the fact passes for any t in (0, 5] with at most one other block; the widest gap is 0..4.
    assert choose_threshold(scores, read_budget=1.0).threshold == 2.0
    assert choose_threshold(scores, read_budget=0.0).threshold == 4.5
    assert choose_threshold(scores, read_budget=1.0, target_recall=1.0).threshold == 4.5
    assert candidate_thresholds(scores) == [0.0, 2.0, 4.0, 4.5, 5.0, 6.0]


def counted(scores: list[QuestionScores], threshold: float) -> tuple[int, float]:
    """Fact blocks passing and other blocks passing per question, counted directly."""
    hits = sum(value >= threshold for question in scores for value in question.fact)
    false = sum(value >= threshold for question in scores for value in question.other) / len(scores)
    return hits, false


def test_the_chosen_threshold_is_never_beaten_within_the_budget():
    rng = random.Random(7)
    for _ in range(40):
        scores = [
            QuestionScores(
                tuple(rng.gauss(2, 1) for _ in range(rng.randint(1, 2))),
                tuple(rng.gauss(0, 1) for _ in range(rng.randint(0, 6))),
            )
            for _ in range(rng.randint(1, 5))
        ]
        budget = rng.choice([0.0, 0.5, 1.0, 2.0])
        chosen = choose_threshold(scores, read_budget=budget)

        hits, false = counted(scores, chosen.threshold)
        assert false <= budget and hits == chosen.fact_hits
        values = sorted({v for question in scores for v in question.fact + question.other})
        for t in values + [(a + b) / 2 for a, b in zip(values, values[1:])]:
            other_hits, other_false = counted(scores, t)
            assert other_false > budget or other_hits <= hits


def test_the_thresholds_answered_end_to_end_are_each_budgets_best_recall_one():
    # The scores of the first test: budget 0 picks 2.75; budgets 0.5, 1, 2 and 4 all pick 1.5 (worked out there).
    scores = [QuestionScores((3.0,), (1.0, 0.0)), QuestionScores((2.0,), (2.5, -1.0))]
    assert answer_candidates(scores) == [2.75, 1.5]
    assert answer_candidates(scores, also=[0.5, 1.5]) == [2.75, 1.5, 0.5]


def test_answers_choose_the_threshold_then_fewer_reads_then_the_higher_one():
    def row(threshold, right, read):
        return AnsweredThreshold(threshold, right, 10, read)

    assert choose_by_answers([row(3.0, 6, 1.0), row(1.0, 7, 3.5), row(0.5, 5, 4.0)]).threshold == 1.0
    assert choose_by_answers([row(3.0, 7, 1.2), row(1.0, 7, 3.5)]).threshold == 3.0, "as many right: fewer reads"
    assert choose_by_answers([row(1.0, 7, 2.0), row(3.0, 7, 2.0)]).threshold == 3.0, "then the higher threshold"
    with pytest.raises(ConfigurationError, match="no thresholds"):
        choose_by_answers([])


def test_answers_at_each_threshold_are_those_of_an_engine_built_with_it():
    engine = make_engine()
    samples = calibration_samples(CalibrationSettings(lengths=(1000,), n=1), engine.loaded.tokenizer, 1, 0)
    high, low = 1e9, -1e9  # nothing passes (the fallback reads), everything passes (the reading budget caps it)
    rows = answer_at_thresholds(engine, "query_likelihood", [high, low], samples, {}, show_progress=False)
    assert [row.threshold for row in rows] == [high, low]
    for row in rows:
        reference = make_engine(threshold=row.threshold)  # built directly, not through the calibration's variant
        right, read = 0, 0
        for sample in samples:
            answer = reference.ask(sample.question, reference.ingest(sample.context))
            right += sample.answers[0].lower() in answer.text.lower()
            read += len([block for block in answer.blocks if block.selected])
        assert (row.right, row.questions, row.blocks_read) == (right, len(samples), read / len(samples))
    assert rows[0].blocks_read < rows[1].blocks_read, "the thresholds were applied"


def test_only_the_fact_that_states_the_answer_counts_in_a_multikey_sample():
    from lychee_memory.eval.tasks import build_samples
    from lychee_memory.testing import build_tiny_tokenizer

    sample = build_samples("needle-multikey", build_tiny_tokenizer(), 1000, 1, None, 0)[0]
    assert len(sample.evidence) == 4
    focused = focus_on_answer(sample)
    (start, end), answer = focused.evidence[0], sample.answers[0]
    assert len(focused.evidence) == 1 and answer in sample.context[start:end]


def test_bad_settings_are_refused_with_the_setting_named():
    with pytest.raises(ConfigurationError, match="--n must be"):
        CalibrationSettings(n=0)
    with pytest.raises(ConfigurationError, match="--read-budget"):
        CalibrationSettings(read_budget=-1.0)
    with pytest.raises(ConfigurationError, match="unknown gate rule 'likelihood'"):
        CalibrationSettings(rules=("likelihood",))
    with pytest.raises(ConfigurationError, match="no threshold"):
        CalibrationSettings(rules=("all",))
    with pytest.raises(ConfigurationError, match="needle family 'ruler-hqa'"):
        CalibrationSettings(families=("ruler-hqa",))


# Preset files ---------------------------------------------------------------------------------------------


def user_preset(**changes) -> ModelPreset:
    base = ModelPreset(
        name="my-smollm2",
        architecture=vars(SMOLLM2).copy(),
        compressor="none",
        chunk_tokens=512,
        read_mode="text",
        thresholds={("none", "query_likelihood"): 2.5, ("attention", "prompt"): 0.625},
        prompts={"final": "Notes: {memory}\nQuestion: {question}\nAnswer:"},
        stop_strings=("\n\n",),
        prefilter_heads=((1, 2), (3, 0)),
        evidence="measured by hand",
        fingerprint="f" * 32,
        created="2026-01-02T03:04:05",
    )
    return dataclasses.replace(base, **changes)


def test_a_preset_file_round_trips(tmp_path):
    preset = user_preset()
    path = write_preset_file(preset, tmp_path / "sub" / "mine.json")
    data = json.loads(path.read_text())
    assert data["thresholds"] == {"none/query_likelihood": 2.5, "attention/prompt": 0.625}
    read = read_preset_file(path)
    assert read.source == str(path)
    assert dataclasses.replace(read, source=preset.source) == preset
    assert not list(path.parent.glob(".*.tmp")), "no temporary file left behind"


@pytest.mark.parametrize(
    "change, field",
    [
        ({"thresholds": {"none-query_likelihood": 2.0}}, "thresholds"),
        ({"thresholds": {"none/query_likelihood": "high"}}, "thresholds"),
        ({"read_mode": "prefix"}, "read_mode"),
        ({"prefilter_heads": [[1]]}, "prefilter_heads"),
        ({"chunk_tokens": 0}, "chunk_tokens"),
        ({"treshold": 2.0}, "treshold"),
        ({"format": "lychee-preset/0"}, "format"),
        ({"architecture": {"model_type": "llama"}}, "architecture"),
        ({"prompts": {"final": "no placeholders"}}, "prompts"),
    ],
)
def test_a_malformed_preset_file_names_the_file_and_the_field(tmp_path, change, field):
    path = write_preset_file(user_preset(), tmp_path / "bad.json")
    data = json.loads(path.read_text())
    data.update(change)
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigurationError, match=f"preset file '.*bad.json': field '{field}'"):
        read_preset_file(path)


def test_a_preset_file_that_is_not_json_says_where(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"format": "lychee-preset/1",\n "name": }')
    with pytest.raises(ConfigurationError, match="broken.json' is not valid JSON \\(line 2"):
        read_preset_file(path)


def test_a_user_preset_in_lychee_presets_is_layered_over_the_shipped_one(tmp_path, monkeypatch):
    shipped = preset_for(SMOLLM2)
    assert shipped is not None and shipped.source == "shipped"
    path = write_preset_file(
        ModelPreset(
            name="my-smollm2",
            architecture=vars(SMOLLM2).copy(),
            read_mode="text",
            thresholds={("none", "query_likelihood"): 2.5, ("none", "prompt"): 0.7},
        ),
        tmp_path / "presets" / "mine.json",
    )
    for setting in (path, path.parent):  # the file itself, or a directory of them
        monkeypatch.setenv(presets.PRESETS_ENV, str(setting))
        layered = preset_for(SMOLLM2)
        assert layered.source == str(path)
        assert layered.read_mode == "text" and layered.name == "my-smollm2"  # set by the file
        assert layered.thresholds == {("none", "query_likelihood"): 2.5, ("none", "prompt"): 0.7}
        # Left out by the file: the shipped preset's values.
        assert layered.compressor == shipped.compressor == "none" and layered.chunk_tokens == shipped.chunk_tokens
        assert layered.prompts == shipped.prompts and layered.prefilter_heads == shipped.prefilter_heads
    assert preset_for(SimpleNamespace(**{**vars(SMOLLM2), "vocab_size": 32000})) is None, "another architecture"


def test_a_preset_recorded_for_another_fingerprint_does_not_apply(tmp_path, monkeypatch):
    path = write_preset_file(user_preset(fingerprint="a" * 32), tmp_path / "mine.json")
    monkeypatch.setenv(presets.PRESETS_ENV, str(path))
    assert preset_for(SMOLLM2, "a" * 32).source == str(path)
    assert preset_for(SMOLLM2).source == str(path), "a caller without a fingerprint matches on architecture"
    assert preset_for(SMOLLM2, "b" * 32).source == "shipped"


def test_lychee_presets_comes_before_the_user_presets_directory(tmp_path, monkeypatch):
    cached = write_preset_file(user_preset(read_mode="kv"), presets.user_presets_dir() / "cached.json")
    assert preset_for(SMOLLM2).source == str(cached)
    chosen = write_preset_file(user_preset(read_mode="text"), tmp_path / "chosen.json")
    monkeypatch.setenv(presets.PRESETS_ENV, str(chosen))
    assert preset_for(SMOLLM2).source == str(chosen)
    monkeypatch.setenv(presets.PRESETS_ENV, str(tmp_path / "missing.json"))
    with pytest.raises(ConfigurationError, match="LYCHEE_PRESETS"):
        preset_for(SMOLLM2)


def test_the_table_shows_the_shipped_values_beside_the_calibrated_ones():
    from lychee_memory.calibration import Calibration, ReadModeResult, RuleCalibration, ThresholdOutcome, format_table

    shipped = preset_for(SMOLLM2)
    chosen = ThresholdOutcome(1.75, 1.0, 6, 6, 0.5, 6, 1.1)
    heldout = ThresholdOutcome(1.75, 0.75, 3, 4, 0.25, 4, None)
    calibration = Calibration(
        user_preset(compressor="none", read_mode="kv", chunk_tokens=1024),
        shipped,
        [RuleCalibration("query_likelihood", "none", chosen, heldout)],
        None,
        ReadModeResult({"kv": 3, "text": 2}, 4, "kv"),
        6,
        4,
    )
    table = format_table(calibration)
    assert "| gate threshold none/query_likelihood | 1.7500 | 2.0 | recall 1.00 (6/6), 0.50 false reads" in table
    assert "gap 1.100, n=6; held out: recall 0.75 (3/4), 0.25 false reads per question, n=4 |" in table
    assert "| read mode | kv | kv | kv 3/4, text 2/4 |" in table and "| chunk tokens | 1024 | 1024 | |" in table


# End to end -----------------------------------------------------------------------------------------------


def test_calibrate_writes_a_preset_the_engine_then_uses(tmp_path, monkeypatch):
    from lychee_memory import LycheeMemory

    engine = make_engine()
    settings = CalibrationSettings(
        lengths=(1000,), n=2, heldout_n=1, head_count=2, read_questions=1, show_progress=False
    )
    calibration = calibrate(engine, settings, command="lychee calibrate (test)")
    (result,) = calibration.rules
    assert (result.compressor, result.rule) == ("attention", "query_likelihood")
    assert result.chosen.questions == 4 and result.heldout is not None and result.heldout.questions == 2
    assert result.chosen.false_reads <= 1.0
    preset = calibration.preset
    assert len(preset.prefilter_heads) == 2 and preset.read_mode in ("kv", "text")
    assert preset.fingerprint == engine.loaded.fingerprint() and preset.architecture["hidden_size"] == 64
    assert "lychee calibrate (test)" in preset.evidence and "recall" in preset.evidence
    path = write_preset_file(preset, tmp_path / "tiny.json")
    options = dict(chunk_tokens=64, max_memory_tokens=12, max_answer_tokens=6, show_progress=False)

    assert LycheeMemory.from_pretrained("tiny-random-llama", **options).threshold == 1.0, "the rule's default"
    monkeypatch.setenv(presets.PRESETS_ENV, str(path))
    fresh = LycheeMemory.from_pretrained("tiny-random-llama", **options)
    assert fresh.threshold == result.chosen.threshold != 1.0
    assert fresh.index_spec.heads == preset.prefilter_heads
    assert fresh.config.reasoner.read_mode == preset.read_mode
    assert make_engine("qwen2").threshold == 1.0, "another model ignores it"
    write_preset_file(dataclasses.replace(preset, fingerprint="0" * 32), path)
    assert make_engine().threshold == 1.0, "a preset measured on another checkpoint does not apply"


def test_calibrating_end_to_end_picks_the_threshold_answering_most(tmp_path):
    engine = make_engine()
    settings = CalibrationSettings(
        lengths=(1000,),
        n=2,
        heldout_n=1,
        end_to_end=2,
        skip_heads=True,
        skip_read_mode=True,
        skip_memory=True,
        show_progress=False,
    )
    calibration = calibrate(engine, settings, command="lychee calibrate (test)")
    (result,) = calibration.rules
    answered = {row.threshold: row for row in result.answered}
    assert result.by_recall in answered and all(row.questions == 2 for row in answered.values())
    best = max(answered.values(), key=lambda row: (row.right, -row.blocks_read, row.threshold))
    assert result.chosen.threshold == best.threshold == calibration.preset.thresholds[("attention", "query_likelihood")]
    assert {row.threshold for row in result.heldout_answered} == {best.threshold, result.by_recall}
    assert all(row.questions == 2 for row in result.heldout_answered)  # two families, one held-out sample each
    assert result.heldout is not None and result.heldout.threshold == best.threshold
    assert "end to end" in calibration.preset.evidence and f"{result.by_recall:.4f}" in calibration.preset.evidence


def test_the_cli_calibrates_prints_the_table_and_writes_the_file(tmp_path, capsys):
    out = tmp_path / "tiny.json"
    command = ["calibrate", *TINY, "--lengths", "1k", "--n", "1", "--heldout-n", "1", "--no-progress"]
    assert main([*command, "--skip-heads", "--skip-read-mode", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    threshold = read_preset_file(out).thresholds[("attention", "query_likelihood")]
    assert f"| gate threshold attention/query_likelihood | {threshold:.4f} | - |" in printed
    assert f"preset written to {out}" in printed and "LYCHEE_PRESETS" in printed  # --out is not read by default
    # Without --out it goes to the user presets directory, which the engine reads.
    assert main([*command, "--skip-heads", "--skip-read-mode", "--rules", "prompt"]) == 0
    printed = capsys.readouterr().out
    (written,) = presets.user_presets_dir().glob("tiny-random-llama-*.json")
    assert "the engine now picks it up" in printed and str(written) in printed
    assert set(read_preset_file(written).thresholds) == {("attention", "prompt")}
    assert make_engine(gate="prompt").threshold == read_preset_file(written).thresholds[("attention", "prompt")]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--n", "0"], "--n must be an integer >= 1"),
        (["--read-budget", "-0.5"], "--read-budget must be"),
        (["--rules", "likelihood"], "unknown gate rule"),
        (["--out", "{tmp}/file.txt/preset.json"], "cannot write the preset file"),
        (["--out", "{tmp}/preset.yaml"], "must end in .json"),
        (["--end-to-end", "-1"], "--end-to-end must be an integer >= 0"),
        (["--end-to-end", "2", "--target-recall", "0.9"], "does not combine with --target-recall"),
        (["--gate-out", "{tmp}/gate.bin"], "must end in .safetensors"),
        (["--rules", "prompt", "--gate-out", "{tmp}/gate.safetensors"], "add trained to --rules"),
        (["--gate", "prompt", "--gate-out", "{tmp}/gate.safetensors"], "but the gate is prompt"),
        (["--gate-out", "{tmp}/gate.safetensors"], "the trained gate is not among the rules calibrated"),
    ],
)
def test_the_cli_refuses_bad_input_before_measuring(tmp_path, capsys, arguments, message):
    (tmp_path / "file.txt").write_text("not a directory")
    arguments = [argument.replace("{tmp}", str(tmp_path)) for argument in arguments]
    assert main(["calibrate", *TINY, "--no-progress", *arguments]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.json")) and not list(tmp_path.rglob("*.safetensors")), "nothing written"
