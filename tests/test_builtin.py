import collections
import importlib.util
import sys

import pytest

from plw_lab.core import builtin
from plw_lab.core.builtin import BUILTIN_SETS, general_text, load_builtin

SHAPES = {
    "multiple_choice": {"context", "question", "options", "answer"},
    "classification": {"text", "label"},
    "prompt_completion": {"prompt", "completion"},
    "chat": {"messages"},
}


def _check(spec, records):
    assert records
    for r in records:
        assert set(r) == SHAPES[spec.format], r
        if spec.format == "multiple_choice":
            assert all(isinstance(r[k], str) and r[k] for k in ("context", "question"))
            assert len(r["options"]) >= 2 and all(isinstance(o, str) and o for o in r["options"])
            assert r["answer"] in "ABCDEFGH"[: len(r["options"])]
        elif spec.format == "classification":
            assert isinstance(r["text"], str) and r["text"]
            assert r["label"] in spec.labels
        elif spec.format == "prompt_completion":
            assert r["prompt"].strip() and r["completion"].strip()
        else:
            roles = [m["role"] for m in r["messages"]]
            assert set(roles) <= {"system", "user", "assistant"}
            assert roles.count("assistant") >= 2 and roles[-1] == "assistant"
            assert all(m["content"].strip() for m in r["messages"])


# Not pytest.importorskip: importing B3DB loads all its ~80 MB tables with pandas.
needs_b3db = pytest.mark.skipif(importlib.util.find_spec("B3DB") is None, reason="qc-B3DB not installed")


@pytest.mark.parametrize("name", [n for n in BUILTIN_SETS if n != "bbb"])
def test_shapes_and_determinism(name):
    spec = BUILTIN_SETS[name]
    assert spec.name == name and spec.description
    a, b = load_builtin(name, n=20, seed=3), load_builtin(name, n=20, seed=3)
    assert a == b and len(a) == min(20, len(load_builtin(name)))
    _check(spec, load_builtin(name))


def test_reading_mc_seed_and_balance():
    recs = load_builtin("reading-mc", n=400, seed=0)
    assert len(recs) == 400
    assert recs != load_builtin("reading-mc", n=400, seed=1)
    counts = collections.Counter(r["answer"] for r in recs)
    print("reading-mc answer balance:", dict(sorted(counts.items())))
    assert max(counts.values()) - min(counts.values()) <= 1
    assert len({r["context"] for r in recs}) == len(recs)  # every passage is new
    assert len(load_builtin("reading-mc")) >= 1000
    assert "GENERATED" in BUILTIN_SETS["reading-mc"].description


def test_hand_written_sets_are_documented():
    for name in ("instructions", "chat"):
        assert "hand-written" in BUILTIN_SETS[name].description


def test_unknown_name():
    with pytest.raises(KeyError) as e:
        load_builtin("nope")
    assert "reading-mc" in str(e.value)


def test_general_text():
    texts = general_text()
    assert len(texts) >= 25 and all(len(t.split()) > 20 for t in texts)
    assert len(set(texts)) == len(texts)


@needs_b3db
def test_bbb():
    spec = BUILTIN_SETS["bbb"]
    recs = load_builtin("bbb", n=200, seed=0)
    _check(spec, recs)
    assert recs == load_builtin("bbb", n=200, seed=0)
    assert recs != load_builtin("bbb", n=200, seed=1)
    counts = collections.Counter(r["label"] for r in recs)
    print("bbb label balance:", dict(counts))
    assert counts == {"BBB+": 100, "BBB-": 100}
    full = load_builtin("bbb")
    # The source has 4,956 BBB+ and 2,851 BBB- molecules; the set keeps 2,851 of each.
    assert collections.Counter(r["label"] for r in full) == {"BBB+": 2851, "BBB-": 2851}
    assert len({r["text"] for r in full}) == len(full)


def test_bbb_missing_package(monkeypatch):
    from plw_lab.core.config import DataConfig
    from plw_lab.core.data import load_examples
    from plw_lab.core.extras import MissingExtraError

    monkeypatch.setitem(sys.modules, "B3DB", None)  # as where the [demo] extra is not installed
    with pytest.raises(MissingExtraError) as refused:
        load_examples(DataConfig(source="builtin:bbb", limit=10))
    assert str(refused.value) == (
        "the built-in set 'bbb' (builtin:bbb) needs B3DB, which is not installed here: pip install \"plw-lab[demo]\""
    )


def test_import_has_no_side_effects(monkeypatch):
    import builtins as py
    import importlib

    def no_open(*a, **k):
        raise AssertionError("builtin.py opened a file at import")

    monkeypatch.setattr(py, "open", no_open)
    importlib.reload(builtin)
