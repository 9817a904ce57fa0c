"""Decontamination on held-out restatements of the eval sets, on the path a real run takes.

- Restated eval items, English and Chinese, short and long (written for this test, not taken from the
  eval sets' own texts), are rejected with a `reject_detail` naming the item; near misses (another
  instance of the same kind of problem, the item solved rather than stated) are kept.
- Short items (235 of the 600 math items have under 8 words) are matched whole after normalisation;
  "1,200" is 1200; Traditional Chinese is folded to Simplified.
- Answers: `decontam_answers` checks the responses after respond, with its own counters, in
  `pipelines.synth.main` with a fake model.
- Every eval item fed verbatim is found, also as the loop configures synth (the eval sets named once).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from datagen.filters.overlap import ParaphraseIndex
from datagen.inference import registry
from datagen.readers import eval_sets
from datagen.record import Record, Response
from datagen.stages.decontam import DecontamConfig, DecontamStage, Indexes, benchmark_items
from fakes import FAKE_BACKEND, FakeLLM
from pipelines import synth
from readback import read_records
from stage_harness import run_transform
from test_synth_pipeline import respond_as_each_stage, write_seeds

ROOT = Path(__file__).resolve().parents[1]

# Items of a benchmark file whose numbers have four digits (the eval sets have none above 999).
THOUSANDS_ITEMS = ["What is 1500 + 2500?", "How many days are in 1200 weeks, counting seven days each week?"]

# (restatement, the item it restates, why it is hard)
RESTATED = [
    ("Compute 3+4.", "math math-0000", "short: 4 words, no n-gram test"),
    ("What is three plus four?", "math math-0000", "short, numbers spelled out"),
    ("请计算3加4等于多少？", "math math-0000", "short, in Chinese"),
    ("Find 40 percent of 280.", "math math-0011", "short, 'percent' for '%'"),
    ("Calculate 8*8 + 32.", "math math-0003", "short, '*' for '×'"),
    ("280的百分之40是多少？", "math math-0011", "short, in Chinese, other word order"),
    ("Question: how do bees make honey? Answer briefly.", "judge judge-071", "short judge item in a longer text"),
    ("Sami purchases 6 sandwiches costing 8 dollars each and pays with 60 dollars. How much change, in dollars, "
     "does Sami receive?", "math math-0031", "long, reworded"),
    ("Grace has 5 boxes, each holding 9 stamps. She loses 7 stamps and then shares the remaining stamps equally "
     "between 2 friends. How many stamps does each friend receive?", "math math-0051", "long, reworded"),
    ("A train moves at 36 km per hour for 1.5 hours. What distance in kilometres does it cover?", "math math-0007",
     "long, reworded"),
    ("小華有54個貝殼，平均分給6個朋友。每個朋友分到多少個貝殼？", "math math-0010", "Traditional Chinese"),
    ("一個長方形的長是8厘米，寬是5厘米，它的面積和周長分別是多少？", "judge judge-005", "Traditional Chinese"),
    ("Write a Python function that filters a list of strings, keeping only the ones that start with a given "
     "prefix.", "code HumanEval/29", "HumanEval in other words"),
    ("What is 1,500 + 2,500?", "bench line 1", "thousands separators, short"),
    ("How many days are in 1,200 weeks, counting seven days each week?", "bench line 2",
     "thousands separators: the number cuts every 8-gram"),
]

NEAR_MISSES = [
    "What is 3 + 5?",  # math-0000 is 3 + 4
    "What is 4 + 3?",
    "Compute 3+4+5.",
    "Explain why 3 + 4 = 7.",
    "What is 40% of 290?",
    "How do bees see colours?",
    "What is 1,200 + 300?",
    "How many days are in 1,300 weeks, counting seven days each week?",
    "Write a Python function that filters a list of numbers, keeping only the even ones.",
    "一个长方形的长是9厘米，宽是4厘米，求它的对角线长度。",
    "請解釋光合作用的過程。",  # Traditional Chinese, no eval item
]


@pytest.fixture
def bench(tmp_path):
    path = tmp_path / "bench.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in THOUSANDS_ITEMS), encoding="utf-8")
    return str(path)


def test_restated_eval_items_are_rejected_naming_the_item_and_near_misses_are_kept(bench):
    records = [Record(seed_id=f"r{i}", instruction=text) for i, (text, _, _) in enumerate(RESTATED)]
    records += [Record(seed_id=f"n{i}", instruction=text) for i, text in enumerate(NEAR_MISSES)]
    out = run_transform(records, DecontamStage(DecontamConfig(benchmarks=[bench])), ["decontam"])

    named = {r.seed_id: r.reject_detail.replace(bench, "bench") for r in out.rejected}
    wrong = [(text, why, named.get(f"r{i}")) for i, (text, label, why) in enumerate(RESTATED)
             if not named.get(f"r{i}", "").startswith(f"{label}: instruction ")]
    assert wrong == []
    assert all(r.reject_stage == "decontam" and r.reject_reason.startswith("contaminated") for r in out.rejected)
    assert sorted(r.seed_id for r in out.kept) == sorted(f"n{i}" for i in range(len(NEAR_MISSES)))
    counters = out.counters["decontam"]
    assert counters["in"] == counters["kept"] + sum(v for k, v in counters.items() if k.startswith("rejected:"))
    assert named["r0"] == "math math-0000: instruction states the item whole ('3 + 4' after normalisation)"


def test_short_items_numbers_and_traditional_chinese_normalise_alike():
    from datagen.filters.overlap import fold, short_key

    assert short_key("What is 3 + 4?") == short_key("Compute 3+4.") == short_key("3 加 4 等于几？") == ("3", "+", "4")
    assert short_key("What is 3 × 4?") != short_key("What is 3 + 4?")
    assert short_key("What does 72 ÷ 8 equal?") == short_key("72/8 = ?") == ("72", "÷", "8")
    assert short_key("twenty-one minus 3") == ("21", "-", "3")
    assert fold("1,200 and 12,345,678 but 1, 200 and 3,4 and 1,2345") == \
        "1200 and 12345678 but 1, 200 and 3,4 and 1,2345"
    assert fold("一個長方形的面積") == "一个长方形的面积"


def test_a_contaminated_answer_rejects_its_record_in_decontam_answers(tmp_path):
    records = [
        Record(seed_id="restates", instruction="Give a warm-up question.",
               responses=[Response("Here is one. What is 3 + 4? Take your time."), Response("Add two numbers.")]),
        Record(seed_id="solves", instruction="Practise addition.", responses=[Response("3 + 4 = 7, so 7.")]),
        Record(seed_id="none", instruction="What is 3 + 4?"),  # the instruction is not this pass's business
    ]
    out = run_transform(records, DecontamStage(DecontamConfig(), answers=True), ["decontam_answers", "decontam"])
    assert [(r.seed_id, r.reject_stage, r.reject_reason, r.reject_detail) for r in out.rejected] == [
        ("restates", "decontam_answers", "contaminated_short_item",
         "math math-0000: response 0 states the item whole ('3 + 4' after normalisation)")]
    assert sorted(r.seed_id for r in out.kept) == ["none", "solves"]
    assert out.counters["decontam_answers"] == {"in": 3, "kept": 2, "out": 2, "rejected:contaminated_short_item": 1}
    assert out.counters["decontam"] == {}
    assert out.kept[0].lineage[-1].stage == "decontam_answers"


SEASONS = "What causes the seasons on Earth?"  # judge-022, 6 words


def respond_restating_an_eval_item(request):
    """The pipeline's fake, except that answers about photosynthesis quote judge-022."""
    out = respond_as_each_stage(request)
    prompt = request.prompt or request.messages[-1][1]
    if isinstance(out, list) and "photosynthesis" in prompt.lower():
        return [f"Plants need sunlight. A related question: {SEASONS} The tilt of the axis. (sample {i})"
                for i in range(len(out))]
    return out


@pytest.fixture
def restating_model():
    cfg = registry.ModelConfig(backend=FAKE_BACKEND)
    registry.install(cfg, FakeLLM(respond_restating_an_eval_item))
    yield
    registry.shutdown_all()


def test_the_pipeline_rejects_an_answer_that_restates_an_eval_item_after_respond(tmp_path, restating_model, capsys):
    write_seeds(tmp_path / "seeds.jsonl")
    out = tmp_path / "out"
    code = synth.main(["--seeds", str(tmp_path / "seeds.jsonl"), "--output", str(out), "--no_cache",
                       "--models.default.backend", FAKE_BACKEND, "--evolve.operations", "[harder]"])
    assert code == 0, capsys.readouterr().err
    stats = json.loads((out / "stats.json").read_text())
    stages = stats["stages"]
    order = list(stages)
    assert order.index("respond") < order.index("decontam_answers") < order.index("rules")
    answers = stages["decontam_answers"]
    assert answers["in"] == stages["respond"]["out"] and answers["out"] == stages["rules"]["in"]
    assert answers["kept"] + sum(answers["rejected"].values()) == answers["in"]
    assert not stages["decontam"]["rejected"]  # before respond there was nothing to find

    rejects = read_records(str(out / "rejects"))
    caught = [r for r in rejects if r.reject_stage == "decontam_answers"]
    assert answers["rejected"] == {"contaminated_short_item": len(caught)} and caught
    assert all("photosynthesis" in r.instruction.lower() for r in caught)
    assert {r.reject_detail for r in caught} == {
        "judge judge-022: response 0 states the item whole ('caus season earth' after normalisation)"}
    assert stats["quality"]["contamination"]["hits"] == len(caught)  # the card counts answer hits too
    later = read_records(str(out / "data")) + [r for r in rejects if r not in caught]
    assert not any(SEASONS in resp.text for r in later for resp in r.responses)


def test_every_eval_item_fed_verbatim_is_found_also_as_the_loop_configures_synth(tmp_path, monkeypatch):
    from datagen.config_loader import from_dict
    from pipelines.looping import work
    from pipelines.looping.loop_config import load_loop_config
    from pipelines.synth_config import SynthConfig

    class Captured(Exception):
        pass

    def capture(step, data):
        raise Captured(data)

    cfg = load_loop_config(str(ROOT / "configs/loop/cpu.yaml"), ["--output", str(tmp_path)])
    plan = work.LoopPlan(cfg, cfg.model, {})
    assert plan.benchmark_files() == []  # decontam.eval_sets names all three already
    step = next(s for s in plan.steps if s.name == "synth")
    monkeypatch.setattr(work, "write_config", capture)
    with pytest.raises(Captured) as captured:
        step.run(step)
    decontam = from_dict(SynthConfig, captured.value.args[0]).decontam

    items = [(f"{name} {item['id']}", item["text"]) for name in eval_sets.NAMES for item in eval_sets.load(name)]
    assert len(items) == 848  # 600 math + 164 code + 84 judge
    labels = [label for label, _ in benchmark_items(decontam)]
    assert len(labels) == len(set(labels)) == len(items)  # every item once
    indexes = Indexes(decontam)
    missed = [label for label, text in items if indexes.find(text, instruction=True) is None]
    assert missed == []
    # the paraphrase test on its own: every item it can see (6+ content words) finds itself
    paraphrase = indexes.paraphrase
    seen = {label for label, _ in paraphrase.items}
    assert len(seen) == 544
    text_of = dict(items)
    unseen = [i for i, (label, _) in enumerate(paraphrase.items) if paraphrase.find(text_of[label]) is None]
    # an item it cannot find has no rare bigram left (each is in more than rare_items items: a template the
    # eval uses often, e.g. "Emma had 5 pencils and gave away 2") -- the n-gram test above finds those
    for i in unseen:
        words = paraphrase.items[i][1]
        assert all(len(paraphrase.bigrams[b]) > paraphrase.rare_items for b in zip(words, words[1:])), \
            paraphrase.items[i]
    assert len(unseen) < len(seen) / 50


def test_the_eval_sets_named_twice_count_once_in_the_rare_bigram_test(tmp_path):
    files = [str(eval_sets.EVAL_DIR / "math.jsonl"), str(eval_sets.EVAL_DIR / "judge.jsonl")]
    code = tmp_path / "humaneval.jsonl"
    code.write_text("".join(json.dumps({"text": t}) + "\n" for t in eval_sets.benchmark_texts("code")))
    twice = Indexes(DecontamConfig(benchmarks=[*files, str(code)]))
    assert len(twice.paraphrase.items) == 544
    assert twice.paraphrase.find(eval_sets.load("math")[5]["text"])[0] == "math math-0005"
    # the math set under a smaller decontam.eval_sets still joins, once
    only_math = [label for label, _ in benchmark_items(DecontamConfig(eval_sets=["judge"], benchmarks=files))]
    assert len(only_math) == 84 + 600 and only_math[0] == "judge judge-000" and only_math[84].endswith("math.jsonl line 1")


def test_the_loop_adds_only_the_eval_sets_synth_does_not_name(tmp_path):
    from pipelines.looping import work
    from pipelines.looping.loop_config import load_loop_config

    cfg = load_loop_config(str(ROOT / "configs/loop/cpu.yaml"),
                           ["--output", str(tmp_path), "--synth.set", "{decontam.eval_sets: [math]}"])
    files = work.LoopPlan(cfg, cfg.model, {}).benchmark_files()
    assert [Path(f).name for f in files] == ["judge.jsonl", "humaneval.jsonl"]
    assert len(Path(files[1]).read_text().splitlines()) == 164


def test_shipped_texts_stay_clean_under_the_short_item_test():
    """The demo seeds, the calibration questions and answers (as answers) are no eval items."""
    from datagen import SHIPPED_SEEDS
    from datagen.filters.calibration import load_pairs

    indexes = Indexes(DecontamConfig())
    seeds = [json.loads(line)["text"] for line in SHIPPED_SEEDS.read_text(encoding="utf-8").splitlines() if line]
    pairs = load_pairs()
    found = [t for t in seeds + [p.question for p in pairs] if indexes.find(t, instruction=True)]
    found += [t for p in pairs for t in (p.good, p.bad) if indexes.find(t, instruction=False)]
    assert found == []
    assert isinstance(indexes.paraphrase, ParaphraseIndex)
